"""Classification metrics of speech emotion recognition, and their summary across folds and seeds.

- UA, unweighted accuracy: the mean of per-class recalls over the classes present in the
  reference (scikit-learn's `balanced_accuracy_score`). The headline metric: it does not reward
  predicting the majority class.
- WA, weighted accuracy: plain accuracy (each clip counts once; classes weigh by their size).
- macro-F1: the mean of per-class F1 over the classes present in the reference or the predictions
  (a class never predicted and never present does not count); micro-F1 equals WA for one label per
  clip and is reported for completeness.
- the confusion matrix, rows = reference, columns = prediction, in the order of `labels`.

Predictions and references are class indices into `labels`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from after.errors import AfterError


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): [i, j] = clips of class i predicted as j."""
    t, p = _check(y_true, y_pred, num_classes)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    return cm


def classification_scores(
    y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]
) -> dict[str, Any]:
    """UA, WA, macro-F1, micro-F1, per-class recall / precision / F1 / support, and the
    confusion matrix (as nested lists), for one evaluation."""
    cm = confusion_matrix(y_true, y_pred, len(labels))
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    hits = np.diag(cm)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, hits / support, 0.0)
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        f1 = np.where(recall + precision > 0, 2 * recall * precision / (recall + precision), 0.0)
    present = support > 0
    counted = present | (predicted > 0)
    wa = float(hits.sum() / cm.sum())
    return {
        "ua": float(recall[present].mean()),
        "wa": wa,
        "macro_f1": float(f1[counted].mean()),
        "micro_f1": wa,
        "num_clips": int(cm.sum()),
        "per_class": {
            label: {
                "recall": float(recall[i]),
                "precision": float(precision[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "labels": list(labels),
        "confusion": cm.tolist(),
    }


def cohen_kappa(a: Sequence[int], b: Sequence[int], num_classes: int) -> float:
    """Cohen's kappa between two label sequences (1.0 when identical)."""
    x, y = np.asarray(a), np.asarray(b)
    observed = float((x == y).mean())
    pa = np.bincount(x, minlength=num_classes) / len(x)
    pb = np.bincount(y, minlength=num_classes) / len(y)
    expected = float((pa * pb).sum())
    return 1.0 if expected >= 1 else (observed - expected) / (1 - expected)


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (n - 1; 0 for one value) and n of `values`."""
    if not values:
        raise AfterError("no values to summarise")
    x = np.asarray(values, dtype=float)
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return {"mean": float(x.mean()), "std": std, "n": int(x.size)}


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """`a - b` paired element by element (the same fold and seed): mean, sample std, n, and the
    two-sided Wilcoxon signed-rank p-value (1.0 when every difference is zero; pairs with no
    difference are dropped, as Wilcoxon's test does)."""
    from scipy.stats import wilcoxon

    if len(a) != len(b):
        raise AfterError(f"paired values: {len(a)} against {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    p = float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return {**mean_std(list(d)), "wilcoxon_p": p, "min_p": smallest_wilcoxon_p(len(d))}


def smallest_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p that Wilcoxon's exact signed-rank test can give on `n` pairs
    (every difference of one sign): 2 / 2^n. With n <= 5 it is >= 0.0625, so no result on so few
    pairs can reach p < 0.05, however large the effect."""
    return min(1.0, 2.0 / 2.0**n)


def summarize(
    results: Sequence[dict[str, Any]], keys: Sequence[str] = ("ua", "wa", "macro_f1")
) -> dict[str, Any]:
    """Mean ± std of each metric in `keys` over several evaluations (folds x seeds)."""
    return {k: mean_std([r[k] for r in results]) for k in keys}


def format_mean_std(
    summary: dict[str, float], scale: float = 100.0, digits: int = 2, *, with_n: bool = True
) -> str:
    """E.g. "63.21 ± 4.05 (n=10)" (percent by default; without "(n=10)" if not `with_n`). One
    value has no spread to show: "26.20 (n=1)", never "± 0.00"."""
    mean, std = summary["mean"] * scale, summary["std"] * scale
    if not math.isfinite(mean):
        return "n/a"
    n = f" (n={summary['n']})" if with_n else ""
    spread = f" ± {std:.{digits}f}" if summary["n"] > 1 else ""
    return f"{mean:.{digits}f}{spread}{n}"


def _check(
    y_true: Sequence[int], y_pred: Sequence[int], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape or t.ndim != 1:
        raise AfterError(f"references {t.shape} and predictions {p.shape} must be equal-length 1-D")
    if t.size == 0:
        raise AfterError("no clips to score")
    for name, a in (("reference", t), ("prediction", p)):
        if a.min() < 0 or a.max() >= num_classes:
            raise AfterError(f"a {name} class index is outside 0..{num_classes - 1}")
    return t, p
