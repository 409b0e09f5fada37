"""What a query strategy sees and what it must return.

Each round the loop computes, once, the arrays a strategy `requires` for the unlabeled pool (and
for the labeled set where the strategy also reads it), wraps them in `PoolOutputs`, and asks
`QueryStrategy.select` for the next clips to label. A strategy holds no state of its own between
calls: whatever must outlive a round (Cluster-Margin's clusters) lives in `memo`, a JSON-ready dict
the loop stores with the run, so a resumed run picks exactly what an uninterrupted one would.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from after.errors import AfterError

REQUIREMENTS = frozenset({"probs", "mc_probs", "embeddings", "grad_embeddings", "surprisal"})
"""Every array a strategy can ask the loop for."""

_NDIM = {"probs": 2, "mc_probs": 3, "embeddings": 2, "grad_embeddings": 2, "surprisal": 2}
_SHAPE = {
    "probs": "(N, C)",
    "mc_probs": "(N, C, S)",
    "embeddings": "(N, D)",
    "grad_embeddings": "(N, G)",
    "surprisal": "(N, L)",
}
_PROB_TOLERANCE = 1e-3
_CHECK_ROWS = 8192  # rows per block in the finiteness check, to bound its temporary memory


@dataclass(frozen=True, eq=False)
class PoolOutputs:
    """Arrays the loop computes once per round, rows aligned with `ids`.

    probs: (N, C) softmax of the current model (dropout off). mc_probs: (N, C, S) softmax of S
    MC-dropout passes (dropout on). embeddings: (N, D) pooled penultimate features.
    grad_embeddings: (N, G) BADGE gradient embeddings (Ash et al. 2020). surprisal: (N, L) ALPS
    surprisal embeddings (no labels needed). A field the strategy does not need stays None.

    Construction checks every given array: the expected rank, N rows, finite values, probabilities
    in [0, 1] that sum to 1 (within 1e-3) over the classes, and the same class count in `probs` and
    `mc_probs`; a violation is an `AfterError` naming the field. Integer arrays become float64;
    float32 stays float32 (no copy of a large pool).
    """

    ids: list[str]
    probs: np.ndarray | None = None
    mc_probs: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    grad_embeddings: np.ndarray | None = None
    surprisal: np.ndarray | None = None

    def __post_init__(self) -> None:
        ids = list(self.ids)
        if not all(isinstance(i, str) for i in ids):
            raise AfterError("PoolOutputs.ids: every id must be a str; convert the clip ids first")
        if len(set(ids)) != len(ids):
            dup = sorted(i for i, c in Counter(ids).items() if c > 1)[:5]
            raise AfterError(f"PoolOutputs.ids: duplicate ids {dup}; pass each clip once")
        object.__setattr__(self, "ids", ids)
        n = len(ids)
        for name in _NDIM:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _checked(name, value, n))
        if self.probs is not None and self.mc_probs is not None and n > 0:
            c1, c2 = self.probs.shape[1], self.mc_probs.shape[1]
            if c1 != c2:
                raise AfterError(
                    f"PoolOutputs: probs has {c1} classes but mc_probs has {c2}; compute both "
                    "with the same classifier"
                )

    def __len__(self) -> int:
        return len(self.ids)

    def require(self, name: str, strategy: str, role: str = "pool") -> np.ndarray:
        """The array `name`, or an `AfterError` naming it and `strategy` when it is None."""
        value = getattr(self, name)
        if value is None:
            raise AfterError(
                f"strategy {strategy!r} needs {role}.{name}, but it is None; compute {name!r} "
                f"for the {role} clips (the strategy's `requires` lists what to compute)"
            )
        return value


def _checked(name: str, value: Any, n: int) -> np.ndarray:
    """`value` as a floating array of the field's shape, or an `AfterError` saying what is off."""
    arr = np.asarray(value)
    if arr.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise AfterError(f"PoolOutputs.{name}: dtype {arr.dtype} is not numeric")
        arr = arr.astype(np.float64)
    if arr.ndim != _NDIM[name] or arr.shape[0] != n:
        raise AfterError(
            f"PoolOutputs.{name}: shape {arr.shape}, expected {_SHAPE[name]} with N = {n} "
            "rows, one per id in the same order"
        )
    if n == 0:
        return arr
    if any(s == 0 for s in arr.shape[1:]):
        raise AfterError(f"PoolOutputs.{name}: shape {arr.shape} has an empty dimension")
    flat = arr.reshape(n, -1)
    for i in range(0, n, _CHECK_ROWS):
        block = flat[i : i + _CHECK_ROWS]
        if not np.isfinite(block).all():
            bad = i + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
            raise AfterError(
                f"PoolOutputs.{name}: row {bad} holds NaN or infinity; check the model outputs "
                "(a diverged model or a bad clip)"
            )
    if name in ("probs", "mc_probs"):
        if arr.min() < -_PROB_TOLERANCE or arr.max() > 1 + _PROB_TOLERANCE:
            raise AfterError(
                f"PoolOutputs.{name}: values outside [0, 1]; pass softmax probabilities, not logits"
            )
        sums = arr.sum(axis=1, dtype=np.float64)
        off = np.abs(sums - 1.0) > _PROB_TOLERANCE
        if off.any():
            bad = int(np.flatnonzero(off.reshape(n, -1).any(axis=1))[0])
            raise AfterError(
                f"PoolOutputs.{name}: row {bad} sums to {float(sums[bad].flat[0]):.4f} over the "
                "classes, not 1; pass softmax probabilities (axis 1 is the class axis)"
            )
    return arr


class QueryStrategy(ABC):
    """A rule that picks which unlabeled clips to label next.

    Subclasses set `name`, `requires` (the `PoolOutputs` fields the loop must compute for the
    pool), `labeled_requires` (fields also needed for the labeled set, when it has rows) and
    `deterministic` (True when `rng` only breaks exact ties, so different seeds give the same
    picks on generic data), and implement `_choose`. `select` checks the request, calls
    `_choose`, and checks the answer.
    """

    name: ClassVar[str]
    requires: ClassVar[frozenset[str]]
    labeled_requires: ClassVar[frozenset[str]] = frozenset()
    deterministic: ClassVar[bool] = True

    def select(
        self,
        pool: PoolOutputs,
        num_queries: int,
        *,
        labeled: PoolOutputs,
        rng: np.random.Generator,
        memo: dict[str, Any],
    ) -> list[str]:
        """Exactly `num_queries` distinct ids of `pool.ids`, most wanted first.

        `pool` holds only unlabeled candidates; `labeled` the already-labeled clips (may have no
        rows). `memo` is this strategy's JSON-ready dict, persisted by the loop between rounds; it
        may be updated in place. The same inputs, `rng` state and memo give the same ids.
        """
        self._check_request(pool, num_queries, labeled, memo)
        rows = np.asarray(
            self._choose(pool, int(num_queries), labeled=labeled, rng=rng, memo=memo),
            dtype=np.int64,
        )
        if len(rows) != num_queries or len(np.unique(rows)) != len(rows):
            raise RuntimeError(f"{self.name} chose {len(rows)} rows, not {num_queries} distinct")
        return [pool.ids[i] for i in rows]

    @abstractmethod
    def _choose(
        self,
        pool: PoolOutputs,
        num_queries: int,
        *,
        labeled: PoolOutputs,
        rng: np.random.Generator,
        memo: dict[str, Any],
    ) -> np.ndarray:
        """Row indices into `pool` (num_queries distinct, most wanted first). Called only after
        the request is checked: 1 <= num_queries <= len(pool), required fields present."""

    def _check_request(
        self, pool: PoolOutputs, num_queries: int, labeled: PoolOutputs, memo: dict[str, Any]
    ) -> None:
        if not isinstance(num_queries, int | np.integer) or isinstance(num_queries, bool):
            raise AfterError(f"{self.name}: num_queries must be an int, got {num_queries!r}")
        if num_queries < 1:
            raise AfterError(
                f"{self.name}: num_queries must be at least 1, got {num_queries}; ask for one or "
                "more clips per round"
            )
        if num_queries > len(pool):
            raise AfterError(
                f"{self.name}: asked for {num_queries} clips but only {len(pool)} unlabeled clips "
                f"are left in the pool; ask for at most {len(pool)} (the pool is exhausted)"
            )
        if not isinstance(memo, dict):
            raise AfterError(f"{self.name}: memo must be a dict (start with {{}}), got {memo!r}")
        for field in sorted(self.requires):
            pool.require(field, self.name, "pool")
        if len(labeled):
            for field in sorted(self.labeled_requires):
                labeled.require(field, self.name, "labeled")
            overlap = set(pool.ids) & set(labeled.ids)
            if overlap:
                raise AfterError(
                    f"{self.name}: {len(overlap)} ids are both in the pool and labeled (e.g. "
                    f"{sorted(overlap)[0]!r}); pass only unlabeled clips as the pool"
                )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def top_k(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of the `k` largest `scores`, largest first; exact ties in random order (`rng`),
    never in array order, so no clip is favoured for where it sits in the pool."""
    order = np.lexsort((rng.random(len(scores)), -np.asarray(scores, dtype=np.float64)))
    return order[:k]


def spread(ranked: Sequence[str], groups: Sequence[Any], n: int) -> list[str]:
    """The first `n` of `ranked` (a strategy's picks, best first) taken round-robin over their
    `groups` (e.g. (speaker, predicted class)): every group's best pick, groups in the order of
    those picks, then every group's second best, and so on. A strategy's top picks often
    cluster on one voice or one confusable class; this keeps its ranking within each group
    while no group takes the whole round."""
    turn: dict[Any, int] = {}
    rank = []
    for position, group in enumerate(groups):
        rank.append((turn.get(group, 0), position))
        turn[group] = turn.get(group, 0) + 1
    return [ranked[p] for _, p in sorted(rank)[:n]]
