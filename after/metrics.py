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


Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: two-sided 95% intervals
BOOTSTRAP_RESAMPLES = 2000


def wilson_interval(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval (95% by default) for a proportion of `hits` in `n` trials: unlike
    the normal approximation it stays inside [0, 1] and keeps its coverage for small n and for
    proportions near 0 or 1. (nan, nan) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo = 0.0 if hits == 0 else max(0.0, centre - half)
    hi = 1.0 if hits == n else min(1.0, centre + half)
    return lo, hi


def unweighted_accuracy(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """UA of index arrays (the mean recall over the classes present in `y_true`)."""
    support = np.bincount(y_true, minlength=num_classes)
    hits = np.bincount(y_true[y_true == y_pred], minlength=num_classes)
    present = support > 0
    return float((hits[present] / support[present]).mean())


def bootstrap_ua_interval(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    num_classes: int,
    rng: np.random.Generator,
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
) -> tuple[float, float]:
    """A percentile bootstrap interval for UA: the clips are resampled with replacement
    `resamples` times and UA recomputed on each (over the classes each resample holds); the
    interval spans the middle `level` of those values. (nan, nan) without clips."""
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if t.size == 0:
        return float("nan"), float("nan")
    draws = rng.integers(0, t.size, size=(resamples, t.size))
    values = np.array([unweighted_accuracy(t[d], p[d], num_classes) for d in draws])
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def audit_estimate(
    y_true: Sequence[int], y_pred: Sequence[int], num_classes: int, rng: np.random.Generator
) -> dict[str, Any]:
    """A model's accuracy and UA on an audit sample with 95% intervals: Wilson's for accuracy,
    a percentile bootstrap (`bootstrap_ua_interval`) for UA; `n` is how many labeled clips back
    them. The keys are the audit columns of rounds.csv."""
    t, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if t.size == 0:
        return {"audit_n": 0}
    hits = int((t == p).sum())
    acc_lo, acc_hi = wilson_interval(hits, int(t.size))
    ua_lo, ua_hi = bootstrap_ua_interval(t.tolist(), p.tolist(), num_classes, rng)
    return {
        "audit_n": int(t.size),
        "audit_acc": hits / t.size,
        "audit_acc_lo": acc_lo,
        "audit_acc_hi": acc_hi,
        "audit_ua": unweighted_accuracy(t, p, num_classes),
        "audit_ua_lo": ua_lo,
        "audit_ua_hi": ua_hi,
        "audit_confusion": confusion_matrix(t.tolist(), p.tolist(), num_classes).tolist(),
    }


AUDIT_METHOD = (
    "95% intervals: Wilson's score interval for accuracy, a percentile bootstrap over the audit "
    f"clips ({BOOTSTRAP_RESAMPLES:,} resamples) for UA"
)


def format_interval(value: float | None, lo: float | None, hi: float | None) -> str:
    """E.g. "72.4% [57.9-83.3]" (percent); "n/a" without a value."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{100 * value:.1f}%"
    return f"{100 * value:.1f}% [{100 * lo:.1f}-{100 * hi:.1f}]"


def describe_audit(record: dict[str, Any]) -> str:
    """A round's audit estimate in words, with how many labels back it, e.g. "audit UA 70.1%
    [55.0-82.3], accuracy 72.4% [57.9-83.3] (38 audit labels)"."""
    n = record.get("audit_n", 0)
    if not n:
        return "no audit label yet"
    ua = format_interval(record["audit_ua"], record["audit_ua_lo"], record["audit_ua_hi"])
    acc = format_interval(record["audit_acc"], record["audit_acc_lo"], record["audit_acc_hi"])
    return f"audit UA {ua}, accuracy {acc} ({n} audit label{'s' if n != 1 else ''})"


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
    lo, hi = mean_interval(list(d))
    return {
        **mean_std(list(d)),
        "ci_lo": lo,
        "ci_hi": hi,
        "wilcoxon_p": p,
        "min_p": smallest_wilcoxon_p(len(d)),
    }


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student's t interval for the mean of `values` (95% by default): with few runs it is wide,
    which is the point. (nan, nan) for fewer than 2 values."""
    from scipy.stats import t

    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return float("nan"), float("nan")
    half = float(t.ppf(0.5 + level / 2, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return float(x.mean()) - half, float(x.mean()) + half


FEW_PAIRS = 6  # below this many pairs no Wilcoxon signed-rank test can reach p < 0.05


def describe_difference(d: dict[str, float], scale: float = 100.0) -> str:
    """A paired difference (`paired_difference`) in points with its 95% interval, p and n, and
    a mark when the pairs are too few for any p < 0.05: "+1.8 [-10.2, +13.8] (p=0.5, n=2*)"."""
    ci = (
        f" [{scale * d['ci_lo']:+.1f}, {scale * d['ci_hi']:+.1f}]"
        if math.isfinite(d.get("ci_lo", math.nan))
        else ""
    )
    few = "*" if d.get("min_p", 0.0) >= 0.05 else ""
    return f"{scale * d['mean']:+.1f}{ci} (p={d['wilcoxon_p']:.2g}, n={d['n']}{few})"


def few_pairs_warning(n: int) -> str:
    """ "" for enough pairs; else a warning that says what so few pairs can and cannot show."""
    if n >= FEW_PAIRS:
        return ""
    return (
        f"warning: {n} paired run(s): no difference can reach p < 0.05 with fewer than "
        f"{FEW_PAIRS} pairs (Wilcoxon's smallest p here is {smallest_wilcoxon_p(n):.2g}), and "
        "the 95% intervals show how little so few runs pin down; run more folds or seeds "
        "before reading anything into it"
    )


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
