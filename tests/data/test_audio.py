from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from after.data.audio import (
    REASONS,
    SAMPLE_RATE,
    inspect_audio,
    load_audio,
    validate_manifest,
    write_rejections,
)
from after.data.manifest import Manifest, Utterance
from after.errors import AudioError
from after.testing.dummies import tone, write_tone


def _reason(path: Path, **kw: float) -> str:
    with pytest.raises(AudioError) as e:
        inspect_audio(path, **kw)
    assert str(path) in str(e.value)  # the message names the file
    assert REASONS[e.value.reason] in str(e.value)  # ... and the fix
    return e.value.reason


def test_good_file_is_measured(tmp_path: Path) -> None:
    info = inspect_audio(write_tone(tmp_path / "a.wav", duration_s=1.5))
    assert info.sample_rate == SAMPLE_RATE and info.channels == 1
    assert info.duration_s == pytest.approx(1.5)
    assert -20 < info.level_dbfs < -5


def test_missing_and_folder(tmp_path: Path) -> None:
    assert _reason(tmp_path / "nope.wav") == "missing"
    (tmp_path / "d.wav").mkdir()
    assert _reason(tmp_path / "d.wav") == "not_audio"


def test_text_renamed_wav_is_not_audio(tmp_path: Path) -> None:
    p = tmp_path / "notes.wav"
    p.write_text("this is a text file, not a recording\n")
    assert _reason(p) == "not_audio"


def test_flac_named_wav_still_loads(tmp_path: Path) -> None:
    # A mislabeled extension is not a problem: soundfile reads the content, not the name.
    p = tmp_path / "really_flac.wav"
    sf.write(p, tone(duration_s=0.5), SAMPLE_RATE, format="FLAC")
    assert inspect_audio(p).duration_s == pytest.approx(0.5)
    assert load_audio(p).shape == (SAMPLE_RATE // 2,)


def test_empty_files(tmp_path: Path) -> None:
    zero_bytes = tmp_path / "zero.wav"
    zero_bytes.write_bytes(b"")
    assert _reason(zero_bytes) == "empty"
    no_samples = tmp_path / "nosamples.wav"
    sf.write(no_samples, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    assert _reason(no_samples) == "empty"
    with pytest.raises(AudioError, match="empty"):
        load_audio(no_samples)


def test_truncated_flac_is_corrupt(tmp_path: Path) -> None:
    full = tmp_path / "full.flac"
    rng = np.random.default_rng(0)
    sf.write(full, (0.1 * rng.standard_normal(10 * SAMPLE_RATE)).astype(np.float32), SAMPLE_RATE)
    cut = tmp_path / "cut.flac"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    assert _reason(cut) == "corrupt"


def test_truncated_wav_is_corrupt(tmp_path: Path) -> None:
    full = write_tone(tmp_path / "full.wav", duration_s=2.0)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(full.read_bytes()[:20_000])
    assert _reason(cut) == "corrupt"


def test_silent_and_nonfinite(tmp_path: Path) -> None:
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    assert _reason(silent) == "silent"
    quiet = tmp_path / "quiet.wav"
    sf.write(quiet, tone(amplitude=1e-4), SAMPLE_RATE, subtype="FLOAT")
    assert _reason(quiet) == "silent"
    assert inspect_audio(quiet, silence_dbfs=-100).level_dbfs < -60
    for bad in (np.nan, np.inf):
        x = tone()
        x[100] = bad
        p = tmp_path / f"{bad}.wav"
        sf.write(p, x, SAMPLE_RATE, subtype="FLOAT")
        assert _reason(p) == "nonfinite"
        with pytest.raises(AudioError, match="nonfinite"):
            load_audio(p)


def test_too_short(tmp_path: Path) -> None:
    p = write_tone(tmp_path / "short.wav", duration_s=0.1)
    assert _reason(p) == "too_short"
    assert inspect_audio(p, min_duration_s=0.05).duration_s == pytest.approx(0.1)


def test_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests may run as root, where chmod 000 does not stop reading: simulate the OS refusing.
    p = write_tone(tmp_path / "locked.wav")

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(sf, "SoundFile", refuse)
    assert _reason(p) == "unreadable"


def test_stereo_and_44k_become_16k_mono(tmp_path: Path) -> None:
    left = tone(440, 1.0, 44_100)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)
    p = tmp_path / "stereo44k.wav"
    sf.write(p, stereo, 44_100)
    info = inspect_audio(p)
    assert (info.channels, info.sample_rate) == (2, 44_100)
    x = load_audio(p)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(x.size - SAMPLE_RATE) <= 1
    # downmix is the mean of the channels: half the level of the left channel
    rms = float(np.sqrt(np.mean(x**2)))
    assert rms == pytest.approx(float(np.sqrt(np.mean(left**2))) / 2, rel=0.02)


def test_odd_formats_load(tmp_path: Path) -> None:
    # 8-bit, 8 kHz, six channels: all read, all become 16 kHz mono.
    six = np.tile(tone(300, 0.5, 8_000)[:, None], (1, 6))
    p = tmp_path / "odd.wav"
    sf.write(p, six, 8_000, subtype="PCM_U8")
    x = load_audio(p)
    assert abs(x.size - SAMPLE_RATE // 2) <= 1 and np.isfinite(x).all()


def test_crops(tmp_path: Path) -> None:
    ramp = np.linspace(-0.5, 0.5, 4 * SAMPLE_RATE, dtype=np.float32)
    p = tmp_path / "ramp.wav"
    sf.write(p, ramp, SAMPLE_RATE, subtype="FLOAT")
    start = load_audio(p, max_duration_s=1.0)
    center = load_audio(p, max_duration_s=1.0, crop="center")
    assert start.size == center.size == SAMPLE_RATE
    assert start[0] == pytest.approx(-0.5) and center[0] == pytest.approx(
        ramp[3 * SAMPLE_RATE // 2]
    )
    a = load_audio(p, max_duration_s=1.0, crop="random", rng=np.random.default_rng(7))
    b = load_audio(p, max_duration_s=1.0, crop="random", rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert load_audio(p, max_duration_s=10.0).size == ramp.size  # shorter than the crop: all of it
    with pytest.raises(ValueError, match="rng"):
        load_audio(p, max_duration_s=1.0, crop="random")


def test_validate_manifest_sorts_good_from_bad(tmp_path: Path) -> None:
    good = [write_tone(tmp_path / f"g{i}.wav", duration_s=0.5 + i / 10) for i in range(3)]
    text = tmp_path / "text.wav"
    text.write_text("hello")
    silent = tmp_path / "silent.flac"
    sf.write(silent, np.zeros(SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    rows = [Utterance(f"g{i}", str(p), "anger", "s1", "t") for i, p in enumerate(good)]
    rows += [
        Utterance("text", str(text), "anger", "s1", "t"),
        Utterance("silent", str(silent), "anger", "s2", "t"),
        Utterance("gone", str(tmp_path / "gone.wav"), "anger", "s2", "t"),
        Utterance("odd", str(good[0]), "jealousy", "s2", "t"),
    ]
    seen = []
    report = validate_manifest(
        Manifest(rows), labels=["anger", "neutral"], on_item=lambda: seen.append(1)
    )
    assert len(seen) == len(rows)
    assert report.usable.ids == ["g0", "g1", "g2"]
    assert [u.duration_s for u in report.usable] == [0.5, 0.6, 0.7]
    reasons = {r.id: r.reason for r in report.rejected}
    assert reasons == {
        "text": "not_audio",
        "silent": "silent",
        "gone": "missing",
        "odd": "unknown_label",
    }
    out = write_rejections(tmp_path / "rejected.jsonl", report.rejected)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {row["id"] for row in lines} == set(reasons)
    assert all(row["fix"] for row in lines)


@settings(max_examples=40, deadline=None)
@given(
    num_frames=st.integers(1, 4000),
    channels=st.integers(1, 4),
    sample_rate=st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000]),
    subtype=st.sampled_from(["PCM_16", "PCM_24", "FLOAT"]),
    max_s=st.one_of(st.none(), st.floats(0.01, 1.0)),
)
def test_load_audio_properties(
    tmp_path_factory: pytest.TempPathFactory,
    num_frames: int,
    channels: int,
    sample_rate: int,
    subtype: str,
    max_s: float | None,
) -> None:
    rng = np.random.default_rng(num_frames)
    x = rng.uniform(-0.9, 0.9, size=(num_frames, channels)).astype(np.float32)
    p = tmp_path_factory.mktemp("prop") / "x.wav"
    sf.write(p, x, sample_rate, subtype=subtype)
    y = load_audio(p, max_duration_s=max_s, crop="random", rng=rng)
    assert y.dtype == np.float32 and y.ndim == 1 and np.isfinite(y).all()
    kept = num_frames if max_s is None else min(num_frames, int(np.ceil(max_s * sample_rate)))
    assert abs(y.size - kept * SAMPLE_RATE / sample_rate) <= 1
