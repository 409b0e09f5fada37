"""Every registered strategy keeps the contract the active-learning loop relies on."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from after.errors import AfterError
from after.strategies import REQUIREMENTS, STRATEGIES, PoolOutputs, QueryStrategy, get_strategy

NAMES = list(STRATEGIES)
C, S, D, L = 4, 8, 16, 12
LABELED = [f"lab{i:02d}" for i in range(20)]
TEST = [f"test{i:02d}" for i in range(30)]
POOL = [f"clip{i:03d}" for i in range(200)]


def outputs(ids: list[str], seed: int) -> PoolOutputs:
    """Every field, random but valid, for `ids`."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    mc = rng.dirichlet(np.ones(C), size=(n, S)).transpose(0, 2, 1)  # (N, C, S)
    emb = rng.standard_normal((n, D)).astype(np.float32)
    probs = rng.dirichlet(np.ones(C), size=n)
    grad = (probs[:, :, None] * emb[:, None, :]).reshape(n, C * D)
    return PoolOutputs(
        ids=list(ids),
        probs=probs,
        mc_probs=mc,
        embeddings=emb,
        grad_embeddings=grad,
        surprisal=rng.gamma(2.0, size=(n, L)),
    )


@pytest.fixture(scope="module")
def pool() -> PoolOutputs:
    return outputs(POOL, 0)


@pytest.fixture(scope="module")
def labeled() -> PoolOutputs:
    return outputs(LABELED, 1)


def pick(
    name: str,
    pool: PoolOutputs,
    labeled: PoolOutputs,
    n: int,
    seed: int = 0,
    memo: dict[str, Any] | None = None,
) -> list[str]:
    memo = {} if memo is None else memo
    rng = np.random.default_rng(seed)
    return get_strategy(name).select(pool, n, labeled=labeled, rng=rng, memo=memo)


def test_registry_has_every_name_and_unknown_names_list_them() -> None:
    assert NAMES == [
        "random",
        "entropy",
        "least_confidence",
        "margin",
        "bald",
        "dbal_variation_ratios",
        "dbal_max_entropy",
        "badge",
        "coreset",
        "alps",
        "cluster_margin",
        "typiclust",
        "probcover",
    ]
    for name, cls in STRATEGIES.items():
        assert isinstance(get_strategy(name), cls)
        assert issubclass(cls, QueryStrategy)
        assert cls.requires <= REQUIREMENTS
        assert cls.labeled_requires <= cls.requires
    with pytest.raises(AfterError, match="badge, coreset"):
        get_strategy("bagde")


@pytest.mark.parametrize("name", NAMES)
def test_returns_n_distinct_pool_ids_and_a_json_memo(
    name: str, pool: PoolOutputs, labeled: PoolOutputs
) -> None:
    memo: dict[str, Any] = {}
    ids = pick(name, pool, labeled, 15, memo=memo)
    assert len(ids) == 15
    assert len(set(ids)) == 15
    assert set(ids) <= set(POOL)
    assert not set(ids) & (set(LABELED) | set(TEST))
    json.dumps(memo)


@pytest.mark.parametrize("name", NAMES)
def test_the_whole_pool_can_be_taken(name: str, pool: PoolOutputs, labeled: PoolOutputs) -> None:
    small = outputs(POOL[:30], 5)
    assert sorted(pick(name, small, labeled, 30)) == sorted(POOL[:30])


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_ids_and_seeds_matter_only_where_the_rng_is_used(
    name: str, pool: PoolOutputs, labeled: PoolOutputs
) -> None:
    first = pick(name, pool, labeled, 12, seed=7)
    assert pick(name, pool, labeled, 12, seed=7) == first
    others = [pick(name, pool, labeled, 12, seed=s) for s in range(4)]
    if STRATEGIES[name].deterministic:
        assert all(o == first for o in others)  # no exact ties in continuous random data
    else:
        assert any(o != first for o in others)


@pytest.mark.parametrize("name", NAMES)
def test_an_exhausted_pool_or_no_queries_is_a_user_error(
    name: str, pool: PoolOutputs, labeled: PoolOutputs
) -> None:
    with pytest.raises(AfterError, match="only 200 unlabeled clips"):
        pick(name, pool, labeled, 201)
    with pytest.raises(AfterError, match="at least 1"):
        pick(name, pool, labeled, 0)
    empty = PoolOutputs(ids=[])
    with pytest.raises(AfterError, match="only 0 unlabeled"):
        pick(name, empty, labeled, 1)


@pytest.mark.parametrize(
    ("name", "field"), [(n, f) for n in NAMES for f in sorted(STRATEGIES[n].requires)]
)
def test_a_missing_field_is_named(
    name: str, field: str, pool: PoolOutputs, labeled: PoolOutputs
) -> None:
    with pytest.raises(AfterError, match=rf"{name}.*pool\.{field}"):
        pick(name, replace(pool, **{field: None}), labeled, 5)


@pytest.mark.parametrize("name", NAMES)
def test_an_empty_labeled_set_with_placeholder_arrays_is_fine(name: str, pool: PoolOutputs) -> None:
    # the loop passes (0, 1) arrays when nothing is labeled yet
    none = PoolOutputs(ids=[], embeddings=np.zeros((0, 1)), surprisal=np.zeros((0, 1)))
    assert len(pick(name, pool, none, 10)) == 10
    assert len(pick(name, pool, PoolOutputs(ids=[]), 10)) == 10


@pytest.mark.parametrize("name", NAMES)
def test_a_pool_of_identical_clips_still_gives_distinct_ids(name: str) -> None:
    one = outputs(["x"], 6)
    n = 12
    same = PoolOutputs(
        ids=[f"dup{i}" for i in range(n)],
        **{f: np.repeat(getattr(one, f), n, axis=0) for f in REQUIREMENTS},
    )
    assert len(set(pick(name, same, PoolOutputs(ids=[]), 8))) == 8
    assert len(set(pick(name, same, PoolOutputs(ids=[]), n))) == n
    zeros = PoolOutputs(ids=same.ids, surprisal=np.zeros((n, L)), embeddings=np.zeros((n, D)))
    if STRATEGIES[name].requires <= {"surprisal", "embeddings"}:
        assert len(set(pick(name, zeros, PoolOutputs(ids=[]), 5))) == 5


def test_a_corrupt_cluster_margin_memo_says_to_start_afresh(pool: PoolOutputs) -> None:
    with pytest.raises(AfterError, match="empty memo"):
        pick("cluster_margin", pool, PoolOutputs(ids=[]), 3, memo={"clusters": {}})
    memo = {"clusters": {}, "centroids": [[0.0, 1.0]]}
    with pytest.raises(AfterError, match="2 dimensions but the embeddings have 16"):
        pick("cluster_margin", pool, PoolOutputs(ids=[]), 3, memo=memo)


def test_coreset_needs_labeled_embeddings_when_there_are_labeled_clips(pool: PoolOutputs) -> None:
    with pytest.raises(AfterError, match=r"coreset.*labeled\.embeddings"):
        pick("coreset", pool, PoolOutputs(ids=LABELED), 5)


@pytest.mark.parametrize("name", NAMES)
def test_a_second_round_with_the_memo_works_on_a_smaller_pool(
    name: str, pool: PoolOutputs, labeled: PoolOutputs
) -> None:
    memo: dict[str, Any] = {}
    first = pick(name, pool, labeled, 20, seed=1, memo=memo)
    memo = json.loads(json.dumps(memo))  # as the loop stores it
    rest = [i for i in POOL if i not in set(first)]
    smaller = outputs(rest, 2)
    second = pick(name, smaller, outputs(LABELED + first, 3), 20, seed=2, memo=memo)
    assert len(set(second)) == 20
    assert set(second) <= set(rest)
    again = pick(name, smaller, outputs(LABELED + first, 3), 20, seed=2, memo=memo)
    assert again == second  # the memo (even once extended) gives the same answer


def test_cluster_margin_memo_holds_clusters_and_centroids(
    pool: PoolOutputs, labeled: PoolOutputs
) -> None:
    memo: dict[str, Any] = {}
    pick("cluster_margin", pool, labeled, 5, memo=memo)
    assert set(memo["clusters"]) == set(POOL)
    k = len(memo["centroids"])
    assert k == 10  # 200 clips / 20
    assert {len(c) for c in memo["centroids"]} == {D}
    assert set(memo["clusters"].values()) == set(range(k))
    newcomer = outputs(["new"], 9)
    pick("cluster_margin", newcomer, labeled, 1, memo=memo)
    assert memo["clusters"]["new"] in range(k)
    assert len(memo["centroids"]) == k  # built once


def test_a_pool_overlapping_the_labeled_set_is_refused(pool: PoolOutputs) -> None:
    with pytest.raises(AfterError, match="both in the pool and labeled"):
        pick("coreset", pool, outputs(POOL[:3], 4), 5)


def test_ties_are_broken_by_the_rng_not_by_pool_order() -> None:
    flat = PoolOutputs(ids=POOL, probs=np.full((200, C), 1 / C))
    firsts = {pick("entropy", flat, PoolOutputs(ids=[]), 1, seed=s)[0] for s in range(10)}
    assert len(firsts) > 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"probs": np.full((3, 2), 0.5)}, "probs: shape"),
        ({"probs": np.array([[0.5, 0.6], [0.5, 0.5]])}, "probs: row 0 sums"),
        ({"probs": np.array([[3.0, -2.0], [0.5, 0.5]])}, "probs: values outside"),
        ({"embeddings": np.array([[0.0], [np.nan]])}, "embeddings: row 1 holds NaN"),
        ({"mc_probs": np.full((2, 2), 0.5)}, "mc_probs: shape"),
        ({"mc_probs": np.full((2, 3, 4), 0.5)}, "mc_probs: row 0 sums"),
        ({"surprisal": np.zeros((2, 0))}, "surprisal: shape .* empty"),
        (
            {"probs": np.full((2, 2), 0.5), "mc_probs": np.full((2, 4, 3), 0.25)},
            "probs has 2 classes but mc_probs has 4",
        ),
    ],
)
def test_pool_outputs_validate_every_field(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(AfterError, match=match):
        PoolOutputs(ids=["a", "b"], **kwargs)


def test_pool_outputs_refuse_duplicate_ids_and_keep_float32() -> None:
    with pytest.raises(AfterError, match="duplicate ids"):
        PoolOutputs(ids=["a", "b", "a"])
    emb = np.zeros((2, 3), dtype=np.float32)
    out = PoolOutputs(ids=["a", "b"], embeddings=emb, probs=np.array([[1, 0], [0, 1]]))
    assert out.embeddings is emb
    assert out.probs is not None and out.probs.dtype == np.float64
