"""Emotion classifiers: one interface over two kinds of model.

- "transformers": a speech backbone (wav2vec 2.0, HuBERT, WavLM, data2vec-audio) with the stock
  audio-classification head of transformers: a linear projection of the encoder outputs, mean
  pooling over the valid (unpadded) frames, and a linear layer. AFTER's head puts a ReLU where
  the projection is; we keep the stock head so that a saved model is a plain
  `*ForSequenceClassification` that `transformers.pipeline("audio-classification", model=DIR)`
  loads with no custom code. SpecAugment-style time and feature masking of the encoder input is
  the model's own (`mask_time_prob`, `mask_feature_prob`), active in training only.
- "features": a linear layer on standardised vectors of a frozen feature backbone (`egemaps`,
  `resemblyzer`); the extractor itself never trains.

A saved model folder holds the model, its preprocessing, and `after_model.json` (kind, labels,
backbone). Any audio-classification folder made by transformers loads too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from after.errors import AfterError
from after.io import atomic_write_json
from after.models.features import FeatureBackbone, is_feature_backbone, load_feature_backbone

INFO_FILE = "after_model.json"
Kind = Literal["transformers", "features"]


class FeatureHead(nn.Module):
    """Standardise (with statistics of the training vectors), dropout, then a linear layer. The
    dropout regularises training and is what MC-dropout strategies (BALD, DBAL) sample."""

    def __init__(self, dim: int, num_labels: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.mean: torch.Tensor
        self.scale: torch.Tensor
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(dim, num_labels)

    def fit_scaler(self, vectors: torch.Tensor) -> None:
        self.mean.copy_(vectors.mean(dim=0))
        self.scale.copy_(vectors.std(dim=0, unbiased=False).clamp(min=1e-6))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout((features - self.mean) / self.scale))


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
        return [*m.projector.parameters(), *m.classifier.parameters()]

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

            hf_logging.disable_progress_bar()
            self.module.save_pretrained(out)  # type: ignore[operator]
            self.feature_extractor.save_pretrained(out)
            hf_logging.enable_progress_bar()
        else:
            from safetensors.torch import save_file

            assert self.features is not None
            state = {k: v.contiguous() for k, v in self.module.state_dict().items()}
            save_file(state, str(out / "model.safetensors"))
            info.update(feature_version=self.features.version, dim=self.features.dim)
        atomic_write_json(out / INFO_FILE, {**info, **extra})
        return out


def new_classifier(
    backbone: str,
    labels: list[str],
    *,
    freeze_cnn: bool = True,
    spec_time_prob: float = 0.05,
    spec_feature_prob: float = 0.0,
) -> Classifier:
    """A classifier with a new, random head on `backbone` (a feature backbone name, or a
    transformers backbone spec: see `after.models.backbones`)."""
    if len(labels) < 2:
        raise AfterError(f"need at least 2 labels to classify, got {labels}")
    if is_feature_backbone(backbone):
        features = load_feature_backbone(backbone)
        head = FeatureHead(features.dim, len(labels))
        return Classifier("features", backbone, list(labels), head, features=features)
    from after.models.backbones import (
        freeze_feature_encoder,
        load_audio_classifier,
        load_feature_extractor,
    )

    model = load_audio_classifier(
        backbone,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        apply_spec_augment=spec_time_prob > 0 or spec_feature_prob > 0,
        mask_time_prob=spec_time_prob,
        mask_feature_prob=spec_feature_prob,
    )
    if freeze_cnn:
        freeze_feature_encoder(model)
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
        head.load_state_dict(load_file(str(folder / "model.safetensors")))
        return Classifier("features", info["backbone"], info["labels"], head, None, features, info)
    if not (folder / "config.json").is_file():
        raise AfterError(f"{folder}: not a model folder (no {INFO_FILE} or config.json)")
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    try:
        model = AutoModelForAudioClassification.from_pretrained(folder)
        fe = AutoFeatureExtractor.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise AfterError(f"{folder}: cannot load the classifier ({e})") from None
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    return Classifier(
        "transformers", info.get("backbone", str(folder)), labels, model, fe, None, info
    )
