"""Self-supervised speech backbones: load by hub id, local folder or scratch config, offline first.

A backbone spec is one of:

- a local folder saved with `save_pretrained` (a TAPT output, a downloaded model);
- a hub id such as `facebook/wav2vec2-base`, read from the local Hugging Face cache only. An id that
  is not cached fails at once with the cache path and the alternatives; set `AFTER_ALLOW_DOWNLOAD=1`
  to let transformers download it;
- `scratch:tiny`, `scratch:small` or `scratch:base`: a random-init wav2vec 2.0 (`SCRATCH`); `base`
  has the shape of wav2vec2-base, `tiny` is for tests.

Families: wav2vec 2.0, HuBERT, WavLM and data2vec-audio (`FAMILIES`), all through the Auto classes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForAudioClassification,
    PretrainedConfig,
    PreTrainedModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForPreTraining,
)
from transformers.utils import logging as hf_logging

from after.data.audio import SAMPLE_RATE
from after.errors import AfterError

# config.model_type -> family name used in messages and by TAPT.
FAMILIES = {
    "wav2vec2": "wav2vec 2.0",
    "hubert": "HuBERT",
    "wavlm": "WavLM",
    "data2vec-audio": "data2vec-audio",
}

SCRATCH_PREFIX = "scratch:"

# Random-init wav2vec 2.0 shapes. All keep the 7-layer CNN with its 320x downsampling (one frame per
# 20 ms), so masking and pooling behave as in real models. `base` is Wav2Vec2Config's defaults,
# which are wav2vec2-base's shape (95M parameters).
SCRATCH: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "conv_dim": (32,) * 7,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2,
        "num_codevector_groups": 2,
        "num_codevectors_per_group": 16,
        "codevector_dim": 32,
        "proj_codevector_dim": 32,
        "num_negatives": 20,
    },
    "small": {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 1024,
        "conv_dim": (256,) * 7,
        "num_conv_pos_embeddings": 64,
        "num_conv_pos_embedding_groups": 8,
        "codevector_dim": 128,
        "proj_codevector_dim": 128,
    },
    "base": {},
}

ALLOW_DOWNLOAD_ENV = "AFTER_ALLOW_DOWNLOAD"


def scratch_config(size: str) -> Wav2Vec2Config:
    """The random-init wav2vec 2.0 config `size` (a key of `SCRATCH`)."""
    if size not in SCRATCH:
        raise AfterError(
            f"unknown scratch size {size!r}; use {', '.join(SCRATCH_PREFIX + s for s in SCRATCH)}"
        )
    return Wav2Vec2Config(**SCRATCH[size])


def load_config(spec: str) -> PretrainedConfig:
    """The config of backbone `spec`; `AfterError` if it is not found or not a supported family."""
    if spec.startswith(SCRATCH_PREFIX):
        return scratch_config(spec.removeprefix(SCRATCH_PREFIX))
    source, local_only = _source(spec)
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as e:
        raise _not_found(spec, source, e) from None
    if config.model_type not in FAMILIES:
        raise AfterError(
            f"{spec}: a {config.model_type!r} model; supported: {', '.join(FAMILIES.values())}"
        )
    return config


def load_backbone(spec: str, *, pretraining: bool = False) -> PreTrainedModel:
    """The backbone `spec` as a transformers model.

    With `pretraining`, a wav2vec 2.0 comes as `Wav2Vec2ForPreTraining` (with its quantizer, for
    TAPT); everything else comes as the family's bare encoder (`AutoModel`). Scratch models are
    seeded by torch's global RNG.
    """
    if spec.startswith(SCRATCH_PREFIX):
        scratch = scratch_config(spec.removeprefix(SCRATCH_PREFIX))
        return Wav2Vec2ForPreTraining(scratch) if pretraining else AutoModel.from_config(scratch)
    config = load_config(spec)
    source, local_only = _source(spec)
    cls: Any = (
        Wav2Vec2ForPreTraining if pretraining and config.model_type == "wav2vec2" else AutoModel
    )
    try:
        with _quiet():
            model: PreTrainedModel = cls.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as e:
        raise _not_found(spec, source, e) from None
    return model


def load_audio_classifier(spec: str, **config_changes: Any) -> PreTrainedModel:
    """Backbone `spec` with transformers' audio-classification head (linear projection, mean
    pooling over valid frames, linear classifier), new and random; `config_changes` (num_labels,
    id2label, SpecAugment settings, ...) are set on its config first. The result is a stock
    `*ForSequenceClassification`, so a saved one loads in `transformers.pipeline`."""
    config = load_config(spec)
    for key, value in config_changes.items():
        setattr(config, key, value)
    if spec.startswith(SCRATCH_PREFIX):
        scratch: PreTrainedModel = AutoModelForAudioClassification.from_config(config)
        return scratch
    source, local_only = _source(spec)
    try:
        with _quiet():
            model: PreTrainedModel = AutoModelForAudioClassification.from_pretrained(
                source, config=config, local_files_only=local_only
            )
    except (OSError, ValueError) as e:
        raise _not_found(spec, source, e) from None
    return model


def load_feature_extractor(spec: str) -> Wav2Vec2FeatureExtractor:
    """The waveform preprocessor that goes with backbone `spec` (per-utterance normalisation or
    not, as the model was trained); the wav2vec 2.0 default where the backbone ships none."""
    default = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLE_RATE,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    )
    if spec.startswith(SCRATCH_PREFIX):
        return default
    source, local_only = _source(spec)
    try:
        found = AutoFeatureExtractor.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError):
        return default
    if not isinstance(found, Wav2Vec2FeatureExtractor):
        raise AfterError(
            f"{spec}: its preprocessor is a {type(found).__name__}, not a waveform one"
        )
    found.return_attention_mask = True
    return found


def feature_encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The CNN feature encoder (waveform -> frames) inside any supported model."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "feature_extractor":
            return module
    raise AfterError(f"{type(model).__name__} has no CNN feature encoder (`feature_extractor`)")


def freeze_feature_encoder(model: torch.nn.Module) -> None:
    """Freeze the CNN feature encoder: no gradients, no updates (works for every family)."""
    encoder = feature_encoder(model)
    for p in encoder.parameters():
        p.requires_grad = False
    # The families' encoders skip building a graph through the CNN when this is False.
    encoder._requires_grad = False  # type: ignore[assignment]


def num_frames(config: PretrainedConfig, num_samples: torch.Tensor) -> torch.Tensor:
    """Frames the CNN makes from `num_samples` samples (each conv: floor((L - k) / s) + 1)."""
    lengths = num_samples
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.clamp(min=0)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' per-load progress bar and report of new or unused weights: a new
    classification head, or a pre-training head left out, is what we ask for."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _source(spec: str) -> tuple[str, bool]:
    """(where to load from, local files only?) for a folder or hub id."""
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise AfterError(
                f"{path}: not a model folder (no config.json); give a folder written by "
                "save_pretrained, a hub id, or scratch:tiny|small|base"
            )
        return str(path), True
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise AfterError(f"{spec}: no such model folder ({path.resolve()})")
    return spec, os.environ.get(ALLOW_DOWNLOAD_ENV) != "1"


def _not_found(spec: str, source: str, error: Exception) -> AfterError:
    if Path(source).is_dir():
        return AfterError(f"{source}: cannot load the model ({error})")
    from huggingface_hub.constants import HF_HUB_CACHE

    return AfterError(
        f"{spec}: not in the local Hugging Face cache ({HF_HUB_CACHE}), and after does not "
        "download models unless asked. Either pass a local folder (on a machine with internet: "
        f"`python -c \"import huggingface_hub as h; h.snapshot_download('{spec}', "
        "local_dir='models/x')\"`, then copy models/x here and pass it), or set "
        f"{ALLOW_DOWNLOAD_ENV}=1 to download it into the cache"
    )
