"""Length-bucketed batches: clips of similar length share a batch, so little of it is padding."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bucket_batches(
    durations: Sequence[float], batch_size: int, rng: np.random.Generator
) -> list[list[int]]:
    """Indices 0..N-1 cut into batches of `batch_size` clips of similar duration, in random order.

    Clips are sorted by duration with random tie-breaking, cut into consecutive batches, and the
    batches are shuffled; a new `rng` state gives a new grouping of equal-length clips and a new
    order. Every index appears exactly once; the last batch may be smaller.
    """
    n = len(durations)
    order = np.lexsort((rng.random(n), np.asarray(durations, dtype=float)))
    batches = [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]
