"""Task-adaptive pre-training (TAPT): continue a backbone's self-supervised objective on the
training audio of one fold, before any labels are used.

The objective is chosen by the backbone's family (`Family.tapt_objective`) or by name
(`TaptConfig.objective`); the objectives live in `after.models.objectives`:

- wav2vec 2.0: its own objective, contrastive loss over masked frames against quantized targets
  plus the weighted codebook diversity loss (`Wav2Vec2ForPreTraining`). Masks are spans drawn
  inside each clip's valid frames; negatives are other masked frames of the same clip, so never
  padding.
- HuBERT and WavLM: transformers has no pre-training head for them, so they continue HuBERT's
  objective: masked prediction of k-means cluster ids fitted on one hidden layer of the starting
  model over the fold's training audio, with a small head trained alongside and discarded.
- Whisper: trained for speech recognition with labels, it has no self-supervised objective of its
  own; it continues with HuBERT's masked prediction as above, with a learned embedding in place
  of masked frames' conv-stem output (before the positions), targets from its own middle layer,
  and clips read over their own frames (`after.models.whisper_model`).
- Any family, when asked for (`objective="teacher"`): data2vec's EMA-teacher regression.

This module knows no family: it loads the backbone as the objective asks, lets it prepare (k-means
targets, with progress), and runs the steps. The objective's new head may train at its own
learning rate (`head_lr`) and alone for its first steps (`head_warmup_steps`). What the starting
model knows can be protected while it adapts (`TaptModel`; all off by default): the bottom layers
frozen (`freeze_layers`), a pull of the weights toward the start (L2-SP, `l2sp`), and distillation
from a frozen copy of the starting encoder (`distill`, `distill_layer`).

Only `Fold.train` is ever read (`tapt_ids`): dev and test audio cannot reach TAPT. The loop runs
over HF Accelerate (CPU, one GPU, or several with `accelerate launch`). Batches are a pure
function of (seed, step), so a run resumed from a checkpoint (model, optimizer, scheduler, RNG)
sees exactly the batches it would have seen.

Output: `out_dir` is a `from_pretrained` folder (model + preprocessor config) plus `tapt.json`
(provenance), `tapt_log.jsonl` (one line per logged step) and `checkpoints/`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.utils import logging as hf_logging

from after.config import TaptConfig, config_hash
from after.data.audio import SAMPLE_RATE, clip_duration, load_audio
from after.data.batching import bucket_batches
from after.data.folds import Fold
from after.data.manifest import Manifest
from after.dist import accelerator as make_accelerator
from after.dist import job_folder, launch, must_launch
from after.errors import AfterError, AudioError, FoldError
from after.faults import fault_point
from after.io import apply_umask, atomic_write_json
from after.models.backbones import (
    FAMILIES,
    family_of,
    load_backbone,
    load_config,
    load_feature_extractor,
    num_frames,
)
from after.models.objectives import TaptObjective, objective_class, sample_negatives, span_mask
from after.progress import progress_bar
from after.rng import derived_rng

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LOG_FILE = "tapt_log.jsonl"
DONE_FILE = "tapt.json"
STATE_FILE = "trainer_state.json"


def tapt_ids(manifest: Manifest, fold: Fold) -> list[str]:
    """The clips TAPT may read: the fold's training split (labeled or not), never dev or test."""
    held_out = set(fold.dev) | set(fold.test)
    leaked = [i for i in fold.train if i in held_out]
    if leaked:
        raise FoldError(
            f"fold {fold.name}: {len(leaked)} training id(s) also held out, e.g. {leaked[0]}"
        )
    missing = [i for i in fold.train if i not in manifest]
    if missing:
        raise FoldError(
            f"fold {fold.name}: {len(missing)} training id(s) not in the manifest, e.g. "
            f"{missing[0]}; make the folds from this manifest"
        )
    if not fold.train:
        raise FoldError(f"fold {fold.name}: no training clips")
    return list(fold.train)


# ---- data --------------------------------------------------------------------------------------


@dataclass
class _Batch:
    ids: list[str]
    inputs: dict[str, torch.Tensor]  # the model's inputs (`Family.inputs`), padded
    num_samples: np.ndarray  # (B,) samples of each crop
    frame_lengths: np.ndarray  # (B,)
    frame_offsets: list[int]  # where each crop starts, in frames of the whole clip


class _Stream:
    """Batch number g of the run is a pure function of (seed, g): length-bucketed batches, a new
    grouping and order every epoch, random crops aligned to the encoder's frame stride. Also the
    objective's `ClipSource` while it prepares."""

    def __init__(
        self,
        manifest: Manifest,
        ids: list[str],
        config: TaptConfig,
        model_config: Any,
        preprocessor: Any,
    ) -> None:
        self.utts = [manifest[i] for i in ids]
        self.ids = list(ids)
        self.config = config
        self.model_config = model_config
        self.family = family_of(model_config)
        self.stride = self.family.SAMPLES_PER_FRAME
        self.max_samples = int(config.max_seconds * SAMPLE_RATE) // self.stride * self.stride
        self.durations = [clip_duration(u) for u in self.utts]
        self.preprocessor = preprocessor
        self._paths = {u.id: u.path for u in self.utts}
        self._epoch: tuple[int, list[list[int]]] | None = None
        self.skipped: dict[str, str] = {}

    def read(self, utt_id: str) -> np.ndarray | None:
        """The clip's audio; None where it cannot be read (warned once, then skipped)."""
        if utt_id in self.skipped:
            return None
        try:
            return load_audio(self._paths[utt_id])
        except AudioError as e:
            logger.warning("TAPT skips %s: %s", utt_id, e)
            self.skipped[utt_id] = str(e)
            return None

    def _batches(self, epoch: int) -> list[list[int]]:
        if self._epoch is None or self._epoch[0] != epoch:
            capped = [min(d, self.config.max_seconds) for d in self.durations]
            batches = bucket_batches(
                capped, self.config.batch_size, derived_rng(self.config.seed, epoch)
            )
            self._epoch = (epoch, batches)
        return self._epoch[1]

    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.utts) / self.config.batch_size)

    def batch(self, g: int) -> _Batch:
        epoch, k = divmod(g, self.batches_per_epoch())
        rng = derived_rng(self.config.seed, "crop", g)
        ids, waves, offsets = [], [], []
        for i in self._batches(epoch)[k]:
            u = self.utts[i]
            if (wave := self.read(u.id)) is None:
                continue
            wave, offset = self._crop(wave, rng)
            ids.append(u.id)
            waves.append(wave)
            offsets.append(offset // self.stride)
        if not waves:
            raise AfterError(f"TAPT batch {g}: no readable clip; see the warnings above")
        lengths = np.array([w.size for w in waves])
        return _Batch(
            ids=ids,
            inputs=self.family.inputs(waves, self.preprocessor),
            num_samples=lengths,
            frame_lengths=self.family.num_frames(self.model_config, lengths),
            frame_offsets=offsets,
        )

    def _crop(self, wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        if wave.size <= self.max_samples:
            return wave, 0
        start = (
            int(rng.integers(0, (wave.size - self.max_samples) // self.stride + 1)) * self.stride
        )
        return wave[start : start + self.max_samples], start


# ---- what a run trains: the objective, and what protects the starting model ---------------------


class TaptModel(nn.Module):
    """The objective (its encoder and heads) plus, where the settings ask, `start`: a frozen copy
    of the starting encoder (kept in eval mode, and in checkpoints) that the protections compare
    the encoder with. One forward pass computes the whole loss, so that DDP sees one:

    - L2-SP (`l2sp`): + l2sp * ||theta - theta_0||^2 over the encoder's trained weights;
    - distillation (`distill`): + distill * the mean squared difference between the hidden states
      of the encoder and of `start` on the same unmasked input, both without dropout (so it is 0
      before the first update), at layer `distill_layer` or averaged over every layer.

    With either on, the log shows the objective's own loss (`objective`) and each term unweighted.
    """

    def __init__(self, objective: TaptObjective, config: TaptConfig) -> None:
        super().__init__()
        self.objective = objective
        self.l2sp = config.l2sp
        self.distill = config.distill
        self.distill_layer = config.distill_layer
        self.start: nn.Module | None = None
        if config.l2sp or config.distill:
            self.start = copy.deepcopy(objective.encoder).requires_grad_(False).eval()
        num_layers: int = objective.encoder.config.num_hidden_layers
        if config.distill and self.distill_layer is not None and self.distill_layer > num_layers:
            raise AfterError(
                f"distill_layer={self.distill_layer}: the model has hidden layers 0..{num_layers}"
            )

    def train(self, mode: bool = True) -> TaptModel:
        super().train(mode)
        if self.start is not None:
            self.start.eval()
        return self

    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        mask: torch.Tensor,
        targets: dict[str, torch.Tensor],
        step: int,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss, metrics = self.objective.loss(inputs, mask, targets, step)
        if self.start is None:
            return loss, metrics
        metrics = {**metrics, "objective": float(loss.detach())}
        if self.l2sp:
            distance = self._distance()
            loss = loss + self.l2sp * distance
            metrics["l2sp"] = float(distance.detach())
        if self.distill:
            gap = self._distillation(inputs)
            loss = loss + self.distill * gap
            metrics["distill"] = float(gap.detach())
        return loss, metrics

    def _distance(self) -> torch.Tensor:
        """||theta - theta_0||^2 over the encoder's trained parameters."""
        assert self.start is not None
        start = dict(self.start.named_parameters())
        moved = [
            (p - start[name]).pow(2).sum()
            for name, p in self.objective.encoder.named_parameters()
            if p.requires_grad
        ]
        return torch.stack(moved).sum()

    def _distillation(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean over the chosen layers of the squared difference per frame (mean over channels,
        then over each clip's frames) between the encoder's and `start`'s hidden states."""
        assert self.start is not None
        family, encoder = self.objective.family, self.objective.encoder
        with _evaluating(encoder):
            student, valid = family.states(encoder, inputs)
        with torch.no_grad():
            frozen, _ = family.states(self.start, inputs)
        layers = range(len(student)) if self.distill_layer is None else [self.distill_layer]
        weights = valid.float()
        gaps = [
            ((student[i].float() - frozen[i].float()).pow(2).mean(-1) * weights).sum()
            / weights.sum()
            for i in layers
        ]
        return torch.stack(gaps).mean()


@contextlib.contextmanager
def _evaluating(module: nn.Module) -> Iterator[None]:
    """`module` in eval mode (no dropout, no SpecAugment) while inside; gradients still flow."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _build_model(
    objective: type[TaptObjective],
    backbone: str,
    stream: _Stream,
    config: TaptConfig,
    out: Path,
    accelerator: Any,
    progress: bool,
) -> TaptModel:
    """The backbone as `objective` trains it, its bottom frozen as asked, the objective prepared
    (e.g. k-means targets fitted on the fold's training audio), and the protections around it."""
    encoder = objective.load(backbone)
    if config.freeze_cnn or config.freeze_layers:
        family_of(encoder.config).freeze(
            encoder, cnn=config.freeze_cnn, layers=config.freeze_layers
        )
    prepared = objective.prepare(
        encoder,
        config,
        stream,
        out_dir=out,
        device=accelerator.device,
        main_process=accelerator.is_main_process,
        progress=progress,
    )
    return TaptModel(prepared, config)


# ---- schedule, optimiser, checkpoints ----------------------------------------------------------


def lr_factor(step: int, config: TaptConfig) -> float:
    """Warm-up (linear 0 -> 1), flat (`flat_ratio` of all steps), then linear decay to 0."""
    return _schedule(step, config.steps, config)


def encoder_lr_factor(step: int, config: TaptConfig) -> float:
    """The encoder's factor: 0 while the objective's head warms up alone (the first
    `head_warmup_steps`), then `lr_factor`'s schedule over the steps that remain."""
    if step < config.head_warmup_steps:
        return 0.0
    return _schedule(
        step - config.head_warmup_steps, config.steps - config.head_warmup_steps, config
    )


def _schedule(step: int, steps: int, config: TaptConfig) -> float:
    """`lr_factor`'s shape over a run of `steps` steps."""
    warmup = min(config.warmup_steps, steps)
    flat = min(round(config.flat_ratio * steps), steps - warmup)
    if step < warmup:
        return (step + 1) / warmup
    if step < warmup + flat:
        return 1.0
    decay = steps - warmup - flat
    return max(0.0, (steps - step) / decay) if decay else 1.0


def _optimizer(model: TaptModel, config: TaptConfig) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the trained parameters in two groups, each with its schedule: the encoder's at
    `lr` (`encoder_lr_factor`), and the objective's new head at `head_lr` (`lr_factor`). During
    the head's warm-up the encoder's gradients are still computed; its learning rate is 0, which
    leaves its weights exactly as they were."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    head = {id(p) for p in model.objective.head_parameters()}
    if not head and (config.head_lr is not None or config.head_warmup_steps):
        raise AfterError(
            f"head_lr / head_warmup_steps: the {model.objective.name} objective adds no head "
            "to the encoder"
        )
    groups = [
        {"params": [p for p in trainable if id(p) not in head], "lr": config.lr},
        {"params": [p for p in trainable if id(p) in head], "lr": config.head_lr or config.lr},
    ]
    factors = [lambda s: encoder_lr_factor(s, config), lambda s: lr_factor(s, config)]
    kept = [i for i, g in enumerate(groups) if g["params"]]
    optimizer = torch.optim.AdamW(
        [groups[i] for i in kept],
        lr=config.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [factors[i] for i in kept])
    return optimizer, scheduler


def _latest_checkpoint(out_dir: Path) -> Path | None:
    done = [p for p in (out_dir / CHECKPOINTS).glob("step_*") if (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.removeprefix("step_")), default=None)


def _run_key(
    backbone: str, fold: Fold, ids: list[str], config: TaptConfig, num_processes: int
) -> dict[str, Any]:
    """What a checkpoint must match to be resumed. The number of processes is the one the run
    has, however they were started (the setting only says how many to start)."""
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    return {
        "backbone": backbone,
        "fold": fold.name,
        "ids_digest": digest,
        "config_hash": config_hash(dataclasses.replace(config, num_processes=1)),
        "num_processes": num_processes,
    }


# ---- the loop ------------------------------------------------------------------------------------


def run_tapt(
    manifest: Manifest,
    fold: Fold,
    backbone: str,
    out_dir: str | Path,
    config: TaptConfig | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
) -> Path:
    """Continue `backbone`'s self-supervised training on `fold`'s training audio; returns
    `out_dir`, a folder that `AutoModel.from_pretrained` loads (see the module docstring).

    On several processes (a launcher's, or `config.num_processes` workers that this call starts
    and waits for) the model is replicated (DDP): a step takes `grad_accum` batches on every
    process, each process its own batches of the run's stream, and averages the gradients. A
    checkpoint resumes only on the same number of processes (the stream depends on it).
    """
    out = Path(out_dir)
    ids = tapt_ids(manifest, fold)
    model_config = load_config(backbone)
    config = config or TaptConfig()
    objective = objective_class(backbone, model_config, config.objective)
    config = objective.settle(config, backbone)
    if must_launch(config.num_processes, "TAPT"):
        _launch(manifest, fold, backbone, out, config, resume=resume, progress=progress)
        return out

    accelerator = make_accelerator(config.precision)
    key = _run_key(backbone, fold, ids, config, accelerator.num_processes)
    checkpoint = _prepare_out_dir(out, key, resume, accelerator)
    torch.manual_seed(config.seed)  # the same on every process: they build the same model
    stream = _Stream(manifest, ids, config, model_config, load_feature_extractor(backbone))
    model = _build_model(objective, backbone, stream, config, out, accelerator, progress)
    optimizer, scheduler = _optimizer(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    prepared, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if accelerator.num_processes > 1:  # different dropout and Gumbel noise per process
        torch.manual_seed(config.seed + accelerator.process_index)
    start = 0
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        start = json.loads((checkpoint / STATE_FILE).read_text())["step"]
        logger.info("resuming TAPT from %s (step %d)", checkpoint, start)
    run = _Training(accelerator, prepared, model, params, optimizer, scheduler, stream, config)
    last = run.steps(start, out, key, progress=progress)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        hf_logging.disable_progress_bar()  # transformers' own bar for writing one small file
        model.objective.save(out)
        stream.preprocessor.save_pretrained(out)
        apply_umask(out)  # safetensors writes the weights 0600 whatever the umask
        atomic_write_json(
            out / DONE_FILE,
            {
                **key,
                "family": model_config.model_type,
                "manifest_digest": _manifest_digest(manifest),
                "num_clips": len(ids),
                # The clips whose audio TAPT read: a run refuses a model that read its audit,
                # dev or test audio (`after.loop.runner.check_run`).
                "ids": ids,
                "skipped": stream.skipped,
                "steps": config.steps,
                "resumed_from_step": start,
                "final": last,
                "config": config.to_dict(),
            },
        )
    accelerator.wait_for_everyone()  # nobody returns before the model is on disk
    return out


@dataclass
class _Training:
    """A prepared run's steps: `model` as the accelerator wraps it, `unwrapped` the `TaptModel`
    itself, `params` its trained parameters (in module order, for clipping)."""

    accelerator: Any
    model: Any
    unwrapped: TaptModel
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    stream: _Stream
    config: TaptConfig

    def steps(
        self, start: int, out: Path, key: dict[str, Any], *, progress: bool
    ) -> dict[str, float]:
        """Steps `start` to the end: each logged (the first, every `log_every`-th, the last),
        checkpointed every `save_every`; returns the last step's record."""
        config, accelerator = self.config, self.accelerator
        self.model.train()
        t0, audio_s = time.perf_counter(), 0.0
        last: dict[str, float] = {}
        with progress_bar(progress and accelerator.is_main_process) as bar:
            task = bar.add_task("TAPT", total=config.steps, completed=start, info="")
            for step in range(start, config.steps):
                loss, parts, audio, grad_norm = self.step(step)
                # Loss and audio of the whole step, over every process.
                here = torch.stack([loss, torch.tensor(audio).to(loss)])
                total = accelerator.reduce(here, reduction="sum")
                audio_s += float(total[1])
                last = {
                    "step": step + 1,
                    "loss": float(total[0]) / accelerator.num_processes,
                    **parts,
                    "grad_norm": grad_norm,
                    **self._rates(),
                    "seconds": time.perf_counter() - t0,
                    "audio_seconds": audio_s,
                }
                if accelerator.is_main_process and (
                    (step + 1) % config.log_every == 0 or step in (start, config.steps - 1)
                ):
                    _append_jsonl(out / LOG_FILE, last)
                bar.update(task, advance=1, info=f"loss {last['loss']:.3f}")
                if (step + 1) % config.save_every == 0 and step + 1 < config.steps:
                    _save_checkpoint(accelerator, out, step + 1, key, config)
                fault_point("tapt-step")
        return last

    def step(self, step: int) -> tuple[torch.Tensor, dict[str, float], float, float]:
        """One optimiser step over `grad_accum` micro-batches: (mean loss on this process, mean
        of each logged part, seconds of audio read, gradient norm before clipping)."""
        config, accelerator = self.config, self.accelerator
        num_processes, rank = accelerator.num_processes, accelerator.process_index
        losses, parts, audio = [], [], 0.0
        for micro in range(config.grad_accum):
            # Batch g of the run's stream: steps, then micro-batches, then processes.
            g = (step * config.grad_accum + micro) * num_processes + rank
            batch = self.stream.batch(g)
            rng = derived_rng(config.seed, "mask", g)
            mask = span_mask(
                batch.frame_lengths,
                int(batch.frame_lengths.max()),
                mask_prob=config.mask_prob,
                mask_length=config.mask_length,
                min_masks=config.min_masks,
                rng=rng,
            )
            targets = self.unwrapped.objective.targets(batch, mask, rng)
            device = accelerator.device
            inputs = {k: v.to(device) for k, v in batch.inputs.items()}
            on_device = {k: torch.from_numpy(v).to(device) for k, v in targets.items()}
            # Processes exchange gradients only on the last micro-batch of a step.
            last_micro = micro == config.grad_accum - 1
            with contextlib.nullcontext() if last_micro else accelerator.no_sync(self.model):
                with accelerator.autocast():
                    loss, metrics = self.model(
                        inputs, torch.from_numpy(mask).to(device), on_device, step
                    )
                accelerator.backward(loss / config.grad_accum)
            losses.append(loss.detach().float())
            parts.append(metrics)
            audio += float(batch.num_samples.sum()) / SAMPLE_RATE
        grad_norm = accelerator.clip_grad_norm_(self.params, config.max_grad_norm)
        self.optimizer.step()
        if not accelerator.optimizer_step_was_skipped:  # fp16 overflow
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.unwrapped.objective.after_step(step)
        mean_parts = {name: float(np.mean([p[name] for p in parts])) for name in parts[0]}
        return torch.stack(losses).mean(), mean_parts, audio, float(grad_norm)

    def _rates(self) -> dict[str, float]:
        """The learning rates to log: the encoder's, and the head's where it has its own."""
        rates = self.scheduler.get_last_lr()
        own = self.config.head_lr is not None or self.config.head_warmup_steps > 0
        return {"lr": rates[0], **({"head_lr": rates[-1]} if own else {})}


def _launch(
    manifest: Manifest,
    fold: Fold,
    backbone: str,
    out: Path,
    config: TaptConfig,
    *,
    resume: bool,
    progress: bool,
) -> None:
    """Start `config.num_processes` workers (`tapt_worker`) and wait for them."""
    with job_folder(None) as job:
        manifest.to_jsonl(job / "manifest.jsonl")
        payload = {
            "fold": dataclasses.asdict(fold),
            "backbone": backbone,
            "out_dir": str(out),
            "config": config.to_dict(),
            "resume": resume,
            "progress": progress,
        }
        launch("after.tapt:tapt_worker", payload, config.num_processes, job)


def tapt_worker(payload: dict[str, Any], job: Path) -> None:
    """One of the processes `run_tapt` starts."""
    f = payload["fold"]
    parts = ("train", "dev", "test", "test_groups", "dev_groups")
    fold = Fold(f["name"], *(tuple(f[part]) for part in parts))
    run_tapt(
        Manifest.from_jsonl(job / "manifest.jsonl"),
        fold,
        payload["backbone"],
        payload["out_dir"],
        TaptConfig(**payload["config"]),
        resume=payload["resume"],
        progress=payload["progress"],
    )


def _prepare_out_dir(out: Path, key: dict[str, Any], resume: bool, accelerator: Any) -> Path | None:
    """The checkpoint to resume from, after checking it belongs to this run; refuses to mix runs.
    Every process checks; the main one prepares the folder."""
    checkpoint = _latest_checkpoint(out)
    if resume:
        if checkpoint is None:
            raise AfterError(f"{out}: no checkpoint to resume from; run without --resume")
        saved = json.loads((checkpoint / STATE_FILE).read_text())["key"]
        changed = {k: (saved.get(k), v) for k, v in key.items() if saved.get(k) != v}
        if changed:
            raise AfterError(
                f"{checkpoint}: made by a different TAPT run ({changed}); resume with the same "
                "manifest, fold, backbone, settings and number of processes, or choose another "
                "--out"
            )
        return checkpoint
    if checkpoint is not None or (out / DONE_FILE).exists():
        raise AfterError(
            f"{out}: holds an earlier TAPT run; pass --resume to continue it, or choose "
            "another --out"
        )
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / LOG_FILE).unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    return None


def _save_checkpoint(
    accelerator: Any, out: Path, step: int, key: dict[str, Any], config: TaptConfig
) -> None:
    """Save the full training state, then mark it complete; keep the newest few."""
    path = out / CHECKPOINTS / f"step_{step}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        atomic_write_json(path / STATE_FILE, {"step": step, "key": key})
        done = sorted(
            (p for p in (out / CHECKPOINTS).glob("step_*") if (p / STATE_FILE).is_file()),
            key=lambda p: int(p.name.removeprefix("step_")),
        )
        for old in done[: -config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _manifest_digest(manifest: Manifest) -> str:
    from after.data.folds import manifest_digest

    return manifest_digest(manifest)


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


# ---- surprisal embeddings (ALPS) -----------------------------------------------------------------


@torch.no_grad()
def surprisal_embeddings(
    model_dir: str,
    manifest: Manifest,
    ids: list[str],
    *,
    num_segments: int = 16,
    mask_prob: float = 0.5,
    max_seconds: float = 30.0,
    seed: int = 0,
) -> np.ndarray:
    """ALPS's surprisal embedding adapted to speech, (len(ids), num_segments).

    ALPS (Yuan et al. 2020) embeds a sentence by the masked-LM loss of each token under the
    pre-trained model. Here the pre-trained (TAPT) wav2vec 2.0 plays the LM: each clip gets span
    masks (about `mask_prob` of its frames, seeded by the clip id, so the same clip always gets
    the same masks), the per-frame contrastive loss of each masked frame (its quantized target
    against negatives from the clip's other masked frames) is computed, and the losses are
    averaged over `num_segments` equal stretches of the clip, giving a fixed-length vector of how
    surprising each part of the clip is to the model. No labels are used. Needs a wav2vec 2.0
    with its pre-training head: a TAPT output or a `scratch:` spec.
    """
    config = load_config(model_dir)
    if config.model_type != "wav2vec2":
        raise AfterError(
            f"{model_dir}: ALPS surprisal needs a wav2vec 2.0 pre-training model (a TAPT output), "
            f"not {FAMILIES.get(config.model_type, config.model_type)}"
        )
    model: Any = load_backbone(model_dir, pretraining=True)
    fe = load_feature_extractor(model_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    out = np.zeros((len(ids), num_segments), dtype=np.float32)
    for row, utt_id in enumerate(ids):
        u = manifest[utt_id]
        wave = load_audio(u.path, max_duration_s=max_seconds, crop="center")
        x = fe(wave, sampling_rate=SAMPLE_RATE, return_tensors="pt")["input_values"].to(device)
        frames = int(num_frames(config, torch.tensor([wave.size]))[0])
        rng = derived_rng(seed, "surprisal", u.id)
        mask = span_mask(
            np.array([frames]), frames, mask_prob=mask_prob, mask_length=10, min_masks=2, rng=rng
        )
        result = model(x, mask_time_indices=torch.from_numpy(mask).to(device))
        context = result.projected_states[0].float()  # (T, P)
        targets = result.projected_quantized_states[0].float()  # (T, P)
        masked = np.flatnonzero(mask[0])
        negatives = sample_negatives(mask, min(model.config.num_negatives, 20), rng)[0][masked]
        c, pos = context[masked], targets[masked]
        neg = targets[torch.from_numpy(negatives).to(device)]  # (M, K, P)
        candidates = torch.cat([pos[:, None], neg], dim=1)
        logits = torch.cosine_similarity(c[:, None], candidates, dim=-1)
        logits = logits / model.config.contrastive_logits_temperature
        loss = -torch.log_softmax(logits, dim=-1)[:, 0].cpu().numpy()  # per masked frame
        segment = np.minimum((masked * num_segments) // max(frames, 1), num_segments - 1)
        sums = np.bincount(segment, weights=loss, minlength=num_segments)
        counts = np.bincount(segment, minlength=num_segments)
        mean = float(loss.mean()) if loss.size else 0.0
        out[row] = np.where(counts > 0, sums / np.maximum(counts, 1), mean)
    return out
