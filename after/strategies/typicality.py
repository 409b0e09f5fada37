"""Strategies for small budgets: label typical clips that cover the pool, not uncertain ones.

With few labels a model's uncertainty is mostly noise, and uncertainty sampling picks outliers;
two methods that beat it at low budgets in published experiments pick dense, representative
clips instead (Hacohen et al. 2022 found the better strategy flips from typical to uncertain as
the budget grows). Both read only `embeddings`, L2-normalised here as both papers' features are.

- TypiClust (Hacohen, Dekel, Weinshall 2022, "Active Learning on a Budget: Opposite Strategies Suit
  High and Low Budgets", ICML): k-means into |labeled| + B clusters over the labeled and pool
  clips; clusters are taken in order of fewest labeled clips, then largest, round-robin; from each,
  the pool clip of highest typicality, 1 / (mean distance to its k nearest neighbours in the
  cluster). Clusters of 5 clips or fewer are skipped (while larger ones remain), as in the paper.
- ProbCover (Yehuda, Dekel, Hacohen, Weinshall 2022, "Active Learning Through a Covering Lens",
  NeurIPS): a clip covers the clips within distance delta of it; greedily pick the pool clip that
  covers the most clips not yet covered (by labeled clips or earlier picks). delta is the largest
  radius whose balls are pure for at least alpha = 95% of clips, purity judged on k-means
  pseudo-labels with k = the number of classes; a ball is pure when it holds no clip of another
  pseudo-label, so delta is the (1 - alpha) quantile of each clip's distance to its nearest
  clip of another pseudo-label. Once every clip is covered, picks continue farthest-first.

Both compute all pairwise distances of the pool (in blocks): time grows as N^2, like BADGE's and
CoreSet's N x queries; fine for corpora of tens of thousands of clips.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from after.errors import AfterError
from after.strategies.base import PoolOutputs, QueryStrategy
from after.strategies.geometry import CHUNK, as_float, kmeans, min_sq_dists


def _unit(x: np.ndarray) -> np.ndarray:
    x = as_float(x)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _both(name: str, pool: PoolOutputs, labeled: PoolOutputs) -> tuple[np.ndarray, int]:
    """Normalised embeddings of the pool then the labeled clips, and the pool's size."""
    x = pool.require("embeddings", name)
    if len(labeled):
        known = labeled.require("embeddings", name, "labeled")
        if known.shape[1] != x.shape[1]:
            raise AfterError(
                f"{name}: labeled embeddings have {known.shape[1]} dimensions but the pool's have "
                f"{x.shape[1]}; compute both with the same model"
            )
        x = np.concatenate([x, np.asarray(known, dtype=x.dtype)])
    return _unit(x), len(pool)


def typicality(x: np.ndarray, k: int) -> np.ndarray:
    """1 / mean Euclidean distance to each row's `k` nearest other rows of `x` (N,)."""
    k = max(1, min(k, len(x) - 1))
    if len(x) == 1:
        return np.ones(1)
    d2 = np.maximum(
        (x * x).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2.0 * (x @ x.T).astype(np.float64), 0
    )
    np.fill_diagonal(d2, np.inf)
    nearest = np.sqrt(np.partition(d2, k - 1, axis=1)[:, :k])
    return 1.0 / (nearest.mean(axis=1) + 1e-12)


class TypiClust(QueryStrategy):
    """TypiClust (see the module docstring)."""

    name: ClassVar[str] = "typiclust"
    requires: ClassVar[frozenset[str]] = frozenset({"embeddings"})
    labeled_requires: ClassVar[frozenset[str]] = frozenset({"embeddings"})
    deterministic: ClassVar[bool] = False  # k-means starts from rng

    def __init__(self, k_nn: int = 20, min_cluster: int = 5, max_clusters: int = 500) -> None:
        self.k_nn, self.min_cluster, self.max_clusters = k_nn, min_cluster, max_clusters

    def _choose(
        self,
        pool: PoolOutputs,
        num_queries: int,
        *,
        labeled: PoolOutputs,
        rng: np.random.Generator,
        memo: dict[str, Any],
    ) -> np.ndarray:
        x, n = _both(self.name, pool, labeled)
        k = min(len(x), len(labeled) + num_queries, self.max_clusters)
        labels, _ = kmeans(x, k, rng)
        sizes = np.bincount(labels, minlength=k)
        known = np.bincount(labels[n:], minlength=k)
        every = np.lexsort((np.arange(k), -sizes, known))
        order = every[sizes[every] > self.min_cluster]
        free = np.zeros(len(x), dtype=bool)
        free[:n] = True  # labeled clips shape the clusters but are never picked
        picks: list[int] = []
        scores: dict[int, np.ndarray] = {}
        while len(picks) < num_queries:
            before = len(picks)
            for cluster in order:
                members = np.flatnonzero(labels == cluster)
                if len(picks) == num_queries or not free[members].any():
                    continue
                if cluster not in scores:
                    scores[cluster] = typicality(x[members], min(self.k_nn, len(members) // 2))
                score = np.where(free[members], scores[cluster], -np.inf)
                best = int(members[int(np.argmax(score))])
                picks.append(best)
                free[best] = False
            if len(picks) == before:  # only the small clusters have pool clips left
                order = every
        return np.asarray(picks, dtype=np.int64)


class ProbCover(QueryStrategy):
    """ProbCover (see the module docstring); the number of pseudo-label clusters is the number
    of classes in `probs`."""

    name: ClassVar[str] = "probcover"
    requires: ClassVar[frozenset[str]] = frozenset({"embeddings", "probs"})
    labeled_requires: ClassVar[frozenset[str]] = frozenset({"embeddings"})
    deterministic: ClassVar[bool] = False  # pseudo-labels by k-means from rng

    def __init__(self, alpha: float = 0.95) -> None:
        self.alpha = alpha

    def _choose(
        self,
        pool: PoolOutputs,
        num_queries: int,
        *,
        labeled: PoolOutputs,
        rng: np.random.Generator,
        memo: dict[str, Any],
    ) -> np.ndarray:
        x, n = _both(self.name, pool, labeled)
        classes = pool.require("probs", self.name).shape[1]
        return cover(x, n, pure_radius(x, classes, self.alpha, rng), num_queries)


def pure_radius(x: np.ndarray, num_classes: int, alpha: float, rng: np.random.Generator) -> float:
    """The largest radius whose balls are pure for `alpha` of the rows of `x`, purity judged on
    k-means pseudo-labels with k = `num_classes`."""
    k = max(2, min(num_classes, len(x)))
    labels, _ = kmeans(x, k, rng)
    to_other = np.full(len(x), np.inf)
    for c in np.unique(labels):
        inside = labels == c
        if inside.all():
            continue
        d2, _ = min_sq_dists(x[inside], x[~inside])
        to_other[inside] = np.sqrt(d2)
    finite = to_other[np.isfinite(to_other)]
    return float(np.quantile(finite, 1 - alpha)) if len(finite) else float("inf")


def cover(x: np.ndarray, num_pool: int, delta: float, num_queries: int) -> np.ndarray:
    """ProbCover's greedy max coverage: `num_queries` rows of the pool (the first `num_pool` rows
    of `x`; the rest are labeled) covering the most rows within `delta`; farthest-first once
    everything is covered."""
    n_all = len(x)
    adjacency: list[np.ndarray] = []  # rows within delta of each pool row
    limit = delta * delta
    for i in range(0, num_pool, CHUNK):
        block = x[i : min(i + CHUNK, num_pool)]
        d2 = (block * block).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2.0 * (block @ x.T)
        adjacency += [np.flatnonzero(row <= limit) for row in d2]
    covered = np.zeros(n_all, dtype=bool)
    for j in range(num_pool, n_all):  # what the labeled clips already cover
        d2 = ((x - x[j]) ** 2).sum(1)
        covered |= d2 <= limit
    taken = np.zeros(num_pool, dtype=bool)
    picks: list[int] = []
    nearest = None
    while len(picks) < num_queries:
        gains = np.array(
            [0 if taken[i] else int((~covered[a]).sum()) for i, a in enumerate(adjacency)]
        )
        if gains.max() > 0:
            best = int(np.argmax(gains))
        else:  # all covered: the pool row farthest from everything chosen or labeled
            anchors = np.concatenate(
                [np.asarray(picks, dtype=np.int64), np.arange(num_pool, n_all)]
            )
            if nearest is None:
                nearest = (
                    min_sq_dists(x[:num_pool], x[anchors])[0]
                    if len(anchors)
                    else np.zeros(num_pool)
                )
            nearest[taken] = -np.inf
            best = int(np.argmax(nearest))
        picks.append(best)
        taken[best] = True
        covered[adjacency[best]] = True
        if nearest is not None:
            nearest = np.minimum(nearest, ((x[:num_pool] - x[best]) ** 2).sum(1))
    return np.asarray(picks, dtype=np.int64)
