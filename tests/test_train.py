"""Fine-tuning, prediction and export on tiny models and synthetic clips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from sklearn.utils.class_weight import compute_class_weight
from transformers import pipeline

import after.inference as inference
import after.train as train
from after.config import TrainConfig
from after.data.audio import load_audio
from after.data.folds import Fold, make_folds
from after.data.manifest import Manifest, Utterance
from after.errors import AfterError
from after.experiments import save_result
from after.models.classifier import load_classifier
from after.testing.dummies import TONE_HZ, tone_corpus

LABELS = sorted(TONE_HZ)


@pytest.fixture(scope="module")
def tones(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Fold]:
    """4 speakers x 4 pitch classes x 6 clips; an easy task: pitch is the class."""
    m = tone_corpus(tmp_path_factory.mktemp("tones"), num_speakers=4, clips_per_label=6)
    return m, make_folds(m, "loso", seed=0).get(1)


@pytest.fixture(scope="module")
def trained(tones: tuple[Manifest, Fold]) -> train.FitResult:
    m, fold = tones
    config = TrainConfig(
        epochs=12, min_steps=0, batch_size=8, lr=1e-3, freeze_cnn=False, patience=0
    )
    return train.fit(m, fold.train, fold.dev, "scratch:tiny", config, progress=False)


# ---- targets and loss ----------------------------------------------------------------------------


def test_soft_loss_equals_hard_loss_for_one_hot_votes() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 4, generator=g)
    y = torch.randint(0, 4, (16,), generator=g)
    w = torch.rand(4, generator=g) + 0.1
    one_hot = torch.nn.functional.one_hot(y, 4).float()
    soft = train.weighted_soft_cross_entropy(logits, one_hot, w)
    torch.testing.assert_close(soft, torch.nn.functional.cross_entropy(logits, y, weight=w))


def test_class_weights_are_balanced_inverse_frequency() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 3])
    q = np.eye(4)[y]
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 3]), y=y)
    w = train.class_weights(q)
    assert w[2] == 0  # no labeled clip of class 2 yet
    np.testing.assert_allclose(w[[0, 1, 3]], expected)


def test_vote_targets() -> None:
    def utt(label: str, votes: dict[str, int] | None) -> Utterance:
        return Utterance("x", "x.wav", label, "s", "c", votes=votes)

    labels = ["ang", "hap", "neu"]
    q = inference.label_targets(
        [utt("ang", {"ang": 2, "neu": 1, "fru": 3}), utt("hap", None), utt("neu", {"fru": 2})],
        labels,
        soft=True,
    )
    np.testing.assert_allclose(q, [[2 / 3, 0, 1 / 3], [0, 1, 0], [0, 0, 1]])
    hard = inference.label_targets([utt("ang", {"neu": 5})], labels, soft=False)
    np.testing.assert_allclose(hard, [[1, 0, 0]])
    with pytest.raises(AfterError, match="not one of"):
        inference.label_targets([utt("sad", None)], labels, soft=False)


# ---- training -----------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_beats_chance(
    trained: train.FitResult, tones: tuple[Manifest, Fold]
) -> None:
    m, fold = tones
    losses = [h["train_loss"] for h in trained.history]
    assert losses[-1] < 0.5 * losses[0]
    scores = inference.evaluate(trained.classifier, m, fold.test)
    assert scores["ua"] >= 0.75  # chance is 0.25
    assert trained.dev is not None and trained.best_epoch >= 1


def test_feature_backbone_learns_the_tones(tones: tuple[Manifest, Fold], tmp_path: Path) -> None:
    m, fold = tones
    config = TrainConfig(epochs=30, batch_size=8, patience=0)
    r = train.fit(m, fold.train, fold.dev, "egemaps", config, cache_dir=tmp_path, progress=False)
    assert inference.evaluate(r.classifier, m, fold.test, cache_dir=tmp_path)["ua"] >= 0.75
    saved = save_result(tmp_path / "run", r)
    again = load_classifier(saved)
    np.testing.assert_allclose(
        inference.predict(again, m, fold.test),
        inference.predict(r.classifier, m, fold.test),
        atol=1e-6,
    )


def test_the_frozen_features_learner_reads_only_the_options_its_records_are_compared_on(
    tones: tuple[Manifest, Fold], tmp_path: Path
) -> None:
    """Every option outside `TrainConfig.read_by(["features"])` changed at once leaves the
    frozen-features learner's model as it was (so a record is rightly reused when only they
    differ), and one it reads changes it."""
    m, fold = tones
    base = TrainConfig()
    read = base.read_by(["features"])
    assert {"l2_c", "feature_view", "class_weighted"} <= read.keys()
    assert not {"epochs", "lr", "layer_sum", "min_steps"} & read.keys()
    assert base.read_by(["transformers"]).keys() == base.to_dict().keys() - {
        "l2_c",
        "weight_posterior",
        "feature_view",
        "self_training",
        "pseudo_threshold",
    }
    assert base.read_by(["features", "transformers"]) == base.to_dict()
    other = {
        "epochs": 3, "batch_size": 4, "lr": 1e-3, "head_lr": 1e-2, "warmup_ratio": 0.5,
        "weight_decay": 0.5, "max_grad_norm": 0.5, "max_steps": 7, "min_steps": 0,
        "select_on_dev": False, "patience": 1, "max_seconds": 1.0, "max_eval_seconds": 1.0,
        "freeze_cnn": False, "freeze_layers": 1, "num_layers": 1, "layer_sum": True,
        "head_init": "probe", "dropout": 0.3, "cache_cnn": False, "spec_time_prob": 0.5,
        "spec_feature_prob": 0.5, "precision": "no", "eval_batch_size": 2, "grad_accum": 2,
    }  # fmt: skip
    assert other.keys() | read.keys() | {"num_processes"} == base.to_dict().keys()
    changed = TrainConfig(**{**base.to_dict(), **other})

    def probs(config: TrainConfig) -> np.ndarray:
        clf = train.fit(m, fold.train, [], "egemaps", config, cache_dir=tmp_path).classifier
        return inference.predict(clf, m, fold.test, cache_dir=tmp_path)

    np.testing.assert_array_equal(probs(changed), probs(base))
    assert not np.allclose(probs(TrainConfig(l2_c=1e-4)), probs(base))


def test_a_record_made_before_a_setting_existed_reads_as_what_made_it() -> None:
    """Settings added since records were first written (`TRAIN_BEFORE`) take the value that ran
    before them, not today's default: a record or run folder without `feature_view` was made
    with clip features and is read so, although new fits default to auto."""
    from after.config import TRAIN_BEFORE

    assert TrainConfig().feature_view == "auto"
    old = {k: v for k, v in TrainConfig().to_dict().items() if k not in TRAIN_BEFORE}
    read = TrainConfig.from_record(old)
    assert read.feature_view == "clip"
    assert read == TrainConfig(**{**TrainConfig().to_dict(), **TRAIN_BEFORE})
    assert TrainConfig.from_record({**old, "feature_view": "speaker"}).feature_view == "speaker"


def test_every_labeled_clip_is_seen_every_epoch(
    tones: tuple[Manifest, Fold], monkeypatch: pytest.MonkeyPatch
) -> None:
    m, fold = tones
    seen: list[list[str]] = []
    real = inference.Inputs.batch

    def spy(self: inference.Inputs, ids: list[str], rng: np.random.Generator | None) -> object:
        if rng is not None:
            seen.append(list(ids))
        return real(self, ids, rng)

    monkeypatch.setattr(inference.Inputs, "batch", spy)
    config = TrainConfig(epochs=3, min_steps=0, batch_size=5, patience=0)
    train.fit(m, fold.train, [], "scratch:tiny", config, progress=False)
    per_epoch = len(seen) // 3
    epochs = [[i for b in seen[e * per_epoch : (e + 1) * per_epoch] for i in b] for e in range(3)]
    for ids in epochs:
        assert sorted(ids) == sorted(fold.train)
    assert epochs[0] != epochs[1]  # reshuffled


def test_early_stopping_keeps_the_best_epoch(
    tones: tuple[Manifest, Fold], monkeypatch: pytest.MonkeyPatch
) -> None:
    m, fold = tones
    uas = iter([0.3, 0.6, 0.5, 0.6, 0.4, 0.9])
    real = inference.classification_scores

    def scripted(*args: object) -> dict[str, object]:
        return {**real(*args), "ua": next(uas)}  # type: ignore[arg-type]

    monkeypatch.setattr(inference, "classification_scores", scripted)
    config = TrainConfig(epochs=6, min_steps=0, patience=2)
    r = train.fit(m, fold.train, fold.dev, "scratch:tiny", config, progress=False)
    assert [h["epoch"] for h in r.history] == [1, 2, 3, 4]  # no gain in epochs 3 and 4
    assert r.best_epoch == 2 and r.dev is not None and r.dev["ua"] == 0.6


def test_fit_refuses_bad_splits(tones: tuple[Manifest, Fold]) -> None:
    m, fold = tones
    with pytest.raises(AfterError, match="both train and dev"):
        train.fit(m, fold.train, [fold.train[0]], "egemaps", progress=False)
    with pytest.raises(AfterError, match="no labeled training clips"):
        train.fit(m, [], fold.dev, "egemaps", progress=False)


# ---- cache and export ---------------------------------------------------------------------------


def test_cached_cnn_gives_the_uncached_logits(
    trained: train.FitResult, tones: tuple[Manifest, Fold], tmp_path: Path
) -> None:
    m, fold = tones
    clf = trained.classifier
    one = TrainConfig(eval_batch_size=1)  # no padding, so both paths see the same input
    plain = inference.predict(
        clf, m, fold.test, config=TrainConfig(eval_batch_size=1, cache_cnn=False)
    )
    first = inference.predict(clf, m, fold.test, config=one, cache_dir=tmp_path)  # fills the cache
    assert list(tmp_path.glob("frozen-*/*/*.feat"))
    hit = inference.predict(clf, m, fold.test, config=one, cache_dir=tmp_path)  # reads it
    np.testing.assert_allclose(first, plain, atol=1e-6)
    np.testing.assert_array_equal(hit, first)


def test_saved_model_works_in_the_transformers_pipeline(
    trained: train.FitResult, tones: tuple[Manifest, Fold], tmp_path: Path
) -> None:
    m, fold = tones
    saved = save_result(tmp_path / "run", trained)
    classify = pipeline("audio-classification", model=str(saved), device="cpu")
    clip = m[fold.test[0]]
    out = classify(load_audio(clip.path), top_k=len(LABELS))
    assert {r["label"] for r in out} == set(LABELS)
    assert sum(r["score"] for r in out) == pytest.approx(1.0, abs=1e-5)
    ours = inference.predict(
        load_classifier(saved), m, [clip.id], config=TrainConfig(cache_cnn=False)
    )
    by_label = {r["label"]: r["score"] for r in out}
    np.testing.assert_allclose([by_label[x] for x in LABELS], ours[0], atol=1e-4)
    # A wave at another rate, as the README shows: the pipeline resamples it.
    wave, rate = sf.read(clip.path, dtype="float32")
    resampled = classify({"raw": wave, "sampling_rate": rate}, top_k=len(LABELS))
    assert {r["label"] for r in resampled} == set(LABELS)


def test_mc_dropout_samples_attention_dropout_too(
    trained: train.FitResult, tones: tuple[Manifest, Fold]
) -> None:
    """transformers gates attention dropout on `training`, not on an nn.Dropout: switching the
    dropout modules alone would leave these passes identical."""
    import copy

    m, fold = tones
    clf = copy.deepcopy(trained.classifier)
    config = clf.module.config
    config.apply_spec_augment, config.mask_time_prob = True, 0.5
    for name in ("hidden_dropout", "activation_dropout", "feat_proj_dropout", "final_dropout"):
        setattr(config, name, 0.0)
    for module in clf.module.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config.attention_dropout = 0.5
    for module in clf.module.modules():
        if hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = 0.5  # attention layers keep the rate they were built with
    out = inference.infer(clf, m, fold.test[:4], mc_passes=4, config=TrainConfig(cache_cnn=False))
    mc = out["mc_probs"]
    # The same input through the same weights gives bit-identical outputs: any difference is
    # the sampled attention dropout.
    assert np.abs(mc - mc[:, :, :1]).max() > 1e-6
    # What the passes switched is switched back.
    assert clf.module.training == trained.classifier.module.training
    assert clf.module.config.apply_spec_augment and clf.module.config.mask_time_prob == 0.5


def test_a_step_budget_ends_training_early(tones: tuple[Manifest, Fold]) -> None:
    m, fold = tones
    config = TrainConfig(epochs=5, batch_size=4, max_steps=7, patience=0)  # 12 steps an epoch
    r = train.fit(m, fold.train, [], "scratch:tiny", config, progress=False)
    assert r.history[-1]["steps"] == 7 and len(r.history) == 1  # stopped within epoch 1


def test_a_small_labeled_set_gets_its_floor_of_steps(tones: tuple[Manifest, Fold]) -> None:
    m, fold = tones
    few = fold.train[:6]  # one batch: 4 epochs are 4 steps
    config = TrainConfig(epochs=4, batch_size=8, min_steps=10, patience=0)
    r = train.fit(m, few, fold.dev, "scratch:tiny", config, progress=False)
    # Still 4 epochs (dev evaluations), of 3 passes each; the last ends at the floor.
    assert [h["steps"] for h in r.history] == [3, 6, 9, 10]
    capped = TrainConfig(**{**config.to_dict(), "max_steps": 5})
    r = train.fit(m, few, [], "scratch:tiny", capped, progress=False)
    assert [h["steps"] for h in r.history] == [2, 4, 5]


def test_the_training_description_states_the_step_floor_and_the_pooling() -> None:
    now = train.describe_training("whisper-tiny.en", TrainConfig().to_dict())
    assert "(at least 100 steps)" in now and "head on the last layer" in now
    summed = train.describe_training("whisper-tiny.en", TrainConfig(layer_sum=True).to_dict())
    assert "head on a learned sum of layers" in summed
    # A record made before these settings existed: trained as they were then.
    old = TrainConfig().to_dict()
    del old["min_steps"], old["layer_sum"]
    before = train.describe_training("whisper-tiny.en", old)
    assert "at least" not in before and "head on the last layer" in before


def test_a_probe_head_starts_where_the_frozen_learner_ends(tones: tuple[Manifest, Fold]) -> None:
    """LP-FT: the head is the logistic regression that the frozen-features learner fits on the
    encoder's pooled last layer, computed here on its own, clip by clip."""
    from after.models.linear import fit_head

    m, fold = tones
    config = TrainConfig(head_init="probe", epochs=2, min_steps=0, patience=0)
    run = train._set_up(m, list(fold.train), "scratch:tiny", config, LABELS, None, None)
    with run.data.taking_frames():  # as in a fit
        record = train.probe_head(run)
    clf, targets = run.clf, run.targets
    data = inference.Inputs(clf, m, config, None, torch.device("cpu"), cached=False)
    weights = targets @ train.class_weights(targets)
    module: Any = clf.module.eval()
    with torch.no_grad():
        x = np.stack(
            [
                module.wav2vec2(**data.batch([i], None)).last_hidden_state[0].mean(dim=0).numpy()
                for i in fold.train
            ]
        )
    fit = fit_head(x, targets, weights, [m[i].speaker for i in fold.train])
    expected = torch.softmax(torch.tensor((x - fit.mean) / fit.scale @ fit.weight.T + fit.bias), 1)
    got = inference.predict_with(clf, module, data, fold.train, torch.device("cpu"))
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4)
    assert record["probe_c"] == fit.c
    # In a fit, the probe is epoch 0: judged on dev, and kept if no epoch beats it.
    r = train.fit(m, fold.train, fold.dev, "scratch:tiny", config, progress=False)
    assert [h["epoch"] for h in r.history] == [0, 1, 2] and "probe_c" in r.history[0]
    assert r.dev is not None and r.dev["ua"] == max(h["dev_ua"] for h in r.history)


def test_the_fine_tuning_bar_counts_dev_evaluations(
    tones: tuple[Manifest, Fold],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Each epoch's dev evaluation is part of the bar (its batches), so the ETA, a rate over
    the steps done, does not leap once the first evaluation has run."""
    import after.progress

    monkeypatch.setattr(after.progress, "FIRST_S", 0.0)
    monkeypatch.setattr(after.progress, "EVERY_S", 0.0)
    m, fold = tones
    config = TrainConfig(epochs=2, min_steps=0, batch_size=8, eval_batch_size=2, patience=0)
    train.fit(m, fold.train, fold.dev, "scratch:tiny", config, progress=True)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("fine-tuning:")]
    per_epoch = -(-len(fold.train) // 8) + -(-len(fold.dev) // 2)
    assert lines[-1].startswith(f"fine-tuning: {2 * per_epoch}/{2 * per_epoch} (100%)")
