"""Task-adaptive pre-training (TAPT): continue a backbone's self-supervised objective on the
training audio of one fold, before any labels are used.

- wav2vec 2.0: its own objective, contrastive loss over masked frames against quantized targets
  plus the weighted codebook diversity loss (`Wav2Vec2ForPreTraining`). Masks are spans drawn
  inside each clip's valid frames; negatives are other masked frames of the same clip, so never
  padding.
- HuBERT and WavLM: transformers has no pre-training head for them, so we continue HuBERT's
  objective: masked prediction of k-means cluster ids. The clusters are fitted on one hidden layer
  of the starting model over the fold's training audio; the targets of every frame are computed
  once, before training, and a small head (projection + one embedding per cluster, cosine
  similarity / 0.1) is trained with the encoder and discarded at the end.
- Whisper: trained for speech recognition with labels, it has no self-supervised objective of its
  own; it continues with HuBERT's masked prediction as above, with a learned embedding in place
  of masked frames at the encoder's input (after the conv stem and positions), targets from its
  own middle layer, and clips read over their own frames (`after.models.whisper_model`).

Only `Fold.train` is ever read (`tapt_ids`): dev and test audio cannot reach TAPT. The loop is one
function over HF Accelerate (CPU, one GPU, or several with `accelerate launch`). Batches are a pure
function of (seed, step), so a run resumed from a checkpoint (model, optimizer, scheduler, RNG)
sees exactly the batches it would have seen.

Output: `out_dir` is a `from_pretrained` folder (model + preprocessor config) plus `tapt.json`
(provenance), `tapt_log.jsonl` (one line per logged step) and `checkpoints/`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
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
from after.data.manifest import Manifest, Utterance
from after.dist import accelerator as make_accelerator
from after.dist import job_folder, launch, must_launch
from after.errors import AfterError, AudioError, FoldError
from after.faults import fault_point
from after.io import apply_umask, atomic_write_json
from after.models.backbones import (
    FAMILIES,
    SCRATCH_PREFIX,
    family_of,
    freeze_feature_encoder,
    load_backbone,
    load_config,
    load_feature_extractor,
    num_frames,
)
from after.progress import progress_bar
from after.rng import derived_rng

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LOG_FILE = "tapt_log.jsonl"
DONE_FILE = "tapt.json"
KMEANS_FILE = "kmeans_targets.npz"
STATE_FILE = "trainer_state.json"
MASKED_PREDICTION = ("hubert", "wavlm", "whisper")


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
    grouping and order every epoch, random crops aligned to the encoder's frame stride."""

    def __init__(
        self,
        manifest: Manifest,
        ids: list[str],
        config: TaptConfig,
        model_config: Any,
        feature_extractor: Any,
    ) -> None:
        self.utts = [manifest[i] for i in ids]
        self.config = config
        self.model_config = model_config
        self.family = family_of(model_config)
        self.stride = self.family.SAMPLES_PER_FRAME
        self.max_samples = int(config.max_seconds * SAMPLE_RATE) // self.stride * self.stride
        self.durations = [clip_duration(u) for u in self.utts]
        self.fe = feature_extractor
        self._epoch: tuple[int, list[list[int]]] | None = None
        self.skipped: dict[str, str] = {}

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
            if u.id in self.skipped:
                continue
            try:
                wave = load_audio(u.path)
            except AudioError as e:
                logger.warning("TAPT skips %s: %s", u.id, e)
                self.skipped[u.id] = str(e)
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
            inputs=self.family.inputs(waves, self.fe),
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


# ---- objectives ----------------------------------------------------------------------------------


class MaskedPrediction(nn.Module):
    """HuBERT's objective: predict the k-means cluster of each masked frame from its context.

    `targets` hold a cluster id per frame, -100 where there is no loss (unmasked or padding).
    An encoder without a learned embedding for masked frames (Whisper) gets one here, trained
    with the rest and, like the head, discarded at the end.
    """

    def __init__(
        self, encoder: Any, num_clusters: int, proj_dim: int = 256, temperature: float = 0.1
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.family = family_of(encoder.config)
        hidden = encoder.config.hidden_size
        self.proj = nn.Linear(hidden, proj_dim)
        self.codes = nn.Parameter(torch.randn(num_clusters, proj_dim) / math.sqrt(proj_dim))
        self.mask_embedding = (
            None
            if self.family.OWN_MASK_EMBEDDING
            else nn.Parameter(torch.empty(hidden).uniform_(-0.1, 0.1))
        )
        self.temperature = temperature

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


@torch.no_grad()
def fit_kmeans_targets(
    encoder: Any,
    stream: _Stream,
    config: TaptConfig,
    device: torch.device,
    *,
    progress: bool = False,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """k-means on one hidden layer of `encoder` over the stream's clips; returns the centroids
    (K, D) and each clip's per-frame cluster ids (whole clips, not crops).

    Memory stays bounded on large corpora: k-means is fitted on the frames of clips drawn at random
    until `kmeans_max_frames` are collected; then every clip is encoded again and only its cluster
    ids are kept. With `progress`, each of the three stretches shows a bar (on a CPU they take
    minutes before the first step).
    """
    from sklearn.cluster import MiniBatchKMeans

    num_layers: int = encoder.config.num_hidden_layers
    layer = num_layers // 2 if config.kmeans_layer is None else config.kmeans_layer
    if not 0 <= layer <= num_layers:
        raise AfterError(f"kmeans_layer={layer}: the model has hidden layers 0..{num_layers}")
    was_training = encoder.training
    encoder.eval()

    def hidden(u: Utterance) -> np.ndarray | None:
        if u.id in stream.skipped:
            return None
        try:
            wave = load_audio(u.path)
        except AudioError as e:
            logger.warning("TAPT skips %s: %s", u.id, e)
            stream.skipped[u.id] = str(e)
            return None
        inputs = {k: v.to(device) for k, v in stream.family.inputs([wave], stream.fe).items()}
        states, _ = stream.family.hidden(encoder, inputs, layer)
        return np.asarray(states[0].float().cpu().numpy())

    rng = derived_rng(config.seed, "kmeans")
    sample: list[np.ndarray] = []
    with progress_bar(progress, transient=True) as bar:
        task = bar.add_task(
            f"TAPT targets: frames of layer {layer} to fit k-means on",
            total=config.kmeans_max_frames,
            info="",
        )
        for i in rng.permutation(len(stream.utts)):
            if sum(len(f) for f in sample) >= config.kmeans_max_frames:
                break
            if (f := hidden(stream.utts[i])) is not None:
                sample.append(f)
                bar.update(task, completed=min(config.kmeans_max_frames, sum(map(len, sample))))
        bar.update(task, completed=config.kmeans_max_frames)
        if not sample:
            raise AfterError("TAPT: no readable training clip to fit k-means on")
        frames = np.concatenate(sample)
        if len(frames) > config.kmeans_max_frames:
            frames = frames[rng.choice(len(frames), config.kmeans_max_frames, replace=False)]
        k = min(config.kmeans_clusters, len(frames))
        fitting = bar.add_task(
            f"TAPT targets: k-means, {k} clusters on {len(frames)} frames",
            total=1,
            info="",
            announce=True,
        )
        kmeans = MiniBatchKMeans(n_clusters=k, random_state=config.seed, n_init=3, batch_size=4096)
        kmeans.fit(frames)
        bar.advance(fitting)
        labeling = bar.add_task(
            "TAPT targets: cluster ids of every clip", total=len(stream.utts), info=""
        )
        targets = {}
        for u in stream.utts:
            if (f := hidden(u)) is not None:
                targets[u.id] = kmeans.predict(f).astype(np.int16 if k <= 2**15 else np.int32)
            bar.advance(labeling)
    encoder.train(was_training)
    return kmeans.cluster_centers_.astype(np.float32), targets


def _save_targets(path: Path, centroids: np.ndarray, targets: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    ids = list(targets)
    arrays: dict[str, Any] = {f"t{i}": targets[u] for i, u in enumerate(ids)}
    arrays.update(centroids=centroids, ids=np.array(ids))
    np.savez(tmp, **arrays)
    tmp.replace(path)


def _load_targets(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    with np.load(path) as data:
        ids = [str(i) for i in data["ids"]]
        return data["centroids"], {u: data[f"t{i}"] for i, u in enumerate(ids)}


# ---- schedule, precision, checkpoints ----------------------------------------------------------


def lr_factor(step: int, config: TaptConfig) -> float:
    """Warm-up (linear 0 -> 1), flat (`flat_ratio` of all steps), then linear decay to 0."""
    warmup = min(config.warmup_steps, config.steps)
    flat = min(round(config.flat_ratio * config.steps), config.steps - warmup)
    if step < warmup:
        return (step + 1) / warmup
    if step < warmup + flat:
        return 1.0
    decay = config.steps - warmup - flat
    return max(0.0, (config.steps - step) / decay) if decay else 1.0


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
    config = config or TaptConfig()
    if config.gumbel_start is None:
        start = 2.0 if backbone.startswith(SCRATCH_PREFIX) else config.gumbel_end
        config = dataclasses.replace(config, gumbel_start=start)
    out = Path(out_dir)
    ids = tapt_ids(manifest, fold)
    model_config = load_config(backbone)
    family = model_config.model_type
    if family != "wav2vec2" and family not in MASKED_PREDICTION:
        raise AfterError(
            f"{backbone}: TAPT is implemented for wav2vec 2.0 (its own objective) and HuBERT, "
            f"WavLM and Whisper (masked prediction of k-means targets), not {FAMILIES[family]}; "
            "fine-tune it without TAPT"
        )
    if must_launch(config.num_processes, "TAPT"):
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
        return out

    accelerator = make_accelerator(config.precision)
    num_processes, rank = accelerator.num_processes, accelerator.process_index
    key = _run_key(backbone, fold, ids, config, num_processes)
    checkpoint = _prepare_out_dir(out, key, resume, accelerator)

    torch.manual_seed(config.seed)  # the same on every process: they build the same model
    stream = _Stream(manifest, ids, config, model_config, load_feature_extractor(backbone))

    backbone_model = load_backbone(backbone, pretraining=family == "wav2vec2")
    if config.freeze_cnn:
        freeze_feature_encoder(backbone_model)
    model: nn.Module = backbone_model
    if family in MASKED_PREDICTION:
        targets_path = out / KMEANS_FILE
        if targets_path.is_file():
            centroids, targets = _load_targets(targets_path)
        else:
            backbone_model.to(accelerator.device)
            centroids, targets = fit_kmeans_targets(
                backbone_model,
                stream,
                config,
                accelerator.device,
                progress=progress and accelerator.is_main_process,
            )
            if accelerator.is_main_process:
                _save_targets(targets_path, centroids, targets)
        model = MaskedPrediction(backbone_model, num_clusters=len(centroids))

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if num_processes > 1:
        torch.manual_seed(config.seed + rank)  # different dropout and Gumbel noise per process
    start = 0
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        start = json.loads((checkpoint / STATE_FILE).read_text())["step"]
        logger.info("resuming TAPT from %s (step %d)", checkpoint, start)

    model.train()
    log_path = out / LOG_FILE
    t0, audio_s = time.perf_counter(), 0.0
    last: dict[str, float] = {}
    bar = progress_bar(progress and accelerator.is_main_process)
    with bar:
        task = bar.add_task("TAPT", total=config.steps, completed=start, info="")
        for step in range(start, config.steps):
            losses, parts, audio = [], [], 0.0
            for micro in range(config.grad_accum):
                # Batch g of the run's stream: steps, then micro-batches, then processes.
                g = (step * config.grad_accum + micro) * num_processes + rank
                batch = stream.batch(g)
                rng = derived_rng(config.seed, "mask", g)
                mask = span_mask(
                    batch.frame_lengths,
                    int(batch.frame_lengths.max()),
                    mask_prob=config.mask_prob,
                    mask_length=config.mask_length,
                    min_masks=config.min_masks,
                    rng=rng,
                )
                inputs = {k: v.to(accelerator.device) for k, v in batch.inputs.items()}
                # Processes exchange gradients only on the last micro-batch of a step.
                last_micro = micro == config.grad_accum - 1
                with contextlib.nullcontext() if last_micro else accelerator.no_sync(model):
                    with accelerator.autocast():
                        if family == "wav2vec2":
                            loss, metrics = _wav2vec2_loss(
                                model,
                                accelerator.unwrap_model(model),
                                inputs["input_values"],
                                inputs["attention_mask"],
                                mask,
                                step,
                                config,
                                rng,
                            )
                        else:
                            loss, metrics = _masked_prediction_loss(
                                model, inputs, mask, batch, targets
                            )
                    accelerator.backward(loss / config.grad_accum)
                losses.append(loss.detach().float())
                parts.append(metrics)
                audio += float(batch.num_samples.sum()) / SAMPLE_RATE
            grad_norm = accelerator.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            if not accelerator.optimizer_step_was_skipped:  # fp16 overflow
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            # Loss and audio of the whole step, over every process.
            here = torch.stack([torch.stack(losses).mean(), torch.tensor(audio).to(losses[0])])
            total = accelerator.reduce(here, reduction="sum")
            audio_s += float(total[1])
            last = {
                "step": step + 1,
                "loss": float(total[0]) / num_processes,
                **{name: float(np.mean([p[name] for p in parts])) for name in parts[0]},
                "grad_norm": float(grad_norm),
                "lr": scheduler.get_last_lr()[0],
                "seconds": time.perf_counter() - t0,
                "audio_seconds": audio_s,
            }
            if accelerator.is_main_process and (
                (step + 1) % config.log_every == 0 or step in (start, config.steps - 1)
            ):
                _append_jsonl(log_path, last)
            bar.update(task, advance=1, info=f"loss {last['loss']:.3f}")
            if (step + 1) % config.save_every == 0 and step + 1 < config.steps:
                _save_checkpoint(accelerator, out, step + 1, key, config)
            fault_point("tapt-step")

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        final = unwrapped.encoder if isinstance(unwrapped, MaskedPrediction) else unwrapped
        hf_logging.disable_progress_bar()  # transformers' own bar for writing one small file
        # The encoder only: a Whisper encoder comes inside an (untrained) classifier, whose head
        # would not fit the labels of whoever fine-tunes the output.
        encoder_only = {k: v for k, v in final.state_dict().items() if k.startswith("encoder.")}
        final.save_pretrained(out, state_dict=encoder_only if family == "whisper" else None)
        stream.fe.save_pretrained(out)
        apply_umask(out)  # safetensors writes the weights 0600 whatever the umask
        atomic_write_json(
            out / DONE_FILE,
            {
                **key,
                "family": family,
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


def _wav2vec2_loss(
    model: nn.Module,
    unwrapped: Any,
    inputs: torch.Tensor,
    attention: torch.Tensor,
    mask: np.ndarray,
    step: int,
    config: TaptConfig,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, dict[str, float]]:
    assert config.gumbel_start is not None  # resolved by run_tapt
    temperature = max(config.gumbel_end, config.gumbel_start * config.gumbel_decay**step)
    unwrapped.set_gumbel_temperature(temperature)
    negatives = sample_negatives(mask, unwrapped.config.num_negatives, rng)
    out = model(
        inputs,
        attention_mask=attention,
        mask_time_indices=torch.from_numpy(mask).to(inputs.device),
        sampled_negative_indices=torch.from_numpy(negatives).to(inputs.device),
    )
    n = float(mask.sum())
    metrics = {
        "contrastive": float(out.contrastive_loss.detach()) / n,
        "diversity": float(out.diversity_loss.detach()) / n,
        "perplexity": float(out.codevector_perplexity.detach()),
        "gumbel_temperature": temperature,
    }
    return out.loss / n, metrics


def _masked_prediction_loss(
    model: nn.Module,
    inputs: dict[str, torch.Tensor],
    mask: np.ndarray,
    batch: _Batch,
    targets: dict[str, np.ndarray],
) -> tuple[torch.Tensor, dict[str, float]]:
    target = np.full(mask.shape, -100, dtype=np.int64)
    for b, (utt, offset, length) in enumerate(
        zip(batch.ids, batch.frame_offsets, batch.frame_lengths, strict=True)
    ):
        clip = targets[utt][offset : offset + int(length)]
        target[b, : clip.size] = clip
    target[~mask] = -100
    device = next(iter(inputs.values())).device
    loss, accuracy = model(
        inputs, torch.from_numpy(mask).to(device), torch.from_numpy(target).to(device)
    )
    return loss, {"masked_accuracy": float(accuracy.detach())}


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
