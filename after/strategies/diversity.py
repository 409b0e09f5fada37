"""Strategies that spread a batch over the pool: BADGE, CoreSet, ALPS and Cluster-Margin.

All distances are squared Euclidean, computed by `after.strategies.geometry` with matrix products
in the input dtype and bounded memory, so 1,000 picks from 100,000 x 768 float32 rows take
minutes on two CPU cores (`bench/strategies.py`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from after.errors import AfterError
from after.strategies.base import PoolOutputs, QueryStrategy, top_k
from after.strategies.geometry import (
    CHUNK,
    as_float,
    d2_seeding,
    kmeans,
    min_sq_dists,
    sq_dists_to_point,
    sq_norms,
)
from after.strategies.uncertainty import top2_margin


def grad_embeddings(probs: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
    """BADGE's gradient embedding (Ash et al. 2020): the gradient of the cross-entropy loss with
    respect to the output layer's weights, at the model's own most likely label ŷ:
    (p - onehot(ŷ)) ⊗ h, flattened to (N, C * D)."""
    residual = probs.copy()
    residual[np.arange(len(probs)), probs.argmax(axis=1)] -= 1.0
    return (
        (residual[:, :, None] * embeddings[:, None, :]).reshape(len(probs), -1).astype(np.float32)
    )


class BADGE(QueryStrategy):
    """BADGE, Batch Active learning by Diverse Gradient Embeddings (Ash, Zhang, Krishnamurthy,
    Langford & Agarwal 2020, ICLR): k-means++ seeding on the gradient embeddings
    g_x = d loss(x, y_hat) / d W_last, the last layer's gradient under the model's own prediction,
    so large-norm points are uncertain and spread-out points are diverse.

    The first pick is the largest ||g_x||; each next pick x is drawn with probability
    D(x)^2 / sum_x' D(x')^2, D(x) the distance to the nearest pick so far (D^2 sampling, `rng`).
    Picked points have D = 0, so they are never drawn again.
    """

    name: ClassVar[str] = "badge"
    requires: ClassVar[frozenset[str]] = frozenset({"grad_embeddings"})
    deterministic: ClassVar[bool] = False

    def _choose(
        self,
        pool: PoolOutputs,
        num_queries: int,
        *,
        labeled: PoolOutputs,
        rng: np.random.Generator,
        memo: dict[str, Any],
    ) -> np.ndarray:
        g = as_float(pool.require("grad_embeddings", self.name))
        g_sq = sq_norms(g)
        return d2_seeding(g, num_queries, rng, first=int(np.argmax(g_sq)), x_sq=g_sq)


class CoreSet(QueryStrategy):
    """Core-set selection (Sener & Savarese 2018, "Active Learning for Convolutional Neural
    Networks: A Core-Set Approach", ICLR), greedy k-center on `embeddings`: each pick is
    argmax_{x in pool} min_{c in labeled U picked} ||x - c||_2, the pool point farthest from the
    labeled clips and the picks so far (a 2-approximation of the k-center objective).

    With no labeled clip yet, the first pick is the point farthest from the pool mean (the
    greedy rule needs a starting set; the mean is the neutral one). Exact ties go to the first
    pool row. The rng is unused: the result depends only on the embeddings.
    """

    name: ClassVar[str] = "coreset"
    requires: ClassVar[frozenset[str]] = frozenset({"embeddings"})
    labeled_requires: ClassVar[frozenset[str]] = frozenset({"embeddings"})

    def _choose(
        self,
        pool: PoolOutputs,
        num_queries: int,
        *,
        labeled: PoolOutputs,
        rng: np.random.Generator,
        memo: dict[str, Any],
    ) -> np.ndarray:
        x = as_float(pool.require("embeddings", self.name))
        x_sq = sq_norms(x)
        if len(labeled):
            known = labeled.require("embeddings", self.name, "labeled")
            if known.shape[1] != x.shape[1]:
                raise AfterError(
                    f"{self.name}: labeled embeddings have {known.shape[1]} dimensions but the "
                    f"pool's have {x.shape[1]}; compute both with the same model"
                )
            min_d, _ = min_sq_dists(x, known)
            first = int(np.argmax(min_d))
        else:
            first = int(np.argmax(sq_dists_to_point(x, x_sq, x.mean(axis=0, dtype=np.float64))))
            min_d = np.full(len(x), np.inf)
        picks = np.empty(num_queries, dtype=np.int64)
        nxt = first
        for t in range(num_queries):
            picks[t] = nxt
            min_d[nxt] = -np.inf
            if t + 1 < num_queries:
                np.minimum(min_d, sq_dists_to_point(x, x_sq, x[nxt]), out=min_d)
                nxt = int(np.argmax(min_d))
        return picks


class ALPS(QueryStrategy):
    """ALPS, Active Learning by Processing Surprisal (Yuan, Lin & Boyd-Graber 2020, "Cold-start
    Active Learning through Self-supervised Language Modeling", EMNLP): k-means with
    k = num_queries on the L2-normalised surprisal embeddings, then, per centre, the pool point
    nearest to it among the centre's own cluster (as in the authors' code: clusters partition the
    pool, so the picks are distinct). A centre left with no member (only when the pool has fewer
    distinct points than k) takes the nearest point not yet picked. Picks are ordered by cluster
    size, largest first.

    Surprisal embeddings measure how much the self-supervised model is surprised by each clip:
    in the paper, the masked-LM loss of every token. For speech, the loop computes them from the
    TAPT wav2vec 2.0 model: a fixed-length vector of per-segment masked-prediction losses (the
    clip cut into L equal segments, each one's contrastive loss when masked). No labels and no
    classifier are involved, so ALPS also serves as a cold start.
    """

    name: ClassVar[str] = "alps"
    requires: ClassVar[frozenset[str]] = frozenset({"surprisal"})
    deterministic: ClassVar[bool] = False

    def __init__(self, max_iter: int = 100) -> None:
        self.max_iter = max_iter  # Lloyd iterations; each is one N x num_queries distance pass

    def _choose(
        self,
        pool: PoolOutputs,
        num_queries: int,
        *,
        labeled: PoolOutputs,
        rng: np.random.Generator,
        memo: dict[str, Any],
    ) -> np.ndarray:
        s = as_float(pool.require("surprisal", self.name))
        norms = np.sqrt(sq_norms(s)).astype(s.dtype)
        x = s / np.where(norms > 0, norms, 1)[:, None]
        k = num_queries
        labels, centres = kmeans(x, k, rng, self.max_iter)
        centres = centres.astype(x.dtype)
        to_centre = np.empty(len(x))
        for i in range(0, len(x), CHUNK):
            diff = x[i : i + CHUNK] - centres[labels[i : i + CHUNK]]
            to_centre[i : i + CHUNK] = sq_norms(diff)
        sizes = np.bincount(labels, minlength=k)
        by_member = np.lexsort((to_centre, labels))
        starts = np.searchsorted(labels[by_member], np.arange(k))
        best = np.full(k, -1, dtype=np.int64)
        has = sizes > 0
        best[has] = by_member[starts[has]]
        order = np.lexsort((np.arange(k), -sizes))
        taken = np.zeros(len(x), dtype=bool)
        taken[best[has]] = True
        x_sq = sq_norms(x)
        for c in order[~has[order]]:
            d = sq_dists_to_point(x, x_sq, centres[c])
            d[taken] = np.inf
            best[c] = int(np.argmin(d))
            taken[best[c]] = True
        return best[order]


class ClusterMargin(QueryStrategy):
    """Cluster-Margin (Citovsky, DeSalvo, Gentile, Karydas, Rajagopalan, Rostamizadeh & Kumar
    2021, "Batch Active Learning at Scale", NeurIPS).

    Clusters are built once, on the first call, over the pool's `embeddings`, and kept in `memo`
    as {"clusters": {id: cluster}, "centroids": [[...], ...], "clustering": {...}}; an id first
    seen later joins the cluster of its nearest centroid. Each round: the m = min(N,
    `candidates_per_query` * num_queries) clips of smallest margin p_(1) - p_(2) are grouped by
    cluster; clusters are visited in ascending order of how many candidates they hold, one clip
    per cluster per pass, drawn at random within the cluster as in the paper's Algorithm 1 (the
    margin only decides who is a candidate), until num_queries.

    Clustering adapts to the pool size. Up to `hac_max` clips (5,000): agglomerative clustering
    with average linkage (scikit-learn), as in the paper, cut at `distance_threshold` when given,
    else at round(N / `cluster_size`) clusters. Above that, HAC's O(N^2) memory and time do not
    fit, and MiniBatchKMeans with round(N / `cluster_size`) clusters (about N/20) stands in,
    seeded by k-means++ on a sample of max(3k, 1000) rows; it uses the rng, so seeds then differ.
    """

    name: ClassVar[str] = "cluster_margin"
    requires: ClassVar[frozenset[str]] = frozenset({"probs", "embeddings"})
    deterministic: ClassVar[bool] = False  # the pick within a cluster is random

    def __init__(
        self,
        cluster_size: int = 20,
        hac_max: int = 5000,
        distance_threshold: float | None = None,
        candidates_per_query: int = 10,
    ) -> None:
        self.cluster_size = cluster_size
        self.hac_max = hac_max
        self.distance_threshold = distance_threshold
        self.candidates_per_query = candidates_per_query

    def _choose(
        self,
        pool: PoolOutputs,
        num_queries: int,
        *,
        labeled: PoolOutputs,
        rng: np.random.Generator,
        memo: dict[str, Any],
    ) -> np.ndarray:
        probs = pool.require("probs", self.name)
        x = as_float(pool.require("embeddings", self.name))
        if "clusters" not in memo:
            memo.update(self.build_clusters(pool.ids, x, rng))
        m = min(len(pool), self.candidates_per_query * num_queries)
        cand = top_k(-top2_margin(probs), m, rng)
        cand = cand[rng.permutation(len(cand))]  # a random order within every cluster
        clusters = self._clusters_of([pool.ids[i] for i in cand], x[cand], memo)
        return cand[round_robin(clusters)[:num_queries]]

    def build_clusters(
        self, ids: list[str], x: np.ndarray, rng: np.random.Generator
    ) -> dict[str, Any]:
        """The memo entries: each id's cluster, the centroids, and how they were made."""
        n = len(x)
        k = max(1, min(n, round(n / self.cluster_size)))
        if n <= self.hac_max:
            method = "agglomerative-average"
            if n < 2 or (k == 1 and self.distance_threshold is None):
                labels = np.zeros(n, dtype=np.int64)
            else:
                from sklearn.cluster import AgglomerativeClustering

                hac = AgglomerativeClustering(
                    n_clusters=None if self.distance_threshold is not None else k,
                    distance_threshold=self.distance_threshold,
                    linkage="average",
                )
                labels = np.asarray(hac.fit_predict(x), dtype=np.int64)
            centroids = _group_means(x, labels)
        else:
            method = "minibatch-kmeans"
            from sklearn.cluster import MiniBatchKMeans

            sample = np.sort(rng.choice(n, size=min(n, max(3 * k, 1000)), replace=False))
            init = x[sample[d2_seeding(x[sample], k, rng)]]
            mbk = MiniBatchKMeans(
                n_clusters=k,
                init=init,
                n_init=1,
                batch_size=4096,
                max_no_improvement=10,
                random_state=int(rng.integers(2**31 - 1)),
            )
            labels = np.asarray(mbk.fit_predict(x), dtype=np.int64)
            centroids = np.asarray(mbk.cluster_centers_)
        return {
            "clusters": {i: int(c) for i, c in zip(ids, labels.tolist(), strict=True)},
            "centroids": centroids.tolist(),
            "clustering": {"method": method, "num_clusters": len(centroids), "num_clips": n},
        }

    def _clusters_of(self, ids: list[str], x: np.ndarray, memo: dict[str, Any]) -> np.ndarray:
        """The memo's cluster of every id; ids not in it join the nearest centroid (saved)."""
        known = memo.get("clusters")
        try:
            centroids = np.asarray(memo.get("centroids"), dtype=np.float64)
        except (TypeError, ValueError):
            centroids = np.zeros(0)
        if not isinstance(known, dict) or centroids.ndim != 2 or len(centroids) == 0:
            raise AfterError(
                f"{self.name}: the memo holds no usable clusters (it needs 'clusters' and "
                "'centroids'); start the strategy with an empty memo"
            )
        if centroids.shape[1] != x.shape[1]:
            raise AfterError(
                f"{self.name}: the memo's centroids have {centroids.shape[1]} dimensions but the "
                f"embeddings have {x.shape[1]}; the embedding model changed, so start with an "
                "empty memo"
            )
        missing = [j for j, i in enumerate(ids) if i not in known]
        if missing:
            _, nearest = min_sq_dists(x[missing], centroids.astype(x.dtype))
            for j, c in zip(missing, nearest.tolist(), strict=True):
                known[ids[j]] = int(c)
        out = np.array([known[i] for i in ids], dtype=np.int64)
        if len(out) and (out.min() < 0 or out.max() >= len(centroids)):
            raise AfterError(
                f"{self.name}: the memo assigns a cluster outside 0..{len(centroids) - 1}; the "
                "memo is corrupt, so start with an empty memo"
            )
        return out


def round_robin(clusters: np.ndarray) -> np.ndarray:
    """Positions 0..m-1 of candidates (already in priority order) in round-robin order: clusters
    in ascending size (ties: the one whose best candidate comes first), one candidate of each per
    pass, each cluster's candidates in their given order."""
    m = len(clusters)
    _, group, counts = np.unique(clusters, return_inverse=True, return_counts=True)
    by_group = np.lexsort((np.arange(m), group))  # stable: priority order within a group
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.empty(m, dtype=np.int64)
    rank[by_group] = np.arange(m) - starts[group[by_group]]
    best = by_group[starts]  # each group's first (highest-priority) position
    group_order = np.empty(len(counts), dtype=np.int64)
    group_order[np.lexsort((best, counts))] = np.arange(len(counts))
    return np.lexsort((group_order[group], rank))


def _group_means(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(k, D) float64 mean of the rows of each label 0..k-1 (every label has a row)."""
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    sums = np.add.reduceat(x[order].astype(np.float64), starts, axis=0)
    return sums / counts[:, None]
