"""Hostile input: every bad file or manifest gets one clear message that names it and the fix;
a corpus with bad files keeps going; nothing ends in a raw traceback."""

from __future__ import annotations

import itertools
import json
import math
import os
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from after.data import audio
from after.data.audio import DECODE_LIMIT_S, REASONS, audio_windows, inspect_audio, load_audio
from after.data.manifest import Manifest
from after.errors import AfterError, AudioError, ManifestError
from after.testing.cli import invoke

SR = 16_000


def _speech(seconds: float = 1.0, sr: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


def _truncated(fmt: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        sf.write(path, _speech(2.0), SR, format=fmt)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])

    return make


def _zero_samples(path: Path) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)


def _floats(value: float) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        x = _speech(1.0).astype(np.float32)
        x[100:200] = value
        sf.write(path, x, SR, subtype="FLOAT")

    return make


def _hours_long(path: Path) -> None:
    """One hour of 8 kHz 8-bit audio (29 MB), written in blocks."""
    with sf.SoundFile(path, "w", samplerate=8000, channels=1, subtype="PCM_U8") as f:
        block = _speech(60.0, 8000)
        for _ in range(60):
            f.write(block)


def _symlink_loop(path: Path) -> None:
    other = path.with_name("loop2.wav")
    path.symlink_to(other)
    other.symlink_to(path)


def _symlink_loop(path: Path) -> None:
    other = path.with_name("loop2.wav")
    path.symlink_to(other)
    other.symlink_to(path)


def _one_hertz(fmt: str) -> Callable[[Path], None]:
    """A 42 KB file whose header claims 1 Hz: 21,000 "seconds" that would decode to 1.3 GB."""

    def make(path: Path) -> None:
        sf.write(path, _speech(21_000 / SR), 1, format=fmt, subtype="PCM_16")

    return make


def _streaming_sizes(path: Path) -> None:
    """A WAV as streaming writers leave it: RIFF and data sizes unknown (0xFFFFFFFF)."""
    sf.write(path, _speech(), SR, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.index(b"data")
    data[4:8] = data[at + 4 : at + 8] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))


def _quiet_speech(path: Path) -> None:
    """Like RAVDESS's quiet calm and sad clips: 3.5 s, 1.5 s of voiced speech (glottal pulses
    through a formant) peaking at -44 dBFS between silences; whole-clip RMS -62 dBFS."""
    t = np.arange(int(1.5 * SR)) / SR
    pulses = np.zeros_like(t)
    pulses[:: SR // 120] = 1.0  # 120 Hz voicing
    formant = np.exp(-np.arange(200) / SR / 0.002) * np.sin(2 * np.pi * 700 * np.arange(200) / SR)
    voiced = np.convolve(pulses, formant)[: len(t)] * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t))
    voiced *= 10 ** (-44 / 20) / np.abs(voiced).max()
    x = np.concatenate([np.zeros(SR), voiced, np.zeros(SR)])
    assert 10 * np.log10(np.mean(x**2)) < -60  # whole-clip RMS calls it silent
    sf.write(path, x, SR, subtype="PCM_16")


def _noise_floor(path: Path) -> None:
    """A microphone that recorded nothing: noise at -75 dBFS."""
    noise = np.random.default_rng(0).standard_normal(2 * SR) * 10 ** (-75 / 20)
    sf.write(path, noise, SR, subtype="FLOAT")


# name -> (how to make it, the reason it must be rejected for, or None: it must load)
HOSTILE_AUDIO: dict[str, tuple[Callable[[Path], None], str | None]] = {
    "truncated_flac.flac": (_truncated("FLAC"), "corrupt"),
    "truncated_wav.wav": (_truncated("WAV"), "corrupt"),
    "zero_length.wav": (lambda p: p.write_bytes(b""), "empty"),
    "zero_samples.wav": (_zero_samples, "empty"),
    "eight_bit.wav": (lambda p: sf.write(p, _speech(), SR, subtype="PCM_U8"), None),
    "eight_khz.wav": (lambda p: sf.write(p, _speech(1.0, 8000), 8000), None),
    "six_channels.wav": (lambda p: sf.write(p, _speech(1.0, SR, 6), SR), None),
    "nan.wav": (_floats(math.nan), "nonfinite"),
    "inf.wav": (_floats(math.inf), "nonfinite"),
    "hours_long.wav": (_hours_long, "too_long"),  # over --max-duration (600 s)
    "text.wav": (lambda p: p.write_text("id,label\nthis is not audio\n"), "not_audio"),
    "silence.wav": (lambda p: sf.write(p, np.zeros(SR), SR), "silent"),
    "folder.wav": (lambda p: p.mkdir(), "not_audio"),
    "loop.wav": (_symlink_loop, "missing"),
    "dangling.wav": (lambda p: p.symlink_to(p.with_name("nowhere.wav")), "missing"),
    "one_hertz.wav": (_one_hertz("WAV"), "corrupt"),
    "one_hertz_flac.flac": (_one_hertz("FLAC"), "corrupt"),
    "huge_samples.wav": (_floats(1e29), "out_of_range"),
    "streaming_sizes.wav": (_streaming_sizes, None),
    "quiet_speech.wav": (_quiet_speech, None),
    "noise_floor.wav": (_noise_floor, "silent"),
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    for name, (make, _) in HOSTILE_AUDIO.items():
        make(root / name)
    sf.write(root / "good.wav", _speech(), SR)
    return root


def test_every_hostile_file_gets_its_reason_and_a_fix(hostile: Path, tally: dict[str, int]) -> None:
    for name, (_, reason) in HOSTILE_AUDIO.items():
        path = hostile / name
        if reason is None:
            x = load_audio(path, max_duration_s=8.0)
            assert x.dtype == np.float32 and np.isfinite(x).all() and 0 < len(x) <= 8 * SR
            continue
        with pytest.raises(AudioError) as e:
            inspect_audio(path)  # what validation (prepare, validate) runs on every clip
        assert e.value.reason == reason, (name, e.value)
        message = str(e.value)
        assert str(path) in message and REASONS[reason] in message, message
        tally["clear_messages"] = tally.get("clear_messages", 0) + 1
    tally["hostile_inputs"] = tally.get("hostile_inputs", 0) + len(HOSTILE_AUDIO)


def test_long_files_are_read_in_bounded_pieces(
    hostile: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = hostile / "hours_long.wav"
    assert inspect_audio(path, max_duration_s=DECODE_LIMIT_S).duration_s == 3600
    assert load_audio(path, max_duration_s=8.0, crop="center").shape == (8 * SR,)
    windows = audio_windows(path, 30.0)
    assert [(a, b, len(x)) for a, b, x in itertools.islice(windows, 2)] == [
        (0.0, 30.0, 30 * SR),
        (30.0, 60.0, 30 * SR),
    ]
    monkeypatch.setattr(audio, "DECODE_LIMIT_S", 1800.0)
    with pytest.raises(AudioError, match="too_long"):
        load_audio(path)  # whole: refused rather than decoded into memory


def test_symlink_loops_say_so(hostile: Path) -> None:
    for name in ("loop.wav", "dangling.wav"):
        with pytest.raises(AudioError, match="symlink"):
            load_audio(hostile / name)


def test_unreadable_file(hostile: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "locked.wav"
    sf.write(path, _speech(), SR)
    path.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make the open fail as it would for a user

        def denied(*args: object, **kw: object) -> None:
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(sf, "SoundFile", denied)
    with pytest.raises(AudioError) as e:
        load_audio(path)
    assert e.value.reason == "unreadable" and str(path) in str(e.value)


def test_a_corpus_of_hostile_files_is_prepared_around_them(
    hostile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = ["path,label,speaker"] + [f"{n},anger,s1" for n in [*HOSTILE_AUDIO, "good.wav"]]
    (hostile / "clips.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "m.jsonl"
    args = ["prepare", "csv", "--data-dir", str(hostile / "clips.csv"), "--out", str(out)]
    code, text = invoke(args, capsys)
    assert code == 0
    kept = Manifest.from_jsonl(out)
    bad = {n for n, (_, reason) in HOSTILE_AUDIO.items() if reason is not None}
    assert {Path(u.path).name for u in kept} == set(HOSTILE_AUDIO) - bad | {"good.wav"}
    rejected = [
        json.loads(line) for line in out.with_name("m.rejected.jsonl").read_text().splitlines()
    ]
    assert {Path(r["path"]).name: r["reason"] for r in rejected} == {
        n: HOSTILE_AUDIO[n][1] for n in bad
    }
    assert f"{len(bad)} unusable clip(s)" in text and "m.rejected.jsonl" in text
    assert all(r["fix"] == REASONS[r["reason"]] for r in rejected)  # each with its fix


def test_non_utf8_file_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "corpus"
    (root / "anger" / "s1").mkdir(parents=True)
    (root / "joy" / "s1").mkdir(parents=True)
    sf.write(root / "joy" / "s1" / "fine.wav", _speech(), SR)
    sf.write(root / "anger" / "s1" / "cafe.wav", _speech(), SR)
    folder = os.fsencode(root / "anger" / "s1")
    os.rename(os.path.join(folder, b"cafe.wav"), os.path.join(folder, b"caf\xe9.wav"))  # Latin-1
    args = ["prepare", "folder", "--data-dir", str(root), "--out", str(tmp_path / "m.jsonl")]
    code, text = invoke(args, capsys)
    assert code == 0, text
    assert "caf" in text and "UTF-8" in text  # named, with the fix
    kept = Manifest.from_jsonl(tmp_path / "m.jsonl")
    assert [Path(u.path).name for u in kept] == ["fine.wav"]


HOSTILE_MANIFESTS = {
    "missing columns": ("path,emotion\na.wav,anger\n", "missing column"),
    "unknown label": ("path,label,speaker\ngood.wav,elation,s1\n", "unknown_label"),
    "duplicate ids": ("id,path,label,speaker\nx,good.wav,anger,s1\nx,good.wav,joy,s1\n", "'x'"),
    "outside the root": ("path,label,speaker\n../../../etc/passwd,anger,s1\n", "outside"),
    "not UTF-8": (b"path,label,speaker\ncaf\xe9.wav,anger,s1\n", "UTF-8"),
    "empty": ("", "missing column"),
    "binary": (b"\x00\x01\x02\x03" * 50, "UTF-8|missing column"),
    "bad votes": ("path,label,speaker,votes\ngood.wav,anger,s1,{anger:2\n", "votes must be JSON"),
    "bad duration": ("path,label,speaker,duration_s\ngood.wav,anger,s1,long\n", "duration_s"),
}


@pytest.mark.parametrize("case", list(HOSTILE_MANIFESTS))
def test_hostile_manifests_get_a_clear_message(
    case: str,
    hostile: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tally: dict[str, int],
) -> None:
    content, expected = HOSTILE_MANIFESTS[case]
    path = hostile / f"{case.replace(' ', '_')}.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    args = ["prepare", "csv", "--data-dir", str(path), "--out", str(tmp_path / "m.jsonl")]
    if case == "unknown label":
        Manifest.from_csv(path).to_jsonl(tmp_path / "u.jsonl")
        args = ["validate", str(tmp_path / "u.jsonl"), "--labels", "anger,joy"]
    code, text = invoke(args, capsys)
    assert code != 0, text
    assert any(e in text for e in expected.split("|")), text
    assert path.name in text or "u.jsonl" in text or "good.wav" in text, text
    tally["hostile_inputs"] = tally.get("hostile_inputs", 0) + 1
    tally["clear_messages"] = tally.get("clear_messages", 0) + 1


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    head=st.sampled_from([b"", b"RIFF", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"fLaC", b"OggS", b"ID3"]),
    body=st.binary(max_size=2048),
)
def test_the_loader_fails_only_with_audio_errors(head: bytes, body: bytes, tmp_path: Path) -> None:
    path = tmp_path / "fuzz.wav"
    path.write_bytes(head + body)
    try:
        x = load_audio(path)
    except AudioError as e:
        assert str(path) in str(e) and e.reason in REASONS
    else:
        assert x.dtype == np.float32 and x.ndim == 1


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(
        st.one_of(
            st.text(max_size=80),
            st.dictionaries(
                st.sampled_from(
                    ["id", "path", "label", "speaker", "corpus", "votes", "duration_s", "x"]
                ),
                st.one_of(
                    st.none(),
                    st.text(max_size=8),
                    st.integers(),
                    st.floats(),
                    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
                ),
                max_size=7,
            ).map(json.dumps),
        ),
        max_size=6,
    )
)
def test_the_manifest_parser_fails_only_with_manifest_errors(
    lines: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "fuzz.jsonl"
    path.write_text("\n".join(lines))
    try:
        m = Manifest.from_jsonl(path)
    except ManifestError as e:
        assert str(path) in str(e)
    except AfterError as e:  # pragma: no cover - a ManifestError is expected
        pytest.fail(f"not a ManifestError: {e!r}")
    else:
        assert all(isinstance(u.id, str) and u.id for u in m)
