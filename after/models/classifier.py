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

from after.errors import AfterError, cut
from after.io import (
    apply_umask,
    atomic_write_json,
    check_file_name,
    not_a_file,
    open_regular,
    os_error_message,
    read_json,
)
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
        """Write the model folder; `extra` goes into after_model.json (e.g. training provenance).
        A full disk or a folder that cannot be written is one `AfterError` naming the folder."""
        from safetensors import SafetensorError

        out = Path(out_dir)
        try:
            return self._save(out, extra)
        except OSError as e:
            raise AfterError(f"saving the model in {out} failed: {os_error_message(e)}") from None
        except SafetensorError as e:  # its own wrapping of the OS error
            raise AfterError(
                f"{out}: saving the model failed ({cut(str(e), 300)}); free some space (or "
                "choose another folder) and run the command again"
            ) from None

    def _save(self, out: Path, extra: dict[str, Any]) -> Path:
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
    layer_sum: bool = False,
    probe_head: bool = False,
    dropout: float | None = None,
) -> Classifier:
    """A classifier with a new, random head on `backbone` (a feature backbone name, or a
    transformers backbone spec: see `after.models.backbones`). `num_layers` keeps only the
    encoder's bottom layers; `freeze_layers` freezes the bottom ones (and the CNN / conv stem).
    With `layer_sum`, a Whisper head reads a learned softmax-weighted sum of the layers from
    `freeze_layers` up (`after.models.whisper_model`); otherwise, and for the other families,
    the last layer. Time masks hide about `spec_time_prob` of each clip's frames, however short
    the clip (no minimum number of spans). `probe_head` makes the projector square (hidden size
    in and out), so that it can hold a probe's standardiser (`after.train.probe_head`).
    `dropout` sets every dropout rate inside the transformer (None: the backbone's own; Whisper's
    are 0)."""
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
    if probe_head:
        changes["classifier_proj_size"] = config.hidden_size
    if dropout is not None:
        changes.update(dict.fromkeys(family_of(config).DROPOUTS, dropout))
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


PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "model.ckpt")
_LOAD_FIX = "retrain it, or restore the model folder from a backup"


def load_classifier(model_dir: str | os.PathLike[str]) -> Classifier:
    """A saved classifier: one of ours, or any transformers audio-classification folder with
    safetensors weights. A damaged folder is one clear `AfterError` naming the file."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise AfterError(f"{folder}: no such model folder; give a folder written by after train")
    _check_files(folder)
    info = _read_info(folder)
    if info.get("kind") == "features":
        from safetensors.torch import load_file

        weights = folder / "model.safetensors"
        _check_safetensors(weights)
        features = load_feature_backbone(info["backbone"])
        if info.get("feature_version") != features.version:
            raise AfterError(
                f"{folder}: trained on {info['backbone']} features of version "
                f"{info.get('feature_version')}, but this install makes {features.version}; "
                "retrain it, or install the package versions it was trained with"
            )
        head = FeatureHead(features.dim, len(info["labels"]))
        try:
            # A model of an earlier version has no posterior: it predicts, BALD refuses it.
            missing, unexpected = head.load_state_dict(load_file(str(weights)), strict=False)
        except (RuntimeError, ValueError, OSError) as e:  # shapes: labels or dim do not fit
            raise AfterError(
                f"{weights}: does not fit the {len(info['labels'])} labels of {INFO_FILE} on "
                f"{features.dim}-dim {info['backbone']} features ({cut(str(e).strip(), 160)}); "
                f"{_LOAD_FIX}"
            ) from None
        if set(missing) - {"precision_tril", "prior_mean", "prior_var"} or unexpected:
            raise AfterError(f"{folder}: not a frozen-features model of this version; retrain it")
        head.view = info.get("view", "clip")
        if head.view not in ("clip", "speaker"):
            raise AfterError(f"{folder}: unknown feature view {head.view!r} in {INFO_FILE}")
        return Classifier("features", info["backbone"], info["labels"], head, None, features, info)
    if not (folder / "config.json").is_file():
        raise AfterError(f"{folder}: not a model folder (no {INFO_FILE} or config.json)")
    shapes = {k: v for weights in _weight_files(folder) for k, v in _check_safetensors(weights)}
    from transformers import AutoConfig, AutoFeatureExtractor

    from after.models.backbones import family_of

    try:
        config = AutoConfig.from_pretrained(folder)
        last = {k: v for k, v in shapes.items() if k.split(".")[-2:-1] == ["classifier"]}
        if any(v[:1] != [config.num_labels] for v in last.values()):
            raise AfterError(
                f"{folder / 'config.json'}: its {config.num_labels} labels do not fit the head "
                f"in the weights ({', '.join(f'{k} {v}' for k, v in sorted(last.items()))}); "
                + _LOAD_FIX
            )
        model: Any = (
            family_of(config).classifier_class().from_pretrained(folder, use_safetensors=True)
        )
        fe = AutoFeatureExtractor.from_pretrained(folder)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
        reason = cut(" ".join(str(e).split()), 300)
        raise AfterError(f"{folder}: cannot load the classifier ({reason}); {_LOAD_FIX}") from None
    fe.return_attention_mask = True
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if "labels" in info and info["labels"] != labels:
        raise AfterError(
            f"{folder / INFO_FILE}: its labels {cut(str(info['labels']))} are not those of the "
            f"model's head in config.json ({cut(str(labels))}); {_LOAD_FIX}"
        )
    return Classifier(
        "transformers", info.get("backbone", str(folder)), labels, model, fe, None, info
    )


def _check_files(folder: Path) -> None:
    """Every file of the folder is a regular file: loading never opens a device or a FIFO
    (a weight file that is a link to /dev/zero would be read for ever)."""
    for path in sorted(folder.iterdir()):
        if path.is_dir():  # loaders read files only
            continue
        problem = not_a_file(path)
        if problem is not None:
            raise AfterError(f"{path}: {problem}; {_LOAD_FIX}")


def _read_info(folder: Path) -> dict[str, Any]:
    """after_model.json (empty for a transformers folder without one), checked for shape."""
    path = folder / INFO_FILE
    if not path.exists():
        return {}
    info = read_json(path, _LOAD_FIX)
    labels = info.get("labels") if isinstance(info, dict) else None
    if (
        not isinstance(info, dict)
        or info.get("kind", "transformers") not in ("transformers", "features")
        or not isinstance(info.get("backbone", ""), str)
        or (labels is None and info.get("kind") == "features")
        or (labels is not None and not _is_label_list(labels))
    ):
        raise AfterError(f"{path}: not an after model's description (wrong shape); {_LOAD_FIX}")
    return info


def _is_label_list(labels: Any) -> bool:
    return (
        isinstance(labels, list)
        and len(labels) >= 2
        and all(isinstance(x, str) and x for x in labels)
        and len(set(labels)) == len(labels)
    )


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files a transformers folder's weights are in. Pickled weights
    (pytorch_model.bin) are refused: unpickling a file can run any code in it."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index, _LOAD_FIX)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()
        ):
            raise AfterError(f"{index}: not a safetensors index (wrong shape); {_LOAD_FIX}")
        names = sorted(set(weight_map.values()))
        return [folder / check_file_name(n, "weight file", _LOAD_FIX) for n in names]
    if (folder / "model.safetensors").exists():
        return [folder / "model.safetensors"]
    for name in PICKLES:
        if (folder / name).exists():
            raise AfterError(
                f"{folder / name}: weights in a pickle (or TensorFlow) file, which after does "
                "not load (unpickling can run any code); save the model with safetensors "
                "(save_pretrained(..., safe_serialization=True)) and give that folder"
            )
    raise AfterError(f"{folder / 'model.safetensors'}: not found; {_LOAD_FIX}")


def _check_safetensors(path: Path) -> list[tuple[str, list[int]]]:
    """The names and shapes of the tensors in a whole safetensors file: its header parses and
    its tensors end where the file does. A truncated or damaged one is refused here, before any
    library reads it."""
    fix = f"the file is damaged or cut short; {_LOAD_FIX}"
    with open_regular(path, _LOAD_FIX) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else 0
        if not 2 <= n <= size - 8:
            raise AfterError(f"{path}: not a safetensors file ({size} bytes); {fix}")
        try:
            header = json.loads(f.read(n))
            tensors = {k: v for k, v in header.items() if k != "__metadata__"}
            ends = [int(v["data_offsets"][1]) for v in tensors.values()]
            shapes = [(k, [int(n) for n in v["shape"]]) for k, v in tensors.items()]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise AfterError(f"{path}: its safetensors header is damaged; {fix}") from None
    if 8 + n + max(ends, default=0) != size:
        raise AfterError(
            f"{path}: {size} bytes where its header describes {8 + n + max(ends, default=0)}; {fix}"
        )
    return shapes
