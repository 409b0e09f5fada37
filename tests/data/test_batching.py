"""Length-bucketed batches cover every clip once and group similar lengths."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from after.data.batching import bucket_batches


@settings(max_examples=100, deadline=None)
@given(
    durations=st.lists(st.floats(0.1, 30.0), min_size=1, max_size=80),
    batch_size=st.integers(1, 9),
    seed=st.integers(0, 1000),
)
def test_every_clip_once_in_batches_of_the_size(
    durations: list[float], batch_size: int, seed: int
) -> None:
    batches = bucket_batches(durations, batch_size, np.random.default_rng(seed))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(durations)))
    assert sum(len(b) < batch_size for b in batches) <= 1


def test_similar_lengths_share_a_batch_and_the_order_changes() -> None:
    durations = [1.0] * 8 + [10.0] * 8
    a = bucket_batches(durations, 8, np.random.default_rng(0))
    b = bucket_batches(durations, 8, np.random.default_rng(1))
    for batch in a:
        assert len({durations[i] for i in batch}) == 1
    assert a != b
