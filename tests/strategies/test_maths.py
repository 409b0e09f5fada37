"""Each strategy computes what its paper defines, on arrays small enough to check by hand."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from after.strategies import PoolOutputs, get_strategy
from after.strategies.base import spread
from after.strategies.bayesian import bald_scores, mc_max_entropy, variation_ratios
from after.strategies.diversity import ClusterMargin, grad_embeddings, round_robin
from after.strategies.uncertainty import entropy, least_confidence, top2_margin

NONE = PoolOutputs(ids=[])


def ids(n: int) -> list[str]:
    return [f"c{i}" for i in range(n)]


def select(
    name: str,
    pool: PoolOutputs,
    n: int,
    seed: int = 0,
    labeled: PoolOutputs = NONE,
    memo: dict[str, Any] | None = None,
) -> list[int]:
    """Picked rows (indices into the pool) rather than ids."""
    memo = {} if memo is None else memo
    rng = np.random.default_rng(seed)
    got = get_strategy(name).select(pool, n, labeled=labeled, rng=rng, memo=memo)
    return [pool.ids.index(i) for i in got]


# rows: confident; flat over 3 classes (max entropy); two-way tie (min margin); 0.4 top (min max)
PROBS = np.array(
    [
        [0.90, 0.05, 0.05, 0.00],
        [0.28, 0.28, 0.28, 0.16],
        [0.50, 0.50, 0.00, 0.00],
        [0.40, 0.20, 0.20, 0.20],
    ]
)


def test_entropy_picks_the_flattest_row() -> None:
    assert entropy(np.array([[1.0, 0.0], [0.5, 0.5]])) == pytest.approx([0.0, math.log(2)])
    assert entropy(np.full((1, 4), 0.25))[0] == pytest.approx(math.log(4))
    assert select("entropy", PoolOutputs(ids(4), probs=PROBS), 4) == [1, 3, 2, 0]
    uniform = np.vstack([PROBS, np.full((1, 4), 0.25)])
    assert select("entropy", PoolOutputs(ids(5), probs=uniform), 1) == [4]


def test_least_confidence_picks_the_lowest_top_probability() -> None:
    assert least_confidence(PROBS) == pytest.approx([0.1, 0.72, 0.5, 0.6])
    assert select("least_confidence", PoolOutputs(ids(4), probs=PROBS), 4) == [1, 3, 2, 0]
    no_flat = PROBS[[0, 2, 3]]
    assert select("least_confidence", PoolOutputs(ids(3), probs=no_flat), 1) == [2]


def test_margin_picks_the_smallest_top2_gap() -> None:
    assert top2_margin(PROBS) == pytest.approx([0.85, 0.0, 0.0, 0.2])
    no_flat = PROBS[[0, 2, 3]]  # 0.5/0.5 wins although 0.4/0.2/0.2/0.2 has more entropy
    assert select("margin", PoolOutputs(ids(3), probs=no_flat), 3) == [1, 2, 0]
    assert entropy(no_flat)[2] > entropy(no_flat)[1]


def passes(*rows: list[float]) -> np.ndarray:
    """(C, S) from S rows of class probabilities."""
    return np.array(rows, dtype=float).T


# S = 4 passes, C = 2 classes
AGREE_UNSURE = passes([0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5])
DISAGREE = passes([1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0])  # same mean as AGREE_UNSURE
AGREE_SURE = passes([0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1])
MILD = passes([0.8, 0.2], [0.6, 0.4], [0.8, 0.2], [0.6, 0.4])
MC = np.stack([AGREE_UNSURE, DISAGREE, AGREE_SURE, MILD])


def test_bald_is_zero_when_passes_agree_and_ranks_disagreement_first() -> None:
    scores = bald_scores(MC)
    assert scores[0] == 0.0 and scores[2] == 0.0
    assert scores[1] == pytest.approx(math.log(2))
    h = entropy(MC.mean(axis=2))
    expected_mild = h[3] - entropy(MC[3].T).mean()
    assert scores[3] == pytest.approx(expected_mild) and scores[3] > 0
    assert h[0] == pytest.approx(h[1])  # equally uncertain mean predictive
    pool = PoolOutputs(ids(4), mc_probs=MC)
    tails = set()
    for seed in range(12):
        order = select("bald", pool, 4, seed=seed)
        assert order[:2] == [1, 3]
        tails.add(tuple(order[2:]))
    assert tails == {(0, 2), (2, 0)}  # zero rows tie: neither's uncertainty counts


def test_variation_ratios_count_the_modal_vote() -> None:
    votes = [0, 0, 1, 2, 0]  # argmax of each of 5 passes over 3 classes
    mc = np.stack([np.eye(3)[v] * 0.6 + 0.4 / 3 for v in votes], axis=1)[None]
    assert variation_ratios(mc) == pytest.approx([1 - 3 / 5])
    assert variation_ratios(MC[[0, 1, 2]]) == pytest.approx([0.0, 0.5, 0.0])
    pool = PoolOutputs(ids(4), mc_probs=MC)
    assert select("dbal_variation_ratios", pool, 1) == [1]


def test_max_entropy_uses_the_mc_mean() -> None:
    assert mc_max_entropy(MC) == pytest.approx(entropy(MC.mean(axis=2)))
    assert mc_max_entropy(MC)[:2] == pytest.approx([math.log(2)] * 2)
    pool = PoolOutputs(ids(3), mc_probs=MC[[2, 3, 1]])
    assert select("dbal_max_entropy", pool, 2) == [2, 1]


def test_coreset_picks_the_farthest_point_then_the_farthest_from_the_new_set() -> None:
    x = np.array([[0.0], [1.0], [2.0], [10.5], [5.5]])
    pool = PoolOutputs(ids(5), embeddings=x)
    # no labels: farthest from the mean (3.8) is 10.5; then 0 (10.5 away); then 5.5 (5 > 2)
    assert select("coreset", pool, 3) == [3, 0, 4]
    labeled = PoolOutputs(["l0", "l1"], embeddings=np.array([[0.0], [9.0]]))
    # from {0, 9}: 5.5 (3.5 away) first; then from {0, 9, 5.5}: 2 (2) beats 10.5 (1.5) and 1 (1);
    # then 10.5 (1.5) beats 1 (1)
    assert select("coreset", pool, 3, labeled=labeled) == [4, 2, 3]


def test_badge_starts_at_the_largest_gradient_then_samples_far_points_never_repeating() -> None:
    g = np.array([[10.0, 0], [10.01, 0], [9.99, 0], [-10.0, 0], [-10.0, 0], [-10.0, 0]])
    pool = PoolOutputs(ids(6), grad_embeddings=g)
    seconds = set()
    for seed in range(20):
        order = select("badge", pool, 6, seed=seed)
        assert order[0] == 1  # the largest norm
        assert order[1] in {3, 4, 5}  # D^2 weight 3 x 400 against 0.0005 near the first pick
        seconds.add(order[1])
        # the far copies now have D = 0: the near points (D^2 = 1e-4, 4e-4) come next, then the
        # copies, uniformly, each once
        assert set(order[2:4]) == {0, 2}
        assert sorted(order) == list(range(6))
    assert seconds == {3, 4, 5}
    dupes = PoolOutputs(ids(5), grad_embeddings=np.ones((5, 3)))
    assert sorted(select("badge", dupes, 5)) == list(range(5))


def blobs(centres: np.ndarray, per: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.repeat(centres, per, axis=0) + spread * rng.standard_normal((len(centres) * per, 2))
    return x, np.repeat(np.arange(len(centres)), per)


def test_alps_picks_one_clip_per_well_separated_cluster() -> None:
    rng = np.random.default_rng(0)
    directions = np.eye(3) * 5.0  # surprisal profiles peaking on different segments
    x = np.repeat(directions, 15, axis=0) + rng.uniform(0, 0.2, (45, 3))
    truth = np.repeat(np.arange(3), 15)
    pool = PoolOutputs(ids(45), surprisal=x * rng.uniform(0.5, 3.0, (45, 1)))  # scale-free
    for seed in range(5):
        rows = select("alps", pool, 3, seed=seed)
        assert sorted(truth[rows]) == [0, 1, 2]
    rows = select("alps", pool, 9, seed=0)
    assert set(truth[rows]) == {0, 1, 2}


def test_cluster_margin_spreads_picks_over_clusters() -> None:
    x, truth = blobs(np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]]), 20, 0.3, 0)
    margin = np.empty(60)
    margin[truth == 0] = np.linspace(0.01, 0.2, 20)  # the 20 lowest margins all in cluster 0
    rest = np.linspace(0.3, 0.9, 40)
    margin[truth == 1], margin[truth == 2] = rest[0::2], rest[1::2]
    probs = np.stack([(1 + margin) / 2, (1 - margin) / 2], axis=1)
    pool = PoolOutputs(ids(60), probs=probs, embeddings=x)
    assert set(truth[select("margin", pool, 3)]) == {0}
    memo: dict[str, Any] = {}
    rows = select("cluster_margin", pool, 3, memo=memo)
    assert len(memo["centroids"]) == 3
    # 30 candidates: the 20 of cluster 0 and the 5 lowest margins of each other one. Smallest
    # clusters first, one clip of each, drawn at random among its candidates.
    assert sorted(truth[rows[:2]]) == [1, 2] and truth[rows[2]] == 0
    lowest = {
        c: set(np.flatnonzero(truth == c)[np.argsort(margin[truth == c])[:5]]) for c in (1, 2)
    }
    assert all(r in lowest[truth[r]] for r in rows[:2])
    # 6 queries: 60 candidates, 20 per cluster: two of each; other seeds pick other clips.
    six = [select("cluster_margin", pool, 6, seed=s, memo=memo) for s in range(4)]
    assert all(sorted(truth[r]) == [0, 0, 1, 1, 2, 2] for r in six)
    assert len({tuple(sorted(r)) for r in six}) > 1


def test_cluster_margin_visits_small_clusters_first_round_robin() -> None:
    assert round_robin(np.array([0, 0, 0, 1, 2, 2])).tolist() == [3, 4, 0, 5, 1, 2]
    # equal sizes: the cluster with the earlier (lower-margin) candidate first
    assert round_robin(np.array([7, 5, 7, 5])).tolist() == [0, 1, 2, 3]


def test_cluster_margin_uses_minibatch_kmeans_above_hac_max() -> None:
    x, truth = blobs(np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]]), 40, 0.3, 1)
    probs = np.tile([0.6, 0.4], (120, 1))
    pool = PoolOutputs(ids(120), probs=probs, embeddings=x)
    strategy = ClusterMargin(cluster_size=40, hac_max=50)
    memo: dict[str, Any] = {}
    got = strategy.select(pool, 3, labeled=NONE, rng=np.random.default_rng(0), memo=memo)
    assert memo["clustering"]["method"] == "minibatch-kmeans"
    assert len(memo["centroids"]) == 3
    assert sorted(truth[[pool.ids.index(i) for i in got]]) == [0, 1, 2]
    clusters = np.array([memo["clusters"][i] for i in pool.ids])
    for t in range(3):
        assert len(set(clusters[truth == t])) == 1


def test_grad_embedding_is_the_output_layer_gradient() -> None:
    import torch

    h = torch.randn(3, 5)
    w = torch.randn(4, 5, requires_grad=True)
    logits = h @ w.T
    probs = torch.softmax(logits, -1).detach().numpy()
    expected = []
    for i in range(3):
        w.grad = None
        loss = torch.nn.functional.cross_entropy(logits[i : i + 1], logits[i : i + 1].argmax(1))
        loss.backward(retain_graph=True)
        expected.append(w.grad.flatten().numpy().copy())
    np.testing.assert_allclose(grad_embeddings(probs, h.numpy()), expected, atol=1e-5)


def test_spread_takes_every_groups_best_pick_before_any_seconds() -> None:
    ranked = ["a1", "a2", "a3", "b1", "c1", "b2"]
    groups = ["A", "A", "A", "B", "C", "B"]
    assert spread(ranked, groups, 4) == ["a1", "b1", "c1", "a2"]
    assert spread(ranked, groups, 6) == ["a1", "b1", "c1", "a2", "b2", "a3"]


def test_cohen_kappa() -> None:
    from after.metrics import cohen_kappa

    assert cohen_kappa([0, 1, 2, 1], [0, 1, 2, 1], 3) == 1.0
    # observed 0.5; expected (0.5 * 0.5) + (0.5 * 0.5) = 0.5: no better than chance
    assert cohen_kappa([0, 0, 1, 1], [0, 1, 0, 1], 2) == 0.0
    assert cohen_kappa([0, 0, 1, 1], [1, 1, 0, 0], 2) == -1.0
