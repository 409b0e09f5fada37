"""Fine-tuning an emotion classifier on labeled clips, model selection on dev, and prediction.

`fit` is one readable loop over HF Accelerate: length-bucketed batches, reshuffled every epoch
(every labeled clip, old or newly acquired, is seen every epoch); loss weighted by the inverse class
frequency of the labeled set, against hard labels or annotator vote distributions; the epoch with
the best dev UA is kept; training stops after `patience` epochs without improvement.

With a frozen CNN feature encoder (the default), its outputs never change, so they are computed
once per clip and cached on disk (`after.cache`), keyed on a hash of the CNN weights: epochs and
active-learning rounds then run only the transformer. A frozen feature backbone (`egemaps`,
`resemblyzer`) is cached the same way, one vector per clip.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed
from torch import nn

from after.cache import ArrayCache, cache_folder
from after.config import TrainConfig
from after.data.audio import SAMPLE_RATE, clip_duration, load_audio
from after.data.batching import bucket_batches
from after.data.manifest import Manifest, Utterance
from after.dist import accelerator as make_accelerator
from after.dist import job_folder, launch, mixed_precision, must_launch, state
from after.errors import AfterError
from after.faults import fault_point
from after.io import atomic_write_json
from after.metrics import classification_scores
from after.models.classifier import Classifier, new_classifier
from after.progress import progress_bar
from after.rng import derived_rng

logger = logging.getLogger(__name__)

_FROZEN_CACHE_REVISION = "1"


@dataclass
class FitResult:
    classifier: Classifier
    best_epoch: int  # 1-based; the last epoch when there is no dev set
    dev: dict[str, Any] | None  # scores of the kept epoch on dev
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    num_processes: int = 1  # processes that trained it (DDP)


# ---- targets and loss ----------------------------------------------------------------------------


def label_targets(utts: Sequence[Utterance], labels: Sequence[str], soft: bool) -> np.ndarray:
    """(N, C) target distributions: one-hot labels, or with `soft` the annotators' votes over
    `labels` where a clip has them (votes for other categories are ignored)."""
    index = {label: i for i, label in enumerate(labels)}
    q = np.zeros((len(utts), len(labels)))
    for n, u in enumerate(utts):
        if u.label not in index:
            raise AfterError(
                f"utterance {u.id!r} has label {u.label!r}, not one of {list(labels)}; "
                "relabel it or leave it out"
            )
        votes = {k: v for k, v in (u.votes or {}).items() if k in index} if soft else {}
        if sum(votes.values()) > 0:
            for k, v in votes.items():
                q[n, index[k]] = v
            q[n] /= q[n].sum()
        else:
            q[n, index[u.label]] = 1.0
    return q


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


class _Inputs:
    """Builds model inputs for lists of utterance ids: audio, cached outputs of the encoder's
    frozen bottom, or cached feature vectors."""

    def __init__(
        self,
        classifier: Classifier,
        manifest: Manifest,
        config: TrainConfig,
        cache_dir: str | os.PathLike[str] | None,
        device: torch.device,
        *,
        cached: bool,
    ) -> None:
        """`cached`: feed the trainable part the frozen bottom's outputs (`Family.frozen_frames`;
        only right when that bottom does not train). They are kept on disk under `cache_dir`
        (keyed on the frozen weights and the input settings), or in memory without one."""
        self.clf = classifier
        self.manifest = manifest
        self.config = config
        self.device = device
        self.cache_dir = cache_dir
        self.memory: dict[str, np.ndarray] = {}  # vectors, or frozen frames when not on disk
        self.cache: ArrayCache | None = None
        self.cached = classifier.kind == "transformers" and cached
        if classifier.kind == "transformers":
            from after.models.backbones import family_of

            self.family = family_of(classifier.module.config)  # type: ignore[arg-type]
            self.stride = self.family.SAMPLES_PER_FRAME
            self.layers = self.family.cached_layers(config.freeze_layers)
            if self.cached and cache_dir is not None:
                self.cache = ArrayCache(cache_folder(cache_dir, "frozen", self._frozen_version()))

    def taking_frames(self) -> contextlib.AbstractContextManager[None]:
        """While inside, the model takes the cached frames `batch` gives."""
        if not self.cached:
            return contextlib.nullcontext()
        return self.family.taking_frames(self.clf.module)

    # -- what each kind reads

    def _wave(self, u: Utterance) -> np.ndarray:
        return load_audio(u.path, max_duration_s=self.config.max_eval_seconds, crop="center")

    def _frozen_version(self) -> str:
        key = self.family.frozen_key(self.clf.module, self.clf.feature_extractor, self.layers)
        return f"{key};{self.config.max_eval_seconds};{_FROZEN_CACHE_REVISION}"

    def _frames(self, u: Utterance) -> np.ndarray:
        """Frozen frames (T, D) of the (centre-capped) clip, from memory, disk, or computed."""
        if u.id in self.memory:
            return self.memory[u.id]
        found = self.cache.get(u) if self.cache is not None else None
        if found is None:
            found = self.family.frozen_frames(
                self.clf.module, self._wave(u), self.clf.feature_extractor, self.layers
            )
            if self.cache is not None:
                self.cache.put(u, found)
        if self.cache is None:
            self.memory[u.id] = found
        return found

    def vectors_of(self, ids: Sequence[str]) -> np.ndarray:
        """Feature-backbone vectors (len(ids), dim), embedded once per clip and cached."""
        from after.models.features import embed_manifest

        assert self.clf.features is not None
        missing = [i for i in dict.fromkeys(ids) if i not in self.memory]
        if missing:
            with progress_bar(state().is_main_process, transient=True) as bar:
                task = bar.add_task(
                    f"features ({self.clf.features.name})", total=len(missing), info=""
                )
                rows = embed_manifest(
                    self.clf.features,
                    self.manifest.subset(missing),
                    cache_dir=self.cache_dir,
                    num_workers=min(4, os.cpu_count() or 1),
                    on_item=lambda: bar.advance(task),
                )
            self.memory.update(zip(missing, rows, strict=True))
        return np.stack([self.memory[i] for i in ids])

    def speaker_vectors(
        self, ids: Sequence[str], prior: tuple[np.ndarray, np.ndarray] | None = None
    ) -> np.ndarray:
        """`vectors_of(ids)` standardised per speaker over every clip of that speaker in the
        manifest (`after.models.linear.speaker_standardise`, labels never read), shrunk toward
        `prior` (default: the statistics of all those clips, what a fit stores)."""
        from after.models.linear import speaker_standardise

        wanted = {self.manifest[i].speaker for i in ids}
        members = [u.id for u in self.manifest if u.speaker in wanted]
        raw = self.vectors_of(members).astype(np.float64)
        if prior is None:
            prior = (raw.mean(axis=0), raw.var(axis=0))
        adapted = speaker_standardise(raw, [self.manifest[i].speaker for i in members], prior)
        row = {i: k for k, i in enumerate(members)}
        return adapted[[row[i] for i in ids]]

    def features(self, ids: Sequence[str]) -> np.ndarray:
        """The head's input for `ids`: vectors in the view its fit chose (`FeatureHead.view`)."""
        head: Any = self.clf.module
        if head.view == "speaker":
            prior = (head.prior_mean.double().numpy(), head.prior_var.double().numpy())
            return self.speaker_vectors(ids, prior)
        return self.vectors_of(ids)

    # -- batches

    def batch(self, ids: Sequence[str], rng: np.random.Generator | None) -> dict[str, Any]:
        """Inputs for `ids`; with `rng` (training), clips longer than `max_seconds` are cropped
        at random (at a frame boundary)."""
        utts = [self.manifest[i] for i in ids]
        if self.clf.kind == "features":
            return {"features": torch.from_numpy(self.features(ids)).float()}
        limit = max(1, int(self.config.max_seconds * SAMPLE_RATE) // self.stride)
        if self.cached:
            frames = [_crop(self._frames(u), limit, rng) for u in utts]
            return self.family.frames_inputs(frames, self.layers)
        waves = []
        for u in utts:
            w = self._wave(u)
            usable = w.size // self.stride * self.stride
            if rng is not None and usable > limit * self.stride:
                w = _crop(w[:usable].reshape(-1, self.stride), limit, rng).reshape(-1)
            waves.append(w)
        return self.family.inputs(waves, self.clf.feature_extractor)

    def duration(self, utt_id: str) -> float:
        return clip_duration(self.manifest[utt_id])


def _crop(x: np.ndarray, limit: int, rng: np.random.Generator | None) -> np.ndarray:
    """`x`'s rows (frames) as they are, or with `rng` a random run of `limit` of them."""
    if rng is None or len(x) <= limit:
        return x
    start = int(rng.integers(0, len(x) - limit + 1))
    return x[start : start + limit]


def _to(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def _forward(clf: Classifier, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    if clf.kind == "features":
        out: torch.Tensor = model(inputs["features"])
        return out
    logits: torch.Tensor = model(**inputs).logits
    return logits


# ---- prediction --------------------------------------------------------------------------------


@torch.no_grad()
def _predict(
    clf: Classifier, model: nn.Module, data: _Inputs, ids: Sequence[str], device: torch.device
) -> np.ndarray:
    return _infer(clf, model, data, ids, device)["probs"]


@torch.no_grad()
def _infer(
    clf: Classifier,
    model: nn.Module,
    data: _Inputs,
    ids: Sequence[str],
    device: torch.device,
    *,
    embeddings: bool = False,
    mc_passes: int = 0,
) -> dict[str, np.ndarray]:
    """Class probabilities (N, C) with dropout off; with `embeddings`, the pooled input of the
    output layer (N, D); with `mc_passes` S > 0, probabilities under S draws of the weights, as
    (N, C, S): for a fine-tuned encoder S more passes with every dropout active, attention
    dropout included (MC dropout; `_mc_dropout`), for frozen features S draws from the logistic
    regression's Laplace posterior."""
    if clf.kind == "features":
        data.vectors_of(ids)  # every clip's features first, with progress, not batch by batch
    was_training = model.training
    model.eval()
    captured: list[torch.Tensor] = []
    hook = clf.output_layer().register_forward_hook(
        lambda _m, args, _out: captured.append(args[0].detach())
    )
    order = sorted(range(len(ids)), key=lambda i: data.duration(ids[i]))
    out = {"probs": np.zeros((len(ids), len(clf.labels)))}
    if embeddings:
        out["embeddings"] = np.zeros((len(ids), clf.output_layer().in_features), dtype=np.float32)
    if mc_passes:
        out["mc_probs"] = np.zeros((len(ids), len(clf.labels), mc_passes))
    size = data.config.eval_batch_size
    try:
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            inputs = _to(data.batch([ids[i] for i in chunk], None), device)
            captured.clear()
            logits = _forward(clf, model, inputs)
            out["probs"][chunk] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
            if embeddings:
                out["embeddings"][chunk] = captured[0].float().cpu().numpy()
            if mc_passes and clf.kind == "features":
                draws = model.posterior_probs(inputs["features"], mc_passes)  # type: ignore[operator]
                out["mc_probs"][chunk] = draws.cpu().numpy()
            if mc_passes and clf.kind == "transformers":
                with _mc_dropout(model):
                    for s in range(mc_passes):
                        mc = torch.softmax(_forward(clf, model, inputs).float(), dim=-1)
                        out["mc_probs"][chunk, :, s] = mc.cpu().numpy()
    finally:
        hook.remove()
        model.train(was_training)
    return out


@contextlib.contextmanager
def _mc_dropout(model: nn.Module) -> Iterator[None]:
    """Every dropout of `model` on, and nothing else that training changes: the model goes into
    training mode (transformers gates its attention dropout on `training`, not on a module that
    could be switched alone), with SpecAugment and layer drop turned off meanwhile."""
    config: Any = getattr(model, "config", None)
    saved = {
        name: getattr(config, name)
        for name in ("apply_spec_augment", "layerdrop", "encoder_layerdrop")
        if config is not None and hasattr(config, name)
    }
    drops = [m for m in model.modules() if hasattr(m, "layerdrop")]  # Whisper keeps its own
    kept = [m.layerdrop for m in drops]
    was_training = model.training
    try:
        for name, value in saved.items():
            setattr(config, name, False if isinstance(value, bool) else 0.0)
        for m in drops:
            setattr(m, "layerdrop", 0.0)  # noqa: B010
        model.train()
        yield
    finally:
        model.train(was_training)
        for name, value in saved.items():
            setattr(config, name, value)
        for m, value in zip(drops, kept, strict=True):
            setattr(m, "layerdrop", value)  # noqa: B010


def predict(
    clf: Classifier,
    manifest: Manifest,
    ids: Sequence[str],
    *,
    config: TrainConfig | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> np.ndarray:
    """Class probabilities (len(ids), C) of a classifier, in the order of `ids`. The CNN cache
    is keyed on the CNN weights, so it is right for any model, trained or not."""
    return infer(clf, manifest, ids, config=config, cache_dir=cache_dir)["probs"]


def infer(
    clf: Classifier,
    manifest: Manifest,
    ids: Sequence[str],
    *,
    embeddings: bool = False,
    mc_passes: int = 0,
    seed: int = 0,
    config: TrainConfig | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, np.ndarray]:
    """What active-learning strategies need of a classifier, in one pass over `ids` in this
    process: `probs` (N, C), and optionally `embeddings` (N, D) and `mc_probs` (N, C, S); see
    `_infer`. `after.scoring.score_pool` spreads the same work over processes."""
    chunks = infer_chunks(
        clf,
        manifest,
        [(0, ids)],
        embeddings=embeddings,
        mc_passes=mc_passes,
        seed=seed,
        config=config,
        cache_dir=cache_dir,
    )
    with contextlib.closing(chunks):  # restores the model's CNN at once
        return next(chunks)


def infer_chunks(
    clf: Classifier,
    manifest: Manifest,
    chunks: Iterable[tuple[int, Sequence[str]]],
    *,
    embeddings: bool = False,
    mc_passes: int = 0,
    seed: int = 0,
    config: TrainConfig | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Generator[dict[str, np.ndarray], None, None]:
    """`infer` over chunks `(number, ids)`, one result per chunk as it is done, so that only one
    chunk's outputs are held at a time. The model is set up once (on this process's device).

    MC-dropout masks are drawn from a generator seeded by (`seed`, chunk number), so a chunk's
    outputs do not depend on which process computes it or what it computed before; the
    caller's random state is left as it was.
    """
    config = config or TrainConfig()
    device = state().device
    clf.module.to(device)
    data = _Inputs(clf, manifest, config, cache_dir, device, cached=config.cache_cnn)
    devices = [device] if device.type == "cuda" else []
    with data.taking_frames():
        for number, ids in chunks:
            with torch.random.fork_rng(devices=devices), _autocast(device, config.precision):
                torch.manual_seed(int(derived_rng(seed, "mc-dropout", number).integers(2**62)))
                out = _infer(
                    clf,
                    clf.module,
                    data,
                    ids,
                    device,
                    embeddings=embeddings,
                    mc_passes=mc_passes,
                )
            yield out


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """Scoring in the precision training uses on a GPU (`TrainConfig.precision`; auto: bf16
    where the GPU has it, else fp16); full precision on a CPU."""
    amp = mixed_precision(precision)
    if device.type != "cuda" or amp not in ("bf16", "fp16"):
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def evaluate(
    clf: Classifier,
    manifest: Manifest,
    ids: Sequence[str],
    *,
    config: TrainConfig | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Scores (`after.metrics.classification_scores`) of a classifier on labeled clips."""
    return _scores(
        clf, manifest, ids, predict(clf, manifest, ids, config=config, cache_dir=cache_dir)
    )


def _scores(
    clf: Classifier, manifest: Manifest, ids: Sequence[str], probs: np.ndarray
) -> dict[str, Any]:
    truth = label_targets([manifest[i] for i in ids], clf.labels, soft=False).argmax(axis=1)
    return classification_scores(truth.tolist(), probs.argmax(axis=1).tolist(), clf.labels)


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
    t0 = time.perf_counter()
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
    data = _Inputs(
        clf,
        manifest,
        config,
        cache_dir,
        accelerator.device,
        cached=(config.freeze_cnn or config.freeze_layers > 0) and config.cache_cnn,
    )
    train_ids = list(train_ids)
    targets = label_targets([manifest[i] for i in train_ids], labels, config.soft_labels)
    weights = class_weights(targets) if config.class_weighted else np.ones(len(labels))

    probe = None
    if init is None and config.head_init == "probe":
        with data.taking_frames():
            probe = probe_head(clf, data, train_ids, targets, targets @ weights, config)
    head = {id(p) for p in clf.head_parameters()}
    body = [p for p in clf.module.parameters() if p.requires_grad and id(p) not in head]
    groups = [{"params": clf.head_parameters(), "lr": config.head_lr}]
    if body:
        groups.append({"params": body, "lr": config.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    num_processes = accelerator.num_processes
    micro_per_epoch = math.ceil(math.ceil(len(train_ids) / config.batch_size) / num_processes)
    steps_per_pass = math.ceil(micro_per_epoch / config.grad_accum)
    total = max(config.epochs * steps_per_pass, config.min_steps)
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    # Where `epochs` passes fall short of `min_steps`, an epoch is several passes (TrainConfig).
    passes = max(1, math.ceil(total / (config.epochs * steps_per_pass)))
    micro_per_epoch *= passes
    num_epochs = math.ceil(total / (passes * steps_per_pass))
    warmup = round(config.warmup_ratio * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup))
        ),
    )
    model, optimizer, scheduler = accelerator.prepare(clf.module, optimizer, scheduler)
    if num_processes > 1:
        set_seed(config.seed, device_specific=True)  # seed + process index
    weights_t = torch.tensor(weights, dtype=torch.float32, device=accelerator.device)
    durations = [min(data.duration(i), config.max_seconds) for i in train_ids]

    def dev_scores() -> dict[str, Any] | None:
        if not dev_ids:
            return None
        probs = _gathered_probs(clf, accelerator.unwrap_model(model), data, dev_ids, accelerator)
        truth = label_targets([manifest[i] for i in dev_ids], labels, soft=False)
        return classification_scores(
            truth.argmax(axis=1).tolist(), probs.argmax(axis=1).tolist(), labels
        )

    def snapshot() -> dict[str, torch.Tensor]:
        now = accelerator.unwrap_model(model).state_dict()
        return {k: v.detach().clone() for k, v in now.items()}

    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, torch.Tensor] | None, dict[str, Any] | None] = (
        -1.0,
        0,
        None,
        None,
    )
    steps = 0
    selecting = bool(dev_ids) and config.select_on_dev
    bar = progress_bar(progress and accelerator.is_main_process, transient=True)
    with data.taking_frames(), bar:
        if probe is not None and selecting:  # the probe is epoch 0, a candidate like the others
            start = dev_scores()
            assert start is not None
            history.append({"epoch": 0, "steps": 0, **probe, "dev_ua": start["ua"]})
            best = (start["ua"], 0, snapshot(), start)
        task = bar.add_task("fine-tuning", total=num_epochs * micro_per_epoch, info="")
        for epoch in range(num_epochs):
            epoch_t0 = time.perf_counter()
            model.train()
            mine = [
                batch
                for p in range(epoch * passes, (epoch + 1) * passes)
                for batch in rank_batches(
                    bucket_batches(
                        durations, config.batch_size, derived_rng(config.seed, "epoch", p)
                    ),
                    accelerator.process_index,
                    num_processes,
                )
            ]
            losses = []
            for k, batch in enumerate(mine):
                ids = [train_ids[i] for i in batch]
                rng = derived_rng(config.seed, "crop", epoch, k)
                inputs = _to(data.batch(ids, rng), accelerator.device)
                q = torch.tensor(targets[batch], dtype=torch.float32, device=accelerator.device)
                # Gradient accumulation: a step every `grad_accum` micro-batches and at the end
                # of the epoch; processes exchange gradients only on a step's last micro-batch.
                group = k // config.grad_accum
                group_size = min(config.grad_accum, len(mine) - group * config.grad_accum)
                steps_now = (k + 1) % config.grad_accum == 0 or k + 1 == len(mine)
                with contextlib.nullcontext() if steps_now else accelerator.no_sync(model):
                    with accelerator.autocast():
                        logits = _forward(clf, model, inputs)
                    loss = weighted_soft_cross_entropy(logits, q, weights_t)
                    accelerator.backward(loss / group_size)
                if steps_now:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    if not accelerator.optimizer_step_was_skipped:  # fp16 overflow
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    steps += 1
                losses.append(float(loss.detach()))
                bar.update(task, advance=1, info=f"epoch {epoch + 1} loss {losses[-1]:.3f}")
                fault_point("train-step")
                if steps == total:  # a step budget (`max_steps`) may end an epoch early
                    break
            epoch_loss = torch.tensor(
                float(np.mean(losses)) if losses else float("nan"), device=accelerator.device
            )
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "steps": steps,
                "train_loss": float(accelerator.reduce(epoch_loss, reduction="mean")),
                "seconds": time.perf_counter() - epoch_t0,
            }
            scores = dev_scores()
            if scores is not None:
                record.update(dev_ua=scores["ua"], dev_wa=scores["wa"])
            history.append(record)
            # Without dev selection every epoch beats the last: the last one is kept.
            score = scores["ua"] if scores is not None and selecting else float(epoch)
            if score > best[0]:
                best = (score, epoch + 1, snapshot(), scores)
            elif selecting and config.patience and epoch + 1 - best[1] >= config.patience:
                break
        assert best[2] is not None  # keys saved while the frames were taken: load here
        accelerator.unwrap_model(model).load_state_dict(best[2])
    clf.module = accelerator.unwrap_model(model)
    return FitResult(
        clf, best[1], best[3], history, time.perf_counter() - t0, num_processes=num_processes
    )


def probe_head(
    clf: Classifier,
    data: _Inputs,
    train_ids: Sequence[str],
    targets: np.ndarray,
    sample_weight: np.ndarray,
    config: TrainConfig,
) -> dict[str, Any]:
    """Set a new head (a square projector: `new_classifier(probe_head=True)`) to the frozen-
    features learner's logistic regression on what the head reads from the untrained encoder:
    the projector holds its standardiser, the classifier its weights (LP-FT). Returns the probe's
    record (C and its inner-CV UA). The clips' pooled frames come from the model itself, with the
    projector set to the identity, so they are exactly what the head will be given."""
    from after.models.linear import fit_head

    module: Any = clf.module
    projector, output = module.projector, module.classifier
    with torch.no_grad():
        projector.weight.copy_(torch.eye(*projector.weight.shape))
        projector.bias.zero_()
    x = _infer(clf, module, data, train_ids, data.device, embeddings=True)["embeddings"]
    groups = [data.manifest[i].speaker for i in train_ids]
    fit = fit_head(x, targets, sample_weight, groups, config.l2_c)
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
    data = _Inputs(clf, manifest, config, cache_dir, torch.device("cpu"), cached=False)
    train_ids = list(train_ids)
    targets = label_targets([manifest[i] for i in train_ids], labels, config.soft_labels)
    weights = class_weights(targets) if config.class_weighted else np.ones(len(labels))
    groups = [manifest[i].speaker for i in train_ids]
    views: dict[str, np.ndarray] = {}
    if config.feature_view in ("clip", "auto"):
        views["clip"] = data.vectors_of(train_ids)
    prior = None
    if config.feature_view in ("speaker", "auto"):
        speakers = {manifest[i].speaker for i in train_ids}
        raw = data.vectors_of([u.id for u in manifest if u.speaker in speakers]).astype(float)
        prior = (raw.mean(axis=0), raw.var(axis=0))
        views["speaker"] = data.speaker_vectors(train_ids, prior)
    sample_weight = targets @ weights
    fit = fit_head(
        views, targets, sample_weight, groups, config.l2_c, posterior=config.weight_posterior
    )
    head.set_fit(fit, prior)
    num_pseudo = 0
    if config.self_training > 0 and unlabeled_ids:
        pool = list(unlabeled_ids)
        probs = _predict(clf, clf.module, data, pool, data.device)
        keep = probs.max(axis=1) >= config.pseudo_threshold
        num_pseudo = int(keep.sum())
        if num_pseudo:
            guessed = probs[keep].argmax(axis=1)
            chosen = [i for i, k in zip(pool, keep, strict=True) if k]
            x_pool = data.features(chosen)
            refit = fit_head(
                {fit.view: np.vstack([views[fit.view], x_pool])},
                np.vstack([targets, np.eye(len(labels))[guessed]]),
                np.concatenate(
                    [
                        sample_weight,
                        config.self_training * probs[keep].max(axis=1) * weights[guessed],
                    ]
                ),
                None,
                fit.c,
                posterior=config.weight_posterior,
            )
            # The refit's C is the one chosen on the labeled clips: keep that choice's record.
            fit = replace(refit, cv=fit.cv, cv_scheme=fit.cv_scheme, view_cv=fit.view_cv)
            head.set_fit(fit, prior)
    dev = None
    if dev_ids:
        dev = _scores(clf, manifest, dev_ids, _predict(clf, clf.module, data, dev_ids, data.device))
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
    clf: Classifier, model: nn.Module, data: _Inputs, ids: Sequence[str], accelerator: Any
) -> np.ndarray:
    """Class probabilities (len(ids), C) of `ids`, each process predicting every
    `num_processes`-th clip; every process gets all of them, in the order of `ids`."""
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(range(rank, len(ids), world))
    probs = _predict(clf, model, data, [ids[i] for i in mine], accelerator.device)
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
