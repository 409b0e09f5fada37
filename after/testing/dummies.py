"""Tiny synthetic audio and manifests for tests and examples. No downloads, milliseconds to make."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


# The shape of every tiny backbone: 2 layers of width 32, the real 7-layer CNN (320x downsampling)
# with 32 channels. Random init, a few MB, milliseconds per clip.
_TINY: dict[str, Any] = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (32,) * 7,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
}


def tiny_backbone(out_dir: str | Path, family: str = "wav2vec2", *, seed: int = 0) -> Path:
    """Save a tiny random-init model of `family` (wav2vec2, hubert, wavlm, data2vec-audio,
    whisper) to `out_dir` with `save_pretrained`, as a stand-in for a downloaded checkpoint (for
    whisper, a speech-recognition model with its decoder and log-mel preprocessor, as the hub's
    openai/whisper-* folders hold)."""
    import torch
    from transformers import (
        Data2VecAudioConfig,
        Data2VecAudioModel,
        HubertConfig,
        HubertModel,
        WavLMConfig,
        WavLMModel,
    )

    from after.models.backbones import scratch_config

    torch.manual_seed(seed)
    if family == "wav2vec2":
        from transformers import Wav2Vec2ForPreTraining

        model: torch.nn.Module = Wav2Vec2ForPreTraining(scratch_config("tiny"))
    elif family == "hubert":
        model = HubertModel(HubertConfig(**_TINY))
    elif family == "wavlm":
        model = WavLMModel(WavLMConfig(**_TINY, num_buckets=16, max_bucket_distance=50))
    elif family == "data2vec-audio":
        config: dict[str, Any] = {**_TINY, "num_conv_pos_embeddings": 5, "conv_pos_kernel_size": 16}
        model = Data2VecAudioModel(Data2VecAudioConfig(**config))
    elif family == "whisper":
        from transformers import (
            WhisperConfig,
            WhisperFeatureExtractor,
            WhisperForConditionalGeneration,
        )

        dims = {"layers": 2, "attention_heads": 2, "ffn_dim": 64}
        sizes: dict[str, Any] = {
            f"{part}_{k}": v for part in ("encoder", "decoder") for k, v in dims.items()
        }
        tokens: dict[str, Any] = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
        model = WhisperForConditionalGeneration(
            WhisperConfig(d_model=32, vocab_size=64, decoder_start_token_id=3, **tokens, **sizes)
        )
        WhisperFeatureExtractor().save_pretrained(out_dir)
    else:
        raise ValueError(f"unknown family {family!r}")
    model.save_pretrained(out_dir)  # type: ignore[operator]
    return Path(out_dir)
