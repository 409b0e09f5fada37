"""Metrics agree with scikit-learn on random and edge-case predictions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as sk

from after.errors import AfterError
from after.metrics import (
    classification_scores,
    confusion_matrix,
    format_mean_std,
    mean_std,
    paired_difference,
    summarize,
)

LABELS = ["anger", "happiness", "neutral", "sadness"]


@pytest.mark.filterwarnings("ignore::UserWarning")  # scikit-learn's notes on degenerate cases
@settings(max_examples=200, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(st.integers(0, len(LABELS) - 1), st.integers(0, len(LABELS) - 1)),
        min_size=1,
        max_size=60,
    )
)
def test_scores_match_scikit_learn(pairs: list[tuple[int, int]]) -> None:
    y_true, y_pred = (list(x) for x in zip(*pairs, strict=True))
    s = classification_scores(y_true, y_pred, LABELS)
    assert s["ua"] == pytest.approx(sk.balanced_accuracy_score(y_true, y_pred))
    assert s["wa"] == pytest.approx(sk.accuracy_score(y_true, y_pred))
    assert s["macro_f1"] == pytest.approx(
        sk.f1_score(y_true, y_pred, average="macro", zero_division=0)
    )
    assert s["micro_f1"] == pytest.approx(sk.f1_score(y_true, y_pred, average="micro"))
    expected = sk.confusion_matrix(y_true, y_pred, labels=range(len(LABELS)))
    assert (np.array(s["confusion"]) == expected).all()
    recall = sk.recall_score(
        y_true, y_pred, labels=range(len(LABELS)), average=None, zero_division=0
    )
    assert [s["per_class"][c]["recall"] for c in LABELS] == pytest.approx(recall)


def test_ua_is_not_fooled_by_the_majority_class() -> None:
    y_true = [0] * 90 + [1] * 10
    s = classification_scores(y_true, [0] * 100, ["neutral", "anger"])
    assert s["wa"] == 0.9 and s["ua"] == 0.5


def test_bad_inputs_are_clear_errors() -> None:
    with pytest.raises(AfterError, match="equal-length"):
        confusion_matrix([0, 1], [0], 2)
    with pytest.raises(AfterError, match=r"outside 0\.\.1"):
        confusion_matrix([0, 2], [0, 1], 2)
    with pytest.raises(AfterError, match="no clips"):
        confusion_matrix([], [], 2)


def test_paired_difference_is_wilcoxons_test() -> None:
    from scipy.stats import wilcoxon

    a, b = [0.6, 0.7, 0.65, 0.8, 0.75, 0.9], [0.5, 0.72, 0.6, 0.7, 0.7, 0.8]
    d = paired_difference(a, b)
    assert d["n"] == 6 and d["mean"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert d["wilcoxon_p"] == pytest.approx(wilcoxon(np.subtract(a, b)).pvalue)
    assert paired_difference([0.5, 0.5], [0.5, 0.5])["wilcoxon_p"] == 1.0
    with pytest.raises(AfterError):
        paired_difference([0.1], [0.1, 0.2])


def test_mean_std_across_folds() -> None:
    s = mean_std([0.5, 0.7, 0.6])
    assert s["mean"] == pytest.approx(0.6) and s["std"] == pytest.approx(0.1) and s["n"] == 3
    assert mean_std([0.4])["std"] == 0.0
    runs = [{"ua": 0.5, "wa": 0.6, "macro_f1": 0.4}, {"ua": 0.7, "wa": 0.8, "macro_f1": 0.6}]
    assert summarize(runs)["wa"]["mean"] == pytest.approx(0.7)
    assert format_mean_std(s) == "60.00 ± 10.00 (n=3)"
    # One run has no spread: no "± 0.00" that reads as a measured zero.
    assert format_mean_std(mean_std([0.262]), digits=1) == "26.2 (n=1)"
    assert format_mean_std(mean_std([0.262]), digits=1, with_n=False) == "26.2"


@pytest.mark.parametrize("n", [2, 5, 6, 9])
def test_the_smallest_wilcoxon_p_is_what_n_pairs_of_one_sign_give(n: int) -> None:
    from after.metrics import paired_difference, smallest_wilcoxon_p

    d = paired_difference(list(np.arange(1.0, n + 1)), [0.0] * n)
    assert d["wilcoxon_p"] == pytest.approx(smallest_wilcoxon_p(n)) == pytest.approx(2 / 2**n)
    assert d["min_p"] == smallest_wilcoxon_p(n)
    assert (d["min_p"] >= 0.05) == (n <= 5)  # below 6 pairs, p < 0.05 cannot happen


def test_wilson_interval_matches_published_values() -> None:
    """Wilson's score interval (Newcombe 1998, Table I: 81/263 -> 0.2553-0.3662)."""
    from after.metrics import wilson_interval

    lo, hi = wilson_interval(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert all(x != x for x in wilson_interval(0, 0))  # no clips: no interval


def test_the_audit_estimate_states_its_intervals_and_its_labels() -> None:
    from after.metrics import audit_estimate, describe_audit

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 60)
    pred = np.where(rng.random(60) < 0.7, truth, rng.integers(0, 4, 60))
    e = audit_estimate(truth.tolist(), pred.tolist(), 4, np.random.default_rng(1))
    assert e["audit_n"] == 60 and e["audit_acc"] == float((truth == pred).mean())
    assert e["audit_acc_lo"] < e["audit_acc"] < e["audit_acc_hi"]
    assert e["audit_ua_lo"] < e["audit_ua"] < e["audit_ua_hi"]
    assert abs(e["audit_ua"] - sk.balanced_accuracy_score(truth, pred)) < 1e-12
    again = audit_estimate(truth.tolist(), pred.tolist(), 4, np.random.default_rng(1))
    assert again == e  # seeded
    assert describe_audit(e).endswith("(60 audit labels)")
    assert audit_estimate([], [], 4, rng) == {"audit_n": 0}


def test_a_paired_difference_has_a_t_interval_and_few_pairs_are_flagged() -> None:
    from after.metrics import describe_difference, few_pairs_warning

    d = paired_difference([0.5, 0.6, 0.7], [0.45, 0.5, 0.69])
    half = 4.302652729911275 * np.std([0.05, 0.1, 0.01], ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert abs(d["ci_hi"] - d["ci_lo"] - 2 * half) < 1e-9
    assert describe_difference(d).endswith("(p=0.25, n=3*)")
    assert "3 paired run(s)" in few_pairs_warning(3) and few_pairs_warning(6) == ""
