"""The built-in demo corpus: real espeak-ng speech whose prosody follows the emotion rules."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from after.data.audio import validate_manifest
from after.data.manifest import Manifest
from after.data.synth import MARGIN_S, PROSODY, SAMPLE_RATE, synthesize
from after.errors import AfterError

EMOTIONS = ("anger", "happiness", "neutral", "sadness")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    """4 voices (f2 has espeak's random breath noise) x 3 sentences x 4 emotions = 48 clips."""
    return synthesize(tmp_path_factory.mktemp("synth"), num_speakers=4, num_sentences=3, seed=1)


def test_layout_ids_and_balance(corpus: Manifest) -> None:
    assert len(corpus) == 48
    assert corpus.speakers == ["synth_f1", "synth_f2", "synth_m1", "synth_m2"]
    assert corpus.label_counts() == {e: 12 for e in EMOTIONS}
    assert "synth_m1_anger_002" in corpus.ids
    root = Path(next(iter(corpus)).path).parents[1]
    assert Manifest.from_jsonl(root / "manifest.jsonl").ids == corpus.ids
    for u in corpus:
        info = sf.info(u.path)
        assert (info.samplerate, info.channels, info.format) == (SAMPLE_RATE, 1, "FLAC")
        assert u.duration_s == pytest.approx(info.frames / SAMPLE_RATE)
        assert 1.0 < info.duration < 5.0


def test_every_clip_passes_validation(corpus: Manifest) -> None:
    report = validate_manifest(corpus, num_workers=2)
    assert not report.rejected and len(report.usable) == len(corpus)


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, corpus: Manifest) -> None:
    again = synthesize(tmp_path / "a", num_speakers=4, num_sentences=3, seed=1, num_workers=1)
    for u, v in zip(corpus, again, strict=True):
        assert Path(u.path).read_bytes() == Path(v.path).read_bytes(), u.id
    (other,) = synthesize(tmp_path / "b", num_speakers=1, num_sentences=1, emotions=["anger"])
    same_clip = corpus[other.id]  # seed 0 here, seed 1 there
    assert Path(same_clip.path).read_bytes() != Path(other.path).read_bytes()


def _f0_hz(x: np.ndarray) -> float:
    """Median pitch of the loud frames, by autocorrelation (60-500 Hz)."""
    frame = int(0.04 * SAMPLE_RATE)
    frames = np.lib.stride_tricks.sliding_window_view(x, frame)[:: frame // 2]
    rms = np.sqrt((frames**2).mean(axis=1))
    lo, hi = SAMPLE_RATE // 500, SAMPLE_RATE // 60
    f0 = []
    for f in frames[rms > np.median(rms)]:
        ac = np.correlate(f, f, "full")[frame - 1 :]
        f0.append(SAMPLE_RATE / (lo + int(np.argmax(ac[lo:hi]))))
    return float(np.median(f0))


def _measure(u_path: str) -> tuple[float, float, float]:
    """(speech duration s, level dBFS, pitch Hz) of a clip, margins excluded."""
    x, _ = sf.read(u_path, dtype="float32")
    margin = round(MARGIN_S * SAMPLE_RATE)
    speech = x[margin:-margin]
    level = 10 * np.log10(np.mean(speech**2))
    return speech.size / SAMPLE_RATE, float(level), _f0_hz(speech)


def test_prosody_follows_the_rules(corpus: Manifest) -> None:
    """Per voice, averaged over 3 sentences, the contrasts of two grades or more hold: anger and
    happiness are higher than neutral and sadness, anger is louder and faster than sadness.
    (Neutral vs sadness, one grade apart, overlap by design.)"""
    by: dict[tuple[str, str], list[tuple[float, float, float]]] = defaultdict(list)
    for u in corpus:
        assert u.label is not None
        by[u.speaker, u.label].append(_measure(u.path))
    for speaker in corpus.speakers:
        means = {e: np.mean(by[speaker, e], axis=0) for e in EMOTIONS}
        duration, level, pitch = ({e: means[e][i] for e in EMOTIONS} for i in range(3))
        assert duration["anger"] < duration["sadness"], speaker
        assert level["anger"] > level["sadness"], speaker
        for high in ("anger", "happiness"):
            assert pitch[high] > max(pitch["neutral"], pitch["sadness"]), speaker


def test_noise_at_the_chosen_snr(tmp_path: Path) -> None:
    clean = synthesize(tmp_path / "clean", num_speakers=1, num_sentences=1, emotions=["neutral"])
    noisy = synthesize(
        tmp_path / "noisy", num_speakers=1, num_sentences=1, emotions=["neutral"], snr_db=10.0
    )
    x, _ = sf.read(next(iter(clean)).path, dtype="float64")
    y, _ = sf.read(next(iter(noisy)).path, dtype="float64")
    margin = round(MARGIN_S * SAMPLE_RATE)
    assert np.abs(x[:margin]).max() == 0  # clean margins are silent
    noise = y - x
    snr = 10 * np.log10(np.mean(x[margin:-margin] ** 2) / np.mean(noise**2))
    assert snr == pytest.approx(10.0, abs=0.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_speakers": 0}, "num_speakers"),
        ({"num_speakers": 99}, "num_speakers"),
        ({"num_sentences": 0}, "num_sentences"),
        ({"emotions": ["anger", "joy"]}, "unknown emotion"),
        ({"emotions": ["anger", "anger"]}, "repeat"),
        ({"emotions": []}, "no emotions"),
        ({"snr_db": float("nan")}, "snr_db"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(AfterError, match=message):
        synthesize(tmp_path, **kwargs)  # type: ignore[arg-type]


def test_all_published_emotions_render(tmp_path: Path) -> None:
    m = synthesize(tmp_path, num_speakers=1, num_sentences=1, emotions=list(PROSODY))
    assert sorted(m.labels) == sorted(PROSODY)
