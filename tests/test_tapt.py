"""Task-adaptive pre-training on tiny models and the synthetic demo corpus."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModel

import after.tapt as tapt
from after.config import TaptConfig
from after.data.folds import Fold, make_folds
from after.data.manifest import Manifest
from after.data.synth import synthesize
from after.errors import AfterError, FoldError
from after.models.objectives import KMEANS_FILE, MaskedPredictionObjective
from after.testing.dummies import tiny_backbone

FAST = TaptConfig(
    steps=12,
    batch_size=4,
    max_seconds=1.5,
    warmup_steps=2,
    save_every=5,
    log_every=1,
    kmeans_clusters=8,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Fold]:
    """4 voices x 3 sentences x 4 emotions; fold 0 trains on 2 voices (24 clips)."""
    m = synthesize(tmp_path_factory.mktemp("synth"), num_speakers=4, num_sentences=3)
    return m, make_folds(m, "loso", seed=0).get(0)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {f: tiny_backbone(root / f, f) for f in ("wav2vec2", "hubert", "wavlm", "whisper")}


def _log(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / tapt.LOG_FILE).read_text().splitlines()]


# ---- masks and negatives ------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 120), min_size=1, max_size=4),
    mask_prob=st.floats(0.05, 0.9),
    seed=st.integers(0, 2**16),
)
def test_masks_and_negatives_stay_inside_each_clip(
    lengths: list[int], mask_prob: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    frames = max(lengths) + 3  # some padding after the longest clip too
    mask = tapt.span_mask(
        np.array(lengths), frames, mask_prob=mask_prob, mask_length=10, min_masks=2, rng=rng
    )
    negatives = tapt.sample_negatives(mask, 7, rng)
    for b, n in enumerate(lengths):
        assert not mask[b, n:].any()  # padding is never masked
        if n >= 2:
            assert mask[b].sum() >= min(2, n)
        masked = np.flatnonzero(mask[b])
        for t in masked:
            if masked.size < 2:
                continue
            drawn = negatives[b, t] - b * frames
            assert set(drawn) <= set(masked)  # masked, so valid, frames of the same clip
            assert t not in drawn  # never the positive itself


def test_schedule_warms_up_stays_flat_then_decays_to_zero() -> None:
    c = TaptConfig(steps=200, warmup_steps=100, flat_ratio=0.05)
    f = [tapt.lr_factor(s, c) for s in range(200)]
    assert f[0] == pytest.approx(0.01) and f[99] == 1.0
    assert f[100:110] == [1.0] * 10
    assert all(a >= b for a, b in itertools.pairwise(f[110:]))
    assert f[199] == pytest.approx(1 / 90)


# ---- what TAPT may read ------------------------------------------------------------------------


def test_tapt_reads_training_audio_only(
    corpus: tuple[Manifest, Fold],
    models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m, fold = corpus
    read: list[str] = []
    real_load = tapt.load_audio

    def spy(path: str, **kwargs: object) -> np.ndarray:
        read.append(str(path))
        return real_load(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tapt, "load_audio", spy)
    for family in ("wav2vec2", "hubert", "whisper"):  # masked prediction reads it for k-means
        tapt.run_tapt(m, fold, str(models[family]), tmp_path / family, FAST, progress=False)
    train = {m[i].path for i in fold.train}
    held_out = {m[i].path for i in [*fold.dev, *fold.test]}
    assert read and set(read) <= train
    assert not set(read) & held_out


def test_a_fold_that_leaks_is_refused(corpus: tuple[Manifest, Fold]) -> None:
    m, fold = corpus
    leaky = Fold(fold.name, [*fold.train, fold.test[0]], fold.dev, fold.test, [], [])
    with pytest.raises(FoldError, match="also held out"):
        tapt.tapt_ids(m, leaky)


# ---- wav2vec 2.0 ---------------------------------------------------------------------------------


def test_wav2vec2_tapt_learns_and_saves_a_loadable_model(
    corpus: tuple[Manifest, Fold], models: dict[str, Path], tmp_path: Path
) -> None:
    m, fold = corpus
    # A random-init model sits at chance (ln 21 with 20 negatives) for ~100 steps, then learns.
    config = TaptConfig(
        steps=300, batch_size=4, max_seconds=1.5, lr=5e-3, warmup_steps=5, log_every=1
    )
    out = tapt.run_tapt(m, fold, str(models["wav2vec2"]), tmp_path / "out", config, progress=False)
    log = _log(out)
    assert [r["step"] for r in log] == list(range(1, 301))
    chance = np.log(1 + 20)
    first = np.mean([r["contrastive"] for r in log[:10]])
    last = np.mean([r["contrastive"] for r in log[-20:]])
    assert last < min(first, chance) - 0.1, (first, last)
    assert all(np.isfinite(r["grad_norm"]) for r in log)

    start = AutoModel.from_pretrained(models["wav2vec2"])
    after = AutoModel.from_pretrained(out)
    assert type(after).__name__ == "Wav2Vec2Model"
    changed = [
        name
        for name, p in after.state_dict().items()
        if name.startswith("encoder.") and not torch.equal(p, start.state_dict()[name])
    ]
    assert len(changed) > 10
    info = json.loads((out / tapt.DONE_FILE).read_text())
    assert info["fold"] == fold.name and info["num_clips"] == len(fold.train)
    assert (out / "preprocessor_config.json").is_file()


def test_frozen_cnn_stays_put(
    corpus: tuple[Manifest, Fold], models: dict[str, Path], tmp_path: Path
) -> None:
    m, fold = corpus
    config = TaptConfig(**{**FAST.to_dict(), "freeze_cnn": True, "steps": 4})
    out = tapt.run_tapt(m, fold, str(models["wav2vec2"]), tmp_path / "o", config, progress=False)
    start = AutoModel.from_pretrained(models["wav2vec2"]).state_dict()
    for name, p in AutoModel.from_pretrained(out).state_dict().items():
        if name.startswith("feature_extractor."):
            assert torch.equal(p, start[name]), name
    # A saved (pretrained) model's quantizer continues at the temperature pre-training ended at;
    # a random-init one anneals from 2.0, as wav2vec 2.0's pre-training does.
    assert {r["gumbel_temperature"] for r in _log(out)} == {0.5}
    scratch = tapt.run_tapt(m, fold, "scratch:tiny", tmp_path / "s", config, progress=False)
    assert _log(scratch)[0]["gumbel_temperature"] == pytest.approx(2.0, abs=1e-3)


@pytest.mark.parametrize("family", ["wav2vec2", "whisper"])
def test_resume_after_a_kill_gives_the_uninterrupted_result(
    family: str,
    corpus: tuple[Manifest, Fold],
    models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from safetensors.torch import load_file

    m, fold = corpus
    backbone = str(models[family])
    whole = tapt.run_tapt(m, fold, backbone, tmp_path / "whole", FAST, progress=False)

    real_batch = tapt._Stream.batch

    def killed_at_8(self: tapt._Stream, g: int) -> tapt._Batch:
        if g == 8:
            raise KeyboardInterrupt
        return real_batch(self, g)

    monkeypatch.setattr(tapt._Stream, "batch", killed_at_8)
    with pytest.raises(KeyboardInterrupt):
        tapt.run_tapt(m, fold, backbone, tmp_path / "cut", FAST, progress=False)
    assert [p.name for p in (tmp_path / "cut" / tapt.CHECKPOINTS).iterdir()] == ["step_5"]
    with pytest.raises(AfterError, match="--resume"):
        tapt.run_tapt(m, fold, backbone, tmp_path / "cut", FAST, progress=False)
    other = TaptConfig(**{**FAST.to_dict(), "lr": 1e-3})
    with pytest.raises(AfterError, match="different TAPT run"):
        tapt.run_tapt(m, fold, backbone, tmp_path / "cut", other, resume=True, progress=False)

    monkeypatch.setattr(tapt._Stream, "batch", real_batch)
    cut = tapt.run_tapt(m, fold, backbone, tmp_path / "cut", FAST, resume=True, progress=False)
    assert json.loads((cut / tapt.DONE_FILE).read_text())["resumed_from_step"] == 5
    assert [r["step"] for r in _log(cut)][-7:] == list(range(6, 13))
    a = load_file(str(whole / "model.safetensors"))
    b = load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


# ---- HuBERT / WavLM ------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["hubert", "wavlm"])
def test_masked_prediction_tapt(
    family: str, corpus: tuple[Manifest, Fold], models: dict[str, Path], tmp_path: Path
) -> None:
    m, fold = corpus
    # k-means sees the frames of only a few clips (~100 frames each); every clip gets targets.
    config = TaptConfig(**{**FAST.to_dict(), "kmeans_max_frames": 300})
    out = tapt.run_tapt(m, fold, str(models[family]), tmp_path / family, config, progress=False)
    log = _log(out)
    assert len(log) == FAST.steps and all("masked_accuracy" in r for r in log)
    reloaded = AutoModel.from_pretrained(out)
    assert reloaded.config.model_type == family
    with np.load(out / KMEANS_FILE) as targets:
        assert targets["centroids"].shape == (8, 32)
        assert {str(i) for i in targets["ids"]} == set(fold.train)


def test_masked_accuracy_is_the_share_of_scored_frames_predicted(models: dict[str, Path]) -> None:
    encoder = AutoModel.from_pretrained(models["hubert"])
    objective = MaskedPredictionObjective(encoder, num_clusters=4, proj_dim=4)
    with torch.no_grad():  # every frame predicts cluster 0, whatever the encoder outputs
        objective.proj.weight.zero_()
        objective.proj.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        objective.codes.copy_(torch.eye(4))
    inputs = {"input_values": torch.randn(1, 16_000)}
    frames = encoder(**inputs).last_hidden_state.shape[1]
    mask = torch.zeros(1, frames, dtype=torch.bool)
    mask[0, :4] = True
    targets = torch.full((1, frames), -100)  # no loss, and no score, outside the mask
    targets[0, :4] = torch.tensor([0, 0, 0, 2])
    _, accuracy = objective(inputs, mask, targets)
    assert float(accuracy) == 0.75  # three of the four masked frames


def test_whisper_tapt_continues_the_encoder_and_its_output_fine_tunes(
    corpus: tuple[Manifest, Fold], models: dict[str, Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    from after.config import TrainConfig
    from after.inference import evaluate
    from after.train import fit

    m, fold = corpus
    changes = {"kmeans_max_frames": 300, "lr": 1e-3, "log_every": 5}
    config = TaptConfig(**{**FAST.to_dict(), **changes})
    out = tapt.run_tapt(m, fold, str(models["whisper"]), tmp_path / "w", config, progress=False)
    log = _log(out)
    assert [r["step"] for r in log] == [1, 5, 10, 12]  # the first, every 5th and the last
    assert all("masked_accuracy" in r for r in log)
    saved = load_file(str(out / "model.safetensors"))
    assert saved and all(k.startswith("encoder.") for k in saved)  # no head to mislead
    start = load_file(str(models["whisper"] / "model.safetensors"))
    key = "encoder.layers.1.fc1.weight"
    assert not torch.equal(saved[key], start[f"model.{key}"])  # the encoder trained
    labeled = [i for i in fold.train if m[i].label is not None]
    r = fit(m, labeled, fold.dev, str(out), TrainConfig(epochs=1, min_steps=0), progress=False)
    assert type(r.classifier.module).__name__ == "WhisperEncoderForAudioClassification"
    assert evaluate(r.classifier, m, fold.test)["num_clips"] == len(fold.test)


def test_whisper_masked_frames_keep_their_positions(models: dict[str, Path]) -> None:
    """Whisper's only position signal is added to the conv stem's output: the mask embedding
    replaces that output, so masked frames of one clip still see different inputs."""
    from after.models.backbones import family_of, load_backbone, load_feature_extractor
    from after.testing.dummies import tone

    encoder = load_backbone(str(models["whisper"]), pretraining=True).eval()
    family = family_of(encoder.config)
    inputs = family.inputs([tone(220, 1.0)], load_feature_extractor(str(models["whisper"])))
    mask = torch.zeros(1, 50, dtype=torch.bool)
    mask[0, 10:30] = True
    embedding = torch.randn(encoder.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = family.masked_output(encoder, inputs, mask, embedding)[0, 10:30]
    assert (out - out[0]).abs().amax(dim=-1)[1:].min() > 1e-3  # every masked frame differs


def test_data2vec_has_no_tapt_objective(corpus: tuple[Manifest, Fold], tmp_path: Path) -> None:
    m, fold = corpus
    d2v = tiny_backbone(tmp_path / "d2v", "data2vec-audio")
    with pytest.raises(AfterError, match="not data2vec-audio"):
        tapt.run_tapt(m, fold, str(d2v), tmp_path / "out", FAST, progress=False)


def test_an_objective_is_chosen_by_name_where_it_fits(
    corpus: tuple[Manifest, Fold], models: dict[str, Path], tmp_path: Path
) -> None:
    m, fold = corpus
    with pytest.raises(AfterError, match=r"objective.*choose one of contrastive"):
        TaptConfig(**{**FAST.to_dict(), "objective": "nope"})
    contrastive = TaptConfig(**{**FAST.to_dict(), "objective": "contrastive"})
    with pytest.raises(AfterError, match=r"needs wav2vec 2\.0's quantizer"):
        tapt.run_tapt(m, fold, str(models["hubert"]), tmp_path / "b", contrastive, progress=False)


def test_a_tapt_output_fine_tunes(
    corpus: tuple[Manifest, Fold], models: dict[str, Path], tmp_path: Path
) -> None:
    from after.config import TrainConfig
    from after.inference import evaluate
    from after.train import fit

    m, fold = corpus
    out = tapt.run_tapt(m, fold, str(models["wav2vec2"]), tmp_path / "t", FAST, progress=False)
    labeled = [i for i in fold.train if m[i].label is not None]
    r = fit(m, labeled, fold.dev, str(out), TrainConfig(epochs=1, min_steps=0), progress=False)
    assert type(r.classifier.module).__name__ == "Wav2Vec2ForSequenceClassification"
    assert evaluate(r.classifier, m, fold.test)["num_clips"] == len(fold.test)


# ---- the objective's head: its own rate and warm-up ---------------------------------------------


def _checkpoint(out: Path, step: int) -> dict[str, torch.Tensor]:
    """The whole trained state (`TaptModel`: objective, encoder, heads) at checkpoint `step`."""
    from safetensors.torch import load_file

    return load_file(str(out / tapt.CHECKPOINTS / f"step_{step}" / "model.safetensors"))


def _part(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def _largest_move(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_the_head_warms_up_alone_then_trains_at_its_own_rate(
    corpus: tuple[Manifest, Fold], models: dict[str, Path], tmp_path: Path
) -> None:
    m, fold = corpus
    changes = {"steps": 6, "save_every": 1, "keep_checkpoints": 10, "kmeans_max_frames": 300}
    changes |= {"head_warmup_steps": 3, "lr": 1e-4, "head_lr": 1e-2}
    config = TaptConfig(**{**FAST.to_dict(), **changes})
    out = tapt.run_tapt(m, fold, str(models["hubert"]), tmp_path / "o", config, progress=False)
    start = AutoModel.from_pretrained(models["hubert"]).state_dict()
    states = {s: _checkpoint(out, s) for s in range(1, 6)}
    encoder = {s: _part(state, "objective.encoder.") for s, state in states.items()}
    head = {s: _part(state, "objective.proj.") for s, state in states.items()}
    for s in (1, 2, 3):  # warm-up: the encoder exactly as it started, the head learning
        assert all(torch.equal(p, start[k]) for k, p in encoder[s].items()), s
    assert _largest_move(head[1], head[2]) > 0 and _largest_move(head[2], head[3]) > 0
    assert any(not torch.equal(p, start[k]) for k, p in encoder[4].items())  # then it trains
    # Adam moves each weight by about its rate x schedule: head 1e-2 x 0.5, encoder 1e-4 x 1.
    assert _largest_move(head[4], head[5]) > 10 * _largest_move(encoder[4], encoder[5])
    log = _log(out)
    # Each record logs the rate of the step after it: steps 2 and 3 had 0, step 4 did not.
    assert [r["lr"] for r in log[:2]] == [0.0, 0.0] and log[2]["lr"] > 0
    assert all(r["head_lr"] > 0 for r in log[:-1])  # the head trains from step 1 (0 after the last)


def test_an_objective_without_a_head_refuses_head_settings(
    corpus: tuple[Manifest, Fold], models: dict[str, Path], tmp_path: Path
) -> None:
    m, fold = corpus
    config = TaptConfig(**{**FAST.to_dict(), "head_warmup_steps": 2})
    with pytest.raises(AfterError, match="adds no head"):
        tapt.run_tapt(m, fold, str(models["wav2vec2"]), tmp_path / "o", config, progress=False)


# ---- preparing the objective ---------------------------------------------------------------------


def test_kmeans_shows_its_progress(
    corpus: tuple[Manifest, Fold],
    models: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import after.progress
    from after.models.backbones import load_backbone, load_config, load_feature_extractor
    from after.models.objectives import fit_kmeans_targets

    m, fold = corpus
    monkeypatch.setattr(after.progress, "FIRST_S", 0.0)  # print from the first update on
    backbone = str(models["hubert"])
    stream = tapt._Stream(
        m, fold.train[:6], FAST, load_config(backbone), load_feature_extractor(backbone)
    )
    fit_kmeans_targets(load_backbone(backbone), stream, FAST, torch.device("cpu"), progress=True)
    printed = capsys.readouterr().err
    for stage in ("k-means: frames", "k-means: 8 clusters", "k-means: targets"):
        assert stage in printed, printed


# ---- protecting what the model knows -------------------------------------------------------------


def test_freeze_layers_keeps_the_bottom_layers_and_trains_the_top(
    corpus: tuple[Manifest, Fold], models: dict[str, Path], tmp_path: Path
) -> None:
    m, fold = corpus
    config = TaptConfig(**{**FAST.to_dict(), "freeze_layers": 1, "kmeans_max_frames": 300})
    out = tapt.run_tapt(m, fold, str(models["hubert"]), tmp_path / "o", config, progress=False)
    start = AutoModel.from_pretrained(models["hubert"]).state_dict()
    after = AutoModel.from_pretrained(out).state_dict()
    for prefix in ("feature_extractor.", "encoder.layers.0."):  # the front end and layer 0
        frozen = [k for k in after if k.startswith(prefix)]
        assert frozen and all(torch.equal(after[k], start[k]) for k in frozen), prefix
    top = [k for k in after if k.startswith("encoder.layers.1.")]
    assert top and all(not torch.equal(after[k], start[k]) for k in top if "weight" in k)


def _encoder_distance(a: Path, b: Path) -> float:
    sa, sb = AutoModel.from_pretrained(a).state_dict(), AutoModel.from_pretrained(b).state_dict()
    return sum(float((sa[k] - sb[k]).pow(2).sum()) for k in sa if k.startswith("encoder."))


def test_l2sp_holds_the_weights_near_the_start(
    corpus: tuple[Manifest, Fold], models: dict[str, Path], tmp_path: Path
) -> None:
    m, fold = corpus
    backbone = models["hubert"]
    changes = {"steps": 8, "lr": 1e-2, "kmeans_max_frames": 300}
    free = TaptConfig(**{**FAST.to_dict(), **changes})
    held = TaptConfig(**{**free.to_dict(), "l2sp": 10.0})
    a = tapt.run_tapt(m, fold, str(backbone), tmp_path / "free", free, progress=False)
    b = tapt.run_tapt(m, fold, str(backbone), tmp_path / "held", held, progress=False)
    log = _log(b)
    assert log[0]["l2sp"] == 0.0 and log[1]["l2sp"] > 0  # nothing to pull back before a step
    assert log[1]["loss"] == pytest.approx(log[1]["objective"] + 10.0 * log[1]["l2sp"], rel=1e-5)
    assert "l2sp" not in _log(a)[0]
    # Measured on these tiny models: about 11 without, 0.03 with.
    assert _encoder_distance(b, backbone) < 0.1 * _encoder_distance(a, backbone)


def _hidden_gap(a: Path, b: Path, m: Manifest, ids: list[str]) -> float:
    """Mean squared difference of the two encoders' last layers on the clips `ids`."""
    from after.data.audio import load_audio
    from after.models.backbones import family_of, load_backbone, load_feature_extractor

    x, y = load_backbone(str(a)).eval(), load_backbone(str(b)).eval()
    family = family_of(x.config)
    inputs = family.inputs([load_audio(m[i].path) for i in ids], load_feature_extractor(str(a)))
    with torch.no_grad():
        (sx, valid), (sy, _) = family.states(x, inputs), family.states(y, inputs)
    return float((((sx[-1] - sy[-1]) ** 2).mean(-1) * valid).sum() / valid.sum())


def test_distillation_pulls_toward_a_frozen_copy_of_the_start(
    corpus: tuple[Manifest, Fold], models: dict[str, Path], tmp_path: Path
) -> None:
    m, fold = corpus
    backbone = models["whisper"]
    changes = {"steps": 8, "lr": 1e-2, "kmeans_max_frames": 300, "save_every": 4}
    free = TaptConfig(**{**FAST.to_dict(), **changes})
    held = TaptConfig(**{**free.to_dict(), "distill": 100.0})
    a = tapt.run_tapt(m, fold, str(backbone), tmp_path / "free", free, progress=False)
    b = tapt.run_tapt(m, fold, str(backbone), tmp_path / "held", held, progress=False)
    log = _log(b)
    assert log[0]["distill"] == 0.0 and log[1]["distill"] > 0  # equal until the first update
    # The frozen copy is the starting encoder at every checkpoint, while the encoder moves.
    from safetensors.torch import load_file

    start = _part(load_file(str(backbone / "model.safetensors")), "model.encoder.")
    start = {f"encoder.{k}": v for k, v in start.items()}  # the model has a decoder too
    state = _checkpoint(b, 4)
    copy, encoder = _part(state, "start."), _part(state, "objective.encoder.")
    assert copy.keys() == encoder.keys() and start.keys() <= copy.keys()
    assert all(torch.equal(copy[k], start[k]) for k in start)
    assert any(not torch.equal(encoder[k], start[k]) for k in start)
    # Measured on these tiny models: the last layers differ about 200x less with it.
    ids = fold.train[:6]
    assert _hidden_gap(b, backbone, m, ids) < 0.1 * _hidden_gap(a, backbone, m, ids)


# ---- the EMA teacher (data2vec-style) ------------------------------------------------------------


def test_the_teacher_follows_the_student_by_ema(models: dict[str, Path]) -> None:
    from after.models.objectives import TeacherObjective

    config = TaptConfig(steps=10, teacher_decay=0.9, teacher_decay_end=0.99)
    objective = TeacherObjective(AutoModel.from_pretrained(models["hubert"]), config)
    assert [objective.decay(s) for s in (0, 4, 9)] == pytest.approx([0.909, 0.945, 0.99])
    before = {k: v.clone() for k, v in objective.teacher.state_dict().items()}
    assert all(torch.equal(v, objective.encoder.state_dict()[k]) for k, v in before.items())
    with torch.no_grad():  # the student takes a step
        for p in objective.encoder.parameters():
            p.add_(torch.randn_like(p))
    objective.after_step(4)
    student = objective.encoder.state_dict()
    for k, v in objective.teacher.state_dict().items():
        expected = 0.945 * before[k] + 0.055 * student[k]
        torch.testing.assert_close(v, expected, rtol=0, atol=1e-6, msg=k)
    assert not any(p.requires_grad for p in objective.teacher.parameters())
    assert objective.train().teacher.training is False  # its targets never see dropout


@pytest.mark.parametrize("family", ["whisper", "data2vec-audio"])
def test_teacher_tapt_runs_for_any_family(
    family: str, corpus: tuple[Manifest, Fold], models: dict[str, Path], tmp_path: Path
) -> None:
    m, fold = corpus
    backbone = models.get(family) or tiny_backbone(tmp_path / family, family)
    config = TaptConfig(**{**FAST.to_dict(), "objective": "teacher", "lr": 1e-3})
    out = tapt.run_tapt(m, fold, str(backbone), tmp_path / "o", config, progress=False)
    log = _log(out)
    assert len(log) == FAST.steps
    assert all(np.isfinite(r["loss"]) and r["target_std"] > 0 for r in log)
    state = _checkpoint(out, 10)
    teacher, student = _part(state, "objective.teacher."), _part(state, "objective.encoder.")
    start = AutoModel.from_pretrained(backbone).state_dict()
    key = {
        "whisper": "encoder.layers.1.fc1.weight",
        "data2vec-audio": "encoder.layers.1.feed_forward.intermediate_dense.weight",
    }[family]
    t, s, s0 = teacher[key], student[key], start[key]
    assert not torch.equal(t, s0) and not torch.equal(t, s)  # between the start and the student
    assert float((t - s0).abs().max()) < float((s - s0).abs().max())
    assert AutoModel.from_pretrained(out).config.model_type == family


def test_teacher_tapt_resumes_with_its_teacher(
    corpus: tuple[Manifest, Fold],
    models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from safetensors.torch import load_file

    m, fold = corpus
    backbone = str(models["hubert"])
    config = TaptConfig(**{**FAST.to_dict(), "objective": "teacher"})
    whole = tapt.run_tapt(m, fold, backbone, tmp_path / "whole", config, progress=False)
    real_batch = tapt._Stream.batch

    def killed_at_8(self: tapt._Stream, g: int) -> tapt._Batch:
        if g == 8:
            raise KeyboardInterrupt
        return real_batch(self, g)

    monkeypatch.setattr(tapt._Stream, "batch", killed_at_8)
    with pytest.raises(KeyboardInterrupt):
        tapt.run_tapt(m, fold, backbone, tmp_path / "cut", config, progress=False)
    monkeypatch.setattr(tapt._Stream, "batch", real_batch)
    cut = tapt.run_tapt(m, fold, backbone, tmp_path / "cut", config, resume=True, progress=False)
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    assert [r["loss"] for r in _log(whole)][-3:] == pytest.approx(
        [r["loss"] for r in _log(cut)][-3:], abs=1e-5
    )


def test_the_objectives_settings_accept_are_the_ones_implemented() -> None:
    from after.config import TAPT_OBJECTIVES
    from after.models.objectives import OBJECTIVES

    assert set(OBJECTIVES) == set(TAPT_OBJECTIVES)


def test_tapt_says_what_it_does_while_it_fits_targets_and_writes_what_it_read(
    corpus: tuple[Manifest, Fold],
    models: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The k-means targets show progress (they ran silent for minutes; the fit itself says when
    it starts); the weights get the umask's mode however TAPT is called (the demo calls it
    directly); tapt.json lists the clips whose audio it read, and a run whose audit or test clips
    are among them is refused."""
    import os
    import stat

    import after.progress
    from after.config import ALConfig, TrainConfig
    from after.loop.runner import Run, check_run

    monkeypatch.setattr(after.progress, "FIRST_S", 0.0)
    m, fold = corpus
    config = TaptConfig(**{**FAST.to_dict(), "steps": 2, "kmeans_max_frames": 300})
    old = os.umask(0o022)
    try:
        out = tapt.run_tapt(m, fold, str(models["hubert"]), tmp_path / "t", config, progress=True)
    finally:
        os.umask(old)
    err = capsys.readouterr().err
    assert "k-means: frames of layer 1" in err
    assert "k-means: 8 clusters of 300 frames: started" in err
    assert "k-means: targets of every clip: 24/24 (100%)" in err
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o644
    assert json.loads((out / tapt.DONE_FILE).read_text())["ids"] == list(fold.train)

    al = ALConfig(schedule=("4", "8"), cold_start="random", audit="4")
    run = Run(m, "m.jsonl", "f.json", fold, str(out), al, TrainConfig(), tmp_path / "r", None)
    with pytest.raises(AfterError, match=r"pre-trained it on the audio of 4 of this run's audit"):
        check_run(run)
    other = make_folds(m, "loso", seed=0).get(1)  # fold 0's training voices are tested here
    plain = Run(m, "m.jsonl", "f.json", other, str(out), ALConfig(), TrainConfig(), tmp_path, None)
    with pytest.raises(AfterError, match=r"of this run's (dev|test) clips"):
        check_run(plain)
