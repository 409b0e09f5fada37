"""Compare strategies: every strategy x seed x fold on the same schedule, plus fine-tuning on all
labels, summarised as learning curves (mean ± std of test UA per budget), the area under each
UA curve, and each run's time relative to full-data fine-tuning.

Every run is its own resumable run folder, and every full-data result its own JSON file, so a
stopped comparison resumes where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from after.config import ALConfig, TrainConfig
from after.data.folds import Fold
from after.data.manifest import Manifest
from after.errors import AfterError
from after.io import atomic_write_json, atomic_write_text, read_json
from after.loop.runner import CONFIG_FILE, Run, cold_start_features, run_loop, start_run
from after.loop.state import LoopState
from after.metrics import mean_std, paired_difference
from after.progress import progress_bar
from after.report import curve_points


def compare(
    manifest: Manifest,
    manifest_path: str,
    folds_path: str,
    folds: Sequence[Fold],
    backbone: str,
    strategies: Sequence[str],
    seeds: Sequence[int],
    al: ALConfig,
    train: TrainConfig,
    out_dir: str | Path,
    *,
    cache_dir: str | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> dict[str, Any]:
    """Run everything missing in `out_dir`, then write `curve.csv`, `curve.json` and
    `summary.md` there; returns the summary. `progress` shows bars for the feature caches and
    for every fine-tuning (each all-labels run and each round)."""
    from after.train import fit_and_test

    out = Path(out_dir)
    runs: dict[str, list[list[dict[str, Any]]]] = {s: [] for s in strategies}
    run_seconds: dict[str, list[float]] = {s: [] for s in strategies}
    full: list[dict[str, Any]] = []
    with progress_bar(progress) as bar:
        _warm_caches(manifest, folds, backbone, al, train, cache_dir, bar)
        per_seed = 1 + len(strategies) * len(al.schedule)
        task = bar.add_task("fine-tunings", total=len(folds) * len(seeds) * per_seed, info="")
        for fold in folds:
            for seed in seeds:
                path = out / "full" / f"{fold.name}_seed{seed}.json"
                bar.update(task, info=f"{fold.name} seed {seed} all labels")
                # Trained as the active-learning rounds are: no epoch picked on dev labels.
                config = TrainConfig(**{**train.to_dict(), "seed": seed, "select_on_dev": False})
                settings = {"backbone": backbone, "train": config.to_dict()}
                if path.is_file():
                    _same_settings(path, read_json(path, "delete it"), settings)
                else:
                    t0 = time.perf_counter()
                    _, record = fit_and_test(
                        manifest, fold, backbone, config, cache_dir=cache_dir, progress=False
                    )
                    test = record["test"]
                    atomic_write_json(
                        path,
                        {
                            "fold": fold.name,
                            "seed": seed,
                            "test_ua": test["ua"],
                            "test_wa": test["wa"],
                            "seconds": time.perf_counter() - t0,
                            **settings,
                        },
                    )
                    log(f"{fold.name} seed {seed}: all labels, test UA {100 * test['ua']:.1f}%")
                full.append(json.loads(path.read_text()))
                bar.advance(task)
                for strategy in strategies:
                    run_dir = out / "runs" / fold.name / f"{strategy}_seed{seed}"
                    bar.update(task, info=f"{fold.name} seed {seed} {strategy}")
                    cfg = ALConfig(**{**al.to_dict(), "strategy": strategy, "seed": seed})
                    run = Run(
                        manifest,
                        manifest_path,
                        folds_path,
                        fold,
                        backbone,
                        cfg,
                        TrainConfig(**{**train.to_dict(), "seed": seed}),
                        run_dir,
                        cache_dir,
                    )
                    if (run_dir / CONFIG_FILE).is_file():
                        wanted = {k: run.to_json()[k] for k in _RUN_SETTINGS}
                        _same_settings(
                            run_dir, read_json(run_dir / CONFIG_FILE, "delete the folder"), wanted
                        )
                    state = (
                        LoopState.load(run_dir)
                        if (run_dir / "state.json").is_file()
                        else start_run(run)
                    )
                    bar.advance(task, len(state.rounds))
                    if state.phase != "done":
                        state = run_loop(run, state, on_round=lambda _: bar.advance(task))
                        last = state.rounds[-1]
                        log(
                            f"{fold.name} seed {seed} {strategy}: test UA "
                            f"{100 * last['test_ua']:.1f}% with {last['num_labeled']} labels"
                        )
                    bar.advance(task, len(al.schedule) - len(state.rounds))  # stopped early
                    runs[strategy].append(state.rounds)
                    # select_s includes scoring the pool (score_s)
                    run_seconds[strategy].append(
                        sum(r["train_s"] + r["eval_s"] + r["select_s"] for r in state.rounds)
                    )
    summary = _summarise(runs, run_seconds, full, al.schedule)
    summary["protocol"] = {
        "corpus": ", ".join(sorted({u.corpus for u in manifest})),
        "folds": [f.name for f in folds],
        "seeds": list(seeds),
        "backbone": backbone,
        "schedule": list(al.schedule),
        "cold_start": al.cold_start,
    }
    atomic_write_json(out / "curve.json", summary)
    atomic_write_text(out / "curve.csv", _curve_csv(summary))
    atomic_write_text(out / "summary.md", _markdown(summary))
    return summary


# What makes a run folder (or an all-labels result) the one asked for; paths may move.
_RUN_SETTINGS = ("manifest_digest", "fold", "backbone", "al", "train")


def _same_settings(where: Path, found: dict[str, Any], wanted: dict[str, Any]) -> None:
    """`AfterError` if a result `compare` would reuse was made with other settings (else a
    changed option would silently reuse stale runs). Options a result predates are not checked,
    so results of earlier versions stay reusable."""
    wanted = json.loads(json.dumps(wanted))  # tuples as lists, as written
    differ = []
    for key, value in wanted.items():
        if key not in found:
            continue
        if isinstance(value, dict):
            differ += [
                f"{key}.{k}" for k, v in value.items() if k in found[key] and found[key][k] != v
            ]
        elif found[key] != value:
            differ.append(key)
    if differ:
        raise AfterError(
            f"{where}: made with other settings ({', '.join(differ)}); delete it (or the whole "
            "output folder) to run it again with these, or choose another output folder"
        )


def _warm_caches(
    manifest: Manifest,
    folds: Sequence[Fold],
    backbone: str,
    al: ALConfig,
    train: TrainConfig,
    cache_dir: str | None,
    bar: Any,
) -> None:
    """Compute every cached input once before anything is timed, so that no run (active or
    all-labels) is charged for extracting features that the others then reuse."""
    if cache_dir is None:
        return
    from after.models.classifier import new_classifier
    from after.models.features import embed_manifest, is_feature_backbone, load_feature_backbone
    from after.train import predict

    ids = list(dict.fromkeys(i for f in folds for i in (*f.train, *f.dev, *f.test)))
    clips = manifest.subset(ids)

    def embed(name: str) -> None:
        task = bar.add_task(f"features ({name})", total=len(clips), info="")
        embed_manifest(
            load_feature_backbone(name),
            clips,
            cache_dir=cache_dir,
            num_workers=2,
            on_item=lambda: bar.advance(task),
        )

    wanted = {backbone} if is_feature_backbone(backbone) else set()
    if al.cold_start not in ("random", "alps"):
        wanted.add(cold_start_features(backbone))
    for name in sorted(wanted):
        embed(name)
    if (
        not is_feature_backbone(backbone)
        and (train.freeze_cnn or train.freeze_layers)
        and train.cache_cnn
    ):
        predict(
            new_classifier(backbone, manifest.labels),
            manifest,
            ids,
            config=train,
            cache_dir=cache_dir,
        )


def _summarise(
    runs: dict[str, list[list[dict[str, Any]]]],
    run_seconds: dict[str, list[float]],
    full: list[dict[str, Any]],
    schedule: Sequence[str],
) -> dict[str, Any]:
    full_ua = mean_std([r["test_ua"] for r in full])
    full_s = float(np.mean([r["seconds"] for r in full]))
    curves: dict[str, Any] = {}
    for strategy, per_run in runs.items():
        points = [{"budget": schedule[k], **p} for k, p in enumerate(curve_points(per_run))]
        rounds = len(points)  # a run that stopped early shortens the curve
        aucs = [_auc(r[:rounds]) for r in per_run]
        curves[strategy] = {
            "points": points,
            "auc_ua": mean_std(aucs),
            "seconds": mean_std(run_seconds[strategy]),
            "time_vs_full": float(np.mean(run_seconds[strategy])) / full_s,
        }
        if "random" in runs and strategy != "random":
            curves[strategy]["vs_random"] = _vs(per_run, runs["random"], schedule)
    return {"full": {"test_ua": full_ua, "seconds": full_s}, "strategies": curves}


def _vs(
    runs: list[list[dict[str, Any]]], base: list[list[dict[str, Any]]], schedule: Sequence[str]
) -> list[dict[str, Any]]:
    """Per budget, test UA of `runs` minus `base`, paired by (fold, seed): both lists are in the
    loop's (fold, seed) order. A budget that some run did not reach is left out."""
    out = []
    for k, budget in enumerate(schedule):
        if any(len(r) <= k or len(b) <= k for r, b in zip(runs, base, strict=True)):
            break
        ours = [r[k]["test_ua"] for r in runs]
        theirs = [b[k]["test_ua"] for b in base]
        out.append({"budget": budget, **paired_difference(ours, theirs)})
    return out


def _auc(rounds: list[dict[str, Any]]) -> float:
    """Area under the test-UA curve over the labeled fraction, divided by the fraction range
    (so it is a mean UA over the budget span); one round gives its UA."""
    x = np.array([r["fraction"] for r in rounds])
    y = np.array([r["test_ua"] for r in rounds])
    if len(x) < 2 or x[-1] == x[0]:
        return float(y.mean())
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def _curve_csv(summary: dict[str, Any]) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["strategy", "budget", "fraction", "test_ua_mean", "test_ua_std", "n"])
    for name, c in summary["strategies"].items():
        for p in c["points"]:
            ua = p["test_ua"]
            w.writerow(
                [
                    name,
                    p["budget"],
                    f"{p['fraction']['mean']:.4f}",
                    f"{ua['mean']:.4f}",
                    f"{ua['std']:.4f}",
                    ua["n"],
                ]
            )
    full = summary["full"]["test_ua"]
    w.writerow(
        ["all labels", "1.0", "1.0000", f"{full['mean']:.4f}", f"{full['std']:.4f}", full["n"]]
    )
    return out.getvalue()


def _markdown(summary: dict[str, Any]) -> str:
    p = summary["protocol"]
    budgets = p["schedule"]
    lines = [
        f"# Label efficiency: {p['backbone']} on {p['corpus']}",
        "",
        f"Folds {', '.join(p['folds'])}; seeds {', '.join(map(str, p['seeds']))}; cold start "
        f"{p['cold_start']}. Test UA in %, mean ± sample std over folds x seeds. AUC: the area "
        "under the UA curve over the labeled fraction, divided by the fraction's span (a mean UA "
        "over the budgets).",
        "",
        "| strategy | " + " | ".join(budgets) + " | AUC | time vs all labels |",
        "| --- | " + " | ".join("---:" for _ in budgets) + " | ---: | ---: |",
    ]
    for name, c in summary["strategies"].items():
        cells = [
            f"{100 * pt['test_ua']['mean']:.1f} ± {100 * pt['test_ua']['std']:.1f}"
            for pt in c["points"]
        ]
        cells += ["-"] * (len(budgets) - len(cells))
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {100 * c['auc_ua']['mean']:.1f} | {c['time_vs_full']:.2f}x |"
        )
    full = summary["full"]["test_ua"]
    lines += [
        "",
        f"All labels: {100 * full['mean']:.1f} ± {100 * full['std']:.1f} (n={full['n']}).",
        "",
    ]
    paired = {n: c["vs_random"] for n, c in summary["strategies"].items() if c.get("vs_random")}
    if paired:
        lines += [
            "Against random, paired by fold and seed: mean difference in points (two-sided "
            "Wilcoxon signed-rank p).",
            "",
            "| strategy | " + " | ".join(budgets) + " |",
            "| --- | " + " | ".join("---:" for _ in budgets) + " |",
        ]
        for name, points in paired.items():
            by_budget = {
                pt["budget"]: f"{100 * pt['mean']:+.1f} (p={pt['wilcoxon_p']:.2g})" for pt in points
            }
            lines.append(f"| {name} | " + " | ".join(by_budget.get(b, "-") for b in budgets) + " |")
        lines.append("")
    return "\n".join(lines)
