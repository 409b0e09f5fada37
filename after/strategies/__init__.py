"""Query strategies for active learning, their registry, and cold starts.

    strategy = get_strategy("badge")
    pool = PoolOutputs(ids, grad_embeddings=g)  # only the fields in strategy.requires
    picks = strategy.select(pool, 100, labeled=PoolOutputs([]), rng=rng, memo=memo)

Names: random; uncertainty sampling (entropy, least_confidence, margin); MC-dropout Bayesian
(bald, dbal_variation_ratios, dbal_max_entropy); diversity and hybrids (badge, coreset, alps,
cluster_margin); typical clips for small budgets (typiclust, probcover). `cold_start` picks the
seed set before any model exists.
"""

from __future__ import annotations

from after.errors import AfterError
from after.strategies.base import REQUIREMENTS, PoolOutputs, QueryStrategy
from after.strategies.bayesian import BALD, DBALMaxEntropy, DBALVariationRatios
from after.strategies.cold_start import cold_start, elbow_k
from after.strategies.diversity import ALPS, BADGE, ClusterMargin, CoreSet
from after.strategies.typicality import ProbCover, TypiClust
from after.strategies.uncertainty import (
    EntropySampling,
    LeastConfidence,
    MarginSampling,
    RandomSampling,
)

STRATEGIES: dict[str, type[QueryStrategy]] = {
    cls.name: cls
    for cls in (
        RandomSampling,
        EntropySampling,
        LeastConfidence,
        MarginSampling,
        BALD,
        DBALVariationRatios,
        DBALMaxEntropy,
        BADGE,
        CoreSet,
        ALPS,
        ClusterMargin,
        TypiClust,
        ProbCover,
    )
}
"""Every strategy by name, in the order of the docs."""


def get_strategy(name: str) -> QueryStrategy:
    """A fresh instance, with default settings, of the strategy called `name`."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise AfterError(
            f"unknown query strategy {name!r}; choose one of: {', '.join(STRATEGIES)}"
        ) from None
    return cls()


__all__ = [
    "ALPS",
    "BADGE",
    "BALD",
    "REQUIREMENTS",
    "STRATEGIES",
    "ClusterMargin",
    "CoreSet",
    "DBALMaxEntropy",
    "DBALVariationRatios",
    "EntropySampling",
    "LeastConfidence",
    "MarginSampling",
    "PoolOutputs",
    "ProbCover",
    "QueryStrategy",
    "RandomSampling",
    "TypiClust",
    "cold_start",
    "elbow_k",
    "get_strategy",
]
