"""The frozen-features learner: a convex, deterministic logistic regression that matches
scikit-learn's, standardises constant dimensions safely, and picks its strength by inner CV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from sklearn.linear_model import LogisticRegression

import after.inference as inference
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
    speaker_standardise,
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
    probs = [inference.predict(r.classifier, m, fold.test, cache_dir=tmp_path) for r in runs]
    np.testing.assert_array_equal(probs[0], probs[1])
    assert inference.evaluate(runs[0].classifier, m, fold.test, cache_dir=tmp_path)["ua"] >= 0.75
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


def _speaker_offsets(
    n_per: int = 30, speakers: int = 6, seed: int = 0, one_class_each: bool = False
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Clips of 3 classes whose features are shifted by a large per-speaker offset; with
    `one_class_each`, every speaker shows a single class (its mean then is its class)."""
    rng = np.random.default_rng(seed)
    xs, ys, groups = [], [], []
    for s in range(speakers):
        y = np.full(n_per, s % 3) if one_class_each else np.arange(n_per) % 3
        x = rng.standard_normal((n_per, 8)) + 1.2 * np.eye(3, 8)[y] + 6 * rng.standard_normal(8)
        xs.append(x)
        ys.append(y)
        groups += [f"s{s}"] * n_per
    return np.vstack(xs), np.concatenate(ys), groups


def test_speaker_standardisation_uses_each_speakers_clips_and_shrinks_small_speakers() -> None:
    x, _, groups = _speaker_offsets()
    prior = (x.mean(axis=0), x.var(axis=0))
    own = speaker_standardise(x, groups, prior, prior_clips=0.0)
    rows = np.array(groups) == "s2"
    np.testing.assert_allclose(own[rows].mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(own[rows].std(axis=0), 1.0, atol=1e-9)
    # A speaker with one clip and a strong prior is standardised as the prior would.
    alone = speaker_standardise(x[:1], ["solo"], prior, prior_clips=1e9)
    np.testing.assert_allclose(alone[0], (x[0] - prior[0]) / np.sqrt(prior[1]), rtol=1e-6)
    # A speaker's rows do not depend on the other speakers'.
    part = speaker_standardise(x[rows], list(np.array(groups)[rows]), prior)
    np.testing.assert_allclose(part, speaker_standardise(x, groups, prior)[rows])


@pytest.mark.parametrize("one_class_each", [False, True])
def test_the_inner_cv_chooses_the_view_that_generalises(one_class_each: bool) -> None:
    x, y, groups = _speaker_offsets(one_class_each=one_class_each)
    prior = (x.mean(axis=0), x.var(axis=0))
    views = {"clip": x, "speaker": speaker_standardise(x, groups, prior)}
    fit = fit_head(views, np.eye(3)[y], np.ones(len(y)), groups)
    # Offsets hide the classes unless each speaker is standardised; but where each speaker shows
    # one class, its own statistics erase that class, and the clip view wins.
    assert fit.view == ("clip" if one_class_each else "speaker")
    assert set(fit.view_cv) == {"clip", "speaker"}
    assert fit.view_cv[fit.view] > fit.view_cv[({"clip", "speaker"} - {fit.view}).pop()]


def test_the_speaker_view_and_self_training_go_through_fit_predict_and_save(
    tones: tuple[Manifest, Fold], tmp_path: Path
) -> None:
    from dataclasses import replace

    from after.models.classifier import load_classifier
    from after.predict import predict_files

    m, fold = tones
    labeled, pool = list(fold.train[::3]), [i for i in fold.train if i not in fold.train[::3]]
    # The learner sees pool clips without labels, as in an active-learning run.
    view = Manifest([replace(u, label=None) if u.id in pool else u for u in m])
    config = TrainConfig(feature_view="speaker", self_training=1.0, pseudo_threshold=0.5)
    result = train.fit(
        view,
        labeled,
        [],
        "egemaps",
        config,
        cache_dir=tmp_path,
        unlabeled_ids=pool,
        labels=m.labels,
    )
    record = result.history[0]
    assert record["view"] == "speaker" and 0 < record["pseudo_labels"] <= len(pool)
    clf = result.classifier
    probs = inference.predict(clf, m, fold.test, cache_dir=tmp_path)
    loaded = load_classifier(clf.save(tmp_path / "model"))
    assert loaded.module.view == "speaker"  # type: ignore[union-attr]
    np.testing.assert_allclose(inference.predict(loaded, m, fold.test, cache_dir=tmp_path), probs)
    # predict reads a speaker's files from their folder: the same statistics, the same output.
    files = [Path(m[i].path) for i in fold.test]
    assert {f.parent for f in files} == {files[0].parent}
    records = list(predict_files(loaded, files, on_error=pytest.fail, speaker_by="folder"))
    np.testing.assert_allclose(
        [[r["scores"][label] for label in loaded.labels] for r in records], probs, atol=1e-6
    )
    # A long file among them (classified in windows, each alone) leaves the pass whole.
    long = files[0].parent / "long.wav"
    sf.write(long, np.tile(sf.read(files[0])[0], 60), 16000)
    mixed = [*files[:2], long, *files[2:]]
    got = {
        r["file"]: r["scores"]
        for r in predict_files(loaded, mixed, on_error=pytest.fail, speaker_by="folder")
        if "start_s" not in r
    }
    np.testing.assert_allclose(
        [[got[str(f)][label] for label in loaded.labels] for f in files], probs, atol=1e-6
    )
    long.unlink()
    alone = list(predict_files(loaded, files, on_error=pytest.fail, speaker_by="file"))
    assert [r["scores"] for r in alone] != [r["scores"] for r in records]
    # The view is applied: the same head on the clip view predicts otherwise.
    loaded.module.view = "clip"  # type: ignore[union-attr]
    assert not np.allclose(inference.predict(loaded, m, fold.test, cache_dir=tmp_path), probs)


def test_auto_offers_the_speaker_view_only_where_a_speaker_has_several_clips(
    tones: tuple[Manifest, Fold], tmp_path: Path
) -> None:
    """With speakers, the inner CV weighs both views; with each clip its own speaker (a folder
    prepared without speakers) there is nothing to adapt to, and only the clip view is fitted."""
    from dataclasses import replace

    m, fold = tones
    alone = Manifest([replace(u, speaker=u.id) for u in m])
    for manifest, views in ((m, {"clip", "speaker"}), (alone, {"clip"})):
        result = train.fit(manifest, fold.train, [], "egemaps", TrainConfig(), cache_dir=tmp_path)
        record = result.history[0]
        assert set(record["view_cv_ua"]) == views
        assert record["view"] in views
