"""Tiny synthetic audio and manifests for tests and examples. No downloads, milliseconds to make."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from after.data.manifest import Manifest, Utterance

# One easy-to-separate tone per class: a classifier that hears pitch can learn these.
TONE_HZ = {"anger": 330.0, "happiness": 262.0, "neutral": 196.0, "sadness": 147.0}


def tone(
    freq_hz: float = 220.0,
    duration_s: float = 1.0,
    sample_rate: int = 16_000,
    *,
    amplitude: float = 0.3,
    seed: int = 0,
) -> np.ndarray:
    """A vibrato tone with a little noise, shape (num_samples,), float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(duration_s * sample_rate)) / sample_rate
    f = freq_hz * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f) / sample_rate
    x = amplitude * (np.sin(phase) + 0.03 * rng.standard_normal(t.size))
    return x.astype(np.float32)


def write_tone(
    path: str | Path,
    freq_hz: float = 220.0,
    duration_s: float = 1.0,
    *,
    sample_rate: int = 16_000,
    seed: int = 0,
) -> Path:
    """Write a `tone` to `path` (format from the suffix: .wav, .flac, .ogg). Creates parent
    folders."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sf.write(out, tone(freq_hz, duration_s, sample_rate, seed=seed), sample_rate)
    return out


def tone_corpus(
    out_dir: str | Path,
    *,
    num_speakers: int = 4,
    clips_per_label: int = 2,
    duration_s: float = 0.6,
    corpus: str = "tones",
) -> Manifest:
    """A labeled corpus of tones (one pitch per label, speakers shift it slightly), written as WAV
    files."""
    root = Path(out_dir)
    items = []
    for s in range(num_speakers):
        speaker = f"spk{s:02d}"
        for label, hz in TONE_HZ.items():
            for c in range(clips_per_label):
                utt_id = f"{corpus}_{speaker}_{label}_{c}"
                path = write_tone(
                    root / speaker / f"{utt_id}.wav",
                    hz * (1 + 0.02 * s),
                    duration_s,
                    seed=s * 97 + c,
                )
                items.append(
                    Utterance(utt_id, str(path), label, speaker, corpus, duration_s=duration_s)
                )
    return Manifest(items)
