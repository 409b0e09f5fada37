"""Compare strategies: every strategy x seed x fold on the same schedule, plus fine-tuning on all
labels, summarised as learning curves (mean ± std of test UA per budget), the area under each
UA curve, each run's time relative to full-data fine-tuning, and each class's test recall at the
last budget and with all labels.

Every run is its own resumable run folder, and every full-data result its own JSON file, so a
stopped comparison resumes where it stopped.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from after.config import CLUSTERING_COLD_STARTS, ALConfig, TrainConfig
from after.data.folds import Fold
from after.data.manifest import Manifest
from after.io import atomic_write_json, atomic_write_text, read_json
from after.loop.folder import RunFolder
from after.loop.runner import (
    Run,
    check_run,
    check_same_settings,
    run_loop,
    start_run,
)
from after.loop.state import LoopState
from after.metrics import (
    describe_difference,
    few_pairs_warning,
    format_mean_std,
    mean_std,
    paired_difference,
)
from after.progress import progress_bar
from after.report import all_labels_record, budget_name, curve_points
from after.strategies.cold_start import cold_start_features

if TYPE_CHECKING:
    from after.train import FitResult


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
    on_fit: Callable[[FitResult, dict[str, Any]], None] | None = None,
    on_round: Callable[[Run, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run everything missing in `out_dir`, then write `curve.csv`, `curve.json` and
    `summary.md` there; returns the summary. The all-labels fits are
    `after.experiments.fit_and_test_folds`' records in `out_dir/full` (trained as the rounds
    are: no epoch picked on dev labels); each run is a run folder under `out_dir/runs`.
    `progress` shows bars for the feature caches and for every fine-tuning. `on_fit` gets each
    new all-labels fit and its record; `on_round` each new round of a run, with the run."""
    out = Path(out_dir)

    def make_run(fold: Fold, strategy: str, seed: int) -> Run:
        return Run(
            manifest,
            manifest_path,
            folds_path,
            fold,
            backbone,
            ALConfig(**{**al.to_dict(), "strategy": strategy, "seed": seed}),
            TrainConfig(**{**train.to_dict(), "seed": seed}),
            out / "runs" / fold.name / f"{strategy}_seed{seed}",
            cache_dir,
        )

    # Settings a run cannot work with are refused now, not after hours of the others.
    warnings = {w for f in folds for s in strategies for w in check_run(make_run(f, s, seeds[0]))}
    for warning in sorted(warnings):
        log(f"warning: {warning}")
    runs: dict[str, list[list[dict[str, Any]]]] = {s: [] for s in strategies}
    run_seconds: dict[str, list[float]] = {s: [] for s in strategies}
    full: list[dict[str, Any]] = []
    with progress_bar(progress) as bar:
        _warm_caches(manifest, folds, backbone, al, train, cache_dir, bar)
        per_seed = 1 + len(strategies) * len(al.schedule)
        task = bar.add_task("fine-tunings", total=len(folds) * len(seeds) * per_seed, info="")
        for fold in folds:
            for seed in seeds:
                bar.update(task, info=f"{fold.name} seed {seed} all labels")
                full.append(
                    _all_labels(manifest, fold, seed, backbone, train, out, cache_dir, log, on_fit)
                )
                bar.advance(task)
                for strategy in strategies:
                    bar.update(task, info=f"{fold.name} seed {seed} {strategy}")
                    run = make_run(fold, strategy, seed)
                    state = _finish_run(run, log, lambda n: bar.advance(task, n), on_round)
                    runs[strategy].append(state.rounds)
                    run_seconds[strategy].append(sum(map(_round_seconds, state.rounds)))
    summary = _summarise(runs, run_seconds, full, al.schedule)
    summary["per_class_recall"] = _per_class_recall(runs, full, manifest.labels)
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


def _all_labels(
    manifest: Manifest,
    fold: Fold,
    seed: int,
    backbone: str,
    train: TrainConfig,
    out: Path,
    cache_dir: str | None,
    log: Callable[[str], None],
    on_fit: Callable[[FitResult, dict[str, Any]], None] | None,
) -> dict[str, Any]:
    """Fine-tuning on all labels of `fold` (reused when done), as the rounds train: no epoch
    picked on dev labels. Returns its record in the form reports read (`all_labels_record`)."""
    from after.experiments import fit_and_test_folds

    config = TrainConfig(**{**train.to_dict(), "select_on_dev": False})
    fitted: list[dict[str, Any]] = []

    def new_fit(result: FitResult, record: dict[str, Any]) -> None:
        fitted.append(record)
        if on_fit is not None:
            on_fit(result, record)

    record = fit_and_test_folds(
        manifest,
        [fold],
        [seed],
        backbone,
        config,
        out / "full",
        cache_dir=cache_dir,
        on_fit=new_fit,
    )[0]
    flat = all_labels_record(record)
    if fitted:
        log(f"{fold.name} seed {seed}: all labels, test UA {100 * flat['test_ua']:.1f}%")
    return flat


def _finish_run(
    run: Run,
    log: Callable[[str], None],
    advance: Callable[[int], None],
    on_round: Callable[[Run, dict[str, Any]], None] | None,
) -> LoopState:
    """Start or continue one run of the comparison (a folder made with other settings is
    refused) and take it to its end; `advance` counts its rounds."""
    folder = RunFolder(run.run_dir)
    if folder.config.is_file():
        check_same_settings(
            run.run_dir, read_json(folder.config, "delete the folder"), run.settings()
        )
    state = LoopState.load(run.run_dir) if folder.state.is_file() else start_run(run)
    advance(len(state.rounds))
    if state.phase != "done":

        def done(record: dict[str, Any]) -> None:
            advance(1)
            if on_round is not None:
                on_round(run, record)

        state = run_loop(run, state, on_round=done)
        last = state.rounds[-1]
        log(
            f"{run.fold.name} seed {run.al.seed} {run.al.strategy}: test UA "
            f"{100 * last['test_ua']:.1f}% with {last['num_labeled']} labels"
        )
    advance(len(run.al.schedule) - len(state.rounds))  # stopped early
    return state


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
    from after.inference import predict
    from after.models.classifier import new_classifier
    from after.models.features import embed_manifest, is_feature_backbone, load_feature_backbone

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
    if al.cold_start in CLUSTERING_COLD_STARTS:
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
    from after.metrics import mean_interval

    def with_ci(values: list[float]) -> dict[str, Any]:
        return {**mean_std(values), "ci": list(mean_interval(values))}

    full_ua = with_ci([r["test_ua"] for r in full])
    full_wa = with_ci([r["test_wa"] for r in full if "test_wa" in r]) if full else None
    full_s = float(np.mean([r["seconds"] for r in full]))
    curves: dict[str, Any] = {}
    for strategy, per_run in runs.items():
        points = [{"budget": schedule[k], **p} for k, p in enumerate(curve_points(per_run))]
        for k, point in enumerate(points):
            for metric in ("test_ua", "test_wa"):
                point[metric] = with_ci([r[k][metric] for r in per_run])
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
    full_summary: dict[str, Any] = {"test_ua": full_ua, "seconds": full_s}
    if full_wa is not None and full_wa["n"]:
        full_summary["test_wa"] = full_wa
    return {"full": full_summary, "strategies": curves}


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


def _round_seconds(record: dict[str, Any]) -> float:
    """A round's seconds (rounds recorded before `round_s` counted scoring inside select_s)."""
    if "round_s" in record:
        return float(record["round_s"])
    return float(record["train_s"] + record["eval_s"] + record["select_s"])


def _per_class_recall(
    runs: dict[str, list[list[dict[str, Any]]]],
    full: list[dict[str, Any]],
    labels: Sequence[str],
) -> dict[str, dict[str, dict[str, float]]]:
    """Test recall of each class (mean ± std over the runs): per strategy at its runs' last
    round, and with all labels ("all labels"; results made before confusion matrices were kept
    are left out)."""
    matrices = {s: [r[-1]["test_confusion"] for r in per_run] for s, per_run in runs.items()}
    kept = [r["test_confusion"] for r in full if "test_confusion" in r]
    if kept:
        matrices["all labels"] = kept
    out = {}
    for name, found in matrices.items():
        cm = np.asarray(found, dtype=float)  # (runs, C, C)
        recall = np.diagonal(cm, axis1=1, axis2=2) / np.maximum(cm.sum(axis=2), 1)
        out[name] = {label: mean_std(recall[:, k].tolist()) for k, label in enumerate(labels)}
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
    """curve.csv: per strategy and budget, test UA and WA (mean, sample std, and a 95% t
    interval of the mean over the n runs), the labeled share, and the paired difference in UA
    from random (mean, 95% interval, Wilcoxon p, pairs); a last row for all labels."""

    out = io.StringIO()
    w = csv.writer(out)
    head = ["strategy", "budget", "fraction", "n"]
    for metric in ("test_ua", "test_wa"):
        head += [f"{metric}_{k}" for k in ("mean", "std", "ci_lo", "ci_hi")]
    head += ["vs_random_mean", "vs_random_ci_lo", "vs_random_ci_hi", "vs_random_p", "pairs"]
    w.writerow(head)

    def number(value: Any) -> str:
        return "" if value is None or value != value else f"{value:.4f}"

    def cells(values: dict[str, Any] | None) -> list[str]:
        if not values or not values["n"]:
            return ["", "", "", ""]
        lo, hi = values.get("ci", (None, None))
        return [number(values["mean"]), number(values["std"]), number(lo), number(hi)]

    def versus(d: dict[str, Any] | None) -> list[Any]:
        if d is None:
            return ["", "", "", "", ""]
        return [
            number(d["mean"]),
            number(d["ci_lo"]),
            number(d["ci_hi"]),
            f"{d['wilcoxon_p']:.4g}",
            d["n"],
        ]

    for name, c in summary["strategies"].items():
        paired = {d["budget"]: d for d in c.get("vs_random", [])}
        for p in c["points"]:
            w.writerow(
                [
                    name,
                    p["budget"],
                    number(p["fraction"]["mean"]),
                    p["test_ua"]["n"],
                    *cells(p["test_ua"]),
                    *cells(p.get("test_wa")),
                    *versus(paired.get(p["budget"])),
                ]
            )
    full = summary["full"]
    w.writerow(
        [
            "all labels",
            "1.0",
            "1.0000",
            full["test_ua"]["n"],
            *cells(full["test_ua"]),
            *cells(full.get("test_wa")),
            *versus(None),
        ]
    )
    return out.getvalue()


def _markdown(summary: dict[str, Any]) -> str:
    p = summary["protocol"]
    budgets = p["schedule"]
    lines = [
        f"# Label efficiency: {p['backbone']} on {p['corpus']}",
        "",
        f"Folds {', '.join(p['folds'])}; seeds {', '.join(map(str, p['seeds']))}; cold start "
        f"{p['cold_start']}. Test UA in %, mean ± sample std over folds x seeds (one run: its "
        "value); label budgets in % of the pool or in clips. AUC: the area under the test-UA "
        "curve over the labeled share of the pool, divided by the span of shares (the mean UA "
        "over the budgets). Time: an active-learning run's seconds (every round's training, "
        "evaluation, scoring and selection) over those of fine-tuning on all labels.",
        "",
        "| strategy | " + " | ".join(map(budget_name, budgets)) + " | AUC | time vs all labels |",
        "| --- | " + " | ".join("---:" for _ in budgets) + " | ---: | ---: |",
    ]
    for name, c in summary["strategies"].items():
        cells = [format_mean_std(pt["test_ua"], digits=1, with_n=False) for pt in c["points"]]
        cells += ["-"] * (len(budgets) - len(cells))
        lines.append(
            f"| {name.replace('_', '-')} | "
            + " | ".join(cells)
            + f" | {100 * c['auc_ua']['mean']:.1f} | {c['time_vs_full']:.2f}x |"
        )
    full = summary["full"]["test_ua"]
    lines += ["", f"All labels: {format_mean_std(full, digits=1)}.", ""]
    recall = summary.get("per_class_recall")
    if recall:
        labels = list(next(iter(recall.values())))
        lines += [
            "Test recall per class (%) at each strategy's last budget, and with all labels:",
            "",
            "| | " + " | ".join(labels) + " |",
            "| --- | " + " | ".join("---:" for _ in labels) + " |",
            *(
                f"| {name.replace('_', '-')} | "
                + " | ".join(format_mean_std(r[x], digits=1, with_n=False) for x in labels)
                + " |"
                for name, r in recall.items()
            ),
            "",
        ]
    paired = {n: c["vs_random"] for n, c in summary["strategies"].items() if c.get("vs_random")}
    if paired:
        lines += [
            "Against random, paired by fold and seed: mean difference in points [95% t "
            "interval] (two-sided Wilcoxon signed-rank p; *: too few pairs for the test ever to "
            "reach p < 0.05).",
            "",
            "| strategy | " + " | ".join(map(budget_name, budgets)) + " |",
            "| --- | " + " | ".join("---:" for _ in budgets) + " |",
        ]
        for name, points in paired.items():
            by_budget = {pt["budget"]: describe_difference(pt) for pt in points}
            row = " | ".join(by_budget.get(b, "-") for b in budgets)
            lines.append(f"| {name.replace('_', '-')} | {row} |")
        lines.append("")
        fewest = min(pt["n"] for points in paired.values() for pt in points)
        if warning := few_pairs_warning(fewest):
            lines += [f"**{warning[0].upper()}{warning[1:]}.**", ""]
    return "\n".join(lines)
