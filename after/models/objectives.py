"""Self-supervised objectives for task-adaptive pre-training (TAPT, `after.tapt`).

The backbone family names the objective that continues the model's own pre-training
(`Family.tapt_objective`; `TaptConfig.objective` may name another), and `OBJECTIVES` holds them:

- `contrastive` (wav2vec 2.0's own): contrastive loss over masked frames against quantized targets
  plus the weighted codebook diversity loss (`Wav2Vec2ForPreTraining`). Negatives are other masked
  frames of the same clip, so never padding.
- `masked_prediction` (HuBERT, WavLM, Whisper): HuBERT's masked prediction of k-means cluster ids.
  The clusters are fitted on one hidden layer of the starting model over the fold's training
  audio, and every frame's target is computed once, before training; a small head (projection +
  one embedding per cluster, cosine similarity / 0.1) trains with the encoder and is discarded.
- `teacher` (any family, when asked for): data2vec's (which emotion2vec continues): the student
  regresses, at its masked frames, the mean of the top layers of a teacher that sees the whole
  clip; the teacher is an exponential moving average (EMA) of the student.

An encoder without a learned embedding for masked frames (Whisper) gets one from the objective
that masks it, trained with it and discarded at the end (`Family.masked_output` places it).

An objective is the `nn.Module` around the encoder it trains, with its heads (and teacher).
`after.tapt.run_tapt` drives every one the same way: `load` the backbone, `prepare` (before the
first step, e.g. fit k-means), for each batch `targets` (on the CPU, from the batch's crops and
mask) and `loss` (inside the forward pass), `after_step` after each optimiser step, and `save`.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from after.config import TaptConfig
from after.errors import AfterError
from after.models.backbones import FAMILIES, SCRATCH_PREFIX, Family, family_of, load_backbone
from after.progress import progress_bar
from after.rng import derived_rng

logger = logging.getLogger(__name__)

KMEANS_FILE = "kmeans_targets.npz"


# ---- masks and negatives (pure functions of their arguments) ------------------------------------


def span_mask(
    frame_lengths: np.ndarray,
    max_frames: int,
    *,
    mask_prob: float,
    mask_length: int,
    min_masks: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Boolean (B, max_frames) mask of spans inside each clip's first `frame_lengths[b]` frames.

    As in wav2vec 2.0, about `mask_prob * L / mask_length` span starts (at least `min_masks`) are
    drawn without replacement; spans may overlap. Clips shorter than a span get spans of half
    their length. Padding frames are never masked.
    """
    mask = np.zeros((len(frame_lengths), max_frames), dtype=bool)
    for b, length in enumerate(int(n) for n in frame_lengths):
        if length < 2:
            continue
        span = min(mask_length, max(1, length // 2))
        num_starts = length - span + 1
        wanted = max(min_masks, int(mask_prob * length / span + rng.random()))
        starts = rng.choice(num_starts, size=min(wanted, num_starts), replace=False)
        for s in starts:
            mask[b, s : s + span] = True
    return mask


def sample_negatives(mask: np.ndarray, num_negatives: int, rng: np.random.Generator) -> np.ndarray:
    """Negative indices (B, T, K) for the contrastive loss, as `Wav2Vec2ForPreTraining` takes
    them (indices into the flattened (B*T) frames).

    For each masked frame: K frames drawn uniformly, with replacement, among the *other* masked
    frames of the same clip. Masked frames are valid frames, so negatives never come from padding
    or from another clip. Unmasked positions get 0s, which the loss ignores.
    """
    batch, frames = mask.shape
    out = np.zeros((batch, frames, num_negatives), dtype=np.int64)
    for b in range(batch):
        idx = np.flatnonzero(mask[b])
        m = idx.size
        if m < 2:
            continue
        draw = rng.integers(0, m - 1, size=(m, num_negatives))
        draw[draw >= np.arange(m)[:, None]] += 1  # skip the positive itself, stay uniform
        out[b, idx] = idx[draw] + b * frames
    return out


# ---- what an objective reads -------------------------------------------------------------------


class ClipSource(Protocol):
    """The clips an objective may read while it prepares: the fold's training clips."""

    @property
    def ids(self) -> list[str]: ...

    @property
    def preprocessor(self) -> Any: ...

    def read(self, utt_id: str) -> np.ndarray | None:
        """The clip's 16 kHz audio; None where it cannot be read (and is skipped)."""


class Crops(Protocol):
    """Where a batch's clips come from: ids, and each crop's first frame and length in frames."""

    ids: list[str]
    frame_offsets: list[int]
    frame_lengths: np.ndarray


# ---- the interface -------------------------------------------------------------------------------


class TaptObjective(nn.Module, ABC):
    """A self-supervised objective around the encoder it trains (`encoder`, registered first).

    Parameters it adds besides the encoder's and that train (heads, a mask embedding) are its
    `head_parameters`: new and random, they may have their own learning rate and warm-up.
    """

    name: ClassVar[str]

    def __init__(self, encoder: PreTrainedModel) -> None:
        super().__init__()
        self.encoder = encoder
        self.family: Family = family_of(encoder.config)

    @classmethod
    def settle(cls, config: TaptConfig, backbone: str) -> TaptConfig:
        """`config` with the settings that depend on the backbone decided (recorded as run)."""
        return config

    @classmethod
    def load(cls, backbone: str) -> PreTrainedModel:
        """The backbone as this objective trains it."""
        return load_backbone(backbone)

    @classmethod
    @abstractmethod
    def prepare(
        cls,
        encoder: PreTrainedModel,
        config: TaptConfig,
        clips: ClipSource,
        *,
        out_dir: Path,
        device: torch.device,
        main_process: bool,
        progress: bool,
    ) -> TaptObjective:
        """The objective around `encoder`, ready for its first step. What it computes before
        training (k-means targets) it keeps in `out_dir` (written by the main process only), so
        that a resumed run reads it back."""

    def targets(
        self, crops: Crops, mask: np.ndarray, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        """What the loss of a batch needs besides its inputs and mask (B, T): arrays made on the
        CPU from its crops, drawing from `rng` (the one that drew the mask)."""
        return {}

    @abstractmethod
    def loss(
        self,
        inputs: dict[str, torch.Tensor],
        mask: torch.Tensor,
        targets: dict[str, torch.Tensor],
        step: int,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of a batch (inputs as `Family.inputs` makes them, mask (B, T) of the frames
        to mask, `targets` as tensors) at optimiser step `step` (0-based), and what to log."""

    def head_parameters(self) -> list[nn.Parameter]:
        """The trained parameters the objective adds to the encoder."""
        return [
            p
            for n, p in self.named_parameters()
            if p.requires_grad and not n.startswith("encoder.")
        ]

    def after_step(self, step: int) -> None:
        """Called after optimiser step `step` (0-based) on every process."""

    def save(self, out_dir: Path) -> None:
        """Write the trained encoder as a `from_pretrained` folder; heads are discarded."""
        self.family.save(self.encoder, out_dir)


def _mask_embedding(family: Family, hidden: int) -> nn.Parameter | None:
    """A learned embedding for masked frames, for an encoder that has none of its own."""
    if family.OWN_MASK_EMBEDDING:
        return None
    return nn.Parameter(torch.empty(hidden).uniform_(-0.1, 0.1))


# ---- contrastive (wav2vec 2.0) -------------------------------------------------------------------


class ContrastiveObjective(TaptObjective):
    """wav2vec 2.0's own objective, through `Wav2Vec2ForPreTraining` (its quantizer and
    projections are the encoder's: pre-trained, and saved with it)."""

    name = "contrastive"

    def __init__(self, encoder: PreTrainedModel, config: TaptConfig) -> None:
        super().__init__(encoder)
        if config.gumbel_start is None:
            raise AfterError("gumbel_start is decided by ContrastiveObjective.settle")
        self.gumbel = (config.gumbel_start, config.gumbel_end, config.gumbel_decay)

    @classmethod
    def settle(cls, config: TaptConfig, backbone: str) -> TaptConfig:
        if config.gumbel_start is not None:
            return config
        start = 2.0 if backbone.startswith(SCRATCH_PREFIX) else config.gumbel_end
        return dataclasses.replace(config, gumbel_start=start)

    @classmethod
    def load(cls, backbone: str) -> PreTrainedModel:
        model = load_backbone(backbone, pretraining=True)
        if not hasattr(model, "set_gumbel_temperature"):
            raise AfterError(
                f"{backbone}: the contrastive objective needs wav2vec 2.0's quantizer "
                f"(Wav2Vec2ForPreTraining), not a {type(model).__name__}"
            )
        return model

    @classmethod
    def prepare(
        cls,
        encoder: PreTrainedModel,
        config: TaptConfig,
        clips: ClipSource,
        *,
        out_dir: Path,
        device: torch.device,
        main_process: bool,
        progress: bool,
    ) -> ContrastiveObjective:
        return cls(encoder, config)

    def targets(
        self, crops: Crops, mask: np.ndarray, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        num_negatives: int = self.encoder.config.num_negatives
        return {"negatives": sample_negatives(mask, num_negatives, rng)}

    def loss(
        self,
        inputs: dict[str, torch.Tensor],
        mask: torch.Tensor,
        targets: dict[str, torch.Tensor],
        step: int,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        start, end, decay = self.gumbel
        temperature = max(end, start * decay**step)
        model: Any = self.encoder
        model.set_gumbel_temperature(temperature)
        out = model(
            inputs["input_values"],
            attention_mask=inputs["attention_mask"],
            mask_time_indices=mask,
            sampled_negative_indices=targets["negatives"],
        )
        n = float(mask.sum())
        metrics = {
            "contrastive": float(out.contrastive_loss.detach()) / n,
            "diversity": float(out.diversity_loss.detach()) / n,
            "perplexity": float(out.codevector_perplexity.detach()),
            "gumbel_temperature": temperature,
        }
        return out.loss / n, metrics


# ---- masked prediction (HuBERT's) ----------------------------------------------------------------


class MaskedPredictionObjective(TaptObjective):
    """HuBERT's objective: predict the k-means cluster of each masked frame from its context.

    `forward` takes `targets` (B, T), a cluster id per frame, -100 where there is no loss
    (unmasked or padding), and returns the loss and the share of scored frames predicted.
    """

    name = "masked_prediction"

    def __init__(
        self,
        encoder: PreTrainedModel,
        num_clusters: int,
        proj_dim: int = 256,
        temperature: float = 0.1,
    ) -> None:
        super().__init__(encoder)
        hidden = encoder.config.hidden_size
        self.proj = nn.Linear(hidden, proj_dim)
        self.codes = nn.Parameter(torch.randn(num_clusters, proj_dim) / math.sqrt(proj_dim))
        self.mask_embedding = _mask_embedding(self.family, hidden)
        self.temperature = temperature
        self.clip_targets: dict[str, np.ndarray] = {}  # per-frame cluster ids of whole clips

    @classmethod
    def prepare(
        cls,
        encoder: PreTrainedModel,
        config: TaptConfig,
        clips: ClipSource,
        *,
        out_dir: Path,
        device: torch.device,
        main_process: bool,
        progress: bool,
    ) -> MaskedPredictionObjective:
        path = out_dir / KMEANS_FILE
        if path.is_file():
            centroids, targets = load_targets(path)
        else:
            nn.Module.to(encoder, device)
            centroids, targets = fit_kmeans_targets(
                encoder, clips, config, device, progress=progress and main_process
            )
            if main_process:
                save_targets(path, centroids, targets)
        objective = cls(encoder, num_clusters=len(centroids))
        objective.clip_targets = targets
        return objective

    def targets(
        self, crops: Crops, mask: np.ndarray, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        target = np.full(mask.shape, -100, dtype=np.int64)
        for b, (utt, offset, length) in enumerate(
            zip(crops.ids, crops.frame_offsets, crops.frame_lengths, strict=True)
        ):
            clip = self.clip_targets[utt][offset : offset + int(length)]
            target[b, : clip.size] = clip
        target[~mask] = -100
        return {"targets": target}

    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        mask_time_indices: torch.Tensor,
        targets: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.family.masked_output(
            self.encoder, inputs, mask_time_indices, self.mask_embedding
        )
        pred = nn.functional.normalize(self.proj(hidden).float(), dim=-1)
        codes = nn.functional.normalize(self.codes.float(), dim=-1)
        logits = pred @ codes.T / self.temperature
        flat_logits, flat_targets = logits.flatten(0, 1), targets.flatten()
        loss = nn.functional.cross_entropy(flat_logits, flat_targets, ignore_index=-100)
        scored = flat_targets != -100
        accuracy = (flat_logits[scored].argmax(-1) == flat_targets[scored]).float().mean()
        return loss, accuracy

    def loss(
        self,
        inputs: dict[str, torch.Tensor],
        mask: torch.Tensor,
        targets: dict[str, torch.Tensor],
        step: int,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss, accuracy = self(inputs, mask, targets["targets"])
        return loss, {"masked_accuracy": float(accuracy.detach())}


@torch.no_grad()
def fit_kmeans_targets(
    encoder: Any,
    clips: ClipSource,
    config: TaptConfig,
    device: torch.device,
    *,
    progress: bool = False,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """k-means on one hidden layer of `encoder` over `clips`; returns the centroids (K, D) and
    each clip's per-frame cluster ids (whole clips, not crops).

    Memory stays bounded on large corpora: k-means is fitted on the frames of clips drawn at random
    until `kmeans_max_frames` are collected; then every clip is encoded again and only its cluster
    ids are kept. With `progress`, each of the three stages shows on the progress display.
    """
    from sklearn.cluster import MiniBatchKMeans

    num_layers: int = encoder.config.num_hidden_layers
    layer = num_layers // 2 if config.kmeans_layer is None else config.kmeans_layer
    if not 0 <= layer <= num_layers:
        raise AfterError(f"kmeans_layer={layer}: the model has hidden layers 0..{num_layers}")
    family = family_of(encoder.config)
    was_training = encoder.training
    encoder.eval()

    def hidden(utt_id: str) -> np.ndarray | None:
        wave = clips.read(utt_id)
        if wave is None:
            return None
        inputs = {k: v.to(device) for k, v in family.inputs([wave], clips.preprocessor).items()}
        states, _ = family.hidden(encoder, inputs, layer)
        return np.asarray(states[0].float().cpu().numpy())

    rng = derived_rng(config.seed, "kmeans")
    sample: list[np.ndarray] = []
    collected = 0
    with progress_bar(progress) as bar:
        task = bar.add_task(f"k-means: frames of layer {layer}", total=config.kmeans_max_frames)
        for i in rng.permutation(len(clips.ids)):
            if collected >= config.kmeans_max_frames:
                break
            if (f := hidden(clips.ids[i])) is not None:
                sample.append(f)
                collected += len(f)
                bar.update(task, completed=min(collected, config.kmeans_max_frames))
        if not sample:
            raise AfterError("TAPT: no readable training clip to fit k-means on")
        frames = np.concatenate(sample)
        if len(frames) > config.kmeans_max_frames:
            frames = frames[rng.choice(len(frames), config.kmeans_max_frames, replace=False)]
        k = min(config.kmeans_clusters, len(frames))
        # One long step with no count to show: plain progress lines say when it starts.
        task = bar.add_task(
            f"k-means: {k} clusters of {len(frames)} frames", total=1, announce=True
        )
        kmeans = MiniBatchKMeans(n_clusters=k, random_state=config.seed, n_init=3, batch_size=4096)
        kmeans.fit(frames)
        bar.update(task, completed=1)
        task = bar.add_task("k-means: targets of every clip", total=len(clips.ids))
        targets = {}
        for utt_id in clips.ids:
            if (f := hidden(utt_id)) is not None:
                targets[utt_id] = kmeans.predict(f).astype(np.int16 if k <= 2**15 else np.int32)
            bar.advance(task)
    encoder.train(was_training)
    return kmeans.cluster_centers_.astype(np.float32), targets


def save_targets(path: Path, centroids: np.ndarray, targets: dict[str, np.ndarray]) -> None:
    """Write k-means centroids and per-clip targets to `path` (.npz) atomically."""
    tmp = path.with_name(path.name + ".tmp.npz")
    ids = list(targets)
    arrays: dict[str, Any] = {f"t{i}": targets[u] for i, u in enumerate(ids)}
    arrays.update(centroids=centroids, ids=np.array(ids))
    np.savez(tmp, **arrays)
    tmp.replace(path)


def load_targets(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """What `save_targets` wrote: (centroids (K, D), {clip id: per-frame cluster ids})."""
    with np.load(path) as data:
        ids = [str(i) for i in data["ids"]]
        return data["centroids"], {u: data[f"t{i}"] for i, u in enumerate(ids)}


# ---- EMA teacher (data2vec's) --------------------------------------------------------------------


class TeacherObjective(TaptObjective):
    """data2vec's objective (Baevski et al. 2022; emotion2vec, Ma et al. 2024, continues it).

    The teacher, a copy of the starting encoder in eval mode, reads the whole clip; its target for
    each frame is the mean of its top `teacher_layers` layer outputs, each normalised over the
    clip's frames per channel (instance norm). The student reads the clip with its masked frames
    replaced and regresses the target (a linear head on its last layer, mean squared error) at
    the masked frames. After every optimiser step the teacher moves toward the student:
    teacher = decay * teacher + (1 - decay) * student, the decay going linearly from
    `teacher_decay` to `teacher_decay_end` over the run.
    """

    name = "teacher"

    def __init__(self, encoder: PreTrainedModel, config: TaptConfig) -> None:
        super().__init__(encoder)
        hidden = encoder.config.hidden_size
        self.regression = nn.Linear(hidden, hidden)
        self.mask_embedding = _mask_embedding(self.family, hidden)
        self.teacher = copy.deepcopy(encoder).requires_grad_(False).eval()
        self.top_layers = min(config.teacher_layers, encoder.config.num_hidden_layers)
        self.decays = (config.teacher_decay, config.teacher_decay_end, config.steps)

    @classmethod
    def prepare(
        cls,
        encoder: PreTrainedModel,
        config: TaptConfig,
        clips: ClipSource,
        *,
        out_dir: Path,
        device: torch.device,
        main_process: bool,
        progress: bool,
    ) -> TeacherObjective:
        return cls(encoder, config)

    def train(self, mode: bool = True) -> TeacherObjective:
        super().train(mode)
        self.teacher.eval()  # targets without dropout, as data2vec's
        return self

    def decay(self, step: int) -> float:
        """The EMA decay after optimiser step `step` (0-based)."""
        start, end, steps = self.decays
        return start + (end - start) * min(1.0, (step + 1) / steps)

    def loss(
        self,
        inputs: dict[str, torch.Tensor],
        mask: torch.Tensor,
        targets: dict[str, torch.Tensor],
        step: int,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        with torch.no_grad():
            states, valid = self.family.states(self.teacher, inputs)
            top = [_instance_norm(s.float(), valid) for s in states[-self.top_layers :]]
            target = torch.stack(top).mean(dim=0)
        hidden = self.family.masked_output(self.encoder, inputs, mask, self.mask_embedding)
        scored = mask[:, : hidden.shape[1]].bool() & valid.bool()
        pred = self.regression(hidden[scored]).float()
        loss = nn.functional.mse_loss(pred, target[scored])
        # The spread of the targets over frames: data2vec's sign of a collapsing teacher.
        spread = float(target[scored].std(dim=0).mean()) if int(scored.sum()) > 1 else 0.0
        return loss, {"target_std": spread, "teacher_decay": self.decay(step)}

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        decay = self.decay(step)
        for t, s in zip(self.teacher.parameters(), self.encoder.parameters(), strict=True):
            t.mul_(decay).add_(s.detach(), alpha=1.0 - decay)
        for tb, sb in zip(self.teacher.buffers(), self.encoder.buffers(), strict=True):
            tb.copy_(sb)


def _instance_norm(x: torch.Tensor, valid: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """`x` (B, T, D) normalised per clip and channel over the clip's frames (`valid` (B, T))."""
    w = valid.to(x.dtype)[..., None]
    n = w.sum(dim=1, keepdim=True).clamp(min=1.0)
    mean = (x * w).sum(dim=1, keepdim=True) / n
    var = (((x - mean) ** 2) * w).sum(dim=1, keepdim=True) / n
    return (x - mean) / torch.sqrt(var + eps)


# ---- the registry --------------------------------------------------------------------------------

OBJECTIVES: dict[str, type[TaptObjective]] = {
    o.name: o for o in (ContrastiveObjective, MaskedPredictionObjective, TeacherObjective)
}


def objective_class(
    backbone: str, model_config: PretrainedConfig, name: str | None
) -> type[TaptObjective]:
    """The objective `name`, or (None) the one the family of `model_config` continues."""
    chosen = name or family_of(model_config).tapt_objective(model_config)
    if chosen is None:
        raise AfterError(
            f"{backbone}: TAPT continues the pre-training objective of a family that has one "
            f"here, not {FAMILIES[model_config.model_type]}; fine-tune it without TAPT, or "
            "choose the data2vec-style objective (objective='teacher')"
        )
    if chosen not in OBJECTIVES:
        raise AfterError(f"unknown TAPT objective {chosen!r}; choose {', '.join(OBJECTIVES)}")
    return OBJECTIVES[chosen]
