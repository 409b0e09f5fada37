from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from after.data.audio import SAMPLE_RATE, load_audio
from after.data.manifest import Manifest, Utterance
from after.errors import AfterError, AudioError
from after.models import features
from after.models.features import (
    FEATURE_BACKBONES,
    EgemapsBackbone,
    FeatureBackbone,
    ResemblyzerBackbone,
    cache_folder,
    embed_manifest,
    is_feature_backbone,
    load_feature_backbone,
)
from after.testing.dummies import tone, write_tone

# ---- helpers
# -------------------------------------------------------------------------------------------


class Counting(FeatureBackbone):
    """A cheap backbone whose features depend on the samples; records every wave it embeds."""

    name = "counting"
    dim = 4

    def __init__(self, version: str = "v1", *, nan: bool = False) -> None:
        self.version = version
        self.nan = nan
        self.calls: list[int] = []

    def _embed(self, wave: np.ndarray) -> np.ndarray:
        self.calls.append(wave.size)
        out = [wave.mean(), wave.std(), wave.size, np.abs(np.fft.rfft(wave)).argmax()]
        if self.nan:
            out[0] = np.nan
        return np.array(out)


def _corpus(root: Path, specs: list[tuple[str, float, float]]) -> Manifest:
    """Utterances (id, Hz, seconds) as WAVs under root, in the given order."""
    items = []
    for i, (utt_id, hz, dur) in enumerate(specs):
        path = write_tone(root / f"clip{i}.wav", hz, dur, seed=i)
        items.append(Utterance(utt_id, str(path), "x", "spk", "c"))
    return Manifest(items)


def _entries(folder: Path) -> dict[str, Path]:
    """Cache files by the utterance id written in their header."""
    out = {}
    for p in folder.glob("*/*.feat"):
        header = p.read_bytes().split(b"\n")[1]
        out[json.loads(header)["id"]] = p
    return out


def _bump_mtime(path: str) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def egemaps() -> EgemapsBackbone:
    b = load_feature_backbone("egemaps")
    assert isinstance(b, EgemapsBackbone)
    return b


@pytest.fixture(scope="module")
def resemblyzer() -> ResemblyzerBackbone:
    b = load_feature_backbone("resemblyzer")
    assert isinstance(b, ResemblyzerBackbone)
    return b


@pytest.fixture
def corpus(tmp_path: Path) -> Manifest:
    # ids with characters that are not filesystem-safe, in a non-sorted order
    return _corpus(
        tmp_path / "audio",
        [
            ("z/last:one", 330.0, 0.5),
            ("a/first", 147.0, 0.7),
            ("m:mid", 196.0, 0.6),
            ("..", 262.0, 0.4),
        ],
    )


# ---- the real backbones
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,dim", [("egemaps", 88), ("resemblyzer", 256)])
def test_real_backbones_dims_dtype_finite_deterministic(
    name: str, dim: int, request: pytest.FixtureRequest
) -> None:
    b: FeatureBackbone = request.getfixturevalue(name)
    assert (b.name, b.dim) == (name, dim)
    for hz in (147.0, 330.0):
        x = tone(hz, 0.8, seed=3)
        y1, y2 = b.embed(x), b.embed(x.copy())
        assert y1.shape == (dim,) and y1.dtype == np.float32
        assert np.isfinite(y1).all()
        np.testing.assert_array_equal(y1, y2)
    # a fresh object (new extractor) gives the same numbers
    np.testing.assert_array_equal(load_feature_backbone(name).embed(x), y1)


def test_egemaps_pitch_tracks_the_tone(egemaps: EgemapsBackbone) -> None:
    names = egemaps.feature_names
    assert len(names) == 88
    f0 = names.index("F0semitoneFrom27.5Hz_sma3nz_amean")
    low, high = egemaps.embed(tone(147.0, 1.0))[f0], egemaps.embed(tone(330.0, 1.0))[f0]
    # semitones above 27.5 Hz: 12*log2(147/27.5) = 29.0 and 12*log2(330/27.5) = 43.0
    assert low == pytest.approx(12 * np.log2(147 / 27.5), abs=0.5)
    assert high - low == pytest.approx(12 * np.log2(330 / 147), abs=0.5)


def test_egemaps_rejects_clips_under_60_ms(egemaps: EgemapsBackbone) -> None:
    with pytest.raises(AfterError, match=r"egemaps.*at least 60 ms"):
        egemaps.embed(tone(200.0, 0.05))
    assert np.isfinite(egemaps.embed(tone(200.0, 0.06))).all()


def test_resemblyzer_same_signal_closer_than_different(resemblyzer: ResemblyzerBackbone) -> None:
    a1 = resemblyzer.embed(tone(147.0, 1.0, seed=1))
    a2 = resemblyzer.embed(tone(147.0, 1.0, seed=2))  # same tone, other noise
    b = resemblyzer.embed(tone(330.0, 1.0, seed=1))
    noise = resemblyzer.embed(
        (0.3 * np.random.default_rng(0).standard_normal(SAMPLE_RATE)).astype(np.float32)
    )
    same = _cos(a1, a2)
    assert same > 0.99
    assert same > _cos(a1, b) + 0.1
    assert same > _cos(a1, noise) + 0.1
    assert np.linalg.norm(a1) == pytest.approx(1.0, abs=1e-5)  # L2-normalised


def test_resemblyzer_falls_back_to_untrimmed_when_vad_trims_everything(
    resemblyzer: ResemblyzerBackbone,
) -> None:
    import resemblyzer as rz

    x = tone(196.0, 0.6)
    assert rz.preprocess_wav(x).size < 0.25 * SAMPLE_RATE  # webrtcvad hears no speech in a tone
    expected = resemblyzer._load()[1].embed_utterance(
        rz.normalize_volume(x, rz.hparams.audio_norm_target_dBFS, increase_only=True)
    )
    np.testing.assert_array_equal(resemblyzer.embed(x), expected.astype(np.float32))
    with pytest.raises(AfterError, match="digital silence"):
        resemblyzer.embed(np.zeros(SAMPLE_RATE, dtype=np.float32))


def test_versions_name_package_and_settings() -> None:
    e, r = EgemapsBackbone(), ResemblyzerBackbone()
    assert "opensmile=" in e.version and "eGeMAPSv02" in e.version
    assert "resemblyzer=" in r.version and "librosa=" in r.version and "torch=" in r.version


# ---- registry and checks
# -------------------------------------------------------------------------------------------


def test_registry() -> None:
    assert set(FEATURE_BACKBONES) == {"egemaps", "resemblyzer"}
    assert is_feature_backbone("egemaps") and is_feature_backbone("resemblyzer")
    assert not is_feature_backbone("facebook/wav2vec2-base")
    with pytest.raises(AfterError, match=r"unknown feature backbone 'mfcc'.*egemaps, resemblyzer"):
        load_feature_backbone("mfcc")


def test_embed_checks_input_and_output() -> None:
    b = Counting()
    with pytest.raises(AfterError, match="empty"):
        b.embed(np.zeros(0, dtype=np.float32))
    with pytest.raises(AfterError, match="1-D"):
        b.embed(np.zeros((2, 100), dtype=np.float32))
    with pytest.raises(AfterError, match="NaN or infinite samples"):
        b.embed(np.array([0.1, np.inf], dtype=np.float32))
    with pytest.raises(AfterError, match=r"counting: 1 of 4 features are NaN or infinite"):
        Counting(nan=True).embed(tone())
    assert b.embed(tone().astype(np.float64)).dtype == np.float32


# ---- embed_manifest and its cache
# -------------------------------------------------------------------------------------------


def test_rows_follow_manifest_order(corpus: Manifest) -> None:
    b = Counting()
    rows = embed_manifest(b, corpus)
    assert rows.shape == (4, 4) and rows.dtype == np.float32
    for row, u in zip(rows, corpus, strict=True):
        np.testing.assert_array_equal(row, b.embed(load_audio(u.path)))
    reordered = corpus.subset(list(reversed(corpus.ids)))
    np.testing.assert_array_equal(embed_manifest(b, reordered), rows[::-1])
    np.testing.assert_array_equal(embed_manifest(b, corpus, num_workers=3), rows)
    assert embed_manifest(b, Manifest([])).shape == (0, 4)


def test_on_item_called_once_per_utterance(corpus: Manifest, tmp_path: Path) -> None:
    ticks: list[None] = []
    embed_manifest(Counting(), corpus, cache_dir=tmp_path / "c", on_item=lambda: ticks.append(None))
    embed_manifest(Counting(), corpus, cache_dir=tmp_path / "c", on_item=lambda: ticks.append(None))
    assert len(ticks) == 2 * len(corpus)


def test_cache_hit_skips_embed_and_is_identical(
    egemaps: EgemapsBackbone, corpus: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = egemaps.embed

    def spy(wave: np.ndarray) -> np.ndarray:
        calls.append(wave.size)
        return real(wave)

    monkeypatch.setattr(egemaps, "embed", spy)
    first = embed_manifest(egemaps, corpus, cache_dir=tmp_path / "cache")
    assert len(calls) == 4
    second = embed_manifest(egemaps, corpus, cache_dir=tmp_path / "cache", num_workers=2)
    assert len(calls) == 4  # all four from the cache
    np.testing.assert_array_equal(first, second)
    assert first.dtype == second.dtype == np.float32
    np.testing.assert_array_equal(first, embed_manifest(egemaps, corpus))  # == no cache at all
    folder = cache_folder(egemaps, tmp_path / "cache")
    assert folder.name.startswith("egemaps-")
    assert set(_entries(folder)) == set(corpus.ids)
    # one small file per id, in hashed shard folders: no id characters leak into paths
    for p in folder.rglob("*"):
        assert p.is_dir() or (p.suffix == ".feat" and p.stat().st_size < 600)
        assert ":" not in p.name and ".." not in p.relative_to(folder).parts


def test_changed_audio_invalidates_only_its_entry(corpus: Manifest, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    b = Counting()
    before = embed_manifest(b, corpus, cache_dir=cache)
    b.calls.clear()

    _bump_mtime(corpus["m:mid"].path)  # touched, same content
    again = embed_manifest(b, corpus, cache_dir=cache)
    assert len(b.calls) == 1
    np.testing.assert_array_equal(again, before)

    # rewritten with other audio of the same size (same duration): new features for that row only
    path = corpus["a/first"].path
    size = os.path.getsize(path)
    write_tone(path, 500.0, 0.7, seed=9)
    assert os.path.getsize(path) == size
    _bump_mtime(path)  # make sure the mtime moved even on coarse-clock filesystems
    b.calls.clear()
    after = embed_manifest(b, corpus, cache_dir=cache)
    assert len(b.calls) == 1
    changed = [i for i in range(4) if not np.array_equal(after[i], before[i])]
    assert changed == [corpus.ids.index("a/first")]
    np.testing.assert_array_equal(after[1], b.embed(load_audio(path)))


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d[: len(d) // 2],  # truncated
        lambda d: d[:-1],  # one byte short
        lambda d: b"",  # empty (power cut after rename)
        lambda d: d[:-3] + bytes([d[-3] ^ 0xFF]) + d[-2:],  # a flipped byte in the data
        lambda d: b"garbage\n\xff\xfe" * 10,
    ],
    ids=["half", "short", "empty", "bitflip", "garbage"],
)
def test_corrupt_entry_is_recomputed(
    damage: Callable[[bytes], bytes], corpus: Manifest, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    b = Counting()
    before = embed_manifest(b, corpus, cache_dir=cache)
    entry = _entries(cache_folder(b, cache))["z/last:one"]
    entry.write_bytes(damage(entry.read_bytes()))
    b.calls.clear()
    after = embed_manifest(b, corpus, cache_dir=cache)
    assert len(b.calls) == 1
    np.testing.assert_array_equal(after, before)
    b.calls.clear()
    embed_manifest(b, corpus, cache_dir=cache)  # the entry was rewritten
    assert b.calls == []


def test_new_version_uses_a_new_folder(corpus: Manifest, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    v1, v2 = Counting("v1"), Counting("v2")
    embed_manifest(v1, corpus, cache_dir=cache)
    embed_manifest(v2, corpus, cache_dir=cache)
    assert len(v2.calls) == 4
    f1, f2 = cache_folder(v1, cache), cache_folder(v2, cache)
    assert f1 != f2 and f1.is_dir() and f2.is_dir()
    assert sorted(p.name for p in cache.iterdir()) == sorted([f1.name, f2.name])
    v1.calls.clear()
    embed_manifest(v1, corpus, cache_dir=cache)  # the old version's entries are still there
    assert v1.calls == []


def test_failed_write_leaves_no_partial_entry(
    corpus: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(features.os, "replace", fail)
    cache = tmp_path / "cache"
    with pytest.raises(AfterError, match="writing the feature cache failed"):
        embed_manifest(Counting(), corpus, cache_dir=cache)
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_leftover_temp_file_from_killed_run_is_ignored(corpus: Manifest, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    b = Counting()
    before = embed_manifest(b, corpus, cache_dir=cache)
    entry = _entries(cache_folder(b, cache))["m:mid"]
    entry.with_name(f".{entry.name}.abc.tmp").write_bytes(b"half")
    entry.unlink()  # killed before the rename: only the temp file exists
    b.calls.clear()
    np.testing.assert_array_equal(embed_manifest(b, corpus, cache_dir=cache), before)
    assert len(b.calls) == 1
    assert len(list(cache.rglob("*.tmp"))) == 1  # left alone, never read


def test_missing_audio_raises_audio_error_naming_the_file(corpus: Manifest, tmp_path: Path) -> None:
    path = corpus["m:mid"].path
    os.unlink(path)
    for cache in (None, tmp_path / "cache"):
        with pytest.raises(AudioError) as e:
            embed_manifest(Counting(), corpus, cache_dir=cache)
        assert e.value.reason == "missing" and path in str(e.value)


def test_non_finite_features_name_the_utterance(corpus: Manifest) -> None:
    with pytest.raises(AfterError) as e:
        embed_manifest(Counting(nan=True), corpus)
    msg = str(e.value)
    assert corpus["z/last:one"].path in msg and "'z/last:one'" in msg and "NaN" in msg
