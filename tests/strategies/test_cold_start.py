"""The seed set: the elbow of the k-means curve, one clip per cluster first, random, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from after.errors import AfterError
from after.strategies import cold_start, elbow_k
from after.strategies.cold_start import knee_index

CENTRES = np.array([[0.0, 0.0], [30.0, 0.0], [0.0, 30.0], [30.0, 30.0]])
SIZES = [40, 30, 20, 10]  # blob b has SIZES[b] clips, so the size order is the blob order
KS = range(2, 9)  # fewer k-means fits than the default 2..20, for speed


def four_blobs(seed: int = 0) -> tuple[list[str], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(4), SIZES)
    x = CENTRES[truth] + rng.standard_normal((len(truth), 2))
    order = rng.permutation(len(truth))  # blobs interleaved in the id order
    ids = [f"clip{i:03d}" for i in range(len(truth))]
    return ids, x[order], truth[order]


def test_knee_is_the_point_farthest_from_the_chord() -> None:
    assert knee_index([1, 2, 3, 4, 5, 6], [100, 50, 10, 8, 6, 5]) == 2
    assert knee_index([2, 3], [10, 5]) == 0  # no bend with two points
    assert knee_index([2, 3, 4], [5, 5, 5]) == 0  # flat curve


def test_elbow_finds_four_blobs() -> None:
    _, x, _ = four_blobs()
    k, inertias = elbow_k(x, range(2, 11), np.random.default_rng(0))
    assert k == 4
    assert len(inertias) == 9
    assert all(a >= b for a, b in itertools.pairwise(inertias))


def test_kmeans_start_takes_the_clip_nearest_each_blob_centre_largest_blob_first() -> None:
    ids, x, truth = four_blobs()
    got, info = cold_start(ids, x, 4, method="kmeans", rng=np.random.default_rng(1))
    assert info["method"] == "kmeans" and info["k"] == 4
    assert info["k_values"] == list(range(2, 21)) and len(info["inertias"]) == 19
    rows = [ids.index(i) for i in got]
    assert truth[rows].tolist() == [0, 1, 2, 3]
    for b, row in enumerate(rows):
        members = np.flatnonzero(truth == b)
        centre = x[members].mean(axis=0)  # k-means finds the blob exactly
        nearest = members[np.argmin(((x[members] - centre) ** 2).sum(axis=1))]
        assert row == nearest


def test_round_robin_fills_to_num_and_fewer_than_k_takes_the_largest_clusters() -> None:
    ids, x, truth = four_blobs()
    got, _ = cold_start(ids, x, 14, method="kmeans", rng=np.random.default_rng(1), k_values=KS)
    t = truth[[ids.index(i) for i in got]].tolist()
    assert len(set(got)) == 14
    assert t == [0, 1, 2, 3] * 3 + [0, 1]
    two, _ = cold_start(ids, x, 2, method="kmeans", rng=np.random.default_rng(1), k_values=KS)
    assert two == got[:2]
    every, _ = cold_start(ids, x, 100, method="kmeans", rng=np.random.default_rng(1), k_values=KS)
    assert sorted(every) == sorted(ids)
    assert truth[[ids.index(i) for i in every[-30:]]].tolist() == [0, 1] * 10 + [0] * 10


def test_given_k_values_and_determinism() -> None:
    ids, x, _ = four_blobs()
    a = cold_start(ids, x, 6, method="kmeans", rng=np.random.default_rng(3), k_values=[2, 4, 8])
    b = cold_start(ids, x, 6, method="kmeans", rng=np.random.default_rng(3), k_values=[8, 2, 4])
    assert a == b
    assert a[1]["k_values"] == [2, 4, 8] and a[1]["k"] == 4


def test_random_start() -> None:
    ids, _, _ = four_blobs()
    got, info = cold_start(ids, None, 10, method="random", rng=np.random.default_rng(0))
    assert len(set(got)) == 10 and set(got) <= set(ids)
    assert info == {"method": "random", "k": None, "inertias": [], "k_values": []}
    again, _ = cold_start(ids, None, 10, method="random", rng=np.random.default_rng(0))
    other, _ = cold_start(ids, None, 10, method="random", rng=np.random.default_rng(1))
    assert again == got and other != got


def test_tiny_pools() -> None:
    got, info = cold_start(["a", "b"], np.eye(2), 1, method="kmeans", rng=np.random.default_rng(0))
    assert got in (["a"], ["b"]) and info["k"] == 1
    got, info = cold_start(["a"], np.ones((1, 3)), 1, method="kmeans", rng=np.random.default_rng(0))
    assert got == ["a"]


def test_errors() -> None:
    ids, x, _ = four_blobs()
    rng = np.random.default_rng(0)
    with pytest.raises(AfterError, match="only 100 are available"):
        cold_start(ids, x, 101, method="kmeans", rng=rng)
    with pytest.raises(AfterError, match="positive"):
        cold_start(ids, x, 0, method="random", rng=rng)
    with pytest.raises(AfterError, match="needs embeddings"):
        cold_start(ids, None, 5, method="kmeans", rng=rng)
    with pytest.raises(AfterError, match=r"expected \(100, D\)"):
        cold_start(ids, x[:50], 5, method="kmeans", rng=rng)
    with pytest.raises(AfterError, match="unknown method"):
        cold_start(ids, x, 5, method="alps", rng=rng)  # type: ignore[arg-type]
    with pytest.raises(AfterError, match="duplicates"):
        cold_start(["a", "a"], None, 1, method="random", rng=rng)
    with pytest.raises(AfterError, match=r"1\.\.100"):
        elbow_k(x, [2, 200], rng)
    with pytest.raises(AfterError, match="empty"):
        elbow_k(x, [], rng)
