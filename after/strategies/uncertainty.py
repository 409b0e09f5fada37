"""Random sampling and uncertainty sampling from the current model's softmax `probs`.

Uncertainty sampling (Settles 2009, "Active Learning Literature Survey", section 3.1) labels the
clips the model is least sure of. Each strategy scores every pool clip and takes the top scores;
exact ties (e.g. many one-hot rows) are broken by the rng, not by pool order.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from after.strategies.base import PoolOutputs, QueryStrategy, top_k

_TINY = 1e-12  # log(0) guard: p log p -> 0 as p -> 0, and p * log(_TINY) is exactly 0 for p = 0


def entropy(probs: np.ndarray, axis: int = 1) -> np.ndarray:
    """Shannon entropy in nats along the class `axis`: H(p) = -sum_c p_c log p_c (0 log 0 = 0)."""
    p = np.asarray(probs, dtype=np.float64)
    return np.maximum(-(p * np.log(np.maximum(p, _TINY))).sum(axis=axis), 0.0)


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """1 - max_c p_c per row."""
    return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=1)


def top2_margin(probs: np.ndarray) -> np.ndarray:
    """p_(1) - p_(2) per row: the gap between the two most probable classes (p_(1) when there is
    a single class). Small = uncertain."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape[1] < 2:
        return p[:, 0].copy()
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


class RandomSampling(QueryStrategy):
    """Uniform sampling without replacement: the baseline every strategy must beat."""

    name: ClassVar[str] = "random"
    requires: ClassVar[frozenset[str]] = frozenset()
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
        return rng.choice(len(pool), size=num_queries, replace=False)


class _ScoreStrategy(QueryStrategy):
    """Takes the `num_queries` clips with the highest `score`."""

    def score(self, pool: PoolOutputs) -> np.ndarray:
        raise NotImplementedError

    def _choose(
        self,
        pool: PoolOutputs,
        num_queries: int,
        *,
        labeled: PoolOutputs,
        rng: np.random.Generator,
        memo: dict[str, Any],
    ) -> np.ndarray:
        return top_k(self.score(pool), num_queries, rng)


class EntropySampling(_ScoreStrategy):
    """Maximum entropy (Settles 2009, section 3.1): score = H(p) = -sum_c p_c log p_c of the
    model's softmax; the most uncertain clip has the flattest prediction."""

    name: ClassVar[str] = "entropy"
    requires: ClassVar[frozenset[str]] = frozenset({"probs"})

    def score(self, pool: PoolOutputs) -> np.ndarray:
        return entropy(pool.require("probs", self.name))


class LeastConfidence(_ScoreStrategy):
    """Least confidence (Lewis & Gale 1994, "A Sequential Algorithm for Training Text
    Classifiers"; Settles 2009): score = 1 - max_c p_c."""

    name: ClassVar[str] = "least_confidence"
    requires: ClassVar[frozenset[str]] = frozenset({"probs"})

    def score(self, pool: PoolOutputs) -> np.ndarray:
        return least_confidence(pool.require("probs", self.name))


class MarginSampling(_ScoreStrategy):
    """Smallest margin (Scheffer, Decomain & Wrobel 2001, "Active Hidden Markov Models for
    Information Extraction"; Settles 2009): takes the smallest p_(1) - p_(2), the gap between the
    two most probable classes (score = its negative)."""

    name: ClassVar[str] = "margin"
    requires: ClassVar[frozenset[str]] = frozenset({"probs"})

    def score(self, pool: PoolOutputs) -> np.ndarray:
        return -top2_margin(pool.require("probs", self.name))
