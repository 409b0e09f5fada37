"""The frozen-features learner: a convex, deterministic logistic regression that matches
scikit-learn's, standardises constant dimensions safely, and picks its strength by inner CV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import after.train as train
from after.config import TrainConfig
from after.data.folds import Fold, make_folds
from after.data.manifest import Manifest
from after.models.classifier import FeatureHead
from after.models.linear import (
    choose_c,
    fit_head,
    fit_logistic,
    laplace_precision_tril,
    standardiser,
)
from after.testing.dummies import tone_corpus


def _blobs(n: int = 120, d: int = 10, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.standard_normal((n, d)) + 1.5 * np.eye(k, d)[y]
    return x, y


@pytest.mark.parametrize("c", [0.01, 1.0])
def test_the_fit_is_scikit_learns_logistic_regression(c: float) -> None:
    x, y = _blobs()
    y[:50] = 0  # imbalanced, so that the class weights matter
    ref = LogisticRegression(C=c, class_weight="balanced", tol=1e-10, max_iter=10_000).fit(x, y)
    q = np.eye(3)[y]
    weights = train.class_weights(q)
    w, b, _ = fit_logistic(x, q, q @ weights, c, tol=1e-10)
    np.testing.assert_allclose(w, ref.coef_, atol=1e-4)
    np.testing.assert_allclose(b, ref.intercept_, atol=1e-4)


def test_a_constant_dimension_gets_scale_one() -> None:
    x, y = _blobs()
    x[:, 3] = 0.0  # zero on every training clip (a ReLU unit that never fired)
    _, scale = standardiser(x)
    assert scale[3] == 1.0
    fit = fit_head(x, np.eye(3)[y], np.ones(len(y)), None, c=1.0)
    head = FeatureHead(10, 3)
    head.set_fit(fit)
    pool = torch.zeros(1, 10)
    pool[0, 3] = 5.0  # a pool clip that is not zero there
    # Before the fix the scale was clamped to 1e-6: this clip's input was 5e6.
    assert head.standardise(pool).abs().max() < 10


def test_c_is_chosen_within_the_training_clips_by_speaker() -> None:
    x, y = _blobs(n=90)
    speakers = [f"s{i % 6}" for i in range(90)]
    c, scores, scheme = choose_c(x, np.eye(3)[y], np.ones(90), speakers)
    assert scheme == "5-fold by speaker" and len(scores) > 3
    assert c == max(scores, key=lambda r: (r["cv_ua"], -r["c"]))["c"]
    c, scores, scheme = choose_c(x[:4], np.eye(3)[y[:4]], np.ones(4), speakers[:4])
    assert (c, scores) == (1.0, []) and scheme.startswith("none")


@pytest.fixture(scope="module")
def tones(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Fold]:
    m = tone_corpus(tmp_path_factory.mktemp("tones"), num_speakers=4, clips_per_label=6)
    return m, make_folds(m, "loso", seed=0).get(1)


def test_the_learner_is_the_same_for_every_seed(
    tones: tuple[Manifest, Fold], tmp_path: Path
) -> None:
    m, fold = tones
    runs = [
        train.fit(m, fold.train, fold.dev, "egemaps", TrainConfig(seed=s), cache_dir=tmp_path)
        for s in (0, 1)
    ]
    probs = [train.predict(r.classifier, m, fold.test, cache_dir=tmp_path) for r in runs]
    np.testing.assert_array_equal(probs[0], probs[1])
    assert train.evaluate(runs[0].classifier, m, fold.test, cache_dir=tmp_path)["ua"] >= 0.75
    record = runs[0].history[0]
    assert record["cv"] == "2-fold by speaker" or record["cv"].endswith("stratified")


def test_the_laplace_precision_is_the_objectives_hessian() -> None:
    x, y = _blobs(n=30, d=3)
    q = np.eye(3)[y]
    s = np.linspace(0.5, 1.5, 30)
    c = 0.7
    w, b, _ = fit_logistic(x, q, s, c)
    tril = laplace_precision_tril(x, q, s, c, w, b)

    def objective(theta: torch.Tensor) -> torch.Tensor:
        wb = theta.reshape(3, 4)  # class by class: 3 weights, then the bias
        z = torch.as_tensor(x) @ wb[:, :3].T + wb[:, 3]
        ce = -(torch.as_tensor(q) * torch.log_softmax(z, dim=1)).sum(dim=1)
        # the fit's objective, plus the unit prior on the bias that makes H invertible
        return c * (torch.as_tensor(s) * ce).sum() + 0.5 * (wb**2).sum()

    theta = torch.as_tensor(np.hstack([w, b[:, None]]).reshape(-1))
    hessian = torch.autograd.functional.hessian(objective, theta).numpy()
    np.testing.assert_allclose(tril @ tril.T, hessian, atol=1e-8)


def test_bald_on_frozen_features_sees_less_uncertainty_with_more_labels() -> None:
    x, y = _blobs(n=400, d=10, seed=1)
    pool = torch.as_tensor(_blobs(n=200, d=10, seed=2)[0], dtype=torch.float32)
    mutual_information = []
    for n in (15, 300):
        q = np.eye(3)[y[:n]]
        head = FeatureHead(10, 3)
        head.set_fit(fit_head(x[:n], q, np.ones(n), None, c=1.0, posterior=True))
        torch.manual_seed(0)
        mc = head.posterior_probs(pool, 64).double()
        mean = mc.mean(dim=2)
        entropy = -(mean * mean.log()).sum(dim=1)
        expected = -(mc * mc.log()).sum(dim=1).mean(dim=1)
        mi = entropy - expected
        assert torch.all(mi > -1e-9) and mi.max() > 1e-3  # BALD has something to rank
        # The draws scatter around the fitted model: widely with few labels, then closely.
        fitted = torch.softmax(head(pool), dim=1).double()
        assert (mean - fitted).abs().mean() < (0.3 if n == 15 else 0.05)
        mutual_information.append(float(mi.mean()))
    assert mutual_information[1] < 0.5 * mutual_information[0]
