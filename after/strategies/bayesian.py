"""Bayesian uncertainty from MC dropout: `mc_probs` (N, C, S) holds the softmax of S stochastic
forward passes with dropout on (Gal & Ghahramani 2016), real passes computed by the loop.

The three acquisition functions of Gal, Islam & Ghahramani 2017 ("Deep Bayesian Active Learning
with Image Data", ICML): BALD, variation ratios and max entropy. With all passes identical BALD
and variation ratios are 0, so at least 2 passes are needed for them to mean anything.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from after.errors import AfterError
from after.strategies.base import PoolOutputs, QueryStrategy, top_k
from after.strategies.uncertainty import entropy

_BALD_ZERO = 1e-9  # nats; below this the mutual information is rounding noise, taken as 0


def bald_scores(mc_probs: np.ndarray) -> np.ndarray:
    """Mutual information between the label and the weights (Houlsby et al. 2011):
    I = H[mean_s p_s] - mean_s H[p_s], in nats, >= 0; exactly 0 when all passes agree."""
    p = np.asarray(mc_probs, dtype=np.float64)
    mi = entropy(p.mean(axis=2)) - entropy(p, axis=1).mean(axis=1)
    return np.where(mi > _BALD_ZERO, mi, 0.0)


def variation_ratios(mc_probs: np.ndarray) -> np.ndarray:
    """1 - (number of passes whose argmax is the modal class) / S."""
    n, c, s = mc_probs.shape
    votes = np.asarray(mc_probs).argmax(axis=1)  # (N, S)
    flat = (np.arange(n)[:, None] * c + votes).ravel()
    counts = np.bincount(flat, minlength=n * c).reshape(n, c)
    return 1.0 - counts.max(axis=1) / s


def mc_max_entropy(mc_probs: np.ndarray) -> np.ndarray:
    """Entropy of the MC-averaged predictive: H[mean_s p_s]."""
    return entropy(np.asarray(mc_probs, dtype=np.float64).mean(axis=2))


class _MCStrategy(QueryStrategy):
    """Takes the `num_queries` clips with the highest score of `mc_probs`."""

    requires: ClassVar[frozenset[str]] = frozenset({"mc_probs"})

    def score(self, mc_probs: np.ndarray) -> np.ndarray:
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
        mc = pool.require("mc_probs", self.name)
        if mc.shape[2] < 2:
            raise AfterError(
                f"{self.name} needs at least 2 MC-dropout passes, got mc_probs with S = "
                f"{mc.shape[2]}; raise the number of MC passes (10 is usual)"
            )
        return top_k(self.score(mc), num_queries, rng)


class BALD(_MCStrategy):
    """BALD, Bayesian Active Learning by Disagreement (Houlsby, Huszar, Ghahramani & Lengyel 2011;
    with MC dropout, Gal, Islam & Ghahramani 2017): the mutual information between the prediction
    and the model weights, I = H[mean_s p_s] - mean_s H[p_s] over the S MC-dropout passes.

    High when the passes are each confident but disagree; 0 when all passes agree, however
    uncertain their shared prediction is (that is aleatoric, not model, uncertainty).
    """

    name: ClassVar[str] = "bald"

    def score(self, mc_probs: np.ndarray) -> np.ndarray:
        return bald_scores(mc_probs)


class DBALVariationRatios(_MCStrategy):
    """Variation ratios (Freeman 1965; in deep Bayesian active learning, Gal, Islam & Ghahramani
    2017): 1 - f_m / S, where f_m is the number of the S MC-dropout passes whose argmax is the
    modal class. 0 when all passes vote alike. The score takes at most S + 1 values, so ties are
    the rule, and the rng orders the clips within a tie."""

    name: ClassVar[str] = "dbal_variation_ratios"
    deterministic: ClassVar[bool] = False

    def score(self, mc_probs: np.ndarray) -> np.ndarray:
        return variation_ratios(mc_probs)


class DBALMaxEntropy(_MCStrategy):
    """Max entropy with MC dropout (Gal, Islam & Ghahramani 2017): H[p_bar] with
    p_bar = mean_s p_s, the entropy of the predictive averaged over the S MC-dropout passes."""

    name: ClassVar[str] = "dbal_max_entropy"

    def score(self, mc_probs: np.ndarray) -> np.ndarray:
        return mc_max_entropy(mc_probs)
