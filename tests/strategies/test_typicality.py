"""TypiClust and ProbCover pick typical clips that cover the pool, as their papers define."""

from __future__ import annotations

import numpy as np
import pytest

from after.strategies import PoolOutputs, cold_start, get_strategy
from after.strategies.typicality import cover, pure_radius, typicality


def _blobs(per: int = 40, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`k` tight blobs on the axes of 8-d space, plus one far outlier per blob."""
    rng = np.random.default_rng(seed)
    centres = 5.0 * np.eye(k, 8) + 1.0
    x = np.concatenate([c + 0.2 * rng.standard_normal((per, 8)) for c in centres])
    outliers = centres + 3.0 * rng.standard_normal((k, 8))
    blob = np.repeat(np.arange(k), per)
    return np.concatenate([x, outliers]).astype(np.float32), np.concatenate([blob, np.arange(k)])


def _pool(x: np.ndarray, rows: np.ndarray | None = None, classes: int = 4) -> PoolOutputs:
    rows = np.arange(len(x)) if rows is None else rows
    probs = np.full((len(rows), classes), 1 / classes)
    return PoolOutputs([f"c{i:03d}" for i in rows], probs=probs, embeddings=x[rows])


@pytest.mark.parametrize("name", ["typiclust", "probcover"])
def test_a_small_budget_takes_one_typical_clip_from_every_blob(name: str) -> None:
    x, blob = _blobs()
    picks = get_strategy(name).select(
        _pool(x), 4, labeled=PoolOutputs([]), rng=np.random.default_rng(0), memo={}
    )
    rows = [int(i[1:]) for i in picks]
    assert sorted(blob[rows]) == [0, 1, 2, 3]  # every blob once
    assert all(r < 160 for r in rows)  # never one of the outliers


@pytest.mark.parametrize("name", ["typiclust", "probcover"])
def test_blobs_already_labeled_are_left_for_uncovered_ones(name: str) -> None:
    x, blob = _blobs()
    labeled_rows = np.flatnonzero(blob == 0)[:3]
    pool_rows = np.setdiff1d(np.arange(len(x)), labeled_rows)
    picks = get_strategy(name).select(
        _pool(x, pool_rows),
        3,
        labeled=_pool(x, labeled_rows),
        rng=np.random.default_rng(1),
        memo={},
    )
    assert sorted(blob[[int(i[1:]) for i in picks]]) == [1, 2, 3]


def test_typicality_is_highest_at_a_blobs_centre() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 2))
    t = typicality(x, 20)
    centre = np.argmin((x**2).sum(1))
    edge = np.argmax((x**2).sum(1))
    assert t[centre] > np.median(t) > t[edge]


def test_the_radius_keeps_balls_pure_for_most_clips() -> None:
    x, _ = _blobs(per=60)
    delta = pure_radius(x, 4, 0.95, np.random.default_rng(0))
    # Wider than a blob (0.2 per axis) yet below the 7.1 between blob centres: balls stay pure.
    assert 1.0 < delta < 5.0 * np.sqrt(2)
    picks = cover(x, len(x), delta, len(x))  # every clip, greedy first, then farthest-first
    assert sorted(picks) == list(range(len(x)))


@pytest.mark.parametrize("method", ["typiclust", "probcover"])
def test_cold_starts(method: str) -> None:
    x, blob = _blobs()
    ids = [f"c{i:03d}" for i in range(len(x))]
    chosen, info = cold_start(
        ids,
        x,
        4,
        method=method,
        rng=np.random.default_rng(0),
        num_classes=4,  # type: ignore[arg-type]
    )
    assert info["method"] == method and len(set(chosen)) == 4
    assert sorted(blob[[int(i[1:]) for i in chosen]]) == [0, 1, 2, 3]
