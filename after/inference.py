"""Inference: the input pipeline that turns utterance ids into model inputs (audio, the cached
outputs of an encoder's frozen bottom, or frozen feature vectors), and what a classifier predicts
from them: class probabilities, pooled embeddings, MC-dropout draws, and scores on labeled clips.

Training (`after.train`) and pool scoring (`after.scoring`) build on this module; it imports
neither. With a frozen front end (the default), its outputs never change, so they are computed
once per clip and cached on disk (`after.cache`), keyed on a hash of the frozen weights: epochs and
active-learning rounds then run only the trainable part. A frozen feature backbone (`egemaps`,
`resemblyzer`, `frozen:ENCODER`) is cached the same way, one vector per clip.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from after.cache import ArrayCache, cache_folder
from after.config import TrainConfig
from after.data.audio import SAMPLE_RATE, clip_duration, load_audio
from after.data.manifest import Manifest, Utterance
from after.dist import mixed_precision, state
from after.errors import AfterError
from after.metrics import classification_scores
from after.models.classifier import Classifier
from after.progress import progress_bar
from after.rng import derived_rng

_FROZEN_CACHE_REVISION = "1"


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


class Inputs:
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


def to_device(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def logits_of(clf: Classifier, model: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    if clf.kind == "features":
        out: torch.Tensor = model(inputs["features"])
        return out
    logits: torch.Tensor = model(**inputs).logits
    return logits


@torch.no_grad()
def predict_with(
    clf: Classifier, model: nn.Module, data: Inputs, ids: Sequence[str], device: torch.device
) -> np.ndarray:
    return infer_with(clf, model, data, ids, device)["probs"]


@torch.no_grad()
def infer_with(
    clf: Classifier,
    model: nn.Module,
    data: Inputs,
    ids: Sequence[str],
    device: torch.device,
    *,
    embeddings: bool = False,
    mc_passes: int = 0,
) -> dict[str, np.ndarray]:
    """Class probabilities (N, C) with dropout off; with `embeddings`, the pooled input of the
    output layer (N, D); with `mc_passes` S > 0, probabilities under S draws of the weights, as
    (N, C, S): for a fine-tuned encoder S more passes with every dropout active, attention
    dropout included (MC dropout; `mc_dropout`), for frozen features S draws from the logistic
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
            inputs = to_device(data.batch([ids[i] for i in chunk], None), device)
            captured.clear()
            logits = logits_of(clf, model, inputs)
            out["probs"][chunk] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
            if embeddings:
                out["embeddings"][chunk] = captured[0].float().cpu().numpy()
            if mc_passes and clf.kind == "features":
                draws = model.posterior_probs(inputs["features"], mc_passes)  # type: ignore[operator]
                out["mc_probs"][chunk] = draws.cpu().numpy()
            if mc_passes and clf.kind == "transformers":
                with mc_dropout(model):
                    for s in range(mc_passes):
                        mc = torch.softmax(logits_of(clf, model, inputs).float(), dim=-1)
                        out["mc_probs"][chunk, :, s] = mc.cpu().numpy()
    finally:
        hook.remove()
        model.train(was_training)
    return out


@contextlib.contextmanager
def mc_dropout(model: nn.Module) -> Iterator[None]:
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
    `infer_with`. `after.scoring.score_pool` spreads the same work over processes."""
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
    data = Inputs(clf, manifest, config, cache_dir, device, cached=config.cache_cnn)
    devices = [device] if device.type == "cuda" else []
    with data.taking_frames():
        for number, ids in chunks:
            with torch.random.fork_rng(devices=devices), _autocast(device, config.precision):
                torch.manual_seed(int(derived_rng(seed, "mc-dropout", number).integers(2**62)))
                out = infer_with(
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
    return scores_of(
        clf, manifest, ids, predict(clf, manifest, ids, config=config, cache_dir=cache_dir)
    )


def scores_of(
    clf: Classifier, manifest: Manifest, ids: Sequence[str], probs: np.ndarray
) -> dict[str, Any]:
    truth = label_targets([manifest[i] for i in ids], clf.labels, soft=False).argmax(axis=1)
    return classification_scores(truth.tolist(), probs.argmax(axis=1).tolist(), clf.labels)
