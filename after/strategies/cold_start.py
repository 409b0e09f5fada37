"""The first clips to label, before any classifier exists: random, or the AFTER paper's clustering.

The clustering start runs k-means on clip embeddings (the loop uses Resemblyzer vectors), picks
k by the elbow of the inertia curve, and labels the clip nearest each centroid first, so the
seed set covers every region of the pool. ALPS, the other label-free start, is a query strategy
(`get_strategy("alps")`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from after.config import CLUSTERING_COLD_STARTS
from after.errors import AfterError
from after.strategies.geometry import as_float, sq_norms

_N_INIT = 3  # k-means restarts per k: a poor local optimum would put a kink in the curve


def _fit(x: np.ndarray, k: int, rng: np.random.Generator) -> Any:
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    model = KMeans(n_clusters=k, n_init=_N_INIT, random_state=int(rng.integers(2**31 - 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x)
    return model


def _check_k_values(k_values: Sequence[int], n: int) -> list[int]:
    ks = sorted({int(k) for k in k_values})
    if not ks:
        raise AfterError("elbow_k: k_values is empty; give at least one cluster count")
    if ks[0] < 1 or ks[-1] > n:
        raise AfterError(
            f"elbow_k: cluster counts must lie in 1..{n} (the number of clips), got {ks[0]}.."
            f"{ks[-1]}; shrink k_values"
        )
    return ks


def _elbow(
    x: np.ndarray, k_values: Sequence[int], rng: np.random.Generator
) -> tuple[int, list[float], list[int], dict[int, Any]]:
    ks = _check_k_values(k_values, len(x))
    models = {k: _fit(x, k, rng) for k in ks}
    inertias = [float(models[k].inertia_) for k in ks]
    return ks[knee_index(ks, inertias)], inertias, ks, models


def knee_index(k_values: Sequence[int], inertias: Sequence[float]) -> int:
    """Index of the elbow of a decreasing curve by the maximum-distance ("kneedle") rule.

    Both axes are scaled to [0, 1]; the elbow is the point farthest from the straight line
    joining the first and the last point. Exact ties take the smaller k; with fewer than three
    points there is no bend, and the first point is returned.
    """
    if len(k_values) < 3:
        return 0
    k = np.asarray(k_values, dtype=np.float64)
    y = np.asarray(inertias, dtype=np.float64)
    kx = (k - k[0]) / (k[-1] - k[0])
    span = y.max() - y.min()
    if span <= 0:
        return 0
    ys = (y - y.min()) / span
    # distance of (kx_i, ys_i) to the line through (0, ys_0) and (1, ys_-1), up to a constant
    dist = np.abs((ys[-1] - ys[0]) * kx - ys + ys[0])
    return int(np.argmax(dist))


def elbow_k(
    embeddings: np.ndarray, k_values: Sequence[int], rng: np.random.Generator
) -> tuple[int, list[float]]:
    """The elbow of the k-means inertia curve: (chosen k, inertia for each k of sorted k_values).

    Inertia (within-cluster sum of squares) falls as k grows; the elbow is where adding clusters
    stops paying off. It is found by the maximum-distance rule: with k and inertia both scaled to
    [0, 1], the point farthest from the straight line joining the first and last points (the
    "kneedle" idea of Satopaa et al. 2011 without its smoothing). k-means: scikit-learn, best of
    3 k-means++ starts per k, seeds from `rng`.
    """
    x = as_float(np.asarray(embeddings))
    if x.ndim != 2 or len(x) == 0:
        raise AfterError(f"elbow_k: embeddings must be (N, D) with N >= 1, got shape {x.shape}")
    k, inertias, _, _ = _elbow(x, k_values, rng)
    return k, inertias


def cold_start(
    ids: list[str],
    embeddings: np.ndarray | None,
    num: int,
    *,
    method: str,
    rng: np.random.Generator,
    k_values: Sequence[int] | None = None,
    num_classes: int | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """The first `num` clips to label, and how they were chosen.

    "random": `num` ids uniformly without replacement (`embeddings` unused, may be None).
    "kmeans" (the AFTER paper's clustering start): k-means on `embeddings` (rows aligned with
    `ids`), k by `elbow_k` over `k_values` (default 2..20, capped below N); clusters are ordered
    by size, largest first (ties: lower cluster index), and each cluster's clips by distance to
    its centroid. Pass 1 takes the nearest clip of every cluster, pass 2 every cluster's second
    nearest, and so on (a cluster that runs out is skipped) until `num` ids; with num < k this is
    the nearest clip of each of the `num` largest clusters.

    "typiclust" and "probcover": those strategies (`after.strategies.typicality`) with nothing
    labeled yet, on `embeddings`; probcover's pseudo-labels need `num_classes`.

    Returns (ids, info), info = {"method", "k", "inertias", "k_values"}; k, inertias and k_values
    are None, [] and [] for every method but "kmeans".
    """
    n = len(ids)
    if len(set(ids)) != n:
        raise AfterError("cold_start: ids has duplicates; pass each clip once")
    if isinstance(num, bool) or not isinstance(num, int | np.integer) or num < 1:
        raise AfterError(f"cold_start: num must be a positive int, got {num!r}")
    if num > n:
        raise AfterError(
            f"cold_start: asked for {num} clips but only {n} are available; ask for at most {n}"
        )
    if method == "random":
        rows = rng.choice(n, size=num, replace=False)
        info: dict[str, Any] = {"method": "random", "k": None, "inertias": [], "k_values": []}
        return [ids[i] for i in rows], info
    if method not in CLUSTERING_COLD_STARTS:
        raise AfterError(
            f"cold_start: unknown method {method!r}; use random or one of "
            f"{', '.join(CLUSTERING_COLD_STARTS)}"
        )
    if embeddings is None:
        raise AfterError("cold_start: method 'kmeans' needs embeddings; compute them or use random")
    x = as_float(np.asarray(embeddings))
    if x.ndim != 2 or len(x) != n:
        raise AfterError(
            f"cold_start: embeddings have shape {x.shape}, expected ({n}, D), one row per id"
        )
    if not np.isfinite(x).all():
        raise AfterError("cold_start: embeddings hold NaN or infinity; check the feature extractor")
    if method in ("typiclust", "probcover"):
        return [ids[i] for i in _typical(x, num, method, rng, num_classes)], {
            "method": method,
            "k": None,
            "inertias": [],
            "k_values": [],
        }
    if k_values is None:
        k_values = list(range(2, min(21, n))) or [1]
    k, inertias, ks, models = _elbow(x, k_values, rng)
    model = models[k]
    labels = np.asarray(model.labels_, dtype=np.int64)
    centres = np.asarray(model.cluster_centers_, dtype=np.float64)
    to_centre = sq_norms(x.astype(np.float64) - centres[labels])
    rows = spread_order(labels, to_centre)[:num]
    info = {"method": "kmeans", "k": int(k), "inertias": inertias, "k_values": ks}
    return [ids[i] for i in rows], info


def _typical(
    x: np.ndarray, num: int, method: str, rng: np.random.Generator, num_classes: int | None
) -> np.ndarray:
    from after.strategies.base import PoolOutputs
    from after.strategies.typicality import TypiClust, _unit, cover, pure_radius

    if method == "typiclust":
        pool = PoolOutputs([str(i) for i in range(len(x))], embeddings=x)
        return TypiClust()._choose(pool, num, labeled=PoolOutputs([]), rng=rng, memo={})
    if num_classes is None or num_classes < 2:
        raise AfterError("cold_start: probcover needs num_classes (at least 2)")
    unit = _unit(x)
    return cover(unit, len(unit), pure_radius(unit, num_classes, 0.95, rng), num)


def spread_order(labels: np.ndarray, to_centre: np.ndarray) -> np.ndarray:
    """All rows, reordered: pass r holds every cluster's (r+1)-th nearest row to its centroid,
    clusters largest first (ties: lower label)."""
    n = len(labels)
    _, group, counts = np.unique(labels, return_inverse=True, return_counts=True)
    by_group = np.lexsort((np.arange(n), to_centre, group))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(n, dtype=np.int64)
    rank[by_group] = np.arange(n) - starts[group[by_group]]
    size_order = np.empty(len(counts), dtype=np.int64)
    size_order[np.lexsort((np.arange(len(counts)), -counts))] = np.arange(len(counts))
    return np.lexsort((size_order[group], rank))


def cold_start_features(backbone: str) -> str:
    """The feature backbone whose vectors a clustering cold start reads: the run's own when it
    is a frozen feature backbone (what the learner will see), else Resemblyzer's speaker
    embeddings (no fine-tuned model exists yet)."""
    from after.models.features import is_feature_backbone

    return backbone if is_feature_backbone(backbone) else "resemblyzer"
