"""Does task-adaptive pre-training help Whisper on emotion? EmoDB, leave-one-speaker-out.

    .venv/bin/python bench/tapt_whisper.py [--folds all] [--seeds 0,1,2] [--steps 300]
        [--variants 'default;distill=1'] [--judges probe,al,finetune]
        [--out runs/bench/tapt_whisper]

For every chosen fold and every TAPT variant (`TaptConfig` settings changed from this benchmark's
`tapt_config`, `;` between variants, `,` between the settings of one: `l2sp=1,lr=3e-5`): TAPT of
whisper-tiny.en on that fold's training audio only (the conv stem frozen; masked prediction of
k-means ids of its middle layer unless the variant names another objective), then, on the same
fold and seeds, with the TAPT model against the plain one:

- probe: frozen features of every layer above the (unchanged) conv stem, with the
  logistic-regression learner on the clip view (deterministic: one run per fold and layer);
- al: active learning to 20% of the pool on the middle layer's frozen features, clip view (entropy
  and random from a 2% k-means seed set), per seed: test UA at the last budget;
- finetune: fine-tuning on all labels with the default recipe (`TrainConfig()`, what `after
  train` runs), per seed; the slowest judge, off by default. `--plain-finetune DIR` reads the
  plain model's runs from DIR instead, e.g. the fine-tuning benchmark's records of the same
  recipe (`runs/bench/whisper_finetune/default`: same folds and seeds; the settings check
  refuses them if the recipe differs).

The frozen judges use the clip view whatever the learner's default view: speaker
standardisation is a lever of its own, not part of what TAPT changes.

Every comparison is paired by fold (and seed) with a Wilcoxon signed-rank test, with n and the
smallest p that n allows. The TAPT loss and masked-frame accuracy of every fold are kept. TAPT
models, fine-tuning records and active-learning runs stay in `--out` and are reused when the
script runs again with the same settings, so a stopped run continues; each fold's judgements are
also kept in `--out`/judged/, one entry per judge and seed (small JSON files: commit them, and a
fresh clone continues without the models; more seeds later add entries). Comparisons pair the
folds and seeds judged on both sides. Prints one JSON object.
EmoDB is read from ../shared/data/emodb.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from md import table

EMODB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emodb"
BACKBONE = "whisper-tiny.en"
JUDGES = ("probe", "al", "finetune")


def tapt_config(
    steps: int = 300, lr: float = 1e-4, mask_prob: float = 0.65, mask_length: int = 10
) -> Any:
    """The TAPT settings of this benchmark, which its variants change one set at a time:
    the conv stem frozen, crops of 3 s, batch 8, a tenth of the steps for warm-up, one save at
    the end, every fifth step logged (and the last)."""
    from after.config import TaptConfig

    return TaptConfig(
        steps=steps,
        batch_size=8,
        max_seconds=3.0,
        lr=lr,
        warmup_steps=max(1, steps // 10),
        mask_prob=mask_prob,
        mask_length=mask_length,
        freeze_cnn=True,
        save_every=steps,
        log_every=5,
    )


def parse_variants(text: str) -> dict[str, dict[str, Any]]:
    """'default;l2sp=1,lr=3e-5' -> {name: TaptConfig changes}, values read as JSON."""
    variants: dict[str, dict[str, Any]] = {}
    for part in (p.strip() for p in text.split(";") if p.strip()):
        changes: dict[str, Any] = {}
        for item in part.split(",") if part != "default" else []:
            key, _, value = item.partition("=")
            try:
                changes[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                changes[key.strip()] = value.strip()
        variants[part] = changes
    return variants


def judged(
    path: Path, settings: dict[str, Any], todo: dict[str, Callable[[], Any]]
) -> dict[str, Any]:
    """Each result of `todo` (name -> how to compute it) for one model and fold: read from `path`
    where an earlier run with the same `settings` wrote it, else computed and added there at
    once. These small files are what a run that spans sessions keeps in git (see
    bench/run_all.py): a fold judged before needs neither its TAPT model nor its runs again."""
    from after.io import atomic_write_json

    saved = json.loads(path.read_text()) if path.is_file() else {}
    settings = json.loads(json.dumps(settings))  # as read back: tuples are lists
    if saved.get("settings") != settings:
        saved = {"settings": settings}
    for key, compute in todo.items():
        if key not in saved:
            saved[key] = compute()
            atomic_write_json(path, saved)
    return {key: saved[key] for key in todo}


def after(first: Callable[[], Any], compute: Callable[[], Any]) -> Callable[[], Any]:
    """`compute`, called after `first` (a judge after the TAPT that makes the model it reads)."""
    return lambda: (first(), compute())[1]


def paired(a: list[float], b: list[float]) -> dict[str, Any]:
    """TAPT minus plain, paired: means, the difference, n, Wilcoxon's p and the smallest p that
    n pairs allow."""
    from after.metrics import paired_difference

    d = paired_difference(a, b)
    spread = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
    return {
        "tapt": f"{100 * statistics.mean(a):.1f} ± {100 * spread(a):.1f}",
        "plain": f"{100 * statistics.mean(b):.1f} ± {100 * spread(b):.1f}",
        "difference": f"{100 * d['mean']:+.2f} ± {100 * d['std']:.2f}",
        "n": d["n"],
        "wilcoxon_p": round(d["wilcoxon_p"], 4),
        "min_p": round(d["min_p"], 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--folds", default="all", help="LOSO fold indices, comma-separated, or all")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--variants", default="default")
    p.add_argument("--judges", default="probe,al")
    p.add_argument(
        "--control",
        help="a variant (e.g. steps=3) that every other is also compared against: what moving "
        "the weights a little, without adapting them, does to each judge",
    )
    p.add_argument(
        "--plain-finetune",
        type=Path,
        help="where the plain model's fine-tuning records are (default OUT/finetune/plain)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench/tapt_whisper"))
    p.add_argument("--data", type=Path, default=EMODB)
    p.add_argument("--backbone", default=BACKBONE, help="a Whisper encoder (name or folder)")
    args = p.parse_args()
    backbone = args.backbone

    import dataclasses

    from after.config import ALConfig, TrainConfig
    from after.data.corpora import prepare
    from after.data.folds import make_folds
    from after.experiments import fit_and_test, fit_and_test_folds
    from after.loop.compare import compare
    from after.loop.state import LoopState
    from after.models.backbones import load_config
    from after.tapt import DONE_FILE, LOG_FILE, run_tapt

    judges = [j for j in args.judges.split(",") if j]
    if unknown := set(judges) - set(JUDGES):
        p.error(f"unknown judge(s) {sorted(unknown)}; choose from {', '.join(JUDGES)}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    manifest = prepare("emodb", args.data)
    manifest_path = manifest.to_jsonl(out / "manifest.jsonl")
    all_folds = make_folds(manifest, "loso", seed=0)
    folds_path = all_folds.to_json(out / "folds.json")
    picked = range(len(all_folds.folds)) if args.folds == "all" else map(int, args.folds.split(","))
    folds = [all_folds.folds[k] for k in picked]
    seeds = [int(s) for s in args.seeds.split(",")]
    cache = str(out / "cache")
    num_layers = int(load_config(backbone).num_hidden_layers)
    layers = list(range(1, num_layers + 1))  # layer 0, the frozen conv stem's, never changes
    base = dataclasses.replace(tapt_config(args.steps), batch_size=args.batch_size)
    variants = parse_variants(args.variants)
    al = ALConfig(schedule=("0.02", "0.05", "0.1", "0.15", "0.2"), cold_start="kmeans")
    frozen, finetune = TrainConfig(feature_view="clip"), TrainConfig()

    def probe(model: str, fold: Any, layer: int) -> float:
        spec = f"frozen:{model}@{layer}"
        run = fit_and_test(manifest, fold, spec, frozen, cache_dir=cache, progress=False)
        return float(run[1]["test"]["ua"])

    def al_uas(model: str, fold: Any, seed: int, folder: Path) -> dict[str, float]:
        compare(
            manifest, str(manifest_path), str(folds_path), [fold], f"frozen:{model}",
            ["entropy", "random"], [seed], al, frozen, folder, cache_dir=cache,
            log=lambda _: None,
        )  # fmt: skip
        runs = folder / "runs" / fold.name
        return {
            s: LoopState.load(runs / f"{s}_seed{seed}").rounds[-1]["test_ua"]
            for s in ("entropy", "random")
        }

    def finetuned(model: str, fold: Any, seed: int, folder: Path) -> float:
        (record,) = fit_and_test_folds(
            manifest, [fold], [seed], model, finetune, folder, cache_dir=cache
        )
        return record["test"]["ua"]

    def judge(model: str, fold: Any, name: str) -> dict[str, Callable[[], Any]]:
        """What each judge computes for `model` on `fold` (`name`: the variant, or plain), one
        entry per layer (probe) or seed (al@seedS, finetune@seedS)."""
        todo: dict[str, Callable[[], Any]] = {
            f"probe@{k}": (lambda k=k: probe(model, fold, k)) for k in layers
        }
        tuned = out / "finetune" / name
        if name == "plain" and args.plain_finetune:
            tuned = args.plain_finetune.resolve()
        for seed in seeds:
            if "al" in judges:
                todo[f"al@seed{seed}"] = partial(
                    al_uas, model, fold, seed, out / "compare" / name / fold.name
                )
            if "finetune" in judges:
                todo[f"finetune@seed{seed}"] = partial(finetuned, model, fold, seed, tuned)
        return todo

    def tapt(name: str, config: Any, fold: Any, tapt_dir: Path) -> dict[str, Any]:
        """TAPT of `fold` (unless its model is there): its time, loss and accuracy."""
        if not (tapt_dir / DONE_FILE).is_file():
            print(f"{name}: {fold.name}: TAPT", flush=True)
            run_tapt(manifest, fold, backbone, tapt_dir, config, progress=False)
        log = [json.loads(line) for line in (tapt_dir / LOG_FILE).read_text().splitlines()]
        return {
            "tapt_seconds": round(
                json.loads((tapt_dir / DONE_FILE).read_text())["final"]["seconds"]
            ),
            "loss": [round(log[0]["loss"], 3), round(log[-1]["loss"], 3)],
            "masked_accuracy": [
                round(log[0].get("masked_accuracy", float("nan")), 3),
                round(log[-1].get("masked_accuracy", float("nan")), 3),
            ],
        }

    settings = {
        "frozen": frozen.read_by(["features"]),
        "finetune": finetune.read_by(["transformers"]),
        "al": dataclasses.asdict(al),
    }
    plain: dict[str, dict[str, Any]] = {}
    for fold in folds:
        plain[fold.name] = judged(
            out / "judged" / "plain" / f"{fold.name}.json",
            settings,
            judge(backbone, fold, "plain"),
        )

    report: dict[str, Any] = {
        "benchmark": "tapt_whisper",
        "backbone": backbone,
        "corpus": f"EmoDB ({len(manifest)} clips, {len(manifest.speakers)} speakers)",
        "protocol": f"LOSO, {len(folds)} folds ({', '.join(f.name for f in folds)}), one dev "
        f"speaker per fold, seeds {seeds}; one TAPT run per fold and variant",
        "tapt": {
            "objective": "masked prediction of k-means ids (middle layer, 100 clusters)",
            "steps": base.steps,
            "lr": base.lr,
            "batch": base.batch_size,
            "crop_seconds": base.max_seconds,
            "mask_prob": base.mask_prob,
            "mask_length": base.mask_length,
        },
        "judges": judges,
        "control": args.control,
        "finetune": "the default recipe (TrainConfig()), the best dev epoch kept",
        "variants": {},
    }

    def against(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        """Judgements `a` minus `b` (fold -> judged), paired by fold (and seed), per judge."""
        cells = {
            f"frozen probe, layer {k} (one run per fold)": lambda j, k=k: [j[f"probe@{k}"]]
            for k in layers
        }
        if "al" in judges:
            for strategy in ("entropy", "random"):
                cells[f"active learning at 20%, {strategy} (fold x seed)"] = (
                    lambda j, strategy=strategy: [j[f"al@seed{s}"][strategy] for s in seeds]
                )
        if "finetune" in judges:
            cells["fine-tuned, all labels (fold x seed)"] = lambda j: [
                j[f"finetune@seed{s}"] for s in seeds
            ]
        return {
            what: paired([x for f in a for x in get(a[f])], [x for f in a for x in get(b[f])])
            for what, get in cells.items()
        }

    judged_by: dict[str, dict[str, Any]] = {}
    if args.control and args.control not in variants:
        p.error(f"--control {args.control!r} is not among --variants")
    for name, changes in sorted(variants.items(), key=lambda v: v[0] != args.control):
        config = dataclasses.replace(base, **changes)
        with_tapt: dict[str, dict[str, Any]] = {}
        per_fold: dict[str, Any] = {}
        for fold in folds:
            tapt_dir = out / "tapt" / name.replace("/", "_") / fold.name
            made = partial(tapt, name, config, fold, tapt_dir)  # again if the model is gone
            todo = {k: after(made, f) for k, f in judge(str(tapt_dir), fold, name).items()}
            got = judged(
                out / "judged" / name.replace("/", "_") / f"{fold.name}.json",
                {**settings, "tapt": dataclasses.asdict(config)},
                {"tapt": made, **todo},
            )
            with_tapt[fold.name] = got
            per_fold[fold.name] = {
                **got["tapt"],
                **{k: round(v, 4) for k, v in got.items() if k.startswith("probe@")},
            }
            print(json.dumps({name: {fold.name: per_fold[fold.name]}}), flush=True)
        judged_by[name] = with_tapt
        report["variants"][name] = {
            "settings": changes,
            "comparisons": against(with_tapt, plain),
            **(
                {"against_control": against(with_tapt, judged_by[args.control])}
                if args.control in judged_by and name != args.control
                else {}
            ),
            "per_fold": per_fold,
        }
    print(json.dumps(report, indent=2, ensure_ascii=False))


def render(r: dict[str, Any]) -> list[str]:
    """BENCHMARKS.md's section: per TAPT variant, with against without TAPT for every judge, and
    the TAPT of each fold (a result printed before variants existed reads as before)."""
    if "variants" not in r:
        return _render_single(r)
    t = r["tapt"]
    lines = [
        f"{r['corpus']}; {r['protocol']}. TAPT: {t['objective']}, {t['steps']} steps, lr "
        f"{t['lr']}, batch {t['batch']}, crops of {t['crop_seconds']} s, masks "
        f"{t['mask_prob']} x {t['mask_length']} frames; each variant changes the settings it "
        f"names. Fine-tuning: {r['finetune']}. n is starred where so few pairs could never reach "
        "p < 0.05.",
    ]
    control = r.get("control")

    def rows(comparisons: dict[str, Any]) -> list[list[Any]]:
        return [
            [
                what,
                c["plain"],
                c["tapt"],
                c["difference"],
                f"{c['n']}{'*' if c['min_p'] >= 0.05 else ''}",
                c["wilcoxon_p"],
            ]
            for what, c in comparisons.items()
        ]

    for name, v in r["variants"].items():
        folds = [
            [
                fold,
                f["tapt_seconds"],
                f"{f['loss'][0]:.3f} -> {f['loss'][1]:.3f}",
                f"{f['masked_accuracy'][0]:.3f} -> {f['masked_accuracy'][1]:.3f}",
            ]
            for fold, f in v["per_fold"].items()
        ]
        lines += [
            "",
            f"**TAPT variant `{name}`** (test UA %):",
            "",
            *table(
                ["judge", "without TAPT", "with TAPT", "with - without (points)", "n", "p"],
                rows(v["comparisons"]),
            ),
        ]
        if "against_control" in v:
            lines += [
                "",
                f"`{name}` against the control `{control}` (test UA %):",
                "",
                *table(
                    ["judge", "control", name, f"{name} - control (points)", "n", "p"],
                    rows(v["against_control"]),
                ),
            ]
        lines += ["", *table(["fold", "TAPT seconds", "loss", "masked accuracy"], folds)]
    return lines


def _render_single(r: dict[str, Any]) -> list[str]:
    """The section of a result printed before variants existed."""
    t = r["tapt"]
    rows = [
        [name, c["plain"], c["tapt"], c["difference"], c["n"], c["wilcoxon_p"]]
        for name, c in r["comparisons"].items()
    ]
    folds = [
        [
            fold,
            f["tapt_seconds"],
            f"{f['loss_curve'][0][1]:.3f} -> {f['loss_curve'][-1][1]:.3f}",
            f"{f['masked_accuracy'][0]:.3f} -> {f['masked_accuracy'][1]:.3f}",
        ]
        for fold, f in r["per_fold"].items()
    ]
    return [
        f"{r['corpus']}; {r['protocol']}. TAPT: {t['objective']}, {t['steps']} steps, lr "
        f"{t['lr']}, batch {t['batch']}, crops of {t['crop_seconds']} s, masks "
        f"{t['mask_prob']} x {t['mask_length']} frames. Fine-tuning: {r['finetune']}.",
        "",
        *table(
            [
                "test UA %",
                "without TAPT",
                "with TAPT",
                "with - without (points)",
                "n",
                "Wilcoxon p",
            ],
            rows,
        ),
        "",
        "TAPT per fold (loss and masked-frame accuracy, first logged step -> last; the whole "
        "curves are in `bench/results/tapt_whisper.json`):",
        "",
        *table(["fold", "seconds", "loss", "masked accuracy"], folds),
    ]


def headline(r: dict[str, Any]) -> str:
    """README's line: with minus without TAPT, for every comparison of every variant but the
    control."""
    groups = (
        [(n, v) for n, v in r["variants"].items() if n != r.get("control")]
        if "variants" in r
        else [("", {"comparisons": r["comparisons"]})]
    )
    parts = []
    for name, v in groups:
        inner = "; ".join(
            f"{what} {x['difference']} points (p = {x['wilcoxon_p']:.2g})"
            for what, x in v["comparisons"].items()
        )
        parts.append(f"`{name}`: {inner}" if name else inner)
    line = (
        f"- **TAPT of `whisper-tiny.en`** ({r['tapt']['steps']} steps per fold on its "
        f"training audio; {r['protocol']}): with minus without, " + " / ".join(parts) + "."
    )
    if "variants" not in r:  # results of the first shape came from the broken objective
        line += (
            " **Measured with a broken masked-prediction objective (masked frames lost their "
            "positions); not a test of TAPT. The rerun with the fix has not reported yet.**"
        )
    return line


if __name__ == "__main__":
    main()
