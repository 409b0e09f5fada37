"""Fitting an emotion classifier on labeled clips, with model selection on dev.

`fit` is one readable loop over HF Accelerate: length-bucketed batches, reshuffled every epoch
(every labeled clip, old or newly acquired, is seen every epoch); loss weighted by the inverse class
frequency of the labeled set, against hard labels or annotator vote distributions; the epoch with
the best dev UA is kept; training stops after `patience` epochs without improvement. A frozen
feature backbone gets a convex learner instead (`_fit_linear`). Inputs and prediction live in
`after.inference`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed
from torch import nn

from after.config import TrainConfig
from after.data.batching import bucket_batches
from after.data.manifest import Manifest
from after.dist import accelerator as make_accelerator
from after.dist import job_folder, launch, must_launch, state
from after.errors import AfterError
from after.faults import fault_point
from after.inference import (
    Inputs,
    infer_with,
    label_targets,
    logits_of,
    predict_with,
    scores_of,
    to_device,
)
from after.io import atomic_write_json
from after.models.classifier import Classifier, new_classifier
from after.progress import progress_bar
from after.rng import derived_rng

logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    classifier: Classifier
    best_epoch: int  # 1-based; the last epoch when there is no dev set
    dev: dict[str, Any] | None  # scores of the kept epoch on dev
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    num_processes: int = 1  # processes that trained it (DDP)


# ---- targets and loss ----------------------------------------------------------------------------


def class_weights(targets: np.ndarray) -> np.ndarray:
    """Inverse class frequency of the labeled set, N / (C_present * n_c) (scikit-learn's
    "balanced"); 0 for a class with no labeled clip yet. Soft targets count fractionally."""
    counts = targets.sum(axis=0)
    present = counts > 0
    w = np.zeros_like(counts)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


def weighted_soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy against target distributions, each clip weighted by its targets' class
    weight; for one-hot targets exactly `F.cross_entropy(logits, y, weight=weights)`."""
    log_p = torch.log_softmax(logits.float(), dim=-1)
    clip_weight = targets @ weights
    per_clip = -(targets * log_p).sum(dim=-1)
    return (clip_weight * per_clip).sum() / clip_weight.sum().clamp(min=1e-12)


# ---- inputs -------------------------------------------------------------------------------------


# ---- prediction --------------------------------------------------------------------------------


# ---- training ------------------------------------------------------------------------------------


def fit(
    manifest: Manifest,
    train_ids: Sequence[str],
    dev_ids: Sequence[str],
    backbone: str,
    config: TrainConfig | None = None,
    *,
    labels: Sequence[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    init: Classifier | None = None,
    progress: bool = True,
    unlabeled_ids: Sequence[str] = (),
) -> FitResult:
    """Train a classifier on `train_ids` (labeled), keep the epoch with the best dev UA.

    `labels` fixes the class set and order (default: every label in the manifest, so the classes
    do not depend on which clips happen to be labeled yet). The classifier is new (random head on
    `backbone`), or with `init` a copy of that one, trained further (warm start).
    `unlabeled_ids` (the active-learning pool) are read by the frozen-features learner's
    self-training only (`TrainConfig.self_training`), never for their labels.

    On several processes (a launcher's, or `config.num_processes` workers that this call starts
    and waits for) the model is replicated (DDP): each process takes its share of every epoch's
    batches and gradients are averaged, so a step sees `batch_size * grad_accum` clips per
    process. Dev predictions are shared out and gathered, so every process makes the same
    best-epoch and early-stopping decisions.
    """
    config = config or TrainConfig()
    labels = list(labels or manifest.labels)
    if not train_ids:
        raise AfterError("no labeled training clips")
    overlap = set(train_ids) & set(dev_ids)
    if overlap:
        raise AfterError(f"{len(overlap)} clip(s) in both train and dev, e.g. {sorted(overlap)[0]}")
    if init is not None and init.labels != labels:
        raise AfterError(f"warm start from a model with labels {init.labels}, not {labels}")
    if (init.kind if init is not None else kind_of(backbone)) == "features":
        # Convex and done in seconds: one process, whatever num_processes says.
        return _fit_linear(
            manifest, train_ids, dev_ids, backbone, config, labels, cache_dir, unlabeled_ids
        )
    if must_launch(config.num_processes, "fine-tuning"):
        return _fit_in_workers(
            manifest, train_ids, dev_ids, backbone, config, labels, cache_dir, init, progress
        )
    return _fine_tune(
        manifest,
        list(train_ids),
        list(dev_ids),
        backbone,
        config,
        labels,
        cache_dir,
        init,
        progress,
    )


@dataclass(frozen=True)
class StepPlan:
    """How a fit's optimiser steps fall into epochs (see `TrainConfig`)."""

    total: int  # optimiser steps
    passes: int  # passes over the labeled clips per epoch (> 1 where `min_steps` asks for more)
    epochs: int  # dev evaluations (units of patience)
    micro_per_epoch: int  # batches per epoch on one process


def plan_steps(config: TrainConfig, num_train: int, num_processes: int) -> StepPlan:
    """`config.epochs` passes over `num_train` clips, at least `min_steps` optimiser steps, at
    most `max_steps`; where `epochs` passes fall short of `min_steps`, an epoch is several."""
    micro_per_pass = math.ceil(math.ceil(num_train / config.batch_size) / num_processes)
    steps_per_pass = math.ceil(micro_per_pass / config.grad_accum)
    total = max(config.epochs * steps_per_pass, config.min_steps)
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    passes = max(1, math.ceil(total / (config.epochs * steps_per_pass)))
    epochs = math.ceil(total / (passes * steps_per_pass))
    return StepPlan(total, passes, epochs, micro_per_pass * passes)


@dataclass
class _Training:
    """What one fine-tuning holds while it runs (`_fine_tune` builds it, `_train_epoch` steps
    it)."""

    clf: Classifier
    model: nn.Module  # clf.module as the accelerator prepared it
    optimizer: Any
    scheduler: Any
    accelerator: Any
    data: Inputs
    config: TrainConfig
    train_ids: list[str]
    targets: np.ndarray  # (N, C)
    weights: torch.Tensor  # (C,) class weights
    plan: StepPlan
    steps: int = 0

    def snapshot(self) -> dict[str, torch.Tensor]:
        now = self.accelerator.unwrap_model(self.model).state_dict()
        return {k: v.detach().clone() for k, v in now.items()}

    def dev_scores(self, dev_ids: list[str]) -> dict[str, Any] | None:
        if not dev_ids:
            return None
        model = self.accelerator.unwrap_model(self.model)
        probs = _gathered_probs(self.clf, model, self.data, dev_ids, self.accelerator)
        return scores_of(self.clf, self.data.manifest, dev_ids, probs)


def _fine_tune(
    manifest: Manifest,
    train_ids: list[str],
    dev_ids: list[str],
    backbone: str,
    config: TrainConfig,
    labels: list[str],
    cache_dir: str | os.PathLike[str] | None,
    init: Classifier | None,
    progress: bool,
) -> FitResult:
    """`fit` of a transformers classifier in this process (one of several under DDP): set up,
    then epochs until the plan is spent or `patience` runs out; the best dev epoch is kept."""
    t0 = time.perf_counter()
    run = _set_up(manifest, train_ids, backbone, config, labels, cache_dir, init)
    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, torch.Tensor] | None, dict[str, Any] | None]
    best = (-1.0, 0, None, None)
    selecting = bool(dev_ids) and config.select_on_dev
    bar = progress_bar(progress and run.accelerator.is_main_process, transient=True)
    with run.data.taking_frames(), bar:
        if init is None and config.head_init == "probe":
            probe = probe_head(run)
            if selecting:  # the probe is epoch 0, a candidate like the others
                start = run.dev_scores(dev_ids)
                assert start is not None
                history.append({"epoch": 0, "steps": 0, **probe, "dev_ua": start["ua"]})
                best = (start["ua"], 0, run.snapshot(), start)
        # Each epoch's dev evaluation counts as its batches in the bar, so that the ETA, a
        # rate measured over the steps done, does not leap after the first evaluation.
        dev_units = math.ceil(len(dev_ids) / config.eval_batch_size)
        per_epoch = run.plan.micro_per_epoch + dev_units
        task = bar.add_task("fine-tuning", total=run.plan.epochs * per_epoch)
        for epoch in range(run.plan.epochs):
            record = _train_epoch(run, epoch, lambda info: bar.update(task, advance=1, info=info))
            scores = run.dev_scores(dev_ids)
            bar.advance(task, dev_units)
            if scores is not None:
                record.update(dev_ua=scores["ua"], dev_wa=scores["wa"])
            history.append(record)
            # Without dev selection every epoch beats the last: the last one is kept.
            score = scores["ua"] if scores is not None and selecting else float(epoch)
            if score > best[0]:
                best = (score, epoch + 1, run.snapshot(), scores)
            elif selecting and config.patience and epoch + 1 - best[1] >= config.patience:
                break
        assert best[2] is not None  # keys saved while the frames were taken: load here
        run.accelerator.unwrap_model(run.model).load_state_dict(best[2])
    run.clf.module = run.accelerator.unwrap_model(run.model)
    return FitResult(
        run.clf,
        best[1],
        best[3],
        history,
        time.perf_counter() - t0,
        num_processes=run.accelerator.num_processes,
    )


def _set_up(
    manifest: Manifest,
    train_ids: list[str],
    backbone: str,
    config: TrainConfig,
    labels: list[str],
    cache_dir: str | os.PathLike[str] | None,
    init: Classifier | None,
) -> _Training:
    """The classifier (new, or a copy of `init`), its inputs, targets, optimiser (the head at
    `head_lr`, the encoder at `lr`) and schedule (warm-up, then linear decay), prepared by the
    accelerator."""
    accelerator = make_accelerator(config.precision)
    # Python's, numpy's and torch's global generators: transformers draws SpecAugment masks from
    # numpy's, so without this a run resumed in a new process would train differently. Every
    # process starts from the same seed, so that they all build the same model (and key the
    # frozen-frames cache on the same weights); they draw different masks and dropout once
    # training starts.
    set_seed(config.seed)
    if init is not None:
        from after.models.backbones import family_of

        clf = copy.deepcopy(init)
        # A model loaded from disk has everything trainable.
        family_of(clf.module.config).freeze(  # type: ignore[arg-type]
            clf.module, cnn=config.freeze_cnn, layers=config.freeze_layers
        )
    else:
        clf = fresh_classifier(backbone, labels, config)
    clf.module.to(accelerator.device)
    cached = (config.freeze_cnn or config.freeze_layers > 0) and config.cache_cnn
    data = Inputs(clf, manifest, config, cache_dir, accelerator.device, cached=cached)
    targets = label_targets([manifest[i] for i in train_ids], labels, config.soft_labels)
    weights = class_weights(targets) if config.class_weighted else np.ones(len(labels))
    head = {id(p) for p in clf.head_parameters()}
    body = [p for p in clf.module.parameters() if p.requires_grad and id(p) not in head]
    groups = [{"params": clf.head_parameters(), "lr": config.head_lr}]
    if body:
        groups.append({"params": body, "lr": config.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    plan = plan_steps(config, len(train_ids), accelerator.num_processes)
    warmup = round(config.warmup_ratio * plan.total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else max(0.0, (plan.total - s) / max(1, plan.total - warmup))
        ),
    )
    model, optimizer, scheduler = accelerator.prepare(clf.module, optimizer, scheduler)
    if accelerator.num_processes > 1:
        set_seed(config.seed, device_specific=True)  # seed + process index
    weights_t = torch.tensor(weights, dtype=torch.float32, device=accelerator.device)
    return _Training(
        clf,
        model,
        optimizer,
        scheduler,
        accelerator,
        data,
        config,
        train_ids,
        targets,
        weights_t,
        plan,
    )


def _train_epoch(run: _Training, epoch: int, advance: Callable[[str], None]) -> dict[str, Any]:
    """One epoch (`plan.passes` passes over the labeled clips, this process's share of each
    pass's length-bucketed batches); stops early where the plan's last step falls. Returns the
    epoch's record (steps so far, mean training loss over the processes, seconds)."""
    t0 = time.perf_counter()
    config, accelerator, model = run.config, run.accelerator, run.model
    durations = [min(run.data.duration(i), config.max_seconds) for i in run.train_ids]
    model.train()
    mine = [
        batch
        for p in range(epoch * run.plan.passes, (epoch + 1) * run.plan.passes)
        for batch in rank_batches(
            bucket_batches(durations, config.batch_size, derived_rng(config.seed, "epoch", p)),
            accelerator.process_index,
            accelerator.num_processes,
        )
    ]
    losses = []
    for k, batch in enumerate(mine):
        ids = [run.train_ids[i] for i in batch]
        inputs = to_device(
            run.data.batch(ids, derived_rng(config.seed, "crop", epoch, k)), accelerator.device
        )
        q = torch.tensor(run.targets[batch], dtype=torch.float32, device=accelerator.device)
        # Gradient accumulation: a step every `grad_accum` micro-batches and at the end of the
        # epoch; processes exchange gradients only on a step's last micro-batch.
        group_size = min(config.grad_accum, len(mine) - k // config.grad_accum * config.grad_accum)
        steps_now = (k + 1) % config.grad_accum == 0 or k + 1 == len(mine)
        with contextlib.nullcontext() if steps_now else accelerator.no_sync(model):
            with accelerator.autocast():
                logits = logits_of(run.clf, model, inputs)
            loss = weighted_soft_cross_entropy(logits, q, run.weights)
            accelerator.backward(loss / group_size)
        if steps_now:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            run.optimizer.step()
            if not accelerator.optimizer_step_was_skipped:  # fp16 overflow
                run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            run.steps += 1
        losses.append(float(loss.detach()))
        advance(f"epoch {epoch + 1} loss {losses[-1]:.3f}")
        fault_point("train-step")
        if run.steps == run.plan.total:  # a step budget (`max_steps`) may end an epoch early
            break
    mean = torch.tensor(
        float(np.mean(losses)) if losses else float("nan"), device=accelerator.device
    )
    return {
        "epoch": epoch + 1,
        "steps": run.steps,
        "train_loss": float(accelerator.reduce(mean, reduction="mean")),
        "seconds": time.perf_counter() - t0,
    }


def probe_head(run: _Training) -> dict[str, Any]:
    """Set a new head (a square projector: `new_classifier(probe_head=True)`) to the frozen-
    features learner's logistic regression on what the head reads from the untrained encoder:
    the projector holds its standardiser, the classifier its weights (LP-FT). Returns the probe's
    record (C and its inner-CV UA). The clips' pooled frames come from the model itself, with the
    projector set to the identity, so they are exactly what the head will be given."""
    from after.models.linear import fit_head

    module: Any = run.accelerator.unwrap_model(run.model)
    projector, output = module.projector, module.classifier
    with torch.no_grad():
        projector.weight.copy_(torch.eye(*projector.weight.shape))
        projector.bias.zero_()
    x = infer_with(run.clf, module, run.data, run.train_ids, run.data.device, embeddings=True)
    groups = [run.data.manifest[i].speaker for i in run.train_ids]
    sample_weight = run.targets @ run.weights.cpu().numpy()
    fit = fit_head(x["embeddings"], run.targets, sample_weight, groups, run.config.l2_c)
    with torch.no_grad():
        projector.weight.copy_(torch.diag(torch.as_tensor(1.0 / fit.scale)))
        projector.bias.copy_(torch.as_tensor(-fit.mean / fit.scale))
        output.weight.copy_(torch.as_tensor(fit.weight))
        output.bias.copy_(torch.as_tensor(fit.bias))
    return {"probe_c": fit.c, "probe_cv_ua": max((r["cv_ua"] for r in fit.cv), default=None)}


def fresh_classifier(backbone: str, labels: Sequence[str], config: TrainConfig) -> Classifier:
    """A classifier to fine-tune as `config` says: `backbone` with a new, random head."""
    return new_classifier(
        backbone,
        list(labels),
        freeze_cnn=config.freeze_cnn,
        freeze_layers=config.freeze_layers,
        num_layers=config.num_layers,
        spec_time_prob=config.spec_time_prob,
        spec_feature_prob=config.spec_feature_prob,
        layer_sum=config.layer_sum,
        probe_head=config.head_init == "probe",
        dropout=config.dropout,
    )


def shrink_toward(model: nn.Module, start: nn.Module, keep: float) -> None:
    """Every floating weight of `model` becomes `keep` of itself plus `1 - keep` of `start`'s:
    Ash & Adams's shrink-and-perturb (2020), which restores what training from scratch gains
    over a warm start, with the shrinking aimed at a fresh start (the pretrained encoder and a
    new random head: the head is perturbed, the encoder pulled back toward what it was) rather
    than at zero, which would erase the pretrained encoder. Frozen weights are equal in both and
    stay as they are."""
    fresh = start.state_dict()
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                value.mul_(keep).add_(fresh[name].to(value), alpha=1 - keep)


def _fit_linear(
    manifest: Manifest,
    train_ids: Sequence[str],
    dev_ids: Sequence[str],
    backbone: str,
    config: TrainConfig,
    labels: list[str],
    cache_dir: str | os.PathLike[str] | None,
    unlabeled_ids: Sequence[str] = (),
) -> FitResult:
    """The frozen-features learner: a logistic regression whose strength (and, with
    `feature_view` auto, view) is chosen by cross-validation inside the labeled clips
    (`after.models.linear`); with `self_training`, refitted once with the confident predictions
    on `unlabeled_ids` as extra, down-weighted targets. Dev clips are scored for the record only;
    they choose nothing."""
    from after.models.linear import fit_head

    t0 = time.perf_counter()
    clf = new_classifier(backbone, labels)
    head: Any = clf.module
    data = Inputs(clf, manifest, config, cache_dir, torch.device("cpu"), cached=False)
    train_ids = list(train_ids)
    targets = label_targets([manifest[i] for i in train_ids], labels, config.soft_labels)
    weights = class_weights(targets) if config.class_weighted else np.ones(len(labels))
    groups = [manifest[i].speaker for i in train_ids]
    views: dict[str, np.ndarray] = {}
    if config.feature_view in ("clip", "auto"):
        views["clip"] = data.vectors_of(train_ids)
    prior = None
    speakers = set(groups)
    members = [u.id for u in manifest if u.speaker in speakers]
    # auto offers the speaker view only where a speaker has several clips: with one clip each
    # (a folder prepared without speakers) there is nothing to adapt to, and `after predict`,
    # which reads a folder as one speaker, would standardise otherwise than training did.
    if config.feature_view == "speaker" or (
        config.feature_view == "auto" and len(members) > len(speakers)
    ):
        raw = data.vectors_of(members).astype(float)
        prior = (raw.mean(axis=0), raw.var(axis=0))
        views["speaker"] = data.speaker_vectors(train_ids, prior)
    sample_weight = targets @ weights
    fit = fit_head(
        views, targets, sample_weight, groups, config.l2_c, posterior=config.weight_posterior
    )
    head.set_fit(fit, prior)
    num_pseudo = 0
    if config.self_training > 0 and unlabeled_ids:
        fit, num_pseudo = _self_train(
            clf, data, fit, views[fit.view], targets, weights, list(unlabeled_ids), config
        )
        head.set_fit(fit, prior)
    dev = None
    if dev_ids:
        dev = scores_of(
            clf, manifest, dev_ids, predict_with(clf, clf.module, data, dev_ids, data.device)
        )
    record = {
        "c": fit.c,
        "cv": fit.cv_scheme,
        "cv_ua": fit.cv,
        "view": fit.view,
        "view_cv_ua": fit.view_cv,
        "pseudo_labels": num_pseudo,
        "iterations": fit.iterations,
        **({"dev_ua": dev["ua"], "dev_wa": dev["wa"]} if dev else {}),
    }
    return FitResult(clf, 1, dev, [record], time.perf_counter() - t0)


def _self_train(
    clf: Classifier,
    data: Inputs,
    fit: Any,
    x: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    pool: list[str],
    config: TrainConfig,
) -> tuple[Any, int]:
    """Self-training, once: pool clips the fitted head (`fit`, on the labeled rows `x`) predicts
    with probability >= `pseudo_threshold` join with their predicted class, weighted by
    `self_training` x that probability x the class weight; refitted at the C the labeled clips
    chose. Returns the refit (carrying that choice's record) and how many pool clips joined."""
    from after.models.linear import fit_head

    probs = predict_with(clf, clf.module, data, pool, data.device)
    keep = probs.max(axis=1) >= config.pseudo_threshold
    if not keep.any():
        return fit, 0
    guessed = probs[keep].argmax(axis=1)
    chosen = [i for i, k in zip(pool, keep, strict=True) if k]
    refit = fit_head(
        {fit.view: np.vstack([x, data.features(chosen)])},
        np.vstack([targets, np.eye(targets.shape[1])[guessed]]),
        np.concatenate(
            [
                targets @ weights,
                config.self_training * probs[keep].max(axis=1) * weights[guessed],
            ]
        ),
        None,
        fit.c,
        posterior=config.weight_posterior,
    )
    return replace(refit, cv=fit.cv, cv_scheme=fit.cv_scheme, view_cv=fit.view_cv), len(chosen)


def describe_training(backbone: str, config: dict[str, Any]) -> str:
    """One line on how a classifier on `backbone` was trained, from `TrainConfig.to_dict()`
    (missing keys take the values that reproduce records made before they existed)."""
    t = TrainConfig.from_record(config).to_dict()
    weighting = "class-weighted" if t["class_weighted"] else "unweighted"
    labels = "soft" if t["soft_labels"] else "hard"
    if kind_of(backbone) == "features":
        c = t["l2_c"] if t["l2_c"] is not None else "chosen by CV within the labeled clips"
        view = {
            "clip": "clip features",
            "speaker": "speaker-standardised features (transductive: each speaker's own clips, "
            "test speakers included, no label read)",
            "auto": "clip or speaker-standardised features chosen by the inner CV (speaker: "
            "transductive, no label read)",
        }[t["feature_view"]]
        selftrain = (
            f", self-training on the pool (weight {t['self_training']}, predicted probability "
            f">= {t['pseudo_threshold']})"
            if t["self_training"]
            else ""
        )
        return (
            f"logistic regression (L-BFGS to convergence) on {view}, C {c}, {weighting}, "
            f"{labels} labels{selftrain}"
        )
    front = "frozen" if t["freeze_cnn"] else "trained"
    layers = "all layers" if t["num_layers"] is None else f"bottom {t['num_layers']} layers"
    bounds = [f"at least {t['min_steps']} steps"] if t["min_steps"] else []
    if t["max_steps"] is not None:
        bounds.append(f"at most {t['max_steps']}")
    steps = f" ({', '.join(bounds)})" if bounds else ""
    epochs = (
        f"{t['epochs']} epochs max{steps}, the best dev-UA epoch kept (patience {t['patience']})"
        if t["select_on_dev"]
        else f"{t['epochs']} epochs{steps}, the last kept (dev labels not used)"
    )
    pooled = "a learned sum of layers (Whisper)" if t["layer_sum"] else "the last layer"
    return (
        f"{epochs}, lr {t['lr']}, head lr {t['head_lr']}, batch {t['batch_size']}, {layers}, "
        f"front end {front}, {t['freeze_layers']} layers frozen, head on {pooled}, "
        f"{weighting}, {labels} labels"
    )


def kind_of(backbone: str) -> str:
    """ "features" for a frozen feature backbone, else "transformers"."""
    from after.models.features import is_feature_backbone

    return "features" if is_feature_backbone(backbone) else "transformers"


def rank_batches(batches: list[list[int]], rank: int, num_processes: int) -> list[list[int]]:
    """Process `rank`'s share of an epoch's batches: every `num_processes`-th, from `rank` on.
    Where the batches do not divide evenly, the last turn is filled with batches from the start
    of the epoch (as `DistributedSampler` pads), so that every process takes the same number of
    steps: DDP exchanges gradients at every step, and a process with fewer would wait forever."""
    turns = math.ceil(len(batches) / num_processes)
    return [batches[(t * num_processes + rank) % len(batches)] for t in range(turns)]


def _gathered_probs(
    clf: Classifier, model: nn.Module, data: Inputs, ids: Sequence[str], accelerator: Any
) -> np.ndarray:
    """Class probabilities (len(ids), C) of `ids`, each process predicting every
    `num_processes`-th clip; every process gets all of them, in the order of `ids`."""
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(range(rank, len(ids), world))
    probs = predict_with(clf, model, data, [ids[i] for i in mine], accelerator.device)
    if world == 1:
        return probs
    from accelerate.utils import gather_object

    out = np.zeros((len(ids), len(clf.labels)))
    for positions, part in gather_object([(mine, probs)]):
        out[positions] = part
    return out


def _fit_in_workers(
    manifest: Manifest,
    train_ids: Sequence[str],
    dev_ids: Sequence[str],
    backbone: str,
    config: TrainConfig,
    labels: list[str],
    cache_dir: str | os.PathLike[str] | None,
    init: Classifier | None,
    progress: bool,
) -> FitResult:
    """`fit` on `config.num_processes` workers started here (`after.dist.launch`): the manifest
    (which may carry labels that exist only in memory, e.g. the active-learning view) and the
    warm-start model go to a job folder, the trained model comes back through it."""
    from after.models.classifier import load_classifier

    with job_folder(None) as job:
        manifest.to_jsonl(job / "manifest.jsonl")
        if init is not None:
            init.save(job / "init")
        payload = {
            "train_ids": list(train_ids),
            "dev_ids": list(dev_ids),
            "backbone": backbone,
            "config": config.to_dict(),
            "labels": labels,
            "cache_dir": None if cache_dir is None else str(cache_dir),
            "init": init is not None,
            "progress": progress,
        }
        launch("after.train:fit_worker", payload, config.num_processes, job)
        done = json.loads((job / "result.json").read_text())
        clf = load_classifier(job / "result")
        from after.models.backbones import family_of

        family_of(clf.module.config).freeze(  # type: ignore[arg-type]
            clf.module, cnn=config.freeze_cnn, layers=config.freeze_layers
        )
    return FitResult(
        clf,
        done["best_epoch"],
        done["dev"],
        done["history"],
        done["seconds"],
        num_processes=done["num_processes"],
    )


def fit_worker(payload: dict[str, Any], job: Path) -> None:
    """One of the processes `_fit_in_workers` starts; the main one writes the result."""
    from after.models.classifier import load_classifier

    result = fit(
        Manifest.from_jsonl(job / "manifest.jsonl"),
        payload["train_ids"],
        payload["dev_ids"],
        payload["backbone"],
        TrainConfig(**payload["config"]),
        labels=payload["labels"],
        cache_dir=payload["cache_dir"],
        init=load_classifier(job / "init") if payload["init"] else None,
        progress=payload["progress"],
    )
    if state().is_main_process:
        result.classifier.save(job / "result")
        record = {
            "best_epoch": result.best_epoch,
            "dev": result.dev,
            "history": result.history,
            "seconds": result.seconds,
            "num_processes": result.num_processes,
        }
        atomic_write_json(job / "result.json", record)
