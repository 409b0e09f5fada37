"""Readable outputs: confusion-matrix plots, and cross-validation tables that state their
protocol."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from after.metrics import format_mean_std, summarize


def plot_confusion(scores: dict[str, Any], path: str | os.PathLike[str], title: str = "") -> Path:
    """Save the confusion matrix of `scores` (from `classification_scores`) as a PNG: counts, and
    each row's share as the colour (so large and small classes read alike)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(scores["confusion"], dtype=float)
    labels = scores["labels"]
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
    ax.set_title(f"{title}\nUA {ua:.1f}%  WA {wa:.1f}%  (n={scores['num_clips']})".strip())
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the row")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def cv_table(runs: Sequence[dict[str, Any]], protocol: dict[str, Any]) -> str:
    """A Markdown report of cross-validation runs: the protocol, one row per fold and seed, and
    mean ± std (sample std over all runs)."""
    lines = [
        f"# {protocol['backbone']} on {protocol['corpus']}",
        "",
        f"- protocol: {protocol['protocol']} ({protocol['num_folds']} folds), "
        f"seeds {', '.join(str(s) for s in protocol['seeds'])}",
        f"- training: {protocol['training']}",
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
