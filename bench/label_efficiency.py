"""Label efficiency on EmoDB: test UA at each label budget for every strategy, random sampling,
and all labels; leave-one-speaker-out, several seeds, a frozen feature backbone.

    .venv/bin/python bench/label_efficiency.py [--backbone frozen:whisper-tiny.en]
        [--seeds 0,1,2] [--strategies all] [--schedule 0.02,0.05,0.1,0.15,0.2] [--folds 10]
        [--fold-step 1] [--out runs/bench-le]

Every fold x seed x strategy is a real `after run` (k-means cold start on resemblyzer speaker
embeddings, the same seed set for every strategy of a seed), through `after.loop.compare`, so the
output folder also holds every run and resumes if stopped. Prints one JSON object: per strategy
the mean ± std test UA at each budget and the area under the UA curve, its difference from random
at each budget paired by fold and seed (Wilcoxon signed-rank p), and the time of an
active-learning run relative to fine-tuning on all labels.

`alps` is left out by default: its surprisal embeddings need a wav2vec 2.0 pre-training model
(a TAPT output), which a feature-backbone benchmark does not have.

The TAPT variant (`--tapt-steps N`, a wav2vec 2.0 backbone such as scratch:tiny):

    OMP_NUM_THREADS=1 .venv/bin/python bench/label_efficiency.py --backbone scratch:tiny \\
        --tapt-steps 300 --epochs 10 --folds 5 --fold-step 2 --seeds 0,1,2 --out runs/bench-le-tapt

For every chosen fold, TAPT of the backbone on that fold's training clips only (OUT/tapt/FOLD,
reused once finished), then the same comparison twice: on the plain backbone (OUT/plain/FOLD) and
on the TAPT model (OUT/tapt_runs/FOLD), with one shared cache (the CNN cache is keyed on the CNN's
weights, so the two never share entries). Strategies default to entropy and random. Prints per
variant (plain, tapt) and strategy the test UA by budget over all folds x seeds, all labels per
variant, the TAPT loss drop per fold, and tapt minus plain at the last budget.

A scratch model pre-trained for minutes on a CPU on a few hundred clips learns little about
emotion (both variants stay near chance): the numbers show that the pipeline runs end to end,
not the benefit of TAPT from a pretrained checkpoint, which needs a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from md import pct, table

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# The corpora of ../shared/data and their protocol: EmoDB leave-one-speaker-out (10 folds), URDU
# 5 speaker folds (29 speakers, most with a few clips of one emotion).
CORPORA = {"emodb": ("loso", 0), "urdu": ("kfold", 5)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbone", default="frozen:whisper-tiny.en")
    p.add_argument(
        "--strategies",
        default="all",
        help="comma-separated; all: every strategy but alps (with --tapt-steps: entropy,random)",
    )
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--schedule", default="0.02,0.05,0.1,0.15,0.2")
    p.add_argument("--folds", type=int, default=10, help="first N of the 10 LOSO folds")
    p.add_argument("--fold-step", type=int, default=1, help="take every K-th fold (before --folds)")
    p.add_argument("--epochs", type=int, default=30, help="fine-tuned backbones only")
    p.add_argument(
        "--tapt-steps",
        type=int,
        default=0,
        help="N > 0: also TAPT the (wav2vec 2.0) backbone N steps per fold and compare both",
    )
    p.add_argument("--corpus", choices=sorted(CORPORA), default="emodb")
    p.add_argument(
        "--feature-view",
        default="clip",
        help="clip, speaker or auto (TrainConfig's default: auto); clip here, the view of the "
        "recorded all-strategy runs",
    )
    p.add_argument("--self-training", type=float, default=0.0, help="its weight; 0: off")
    p.add_argument("--pseudo-threshold", type=float, default=0.9)
    p.add_argument("--out", type=Path, default=Path("runs/bench-label-efficiency"))
    p.add_argument("--data", type=Path, help="the corpus folder (default ../shared/data/CORPUS)")
    args = p.parse_args()
    data = args.data or DATA / args.corpus

    from after.config import ALConfig, TrainConfig
    from after.data.audio import validate_manifest
    from after.data.corpora import prepare, prepare_csv
    from after.data.folds import make_folds
    from after.loop.compare import compare
    from after.models.features import is_feature_backbone
    from after.strategies import STRATEGIES

    if args.fold_step < 1:
        p.error("--fold-step must be at least 1")
    if args.tapt_steps > 0 and is_feature_backbone(args.backbone):
        p.error(
            f"--tapt-steps needs a wav2vec 2.0 backbone (scratch:tiny, scratch:small, a model "
            f"folder); {args.backbone} is a frozen feature backbone with nothing to pre-train"
        )
    if args.strategies != "all":
        names = args.strategies.split(",")
    elif args.tapt_steps > 0:
        names = ["entropy", "random"]
    else:
        names = [s for s in STRATEGIES if s != "alps"]
    if "random" not in names:
        names.insert(0, "random")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    source = (
        prepare("emodb", data) if args.corpus == "emodb" else prepare_csv(data / "manifest.csv")
    )
    manifest = validate_manifest(source, num_workers=2).usable
    manifest_path = manifest.to_jsonl(out / "manifest.jsonl")
    protocol, num_folds = CORPORA[args.corpus]
    folds = make_folds(manifest, protocol, num_folds=num_folds or 5, seed=0)
    folds_path = folds.to_json(out / "folds.json")
    chosen = folds.folds[:: args.fold_step][: args.folds]
    schedule = tuple(args.schedule.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    al = ALConfig(schedule=schedule, cold_start="kmeans")
    train = TrainConfig(
        epochs=args.epochs,
        batch_size=8,
        patience=0,
        feature_view=args.feature_view,
        self_training=args.self_training,
        pseudo_threshold=args.pseudo_threshold,
    )
    name = {"emodb": "EmoDB", "urdu": "URDU"}[args.corpus]
    corpus = f"{name} ({len(manifest)} clips, {len(manifest.speakers)} speakers)"

    def run_compare(backbone: str, fold_list: list[Any], folder: Path) -> dict[str, Any]:
        return compare(
            manifest,
            str(manifest_path),
            str(folds_path),
            fold_list,
            backbone,
            names,
            seeds,
            al,
            train,
            folder,
            cache_dir=str(out / "cache"),
            log=lambda line: print(line, flush=True),
        )

    if args.tapt_steps > 0:
        tapt = {}
        dirs: dict[str, list[Path]] = {"plain": [], "tapt": []}
        for fold in chosen:
            tapt[fold.name] = _tapt(manifest, fold, args.backbone, out / "tapt" / fold.name, args)
            for variant, backbone, folder in (
                ("plain", args.backbone, out / "plain" / fold.name),
                ("tapt", str(out / "tapt" / fold.name), out / "tapt_runs" / fold.name),
            ):
                run_compare(backbone, [fold], folder)
                dirs[variant].append(folder)
        curves = {v: _pooled(d, names, seeds, schedule) for v, d in dirs.items()}
        result = {
            "benchmark": "label_efficiency_tapt",
            "corpus": corpus,
            "protocol": f"LOSO, folds {', '.join(f.name for f in chosen)} x seeds {args.seeds}, "
            "1 dev speaker per fold, k-means cold start",
            "backbone": args.backbone,
            "schedule": list(schedule),
            "tapt": {"steps": args.tapt_steps, "per_fold": tapt},
            "variants": {
                v: {
                    "all_labels_test_ua": _fmt(c["all_labels"]),
                    "strategies": {
                        s: {"test_ua_by_budget": {b: _fmt(ua) for b, ua in by_budget.items()}}
                        for s, by_budget in c["strategies"].items()
                    },
                }
                for v, c in curves.items()
            },
            "tapt_minus_plain_at_last_budget": {
                s: round(100 * (_last(curves["tapt"], s) - _last(curves["plain"], s)), 2)
                for s in names
            },
        }
        print(json.dumps(result, indent=2, ensure_ascii=False))
        return

    summary = run_compare(args.backbone, chosen, out)
    random_last = summary["strategies"]["random"]["points"][-1]["test_ua"]["mean"]
    result = {
        "benchmark": "label_efficiency",
        "corpus": corpus,
        "protocol": f"{protocol.upper()}, {len(chosen)} folds x seeds {args.seeds}, "
        "1 dev speaker per fold, k-means cold start",
        "backbone": args.backbone,
        "feature_view": args.feature_view,
        "self_training": args.self_training,
        "pseudo_threshold": args.pseudo_threshold,
        "transductive": args.feature_view != "clip",
        "schedule": list(schedule),
        "all_labels_test_ua": summary["full"]["test_ua"],
        "views_chosen": _views(out),
        "strategies": {
            name: {
                "test_ua_by_budget": {
                    pt[
                        "budget"
                    ]: f"{100 * pt['test_ua']['mean']:.2f} ± {100 * pt['test_ua']['std']:.2f}"
                    for pt in c["points"]
                },
                "auc_ua": round(100 * c["auc_ua"]["mean"], 2),
                "beats_random_at_last_budget": c["points"][-1]["test_ua"]["mean"] > random_last,
                "vs_random": {
                    pt["budget"]: {
                        "points": round(100 * pt["mean"], 2),
                        "std": round(100 * pt["std"], 2),
                        "wilcoxon_p": round(pt["wilcoxon_p"], 4),
                    }
                    for pt in c.get("vs_random", [])
                },
                "time_vs_all_labels": round(c["time_vs_full"], 3),
            }
            for name, c in summary["strategies"].items()
        },
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))


def _views(out: Path) -> dict[str, int]:
    """How often each feature view was chosen, over every round of every run under `out`."""
    from collections import Counter

    counts: Counter[str] = Counter()
    for state in out.glob("**/state.json"):
        counts.update(r["view"] for r in json.loads(state.read_text())["rounds"] if "view" in r)
    return dict(counts)


def _tapt(manifest: Any, fold: Any, backbone: str, out: Path, args: Any) -> dict[str, Any]:
    """TAPT of `backbone` on `fold`'s training clips into `out` (reused once finished, like
    `after.demo`); its seconds and loss drop."""
    from after.config import TaptConfig
    from after.tapt import DONE_FILE, LOG_FILE, run_tapt

    steps = args.tapt_steps
    if not (out / DONE_FILE).is_file():
        print(f"{fold.name}: TAPT of {backbone}, {steps} steps", flush=True)
        config = TaptConfig(
            steps=steps,
            batch_size=8,
            max_seconds=3.0,
            # a random init has no pretrained weights to preserve: a larger step
            lr=1e-3 if backbone.startswith("scratch:") else TaptConfig.lr,
            warmup_steps=steps // 10,
            save_every=steps,
            log_every=1,
        )
        run_tapt(manifest, fold, backbone, out, config, progress=False)
    losses = [json.loads(line)["loss"] for line in (out / LOG_FILE).read_text().splitlines()]
    num_negatives = json.loads((out / "config.json").read_text())["num_negatives"]
    return {
        "seconds": round(json.loads((out / DONE_FILE).read_text())["final"]["seconds"], 1),
        "first_loss": round(losses[0], 3),
        "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 3),  # steps are noisy
        # guessing the positive among num_negatives + 1 candidates
        "chance_loss": round(math.log(num_negatives + 1), 3),
    }


def _pooled(
    dirs: list[Path], strategies: list[str], seeds: list[int], schedule: tuple[str, ...]
) -> dict[str, Any]:
    """Mean ± std test UA per strategy and budget over every fold x seed run of the compare
    folders `dirs`, and of all labels. Runs are grouped by strategy only: the backbone (a TAPT
    folder per fold) differs between folds."""
    from after.metrics import mean_std
    from after.report import curve_points, read_report_inputs

    inputs = read_report_inputs(dirs)
    rounds: dict[str, list[Any]] = {s: [] for s in strategies}
    for r in inputs.runs:  # only this invocation's strategies, seeds and schedule
        al = r.config["al"]
        if al["strategy"] in rounds and al["seed"] in seeds and tuple(al["schedule"]) == schedule:
            rounds[al["strategy"]].append(r.state.rounds)
    full = [x for results in inputs.full.values() for x in results if x["seed"] in seeds]
    return {
        "strategies": {
            s: {b: p["test_ua"] for b, p in zip(schedule, curve_points(runs), strict=False)}
            for s, runs in rounds.items()
        },
        "all_labels": mean_std([x["test_ua"] for x in full]),
    }


def _fmt(ua: dict[str, float]) -> str:
    return f"{100 * ua['mean']:.2f} ± {100 * ua['std']:.2f}"


def _last(curves: dict[str, Any], strategy: str) -> float:
    return float(list(curves["strategies"][strategy].values())[-1]["mean"])


def render(r: dict[str, Any]) -> list[str]:
    """BENCHMARKS.md's section on a printed result: every strategy's UA by budget against random
    and all labels, or (the TAPT variant's result) each variant's, with the TAPT of every fold."""
    if "variants" in r:
        return _render_tapt(r)
    budgets = r["schedule"]
    rows = [
        [
            name,
            *(s["test_ua_by_budget"].get(b, "-") for b in budgets),
            s["auc_ua"],
            f"{s['time_vs_all_labels']}x",
        ]
        for name, s in r["strategies"].items()
    ]
    view = r.get("feature_view", "clip")
    learner = (
        f" Features: {view} view"
        + (" (transductive)" if r.get("transductive") else "")
        + (f", self-training weight {r['self_training']}" if r.get("self_training") else "")
        + (f"; views chosen over all rounds: {r['views_chosen']}" if r.get("views_chosen") else "")
        + "."
    )
    lines = [
        f"{r['corpus']}; {r['protocol']}; backbone `{r['backbone']}`. Test UA % (mean ± sample "
        "std over fold x seed runs); AUC: the area under the UA curve over the labeled fraction "
        "divided by its span (a mean UA over the budgets); time: one AL run over one all-labels "
        "fine-tuning." + learner,
        "",
        *table(
            ["strategy", *(f"{100 * float(b):g}%" for b in budgets), "AUC", "time"],
            rows,
        ),
        "",
        f"All labels: UA {pct(r['all_labels_test_ua'])}.",
    ]
    paired = {n: s["vs_random"] for n, s in r["strategies"].items() if s.get("vs_random")}
    if paired:
        lines += [
            "",
            "Against random, paired by fold and seed: mean difference in UA points (two-sided "
            "Wilcoxon signed-rank p):",
            "",
            *table(
                ["strategy", *(f"{100 * float(b):g}%" for b in budgets)],
                [
                    [
                        n,
                        *(
                            f"{v[b]['points']:+.1f} (p={v[b]['wilcoxon_p']:.2g})" if b in v else "-"
                            for b in budgets
                        ),
                    ]
                    for n, v in paired.items()
                ],
            ),
        ]
    return lines


def _render_tapt(r: dict[str, Any]) -> list[str]:
    tapt = r["tapt"]
    lines = [
        f"{r['corpus']}; {r['protocol']}; backbone `{r['backbone']}`. TAPT: {tapt['steps']} "
        "steps per fold on the fold's training audio only:",
        "",
        *table(
            ["fold", "seconds", "first loss", "final loss", "chance loss"],
            [[fold, *t.values()] for fold, t in tapt["per_fold"].items()],
        ),
        "",
    ]
    for variant, strategies in r["variants"].items():
        lines.append(f"**{variant}** (test UA %):")
        lines.append("")
        budgets = list(next(iter(strategies["strategies"].values()))["test_ua_by_budget"])
        rows = [
            [name, *(s["test_ua_by_budget"][b] for b in budgets), "-"]
            for name, s in strategies["strategies"].items()
        ]
        rows.append(["all labels", *("-" for _ in budgets), strategies["all_labels_test_ua"]])
        header = ["strategy", *(f"{100 * float(b):g}%" for b in budgets), "all labels"]
        lines += [*table(header, rows), ""]
    gains = r["tapt_minus_plain_at_last_budget"]
    return [
        *lines,
        "TAPT minus plain at the last budget (points): "
        + ", ".join(f"{name} {gain:+.2f}" for name, gain in gains.items())
        + ".",
    ]


def headline(r: dict[str, Any]) -> str | None:
    """README's line: random against the default strategy and against the best one at the last
    budget, if paired."""
    from after.config import ALConfig

    if "variants" in r or not any(s.get("vs_random") for s in r["strategies"].values()):
        return None
    last = r["schedule"][-1]
    paired = [n for n in r["strategies"] if r["strategies"][n].get("vs_random")]
    best = max(paired, key=lambda n: r["strategies"][n]["vs_random"][last]["points"])
    default = ALConfig.strategy

    def against_random(name: str) -> str:
        gain = r["strategies"][name]["vs_random"][last]
        return (
            f"{r['strategies'][name]['test_ua_by_budget'][last]}, {gain['points']:+.1f} points "
            f"(Wilcoxon p = {gain['wilcoxon_p']:.2g})"
        )

    shown = [f"the default ({default}) {against_random(default)}"] if default in paired else []
    if best != default:
        shown.append(f"the best strategy ({best}) {against_random(best)}")
    view = f", {r.get('feature_view', 'clip')} view"
    return (
        f"- **Label efficiency, {r['corpus'].split(' (')[0]}, `{r['backbone']}`{view}** "
        f"({r['protocol']}): at {100 * float(last):g}% of the pool random sampling reaches "
        f"{r['strategies']['random']['test_ua_by_budget'][last]}; "
        + "; ".join(shown)
        + f"; all labels {pct(r['all_labels_test_ua'])}."
    )


if __name__ == "__main__":
    main()
