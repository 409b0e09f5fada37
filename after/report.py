"""Readable outputs: confusion-matrix plots, cross-validation tables that state their protocol,
and reports of active-learning runs and comparisons (`write_report`).

A report reads run folders of `after run` and folders of `after compare` and writes PNG plots
(learning curves with ± std bands and the all-labels baseline, seconds per round by stage, the
labels queried each round, final-round confusion matrices), `report.md` (the UA table, for papers
and READMEs) and `report.html` (all of it on one self-contained page: images embedded as data
URIs, inline CSS, no script, no external resource), each with the protocol the numbers depend on.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from after.data.manifest import Manifest
from after.errors import AfterError
from after.io import atomic_write_text
from after.loop.folder import RunFolder
from after.loop.state import LoopState
from after.metrics import (
    AUDIT_METHOD,
    classification_scores,
    describe_difference,
    few_pairs_warning,
    format_mean_std,
    mean_std,
    paired_difference,
    summarize,
)


def plot_confusion(scores: dict[str, Any], path: str | os.PathLike[str], title: str = "") -> Path:
    """Save the confusion matrix of `scores` (from `classification_scores`) as a PNG: counts, and
    each row's share as the colour (so large and small classes read alike)."""
    plt = _pyplot()
    cm = np.asarray(scores["confusion"], dtype=float)
    labels = [_plain(x) for x in scores["labels"]]
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.7 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    for i in range(len(labels)):
        for j in range(len(labels)):
            colour = "white" if rows[i, j] > 0.5 else "black"
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", color=colour)
    ua, wa = 100 * scores["ua"], 100 * scores["wa"]
    ax.set_title(f"{_plain(title)}\nUA {ua:.1f}%  WA {wa:.1f}%  (n={scores['num_clips']})".strip())
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the row")
    return _save(fig, Path(path))


def cv_table(runs: Sequence[dict[str, Any]], protocol: dict[str, Any]) -> str:
    """A Markdown report of cross-validation runs: the protocol, one row per fold and seed, and
    mean ± std (sample std over all runs)."""
    lines = [
        f"# {protocol['backbone']} on {protocol['corpus']}",
        "",
        f"- protocol: {protocol['protocol']} ({protocol['num_folds']} folds), "
        f"seeds {', '.join(str(s) for s in protocol['seeds'])}",
        f"- training: {protocol['training']}",
        *(f"- {line}" for line in [tapt_summary(protocol["backbone"])] if line),
        "",
        "| fold | seed | train clips | test clips | UA % | WA % | macro-F1 % | best epoch |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        lines.append(
            f"| {r['fold']} | {r['seed']} | {r['num_train']} | {r['test']['num_clips']} | "
            f"{100 * r['test']['ua']:.2f} | {100 * r['test']['wa']:.2f} | "
            f"{100 * r['test']['macro_f1']:.2f} | {r['best_epoch']} |"
        )
    summary = summarize([r["test"] for r in runs])
    lines += [
        "",
        f"**UA {format_mean_std(summary['ua'])}, WA {format_mean_std(summary['wa'])}, "
        f"macro-F1 {format_mean_std(summary['macro_f1'])}** (mean ± sample std over "
        f"{len(runs)} runs)",
        "",
    ]
    return "\n".join(lines)


# ---- reports of active-learning runs and comparisons ---------------------------------------------

CURVE_FILE = "curve.json"  # marks a folder of `after compare`
# Seconds of a round, in the order they are stacked (see `stage_seconds`).
STAGES = (
    ("train_s", "train"),
    ("eval_s", "evaluate"),
    ("score_s", "score pool"),
    ("select_s", "select"),
)
# Settings that tell runs apart; runs that share them form one group (one curve, one table row).
GROUP_KEYS = ("strategy", "backbone", "cold_start", "schedule")


@dataclass
class ALRun:
    """One run folder of `after run`, read back: its `config.json`, its state and class order."""

    path: Path
    config: dict[str, Any]
    state: LoopState
    classes: list[str]

    def setting(self, key: str) -> str:
        al = self.config["al"]
        return {
            "strategy": al["strategy"].replace("_", "-"),  # as the command line spells it
            "backbone": self.config["backbone"],
            "cold_start": al["cold_start"],
            "schedule": ",".join(al["schedule"]),
        }[key]


@dataclass
class ReportInputs:
    """Runs to report, the all-labels results of compare folders (backbone -> records with
    `test_ua`, `test_wa`), and the corpora they come from."""

    runs: list[ALRun]
    full: dict[str, list[dict[str, Any]]]
    corpora: set[str]


def all_labels_record(record: dict[str, Any]) -> dict[str, Any]:
    """An all-labels result in the form reports read (fold, seed, test_ua, test_wa,
    test_confusion, seconds), from `fit_and_test`'s record or from the flat record that
    comparisons made before they used it."""
    if "test" not in record:
        return record
    test = record["test"]
    return {
        "fold": record["fold"],
        "seed": record["seed"],
        "test_ua": test["ua"],
        "test_wa": test["wa"],
        "test_confusion": test["confusion"],
        "seconds": record["seconds"],
        "backbone": record["backbone"],
    }


def read_report_inputs(dirs: Sequence[str | os.PathLike[str]]) -> ReportInputs:
    """Read run folders of `after run` (config.json + state.json) and folders of `after compare`
    (curve.json, its runs under runs/FOLD/STRATEGY_seedN/); `AfterError` naming any other."""
    runs: dict[Path, ALRun] = {}
    full: dict[str, list[dict[str, Any]]] = {}
    corpora: set[str] = set()
    for d in map(Path, dirs):
        if RunFolder(d).is_run():
            run = _read_run(d)
            runs[d.resolve()] = run
            corpora |= _corpora(run.config["manifest"])
        elif (d / CURVE_FILE).is_file():
            protocol = json.loads((d / CURVE_FILE).read_text())["protocol"]
            corpora.add(protocol["corpus"])
            for state in sorted(d.glob(f"runs/*/*/{RunFolder('').state.name}")):
                runs[state.parent.resolve()] = _read_run(state.parent)
            results = [
                all_labels_record(json.loads(p.read_text())) for p in sorted(d.glob("full/*.json"))
            ]
            full.setdefault(protocol["backbone"], []).extend(results)
        else:
            what = "no such folder" if not d.is_dir() else "not a run folder"
            raise AfterError(
                f"{d}: {what}; give run folders of after run (config.json + state.json) or "
                f"folders of after compare ({CURVE_FILE})"
            )
    done = [r for r in runs.values() if r.state.rounds]
    if not done:
        raise AfterError(
            f"{', '.join(map(str, dirs))}: no run has finished a round yet; report after the "
            "first round (after run --resume RUN continues a run)"
        )
    return ReportInputs(done, {k: v for k, v in full.items() if v}, corpora)


def _read_run(folder: Path) -> ALRun:
    config = json.loads(RunFolder(folder).config.read_text())
    state = LoopState.load(folder)
    info = RunFolder(folder).model / "after_model.json"
    if info.is_file():  # the class order of the confusion matrices
        classes = json.loads(info.read_text())["labels"]
    else:
        try:
            classes = Manifest.from_jsonl(config["manifest"]).labels
        except AfterError:
            raise AfterError(
                f"{folder}: neither {info} nor the manifest {config['manifest']} is readable, so "
                "the class order is unknown; restore one of them"
            ) from None
    return ALRun(folder, config, state, list(classes))


def _corpora(manifest_path: str) -> set[str]:
    try:
        return {u.corpus for u in Manifest.from_jsonl(manifest_path)}
    except AfterError:
        return set()  # the protocol box then says the corpus is unknown


def group_runs(runs: Sequence[ALRun]) -> dict[str, list[ALRun]]:
    """Runs grouped by their settings (`GROUP_KEYS`); a group is named by its strategy and by
    whichever other settings vary across the runs."""
    varying = [k for k in GROUP_KEYS[1:] if len({r.setting(k) for r in runs}) > 1]
    groups: dict[str, list[ALRun]] = {}
    for r in runs:
        extra = ", ".join(r.setting(k) for k in varying)
        groups.setdefault(r.setting("strategy") + (f" ({extra})" if extra else ""), []).append(r)
    return groups


def curve_points(runs: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, dict[str, float]]]:
    """Mean ± std over runs of each round's labeled fraction, test UA and test WA (for runs
    without a test split: audit UA and accuracy, under the same keys; see `has_test`), given
    each run's round records; a run that stopped early shortens the curve to its length. A
    round without the figure (no audit label yet) is left out of the mean; with none, NaN."""
    num_rounds = min(len(r) for r in runs)
    test = all(has_test(r) for r in runs)
    keys = {"fraction": "fraction", "test_ua": "test_ua", "test_wa": "test_wa"}
    if not test:
        keys.update(test_ua="audit_ua", test_wa="audit_acc")

    def summary(values: list[Any]) -> dict[str, float]:
        found = [v for v in values if v is not None]
        return mean_std(found) if found else {"mean": float("nan"), "std": 0.0, "n": 0}

    return [
        {k: summary([r[i].get(key) for r in runs]) for k, key in keys.items()}
        for i in range(num_rounds)
    ]


def has_test(rounds: Sequence[dict[str, Any]]) -> bool:
    """Whether a run's rounds were tested on a test split (a run without folds has none: its
    figures are the audit estimates)."""
    return bool(rounds) and "test_ua" in rounds[0]


def audit_cell(record: dict[str, Any]) -> str:
    """One round's audit UA for a table: "50.0 [35.9-64.0] (n=40)", in percent."""
    if not record.get("audit_n"):
        return "-"
    return (
        f"{100 * record['audit_ua']:.1f} [{100 * record['audit_ua_lo']:.1f}-"
        f"{100 * record['audit_ua_hi']:.1f}] (n={record['audit_n']})"
    )


def queried_labels(run: ALRun) -> np.ndarray:
    """Clips labeled in each finished round, per class: (num_rounds, num_classes) counts."""
    counts = np.zeros((len(run.state.rounds), len(run.classes)))
    column = {c: k for k, c in enumerate(run.classes)}
    for clip, r in run.state.labeled.items():
        if 0 <= r < len(counts):  # not carried from another run, nor for an untrained round
            counts[r, column[run.state.labels[clip]]] += 1
    return counts


def final_confusion(runs: Sequence[ALRun]) -> dict[str, Any] | None:
    """Scores of the final rounds' test confusion matrices, summed over `runs` (None when a run
    predates recording them)."""
    key = "test_confusion" if all(has_test(r.state.rounds) for r in runs) else "audit_confusion"
    matrices = [r.state.rounds[-1].get(key) for r in runs]
    if any(m is None for m in matrices):
        return None
    cm = np.sum(np.asarray(matrices, dtype=np.int64), axis=0)
    truth, pred = np.indices(cm.shape).reshape(2, -1)
    counts = cm.ravel()
    return classification_scores(
        np.repeat(truth, counts).tolist(), np.repeat(pred, counts).tolist(), runs[0].classes
    )


def report_protocol(inputs: ReportInputs) -> dict[str, str]:
    """What every number of the report depends on, from the runs' config.json files."""
    runs = inputs.runs

    def distinct(values: Iterable[Any]) -> str:
        return ", ".join(map(str, sorted(set(values))))

    pools = distinct(
        round(r.state.rounds[0]["num_labeled"] / r.state.rounds[0]["fraction"]) for r in runs
    )
    return {
        "corpus": distinct(inputs.corpora) or "unknown (manifest not readable)",
        "manifest": distinct(r.config["manifest"] for r in runs),
        "folds": distinct(r.config["fold"] for r in runs),
        "seeds": distinct(r.config["al"]["seed"] for r in runs),
        "backbone": distinct(r.setting("backbone") for r in runs),
        "strategy": distinct(r.setting("strategy") for r in runs),
        "budget schedule": f"{distinct(r.setting('schedule') for r in runs)} (pool: {pools} clips)",
        "cold start": distinct(r.setting("cold_start") for r in runs),
        "training": distinct(
            _describe_training(r.setting("backbone"), r.config["train"]) for r in runs
        ),
        **(
            {"TAPT": "; ".join(lines)}
            if (lines := sorted({t for r in runs if (t := tapt_summary(r.setting("backbone")))}))
            else {}
        ),
        **(
            {
                "final model": f"{distinct(f['model'] for f in finals)} (the hybrid recipe; every "
                "figure above comes from the selection learner): test UA "
                + format_mean_std(mean_std([f["test_ua"] for f in finals]), digits=1)
            }
            if (finals := [r.state.final for r in runs if r.state.final])
            else {}
        ),
        **(
            {
                "audit": f"{distinct(len(r.state.audit) for r in runs)} clips drawn at random "
                "from the pool at the start (by speaker where speakers are known), labeled with "
                "round 0's queries and never trained on or selected; " + AUDIT_METHOD
            }
            if any(r.state.audit for r in runs)
            else {}
        ),
        **(
            {
                "test": "none: "
                + ", ".join(sorted(str(r.path) for r in untested))
                + " have no test split; their figures are audit estimates"
            }
            if (untested := [r for r in runs if not has_test(r.state.rounds)])
            else {}
        ),
        "runs": f"{len(runs)}; mean ± sample std over runs (folds x seeds)",
    }


def _describe_training(backbone: str, train: dict[str, Any]) -> str:
    from after.train import describe_training

    return describe_training(backbone, train)


def ua_table(
    groups: dict[str, list[ALRun]], full: dict[str, list[dict[str, Any]]]
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of test UA (%) per group and budget, and of all labels per backbone; each
    row names its number of runs."""
    budgets = list(
        dict.fromkeys(b for runs in groups.values() for b in runs[0].config["al"]["schedule"])
    )
    rows = []
    for name, runs in groups.items():
        points = curve_points([r.state.rounds for r in runs])
        schedule = runs[0].config["al"]["schedule"]
        if len(runs) == 1 and not has_test(runs[0].state.rounds):  # its audit estimates
            cells = dict(zip(schedule, map(audit_cell, runs[0].state.rounds), strict=False))
        else:
            cells = {
                b: format_mean_std(p["test_ua"], digits=1, with_n=False)
                for b, p in zip(schedule, points, strict=False)
            }
        rows.append([f"{name} (n={len(runs)})", *(cells.get(b, "-") for b in budgets), "-"])
    for backbone, results in full.items():
        ua = format_mean_std(mean_std([r["test_ua"] for r in results]), digits=1, with_n=False)
        name = f"all labels, {backbone} (n={len(results)})"
        rows.append([name, *("-" for _ in budgets), ua])
    return ["strategy", *map(budget_name, budgets), "all labels"], rows


def vs_random_table(
    groups: dict[str, list[ALRun]],
) -> tuple[list[str], list[list[str]]] | None:
    """Header and rows of each group's test UA minus random's, paired by (fold, seed), per
    budget: "+2.1 (p=0.03, n=30)" with the two-sided Wilcoxon signed-rank p; None without a
    random group to compare with. A group is paired with the random group of its other
    settings ("random (X)" for "entropy (X)")."""
    rows = []
    budgets: list[str] = []
    for name, runs in groups.items():
        strategy, _, extra = name.partition(" ")
        base = groups.get("random" + (f" {extra}" if extra else ""))
        tested = all(has_test(r.state.rounds) for r in [*runs, *(base or [])])
        if strategy == "random" or base is None or not tested:
            continue
        by_key = {(r.config["fold"], r.config["al"]["seed"]): r.state.rounds for r in base}
        pairs = [
            (r.state.rounds, by_key[key])
            for r in runs
            if (key := (r.config["fold"], r.config["al"]["seed"])) in by_key
        ]
        schedule = runs[0].config["al"]["schedule"]
        budgets = list(dict.fromkeys([*budgets, *schedule]))
        cells = {}
        for k, budget in enumerate(schedule):
            reached = [
                (a[k]["test_ua"], b[k]["test_ua"]) for a, b in pairs if min(len(a), len(b)) > k
            ]
            if len(reached) >= 2:
                ours, theirs = zip(*reached, strict=True)
                cells[budget] = describe_difference(paired_difference(ours, theirs))
        rows.append([name, *(cells.get(b, "-") for b in budgets)])
    if not rows:
        return None
    rows = [row + ["-"] * (len(budgets) + 1 - len(row)) for row in rows]
    return ["minus random", *map(budget_name, budgets)], rows


def budget_name(budget: str) -> str:
    """ "0.05" -> "5%"; "5%", counts ("40") and minutes ("5min") stay as they are."""
    return f"{100 * float(budget):g}%" if "." in budget and budget[-1].isdigit() else budget


def markdown_table(protocol: dict[str, str], header: list[str], rows: list[list[str]]) -> str:
    """The UA table in Markdown, under a line stating its protocol (for papers and READMEs)."""
    audit = (
        " A run without a test split shows its audit estimate: UA [95% CI] (n: audit labels)."
        if "test" in protocol
        else ""
    )
    lines = [
        f"Test UA (%), mean ± sample std over n runs (one run: its value).{audit} Corpus "
        f"{protocol['corpus']}; folds {protocol['folds']}; seeds {protocol['seeds']}; backbone "
        f"{protocol['backbone']}; cold start {protocol['cold start']}; label budgets in % of the "
        "pool or in clips.",
        "",
        "| " + " | ".join(header) + " |",
        "| --- | " + " | ".join("---:" for _ in header[1:]) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    return "\n".join(lines) + "\n"


def plot_curves(
    groups: dict[str, list[ALRun]], full: dict[str, list[dict[str, Any]]], path: Path
) -> Path:
    """Test UA and WA against the labeled share of the pool: mean and a ± std band per group, and
    all labels as a dashed line with its band."""
    from matplotlib.patches import Patch

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    if ua_equals_wa(groups, full):
        fig.suptitle(UA_EQUALS_WA, fontsize=9)
    for ax, metric in zip(axes, ("test_ua", "test_wa"), strict=True):
        for name, runs in groups.items():
            points = curve_points([r.state.rounds for r in runs])
            x = np.array([100 * p["fraction"]["mean"] for p in points])
            y = np.array([100 * p[metric]["mean"] for p in points])
            lo, hi = (
                y - [100 * p[metric]["std"] for p in points],
                y + [100 * p[metric]["std"] for p in points],
            )
            label = f"{name} (n={len(runs)})"
            if len(runs) == 1 and not has_test(runs[0].state.rounds):  # the audit's interval
                key = "audit_ua" if metric == "test_ua" else "audit_acc"
                rounds = runs[0].state.rounds[: len(points)]
                lo = np.array([100 * r.get(f"{key}_lo", np.nan) for r in rounds])
                hi = np.array([100 * r.get(f"{key}_hi", np.nan) for r in rounds])
                label = f"{name}: audit estimate, band 95% CI"
            (line,) = ax.plot(x, y, marker="o", label=_plain(label))
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
        for style, (backbone, results) in zip(("--", ":", "-."), full.items(), strict=False):
            ms = mean_std([r[metric] for r in results])
            mean, std = 100 * ms["mean"], 100 * ms["std"]
            label = _plain(f"all labels, {backbone} (n={ms['n']})")
            ax.axhline(mean, color="black", ls=style, label=label)
            ax.axhspan(mean - std, mean + std, color="grey", alpha=0.12)
        ax.set_xlabel("labeled share of the pool (%)")
        name = "UA" if metric == "test_ua" else "WA (accuracy)"
        audited = not all(has_test(r.state.rounds) for runs in groups.values() for r in runs)
        ax.set_ylabel(f"{name} (%): test, or audit estimate" if audited else f"test {name} (%)")
        ax.grid(alpha=0.3)
    handles, _ = axes[0].get_legend_handles_labels()
    spread = full or any(
        len(runs) > 1 or has_test(runs[0].state.rounds) for runs in groups.values()
    )
    band = [Patch(color="grey", alpha=0.25, label=BAND)] if spread else []
    axes[0].legend(handles=[*handles, *band], fontsize=8)
    return _save(fig, path)


BAND = "band: ± 1 sample std over the runs (folds x seeds)"
AUDIT_NOTE = (
    "A run without a test split shows its audit estimate: UA on the audit clips people labeled, "
    "[95% confidence interval], (n: how many audit labels back it)."
)
UA_EQUALS_WA = (
    "UA and WA are equal in every run here, as they are when each test set holds equally many "
    "clips of every class (UA, the mean per-class recall, is then the accuracy, WA)"
)


def ua_equals_wa(groups: dict[str, list[ALRun]], full: dict[str, list[dict[str, Any]]]) -> bool:
    """Whether every run's test UA equals its test WA (balanced test sets): the two panels of
    the learning curves are then the same, which a reader should be told."""
    values = [
        (r["test_ua"], r["test_wa"])
        for runs in groups.values()
        for x in runs
        for r in x.state.rounds
        if "test_ua" in r
    ]
    values += [(r["test_ua"], r["test_wa"]) for results in full.values() for r in results]
    return bool(values) and all(abs(ua - wa) < 1e-9 for ua, wa in values)


def plot_timings(groups: dict[str, list[ALRun]], path: Path) -> Path:
    """Seconds per round (mean over a group's runs), stacked by stage (`STAGES`). A round's
    select time is choosing the clips it trains on: for round 0, the cold start."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(groups), figsize=(1 + 4 * len(groups), 3.6), sharey=True, squeeze=False
    )
    for ax, (name, runs) in zip(axes[0], groups.items(), strict=True):
        num_rounds = min(len(r.state.rounds) for r in runs)
        bottom = np.zeros(num_rounds)
        for key, label in STAGES:
            seconds = np.mean(
                [[stage_seconds(r.state.rounds[i], key) for i in range(num_rounds)] for r in runs],
                axis=0,
            )
            ax.bar(range(num_rounds), seconds, bottom=bottom, label=label)
            bottom += seconds
        ax.set_title(_plain(f"{name} (n={len(runs)})"))
        ax.set_xlabel("round (select in round 0: the cold start)")
        ax.set_xticks(range(num_rounds))
    axes[0, 0].set_ylabel("seconds (mean over runs)")
    axes[0, -1].legend(fontsize=8)
    return _save(fig, path)


def stage_seconds(record: dict[str, Any], key: str) -> float:
    """Seconds a round spent in stage `key` (`STAGES`). Rounds recorded before `round_s` existed
    counted scoring the pool in `select_s` as well as in `score_s`."""
    if key == "select_s" and "round_s" not in record:
        return max(0.0, record["select_s"] - record["score_s"])
    return float(record[key])


def plot_queried_labels(groups: dict[str, list[ALRun]], path: Path) -> Path:
    """Clips labeled in each round by class (mean over a group's runs), stacked; round 0 is the
    cold start."""
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(groups), figsize=(1 + 4 * len(groups), 3.6), sharey=True, squeeze=False
    )
    for ax, (name, runs) in zip(axes[0], groups.items(), strict=True):
        num_rounds = min(len(r.state.rounds) for r in runs)
        counts = np.mean([queried_labels(r)[:num_rounds] for r in runs], axis=0)
        bottom = np.zeros(num_rounds)
        for k, label in enumerate(runs[0].classes):
            ax.bar(range(num_rounds), counts[:, k], bottom=bottom, label=_plain(label))
            bottom += counts[:, k]
        ax.set_title(_plain(f"{name} (n={len(runs)})"))
        ax.set_xlabel("round (0: cold start)")
        ax.set_xticks(range(num_rounds))
    axes[0, 0].set_ylabel("clips labeled (mean over runs)")
    axes[0, -1].legend(fontsize=8)
    return _save(fig, path)


Section = tuple[str, str, "Path | None"]  # title, text, an optional figure


def write_report(
    dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    sections: Sequence[Section] = (),
) -> dict[str, Path]:
    """Write the report of run and compare folders `dirs` into `out_dir` (default: the first
    folder's report/): PNG plots, `report.md` (the UA table) and `report.html` (everything, images
    embedded, no external resources). `sections` (title, text, figure or None) come first, after
    the protocol: what the caller knows beyond the runs (the demo's verdict in plain words, its
    TAPT check). Returns the written files by name."""
    inputs = read_report_inputs(dirs)
    out = Path(out_dir) if out_dir is not None else Path(dirs[0]) / "report"
    groups = group_runs(inputs.runs)
    protocol = report_protocol(inputs)
    header, rows = ua_table(groups, inputs.full)
    paired = vs_random_table(groups)
    curves_note = f"Lines: mean over the runs; {BAND}."
    if ua_equals_wa(groups, inputs.full):
        curves_note += f" {UA_EQUALS_WA}."
    figures = {
        "Learning curves (test UA and WA)": plot_curves(groups, inputs.full, out / "curves.png"),
        "Time per round": plot_timings(groups, out / "time_per_round.png"),
        "Labels queried per round": plot_queried_labels(groups, out / "queried_labels.png"),
    }
    captions = {
        "Learning curves (test UA and WA)": curves_note,
        "Time per round": "Seconds per round, mean over the runs: train, evaluate, score the "
        "pool, select (round 0's select: the cold start).",
    }
    tapt = {b: d for b in {r.setting("backbone") for r in inputs.runs} if (d := tapt_info(b))}
    if tapt:
        figures["Task-adaptive pre-training (TAPT)"] = plot_tapt(tapt, out / "tapt_loss.png")
        captions["Task-adaptive pre-training (TAPT)"] = " ".join(
            f"{tapt_summary(b)}." for b in sorted(tapt)
        )
    for name, runs in groups.items():
        scores = final_confusion(runs)
        if scores is not None:
            slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
            title = f"{name}: final round, {len(runs)} run(s) pooled"
            figures[f"Confusion matrix: {name}"] = plot_confusion(
                scores, out / f"confusion_{slug}.png", title
            )
    lead = "".join(f"## {title}\n\n{text}\n\n" for title, text, _ in sections)
    files = {
        "markdown": atomic_write_text(
            out / "report.md",
            lead + markdown_table(protocol, header, rows) + _paired_markdown(paired),
        ),
        "html": atomic_write_text(
            out / "report.html",
            _html(
                protocol,
                header,
                rows,
                figures,
                captions,
                [str(d) for d in dirs],
                paired,
                sections=sections,
            ),
        ),
    }
    extra = {fig.stem: fig for _, _, fig in sections if fig is not None}
    return {**files, **{p.stem: p for p in figures.values()}, **extra}


def tapt_info(backbone: str) -> dict[str, Any] | None:
    """What `after tapt` recorded in a backbone folder it wrote (`tapt.json`, and the logged
    steps of `tapt_log.jsonl`), or None for any other backbone."""
    from after.tapt import DONE_FILE, LOG_FILE

    folder = Path(backbone)
    if not (folder / DONE_FILE).is_file():
        return None
    info = json.loads((folder / DONE_FILE).read_text())
    log = folder / LOG_FILE
    lines = log.read_text().splitlines() if log.is_file() else []
    return {**info, "log": [json.loads(x) for x in lines if x.strip()]}


def tapt_summary(backbone: str) -> str | None:
    """One line on the TAPT that made `backbone`, or None when it is not a TAPT output."""
    info = tapt_info(backbone)
    if info is None:
        return None
    log = info["log"]
    loss = f"; loss {log[0]['loss']:.3f} → {log[-1]['loss']:.3f}" if log else ""
    return (
        f"{backbone} is {info['backbone']} after TAPT on the training audio of fold "
        f"{info['fold']} ({info['num_clips']} clips, {info['steps']} steps{loss})"
    )


def plot_tapt(tapt: dict[str, dict[str, Any]], path: Path) -> Path:
    """The self-supervised loss of each TAPT run against its step."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for backbone, info in sorted(tapt.items()):
        steps = [r["step"] for r in info["log"]]
        ax.plot(steps, [r["loss"] for r in info["log"]], label=_plain(backbone))
    ax.set_xlabel("TAPT step")
    ax.set_ylabel("self-supervised loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.protocol { background: #f4f6f8; border: 1px solid #cdd; padding: 0.5em 1em; }
.protocol td, .protocol th { border: none; text-align: left; vertical-align: top; }
img { max-width: 100%; }
"""


PAIRED_NOTE = (
    "Test UA minus random's in points, paired by fold and seed, with its 95% t interval in "
    "brackets; p: two-sided Wilcoxon signed-rank test over the n pairs. n*: too few pairs for "
    "the test ever to reach p < 0.05 (it needs n >= 6); run more folds or seeds before reading "
    "a p there."
)


def paired_warning(paired: tuple[list[str], list[list[str]]] | None) -> str:
    """`few_pairs_warning` for the fewest pairs in a paired table ("" when none is marked)."""
    if paired is None:
        return ""
    counts = [int(m) for row in paired[1] for c in row[1:] if (m := _pairs(c)) is not None]
    return few_pairs_warning(min(counts)) if counts else ""


def _pairs(cell: str) -> str | None:
    match = re.search(r"n=(\d+)", cell)
    return match.group(1) if match else None


def _paired_markdown(paired: tuple[list[str], list[list[str]]] | None) -> str:
    if paired is None:
        return ""
    header, rows = paired
    warning = paired_warning(paired)
    lines = [
        "",
        PAIRED_NOTE + (f" **{warning[0].upper()}{warning[1:]}.**" if warning else ""),
        "",
        "| " + " | ".join(header) + " |",
        "| --- | " + " | ".join("---:" for _ in header[1:]) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    return "\n".join(lines) + "\n"


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    e = html.escape
    out = "<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
    return out + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows)


def _html(
    protocol: dict[str, str],
    header: list[str],
    rows: list[list[str]],
    figures: dict[str, Path],
    captions: dict[str, str],
    sources: list[str],
    paired: tuple[list[str], list[list[str]]] | None = None,
    *,
    sections: Sequence[Section] = (),
) -> str:
    e = html.escape
    lead = "".join(
        f"<h2>{e(title)}</h2><p>{e(text)}</p>"
        + (
            f'<img alt="{e(title)}" src="data:image/png;base64,'
            f'{base64.b64encode(fig.read_bytes()).decode("ascii")}">'
            if fig is not None
            else ""
        )
        for title, text, fig in sections
    )
    facts = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in protocol.items())
    table = _html_table(header, rows)
    if paired is not None:
        warning = paired_warning(paired)
        strong = f" <strong>{e(warning[0].upper() + warning[1:])}.</strong>" if warning else ""
        table += (
            f"</table><h2>Against random</h2><p>{e(PAIRED_NOTE)}{strong}</p>"
            f"<table>{_html_table(*paired)}"
        )
    images = "".join(
        f'<h2>{e(title)}</h2><img alt="{e(title)}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode("ascii")}">'
        + (f"<p>{e(captions[title])}</p>" if title in captions else "")
        for title, path in figures.items()
    )
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>after report</title><style>{_CSS}</style></head><body>"
        f"<h1>Active-learning report</h1><p>From {e(', '.join(sources))}.</p>"
        f'<div class="protocol"><h2>Protocol</h2><table>{facts}</table></div>{lead}'
        f"<h2>{'UA' if 'test' in protocol else 'Test UA'} (%) by label budget</h2>"
        + (f"<p>{e(AUDIT_NOTE)}</p>" if "test" in protocol else "")
        + f"<table>{table}</table>{images}</body></html>\n"
    )


def _plain(text: str) -> str:
    """`text` as matplotlib shows it literally: a label, name or path with two `$` would be read
    as mathtext (`$\\nope$` fails to render and aborts the plot)."""
    return str(text).replace("$", r"\$")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path
