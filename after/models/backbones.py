"""Self-supervised speech backbones: load by hub id, local folder or scratch config, offline first.

A backbone spec is one of:

- a local folder saved with `save_pretrained` (a TAPT output, a downloaded model);
- a hub id such as `facebook/wav2vec2-base`, read from the local Hugging Face cache only. An id that
  is not cached fails at once with the cache path and the alternatives; set `AFTER_ALLOW_DOWNLOAD=1`
  to let transformers download it;
- `scratch:tiny`, `scratch:small` or `scratch:base`: a random-init wav2vec 2.0 (`SCRATCH`); `base`
  has the shape of wav2vec2-base, `tiny` is for tests;
- `whisper-tiny.en` or `whisper-base`: OpenAI Whisper's encoder from the CTranslate2 files that ship
  in PyPI wheels, or a local CTranslate2 / faster-whisper folder (`after.models.whisper`); converted
  once to a transformers folder in the cache. A transformers Whisper folder or hub id
  (`openai/whisper-base`) loads like any other.

Families (`FAMILIES`): wav2vec 2.0, HuBERT, WavLM, data2vec-audio and Whisper. Training, TAPT, pool
scoring and frozen features never ask which one they hold: they go through `Family` (`family_of`),
which knows how to turn audio into model inputs, which bottom part of the encoder is frozen and how
to cache its outputs per clip, how to read a layer's frames, and which self-supervised objective
continues the model's pre-training (`tapt_objective`, see `after.models.objectives`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
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
    "whisper": "Whisper",
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


def resolve(spec: str) -> str:
    """`spec` with Whisper's CTranslate2 forms (a wheel model name, a CTranslate2 folder) replaced
    by the transformers folder they convert to (made once, in the cache); anything else as is."""
    from after.models import whisper

    found = whisper.ct2_files(spec)
    if found is None:
        if spec.startswith(whisper.PREFIX) and not Path(spec).exists():
            raise AfterError(
                f"unknown Whisper model {spec!r}; the offline ones are "
                f"{', '.join(whisper.WHEEL_MODELS)} (or give a CTranslate2 / transformers folder)"
            )
        return spec
    from after.cache import default_cache_dir

    return str(whisper.materialize(*found, default_cache_dir()))


def load_config(spec: str) -> PretrainedConfig:
    """The config of backbone `spec`; `AfterError` if it is not found or not a supported family."""
    if spec.startswith(SCRATCH_PREFIX):
        return scratch_config(spec.removeprefix(SCRATCH_PREFIX))
    source, local_only = _source(resolve(spec))
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
    TAPT); everything else comes as the family's bare encoder (`AutoModel`; for Whisper, the
    encoder inside a `WhisperEncoderForAudioClassification`). Scratch models are seeded by torch's
    global RNG.
    """
    if spec.startswith(SCRATCH_PREFIX):
        scratch = scratch_config(spec.removeprefix(SCRATCH_PREFIX))
        return Wav2Vec2ForPreTraining(scratch) if pretraining else AutoModel.from_config(scratch)
    config = load_config(spec)
    source, local_only = _source(resolve(spec))
    cls: Any = AutoModel
    if config.model_type == "whisper":
        cls = family_of(config).classifier_class()
    elif pretraining and config.model_type == "wav2vec2":
        cls = Wav2Vec2ForPreTraining
    try:
        with _quiet():
            model: PreTrainedModel = cls.from_pretrained(
                source, config=config, local_files_only=local_only
            )
    except (OSError, ValueError) as e:
        raise _not_found(spec, source, e) from None
    return model


def load_audio_classifier(spec: str, **config_changes: Any) -> PreTrainedModel:
    """Backbone `spec` with transformers' audio-classification head (linear projection, mean
    pooling over valid frames, linear classifier), new and random; `config_changes` (num_labels,
    id2label, SpecAugment settings, num_hidden_layers to keep only the bottom layers, ...) are
    set on its config first. wav2vec 2.0-like families give a stock `*ForSequenceClassification`;
    Whisper gives `WhisperEncoderForAudioClassification` (see `after.models.whisper_model`)."""
    config = load_config(spec)
    for key, value in config_changes.items():
        setattr(config, key, value)
    cls = family_of(config).classifier_class()
    if spec.startswith(SCRATCH_PREFIX):
        scratch: PreTrainedModel = cls.from_config(config)  # type: ignore[attr-defined]
        return scratch
    source, local_only = _source(resolve(spec))
    try:
        with _quiet():
            model: PreTrainedModel = cls.from_pretrained(
                source, config=config, local_files_only=local_only
            )
    except (OSError, ValueError) as e:
        raise _not_found(spec, source, e) from None
    return model


def load_feature_extractor(spec: str) -> Any:
    """The audio preprocessor that goes with backbone `spec`: for wav2vec 2.0-like families a
    `Wav2Vec2FeatureExtractor` (per-utterance normalisation or not, as the model was trained; the
    wav2vec 2.0 default where the backbone ships none), for Whisper its log-mel
    `WhisperFeatureExtractor`. Both return an attention mask."""
    default = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLE_RATE,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    )
    if spec.startswith(SCRATCH_PREFIX):
        return default
    config = load_config(spec)
    source, local_only = _source(resolve(spec))
    found: Any
    try:
        found = AutoFeatureExtractor.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError):
        if config.model_type == "whisper":
            from transformers import WhisperFeatureExtractor

            found = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
        else:
            return default
    expected = family_of(config).preprocessor_class()
    if not isinstance(found, expected):
        raise AfterError(
            f"{spec}: its preprocessor is a {type(found).__name__}, not a {expected.__name__}"
        )
    found.return_attention_mask = True  # type: ignore[attr-defined]
    return found


def feature_encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The CNN feature encoder (waveform -> frames) inside a wav2vec 2.0-like model."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "feature_extractor":
            return module
    raise AfterError(f"{type(model).__name__} has no CNN feature encoder (`feature_extractor`)")


def freeze_feature_encoder(model: torch.nn.Module) -> None:
    """Freeze the convolutional front end (the CNN of wav2vec 2.0-like families, Whisper's conv
    stem): no gradients, no updates."""
    family_of(model.config).freeze(model, cnn=True, layers=0)  # type: ignore[arg-type]


def num_frames(config: PretrainedConfig, num_samples: torch.Tensor) -> torch.Tensor:
    """Frames the CNN makes from `num_samples` samples (each conv: floor((L - k) / s) + 1)."""
    lengths = num_samples
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=True):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.clamp(min=0)


# ---- families -----------------------------------------------------------------------------------


def _requires_grad(modules: list[torch.nn.Module], flag: bool) -> None:
    for module in modules:
        for p in module.parameters():
            p.requires_grad = flag


class Family(ABC):
    """How `after` drives one family of speech encoders.

    Every model here turns 16 kHz audio into one frame per 20 ms (`SAMPLES_PER_FRAME`). Its bottom
    part (the convolutional front end, optionally the first `layers` transformer layers) can be
    frozen; frozen outputs depend on the clip alone, so they are computed once per clip
    (`frozen_frames`, shape (T, D)) and cached, and training, evaluation and pool scoring then run
    only the rest (`frames_inputs` and `taking_frames`).
    """

    SAMPLES_PER_FRAME: ClassVar[int] = 320
    # The config's dropout rates inside the transformer (`TrainConfig.dropout` sets them all).
    DROPOUTS: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def classifier_class(self) -> type[PreTrainedModel]:
        """The audio-classification model class (projector, mean pooling, linear classifier)."""

    @abstractmethod
    def preprocessor_class(self) -> type:
        """The class of the audio preprocessor (`load_feature_extractor`)."""

    @abstractmethod
    def inputs(self, waves: list[np.ndarray], preprocessor: Any) -> dict[str, torch.Tensor]:
        """Model inputs for a batch of 16 kHz mono clips, padded, with an attention mask."""

    @abstractmethod
    def front(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        """The convolutional front end's modules."""

    @abstractmethod
    def layers(self, model: torch.nn.Module) -> torch.nn.ModuleList:
        """The transformer layers, bottom first."""

    def freeze(self, model: torch.nn.Module, *, cnn: bool, layers: int) -> None:
        """Freeze the front end (with `cnn`) and the bottom `layers` transformer layers."""
        if layers > len(self.layers(model)):
            raise AfterError(
                f"cannot freeze {layers} layers: the model has {len(self.layers(model))}"
            )
        _requires_grad(self.front(model), not cnn and layers == 0)
        _requires_grad(list(self.layers(model)[:layers]), False)

    def frozen_key(self, model: torch.nn.Module, preprocessor: Any, layers: int) -> str:
        """A digest of what frozen frames depend on: the frozen weights and input settings."""
        h = hashlib.sha256(f"{type(self).__name__};{layers};{_FROZEN_REVISION}".encode())
        for module in [*self.front(model), *self.layers(model)[:layers]]:
            for name, p in sorted(module.state_dict().items()):
                h.update(name.encode())
                h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        h.update(json.dumps(preprocessor.to_dict(), sort_keys=True, default=str).encode())
        return h.hexdigest()

    def cached_layers(self, frozen_layers: int) -> int:
        """How many of the `frozen_layers` frozen transformer layers the cache holds."""
        return frozen_layers

    @abstractmethod
    def frozen_frames(
        self, model: torch.nn.Module, wave: np.ndarray, preprocessor: Any, layers: int
    ) -> np.ndarray:
        """The output of the front end and the first `layers` layers for one clip, (T, D)."""

    @abstractmethod
    def frames_inputs(self, frames: list[np.ndarray], layers: int) -> dict[str, Any]:
        """Model inputs made of `frozen_frames` outputs (padded, with masks)."""

    def taking_frames(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
        """While inside, `model` takes `frames_inputs` instead of `inputs`."""
        return contextlib.nullcontext()

    @abstractmethod
    def hidden(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], layer: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Output of transformer layer `layer` (0: the input to the first layer), (B, T, D), and
        the frame mask (B, T), 1 on a clip's frames."""

    @abstractmethod
    def states(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every layer's output as `hidden` numbers them (the input to the first layer, then each
        layer's), L + 1 tensors (B, T, D), and the frame mask (B, T). In training mode the model's
        own dropout and SpecAugment apply; in eval mode the outputs depend on the input alone."""

    @abstractmethod
    def num_frames(self, config: PretrainedConfig, num_samples: np.ndarray) -> np.ndarray:
        """Frames (B,) of clips of `num_samples` (B,) samples."""

    # Whether the encoder has its own learned embedding for masked frames (wav2vec 2.0's
    # `masked_spec_embed`); TAPT objectives that mask add one where it has not.
    OWN_MASK_EMBEDDING: ClassVar[bool] = True

    @abstractmethod
    def tapt_objective(self, config: PretrainedConfig) -> str | None:
        """The TAPT objective that continues this model's own pre-training, by its name in
        `after.models.objectives.OBJECTIVES`; None where there is none."""

    def save(self, model: torch.nn.Module, out_dir: Path) -> None:
        """Write a (TAPT-)trained `model` as a `from_pretrained` folder."""
        model.save_pretrained(out_dir)  # type: ignore[operator]

    @abstractmethod
    def masked_output(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        mask: torch.Tensor,
        mask_embedding: torch.Tensor | None,
    ) -> torch.Tensor:
        """The encoder's last layer (B, T, D) with the frames of `mask` (B, T) replaced by the
        mask embedding at its input (masked prediction, as HuBERT pre-trains)."""


class Wav2Vec2Family(Family):
    """wav2vec 2.0, HuBERT, WavLM and data2vec-audio: a CNN on the waveform, then a transformer.
    The CNN's group norm normalises over time, so its output depends on padding: frozen frames
    are computed one clip at a time."""

    DROPOUTS = ("hidden_dropout", "attention_dropout", "activation_dropout")

    def classifier_class(self) -> type[PreTrainedModel]:
        return AutoModelForAudioClassification  # type: ignore[return-value]

    def preprocessor_class(self) -> type:
        return Wav2Vec2FeatureExtractor

    def inputs(self, waves: list[np.ndarray], preprocessor: Any) -> dict[str, torch.Tensor]:
        f = preprocessor(
            waves,
            sampling_rate=SAMPLE_RATE,
            padding=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return {"input_values": f["input_values"], "attention_mask": f["attention_mask"]}

    def front(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        cnn = feature_encoder(model)
        return [cnn.cnn if isinstance(cnn, _Passthrough) else cnn]

    def layers(self, model: torch.nn.Module) -> torch.nn.ModuleList:
        for module in model.modules():
            layers = getattr(module, "layers", None)
            if isinstance(layers, torch.nn.ModuleList) and hasattr(module, "pos_conv_embed"):
                return layers
        raise AfterError(f"{type(model).__name__} has no transformer encoder layers")

    def freeze(self, model: torch.nn.Module, *, cnn: bool, layers: int) -> None:
        super().freeze(model, cnn=cnn, layers=layers)
        # The families' encoders skip building a graph through the CNN when this is False.
        feature_encoder(model)._requires_grad = not (cnn or layers)  # type: ignore[assignment]

    def cached_layers(self, frozen_layers: int) -> int:
        # The CNN only: the positional convolution sits between it and the layers.
        return 0

    @torch.no_grad()
    def frozen_frames(
        self, model: torch.nn.Module, wave: np.ndarray, preprocessor: Any, layers: int
    ) -> np.ndarray:
        assert layers == 0, "wav2vec 2.0-like families cache the CNN's outputs only"
        x = preprocessor(wave, sampling_rate=SAMPLE_RATE, return_tensors="pt")["input_values"]
        cnn = self.front(model)[0]
        out: np.ndarray = cnn(x.to(next(cnn.parameters()).device))[0].T.float().cpu().numpy()
        return out

    def frames_inputs(self, frames: list[np.ndarray], layers: int) -> dict[str, Any]:
        longest = max(len(f) for f in frames)
        x = torch.zeros(len(frames), frames[0].shape[1], longest)
        samples = [_cnn_input_samples(len(f)) for f in frames]
        mask = torch.zeros(len(frames), max(samples), dtype=torch.long)
        for b, (f, n) in enumerate(zip(frames, samples, strict=True)):
            x[b, :, : len(f)] = torch.from_numpy(f).T
            mask[b, :n] = 1
        return {"input_values": x, "attention_mask": mask}

    @contextlib.contextmanager
    def taking_frames(self, model: torch.nn.Module) -> Iterator[None]:
        owner: Any = next(
            m
            for m in model.modules()
            if isinstance(getattr(m, "feature_extractor", None), nn.Module)
        )
        cnn = owner.feature_extractor
        owner.feature_extractor = _Passthrough(cnn)
        try:
            yield
        finally:
            owner.feature_extractor = cnn

    def hidden(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], layer: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        states, mask = self.states(model, inputs)
        return states[layer], mask

    def states(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        base: Any = getattr(model, "base_model", model)
        states = list(base(**inputs, output_hidden_states=True).hidden_states)
        lengths = num_frames(base.config, inputs["attention_mask"].sum(dim=-1))
        frames = torch.arange(states[0].shape[1], device=states[0].device)
        return states, (frames[None, :] < lengths[:, None]).long()

    def num_frames(self, config: PretrainedConfig, num_samples: np.ndarray) -> np.ndarray:
        counted: np.ndarray = num_frames(config, torch.as_tensor(num_samples)).numpy()
        return counted

    def masked_output(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        mask: torch.Tensor,
        mask_embedding: torch.Tensor | None,
    ) -> torch.Tensor:
        out: torch.Tensor = model(**inputs, mask_time_indices=mask).last_hidden_state
        return out

    # HuBERT and WavLM ship without a pre-training head in transformers: they continue HuBERT's
    # objective. data2vec-audio pre-trains with an EMA teacher; TAPT offers that objective
    # (`TaptConfig.objective="teacher"`) without choosing it for the family.
    _TAPT_OBJECTIVES: ClassVar[dict[str, str]] = {
        "wav2vec2": "contrastive",
        "hubert": "masked_prediction",
        "wavlm": "masked_prediction",
    }

    def tapt_objective(self, config: PretrainedConfig) -> str | None:
        return self._TAPT_OBJECTIVES.get(config.model_type)


class _Passthrough(nn.Module):
    """Stands in for the CNN feature encoder: cached CNN outputs (B, C, T) pass through as they
    are; waveforms (B, S) still go through the CNN."""

    def __init__(self, cnn: nn.Module) -> None:
        super().__init__()
        self.cnn = cnn
        self._requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = x if x.dim() == 3 else self.cnn(x)
        return out


def _cnn_input_samples(frames: int) -> int:
    """The shortest waveform that wav2vec 2.0's CNN (kernels 10,3,3,3,3,2,2; strides
    5,2,2,2,2,2,2) turns into `frames` frames: what the attention mask of cached frames spans."""
    n = frames
    for k, s in zip((2, 2, 3, 3, 3, 3, 10), (2, 2, 2, 2, 2, 2, 5), strict=True):
        n = (n - 1) * s + k
    return n


class WhisperFamily(Family):
    """OpenAI Whisper's encoder: log-mel frames, a conv stem, sinusoidal positions, a transformer.
    Read over each clip's own frames (`after.models.whisper_model`), so its frozen frames are
    exact per clip and batches mask their padding."""

    DROPOUTS = ("dropout", "attention_dropout", "activation_dropout")

    def classifier_class(self) -> type[PreTrainedModel]:
        from after.models.whisper_model import WhisperEncoderForAudioClassification

        return WhisperEncoderForAudioClassification

    def preprocessor_class(self) -> type:
        from transformers import WhisperFeatureExtractor

        return WhisperFeatureExtractor

    def inputs(self, waves: list[np.ndarray], preprocessor: Any) -> dict[str, torch.Tensor]:
        # Padded to Whisper's 30 s window as transformers' pipeline does, so that both see the
        # same log-mel frames; the model reads only each clip's own.
        f = preprocessor(
            waves, sampling_rate=SAMPLE_RATE, return_attention_mask=True, return_tensors="pt"
        )
        return {"input_features": f["input_features"], "attention_mask": f["attention_mask"]}

    def front(self, model: torch.nn.Module) -> list[torch.nn.Module]:
        enc = _whisper_encoder(model)
        return [enc.conv1, enc.conv2, enc.embed_positions]

    def layers(self, model: torch.nn.Module) -> torch.nn.ModuleList:
        layers: torch.nn.ModuleList = _whisper_encoder(model).layers
        return layers

    def freeze(self, model: torch.nn.Module, *, cnn: bool, layers: int) -> None:
        super().freeze(model, cnn=cnn, layers=layers)
        _whisper_encoder(model).embed_positions.requires_grad_(False)  # fixed sinusoids

    @torch.no_grad()
    def frozen_frames(
        self, model: torch.nn.Module, wave: np.ndarray, preprocessor: Any, layers: int
    ) -> np.ndarray:
        device = next(model.parameters()).device
        inputs = {k: v.to(device) for k, v in self.inputs([wave], preprocessor).items()}
        was_training = model.training
        model.eval()  # frozen means deterministic: no dropout in the cached part
        try:
            h, _mask = self.hidden(model, inputs, layers)
        finally:
            model.train(was_training)
        out: np.ndarray = h[0].float().cpu().numpy()
        return out

    def frames_inputs(self, frames: list[np.ndarray], layers: int) -> dict[str, Any]:
        longest = max(len(f) for f in frames)
        x = torch.zeros(len(frames), longest, frames[0].shape[1])
        mask = torch.zeros(len(frames), longest, dtype=torch.long)
        for b, f in enumerate(frames):
            x[b, : len(f)] = torch.from_numpy(f)
            mask[b, : len(f)] = 1
        return {"frames": x, "frame_mask": mask, "frames_layer": layers}

    def hidden(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], layer: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m: Any = model
        h, mask = m.embed(inputs["input_features"], inputs.get("attention_mask"))
        return m.encode(h, mask, start=0, end=layer), mask

    def states(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        m: Any = model
        h, mask = m.embed(inputs["input_features"], inputs.get("attention_mask"))
        return m.states(h, mask), mask

    def num_frames(self, config: PretrainedConfig, num_samples: np.ndarray) -> np.ndarray:
        from after.models.whisper_model import frame_lengths

        return frame_lengths(num_samples)

    OWN_MASK_EMBEDDING: ClassVar[bool] = False

    def masked_output(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        mask: torch.Tensor,
        mask_embedding: torch.Tensor | None,
    ) -> torch.Tensor:
        assert mask_embedding is not None
        m: Any = model
        h, valid = m.embed(inputs["input_features"], inputs.get("attention_mask"))
        hidden = mask[:, : h.shape[1], None].to(h.device)
        # The embedding stands in for the conv stem's output: masked frames keep their position,
        # Whisper's only clue to where they are.
        masked = mask_embedding.to(h.dtype) + m.positions(h.shape[1])
        out: torch.Tensor = m.encode(torch.where(hidden, masked, h), valid)
        return out

    def tapt_objective(self, config: PretrainedConfig) -> str | None:
        # Trained for speech recognition with labels, Whisper has no self-supervised objective of
        # its own: it continues with HuBERT's.
        return "masked_prediction"

    def save(self, model: torch.nn.Module, out_dir: Path) -> None:
        # The encoder only: it comes inside an (untrained) classifier, whose head would not fit
        # the labels of whoever fine-tunes the output.
        state = {k: v for k, v in model.state_dict().items() if k.startswith("encoder.")}
        model.save_pretrained(out_dir, state_dict=state)  # type: ignore[operator]


def _whisper_encoder(model: torch.nn.Module) -> Any:
    encoder = getattr(model, "encoder", None)
    if encoder is None or not hasattr(encoder, "conv1"):
        raise AfterError(f"{type(model).__name__} is not a Whisper encoder model")
    return encoder


_FROZEN_REVISION = "2"
_WAV2VEC2 = Wav2Vec2Family()
_WHISPER = WhisperFamily()


def family_of(config: PretrainedConfig) -> Family:
    """The `Family` of a model config."""
    if config.model_type == "whisper":
        return _WHISPER
    if config.model_type in FAMILIES:
        return _WAV2VEC2
    raise AfterError(f"a {config.model_type!r} model; supported: {', '.join(FAMILIES.values())}")


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
