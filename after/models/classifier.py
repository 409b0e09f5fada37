"""Emotion classifiers: one interface over two kinds of model.

- "transformers": a speech encoder (wav2vec 2.0, HuBERT, WavLM, data2vec-audio, Whisper) with the
  stock audio-classification head of transformers: a linear projection of the encoder outputs (for
  Whisper, by default, of a learned weighted sum of its layers), mean pooling over the valid
  (unpadded) frames, and a linear layer. AFTER's head puts a ReLU where the projection is; we
  keep the stock head so that a saved model loads in
  `transformers.pipeline("audio-classification", model=DIR)`: with no custom code for the wav2vec
  2.0-like families, with `trust_remote_code=True` for Whisper, whose saved folder carries the
  file `whisper_model.py` that reads each clip's own frames (see `after.models.whisper_model`).
  SpecAugment-style time masking is active in training only. The family-specific parts (inputs,
  the frozen bottom and its cache) are in `after.models.backbones.Family`.
- "features": a multinomial logistic regression on standardised vectors of a frozen feature
  backbone (`egemaps`, `resemblyzer`, or `frozen:SPEC`, a layer of any encoder above); the
  extractor itself never trains. See `after.models.linear`.

A saved model folder holds the model, its preprocessing, and `after_model.json` (kind, labels,
backbone). Any audio-classification folder made by transformers loads too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from after.errors import AfterError
from after.io import apply_umask, atomic_write_json
from after.models.features import FeatureBackbone, is_feature_backbone, load_feature_backbone
from after.models.linear import LinearFit

INFO_FILE = "after_model.json"
Kind = Literal["transformers", "features"]


class FeatureHead(nn.Module):
    """Standardise (with statistics of the training vectors; scale 1 where a dimension is
    constant on them), then a linear layer: a logistic regression fitted by
    `after.models.linear`, with its Laplace posterior for BALD and DBAL (`posterior_probs`).

    `view` says what the vectors it takes are: "clip" (as the feature backbone gives them) or
    "speaker" (standardised per speaker first, `after.models.linear.speaker_standardise`, with
    `prior_mean` / `prior_var` as the statistics a speaker's are shrunk toward); the input
    pipeline (`after.train`) applies the view, the head only records it."""

    def __init__(self, dim: int, num_labels: int) -> None:
        super().__init__()
        self.mean: torch.Tensor
        self.scale: torch.Tensor
        self.precision_tril: torch.Tensor
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        size = num_labels * (dim + 1)
        self.register_buffer("precision_tril", torch.zeros(size, size))
        self.prior_mean: torch.Tensor
        self.prior_var: torch.Tensor
        self.register_buffer("prior_mean", torch.zeros(dim))
        self.register_buffer("prior_var", torch.ones(dim))
        self.view = "clip"
        self.linear = nn.Linear(dim, num_labels)

    def set_fit(self, fit: LinearFit, prior: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Take a fitted standardiser, linear layer and posterior (`after.models.linear`), and
        for the speaker view the statistics its speakers are shrunk toward."""
        self.view = fit.view
        if prior is not None:
            with torch.no_grad():
                self.prior_mean.copy_(torch.as_tensor(prior[0], dtype=self.prior_mean.dtype))
                self.prior_var.copy_(torch.as_tensor(prior[1], dtype=self.prior_var.dtype))
        pairs = (
            (self.mean, fit.mean),
            (self.scale, fit.scale),
            (self.linear.weight, fit.weight),
            (self.linear.bias, fit.bias),
            (self.precision_tril, fit.precision_tril),
        )
        with torch.no_grad():
            for target, value in pairs:
                target.copy_(torch.as_tensor(value, dtype=target.dtype))

    def standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.standardise(features))

    def posterior_probs(self, features: torch.Tensor, num_samples: int) -> torch.Tensor:
        """Class probabilities (B, C, S) under `num_samples` weight draws from the Laplace
        posterior N(fitted weights, H^-1), drawn with torch's global generator."""
        if not torch.any(self.precision_tril.diagonal()):
            raise AfterError(
                "this model has no posterior over its weights (it was trained by an earlier "
                "version of after); retrain it to use bald or dbal_* on frozen features"
            )
        num_labels, dim = self.linear.weight.shape
        mode = torch.cat([self.linear.weight, self.linear.bias[:, None]], dim=1).reshape(-1)
        noise = torch.randn(len(mode), num_samples, dtype=mode.dtype, device=mode.device)
        # H = L L^T, so L^-T e with e ~ N(0, I) has covariance H^-1.
        spread = torch.linalg.solve_triangular(self.precision_tril.T, noise, upper=True)
        draws = (mode[:, None] + spread).reshape(num_labels, dim + 1, num_samples)
        z = self.standardise(features)
        logits = torch.einsum("bd,kds->bks", z, draws[:, :dim]) + draws[:, dim][None]
        return torch.softmax(logits.float(), dim=1)


@dataclass
class Classifier:
    """A trainable emotion classifier and what it needs to read audio."""

    kind: Kind
    backbone: str
    labels: list[str]
    module: nn.Module
    feature_extractor: Any = None  # transformers: its Wav2Vec2FeatureExtractor
    features: FeatureBackbone | None = None  # features: the frozen extractor
    info: dict[str, Any] = field(default_factory=dict)

    def head_parameters(self) -> list[nn.Parameter]:
        """The new head (trained at the head learning rate)."""
        if self.kind == "features":
            return list(self.module.parameters())
        m: Any = self.module
        mixing = [m.layer_weights] if getattr(m.config, "use_weighted_layer_sum", False) else []
        return [*mixing, *m.projector.parameters(), *m.classifier.parameters()]

    def output_layer(self) -> nn.Linear:
        """The last linear layer: its input is the pooled embedding, its output the logits."""
        m: Any = self.module
        layer = m.linear if self.kind == "features" else m.classifier
        assert isinstance(layer, nn.Linear)
        return layer

    def save(self, out_dir: str | os.PathLike[str], **extra: Any) -> Path:
        """Write the model folder; `extra` goes into after_model.json (e.g. training provenance)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        info: dict[str, Any] = {"kind": self.kind, "backbone": self.backbone, "labels": self.labels}
        if self.kind == "transformers":
            from transformers.utils import logging as hf_logging

            if self.module.config.model_type == "whisper":  # type: ignore[union-attr]
                # Copies whisper_model.py beside the weights and names it in config.auto_map.
                type(self.module).register_for_auto_class("AutoModelForAudioClassification")  # type: ignore[attr-defined]
            hf_logging.disable_progress_bar()
            self.module.save_pretrained(out)  # type: ignore[operator]
            self.feature_extractor.save_pretrained(out)
            hf_logging.enable_progress_bar()
        else:
            from safetensors.torch import save_file

            assert self.features is not None
            state = {k: v.contiguous() for k, v in self.module.state_dict().items()}
            save_file(state, str(out / "model.safetensors"))
            info.update(
                feature_version=self.features.version,
                dim=self.features.dim,
                view=self.module.view,
            )
        atomic_write_json(out / INFO_FILE, {**info, **extra})
        apply_umask(out)  # safetensors writes the weights 0600 whatever the umask
        return out


def new_classifier(
    backbone: str,
    labels: list[str],
    *,
    freeze_cnn: bool = True,
    freeze_layers: int = 0,
    num_layers: int | None = None,
    spec_time_prob: float = 0.05,
    spec_feature_prob: float = 0.0,
    layer_sum: bool = True,
) -> Classifier:
    """A classifier with a new, random head on `backbone` (a feature backbone name, or a
    transformers backbone spec: see `after.models.backbones`). `num_layers` keeps only the
    encoder's bottom layers; `freeze_layers` freezes the bottom ones (and the CNN / conv stem).
    With `layer_sum`, a Whisper head reads a learned softmax-weighted sum of the layers from
    `freeze_layers` up (`after.models.whisper_model`); otherwise, and for the other families,
    the last layer. Time masks hide about `spec_time_prob` of each clip's frames, however short
    the clip (no minimum number of spans)."""
    if len(labels) < 2:
        raise AfterError(f"need at least 2 labels to classify, got {labels}")
    if is_feature_backbone(backbone):
        features = load_feature_backbone(backbone)
        head = FeatureHead(features.dim, len(labels))
        return Classifier("features", backbone, list(labels), head, features=features)
    from after.models.backbones import (
        family_of,
        load_audio_classifier,
        load_config,
        load_feature_extractor,
    )

    config = load_config(backbone)
    changes: dict[str, Any] = {}
    if num_layers is not None:
        if not 1 <= num_layers <= config.num_hidden_layers:
            raise AfterError(
                f"num_layers={num_layers}: {backbone} has {config.num_hidden_layers} layers; "
                f"keep 1 to {config.num_hidden_layers}"
            )
        changes["num_hidden_layers"] = num_layers
    layer_sum = layer_sum and config.model_type == "whisper"
    if layer_sum:
        changes["layer_sum_from"] = freeze_layers
    model = load_audio_classifier(
        backbone,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        apply_spec_augment=spec_time_prob > 0 or spec_feature_prob > 0,
        mask_time_prob=spec_time_prob,
        mask_feature_prob=spec_feature_prob,
        mask_time_min_masks=0,
        use_weighted_layer_sum=layer_sum,
        **changes,
    )
    family_of(model.config).freeze(model, cnn=freeze_cnn, layers=freeze_layers)
    return Classifier(
        "transformers", backbone, list(labels), model, load_feature_extractor(backbone)
    )


def load_classifier(model_dir: str | os.PathLike[str]) -> Classifier:
    """A saved classifier: one of ours, or any transformers audio-classification folder."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise AfterError(f"{folder}: no such model folder; give a folder written by after train")
    info_path = folder / INFO_FILE
    info: dict[str, Any] = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if info.get("kind") == "features":
        from safetensors.torch import load_file

        features = load_feature_backbone(info["backbone"])
        if info.get("feature_version") != features.version:
            raise AfterError(
                f"{folder}: trained on {info['backbone']} features of version "
                f"{info.get('feature_version')}, but this install makes {features.version}; "
                "retrain it, or install the package versions it was trained with"
            )
        head = FeatureHead(features.dim, len(info["labels"]))
        # A model of an earlier version has no posterior: it predicts, BALD refuses it.
        missing, unexpected = head.load_state_dict(
            load_file(str(folder / "model.safetensors")), strict=False
        )
        if set(missing) - {"precision_tril", "prior_mean", "prior_var"} or unexpected:
            raise AfterError(f"{folder}: not a frozen-features model of this version; retrain it")
        head.view = info.get("view", "clip")
        if head.view not in ("clip", "speaker"):
            raise AfterError(f"{folder}: unknown feature view {head.view!r} in {INFO_FILE}")
        return Classifier("features", info["backbone"], info["labels"], head, None, features, info)
    if not (folder / "config.json").is_file():
        raise AfterError(f"{folder}: not a model folder (no {INFO_FILE} or config.json)")
    from transformers import AutoConfig, AutoFeatureExtractor

    from after.models.backbones import family_of

    try:
        config = AutoConfig.from_pretrained(folder)
        model: Any = family_of(config).classifier_class().from_pretrained(folder)
        fe = AutoFeatureExtractor.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise AfterError(f"{folder}: cannot load the classifier ({e})") from None
    fe.return_attention_mask = True
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return Classifier(
        "transformers", info.get("backbone", str(folder)), labels, model, fe, None, info
    )
