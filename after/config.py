"""Settings, one frozen dataclass per concern. Defaults are what the commands use."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, get_args

from after.errors import SettingsError

Precision = Literal["auto", "no", "fp16", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
# How the seed set of round 0 is chosen, by name (the one list: `after.strategies.cold_start`
# and the runner read it).
COLD_STARTS: dict[str, str] = {
    "kmeans": "k-means on clip embeddings, the clip nearest each centroid (AFTER's start)",
    "typiclust": "the most typical clip of each cluster of clip embeddings (TypiClust)",
    "probcover": "clips whose neighbourhoods cover the clip embeddings (ProbCover)",
    "random": "uniformly at random",
    "alps": "k-means on the surprisal embeddings of a wav2vec 2.0 pre-training model (ALPS)",
}
CLUSTERING_COLD_STARTS = ("kmeans", "typiclust", "probcover")  # read clip embeddings
HEAD_INITS = ("random", "probe")
# TAPT objectives by name (`after.models.objectives.OBJECTIVES` implements each).
TAPT_OBJECTIVES = ("contrastive", "masked_prediction", "teacher")
FEATURE_VIEWS = ("clip", "speaker", "auto")
ORACLES = ("simulated", "human")

# What a rule's failure asks for (the messages of `SettingsError`).
AT_LEAST_0 = "give 0 or more"
AT_LEAST_1 = "give 1 or more"
ABOVE_0 = "give a number above 0"
SHARE = "give a share from 0 to 1"
SHARE_BELOW_1 = "give a share from 0 up to, not including, 1"
SHARE_ABOVE_0 = "give a share above 0, at most 1"


def one_of(names: tuple[str, ...]) -> str:
    return f"choose one of {', '.join(names)}"


def check(what: str, settings: object, rules: dict[str, tuple[bool, str]]) -> None:
    """`SettingsError` naming each setting of `settings` whose rule (ok, what it needs) fails."""
    bad = {name: (getattr(settings, name), need) for name, (ok, need) in rules.items() if not ok}
    if bad:
        raise SettingsError(what, bad)


@dataclass(frozen=True)
class TaptConfig:
    """Task-adaptive pre-training. Optimiser and schedule defaults follow the AFTER code (lr 1e-4,
    100 warm-up steps, 5% flat, then linear decay to 0); masking and Gumbel defaults follow
    wav2vec 2.0 pre-training (Baevski et al. 2020)."""

    steps: int = 2000
    batch_size: int = 8
    max_seconds: float = 8.0  # longer clips are cropped at random, anew every time they are drawn
    lr: float = 1e-4
    warmup_steps: int = 100
    flat_ratio: float = 0.05
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    freeze_cnn: bool = False
    # The objective (after.models.objectives): None, the one that continues the family's own
    # pre-training (contrastive for wav2vec 2.0, masked prediction for HuBERT, WavLM and
    # Whisper); or by name, e.g. "teacher" (data2vec-style, any family).
    objective: str | None = None
    # The objective's new head (masked prediction, teacher) starts random: its own learning rate
    # (None: `lr`), and a warm-up of this many steps where only it trains (the encoder's
    # learning rate is 0, then follows the schedule over the steps that remain).
    head_lr: float | None = None
    head_warmup_steps: int = 0
    # Protecting what the model knows while it adapts (all off by default):
    # freeze the bottom N transformer layers (and the front end below them);
    freeze_layers: int = 0
    # L2-SP (Li et al. 2018): add l2sp * ||theta - theta_0||^2 over the encoder's trained weights;
    l2sp: float = 0.0
    # add distill * the mean squared difference between the encoder's hidden states and a frozen
    # copy of the starting encoder's, on the same unmasked input, both without dropout, at layer
    # `distill_layer` (0: the input to the first layer; None: the mean over every layer).
    distill: float = 0.0
    distill_layer: int | None = None
    # Teacher objective: the student regresses the mean of the teacher's top `teacher_layers`
    # layers (each instance-normalised; at most the model's layers) at its masked frames; the
    # teacher follows the student by EMA, its decay going linearly from `teacher_decay` to
    # `teacher_decay_end` over the run (data2vec's 0.999 -> 0.9999).
    teacher_layers: int = 8
    teacher_decay: float = 0.999
    teacher_decay_end: float = 0.9999
    # Masking (every objective): spans of `mask_length` frames start at `mask_prob` of the frames.
    mask_prob: float = 0.65
    mask_length: int = 10
    min_masks: int = 2
    # Contrastive objective (wav2vec 2.0) only: Gumbel-softmax temperature
    # max(end, start * decay**step). None: 2.0 for a random-init model (wav2vec 2.0's own
    # start), `gumbel_end` for a pretrained one, whose
    # quantizer finished pre-training there: restarting at 2.0 would blur the codebook choices
    # that pre-training sharpened (over a few thousand steps it only falls to about 1.98).
    gumbel_start: float | None = None
    gumbel_end: float = 0.5
    gumbel_decay: float = 0.999995
    # Masked prediction only: k-means targets from a hidden layer of the starting model.
    kmeans_clusters: int = 100
    kmeans_layer: int | None = None  # None: the middle layer
    kmeans_max_frames: int = 200_000  # frames sampled to fit k-means
    seed: int = 0
    precision: Precision = "auto"  # auto: bf16 on a GPU that has it, else fp16 on GPU, no on CPU
    # A step is `grad_accum` batches of `batch_size` clips on each of `num_processes` processes.
    grad_accum: int = 1
    # Processes to start (`after.dist.launch`) when run_tapt is called in one plain process; under
    # `accelerate launch` or torchrun the launcher's processes are used.
    num_processes: int = 1
    save_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10

    def __post_init__(self) -> None:
        check(
            "TAPT",
            self,
            {
                "steps": (self.steps >= 1, AT_LEAST_1),
                "batch_size": (self.batch_size >= 1, AT_LEAST_1),
                "max_seconds": (self.max_seconds > 0, ABOVE_0),
                "lr": (self.lr > 0, ABOVE_0),
                "warmup_steps": (self.warmup_steps >= 0, AT_LEAST_0),
                "flat_ratio": (0 <= self.flat_ratio <= 1, SHARE),
                "mask_prob": (0 < self.mask_prob <= 1, SHARE_ABOVE_0),
                "mask_length": (self.mask_length >= 1, AT_LEAST_1),
                "kmeans_clusters": (self.kmeans_clusters >= 2, "give 2 or more"),
                "objective": (
                    self.objective is None or self.objective in TAPT_OBJECTIVES,
                    one_of(TAPT_OBJECTIVES),
                ),
                "head_lr": (self.head_lr is None or self.head_lr > 0, ABOVE_0),
                "head_warmup_steps": (
                    0 <= self.head_warmup_steps < self.steps,
                    "give 0 or more, fewer than the steps",
                ),
                "freeze_layers": (self.freeze_layers >= 0, AT_LEAST_0),
                "l2sp": (self.l2sp >= 0, AT_LEAST_0),
                "distill": (self.distill >= 0, AT_LEAST_0),
                "distill_layer": (
                    self.distill_layer is None or self.distill_layer >= 0,
                    AT_LEAST_0,
                ),
                "teacher_layers": (self.teacher_layers >= 1, AT_LEAST_1),
                "teacher_decay": (0 <= self.teacher_decay <= 1, SHARE),
                "teacher_decay_end": (0 <= self.teacher_decay_end <= 1, SHARE),
                "grad_accum": (self.grad_accum >= 1, AT_LEAST_1),
                "num_processes": (self.num_processes >= 1, AT_LEAST_1),
                "save_every": (self.save_every >= 1, AT_LEAST_1),
                "keep_checkpoints": (self.keep_checkpoints >= 1, AT_LEAST_1),
                "precision": (self.precision in PRECISIONS, one_of(PRECISIONS)),
            },
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_hash(obj: Any) -> str:
    """A short stable hash of a dataclass (or any JSON-able object)."""
    data = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj  # type: ignore[arg-type]
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# The `TrainConfig` options only the frozen-features learner reads (fine-tuning reads every other
# one), and all that it reads: a logistic regression has no epochs, rates, masks or layers.
FEATURE_ONLY_OPTIONS = frozenset(
    {"l2_c", "weight_posterior", "feature_view", "self_training", "pseudo_threshold"}
)
FEATURE_LEARNER_OPTIONS = FEATURE_ONLY_OPTIONS | {"class_weighted", "soft_labels", "seed"}


@dataclass(frozen=True)
class TrainConfig:
    """Fine-tuning a classifier (the V-FT baseline and every active-learning round).

    The backbone and its new head learn at different rates (`lr`, `head_lr`); a frozen feature
    backbone has only the head. Warm-up over `warmup_ratio` of the steps, then linear decay.

    A fit takes `epochs` passes over the labeled clips, and at least `min_steps` optimiser steps:
    where `epochs` passes are fewer (20 epochs of 10 clips in batches of 8 are 40 steps), each
    epoch (one dev evaluation, one unit of `patience`) takes as many passes as the floor needs.
    `max_steps` caps both.
    """

    epochs: int = 20
    batch_size: int = 8
    lr: float = 5e-5
    head_lr: float = 1e-3
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    # At most this many optimiser steps (None: `epochs` epochs); an active-learning round that
    # starts from the last round's model gets a budget tied to its new labels (after.loop).
    max_steps: int | None = None
    min_steps: int = 100  # 0: `epochs` passes, however few steps they are
    # Keep the epoch with the best dev UA and stop after `patience` epochs without a gain; off,
    # the last epoch is kept and dev labels pick nothing (active learning: see after.loop).
    select_on_dev: bool = True
    patience: int = 5  # epochs without a better dev UA before stopping; 0: never stop early
    max_seconds: float = 8.0  # training clips are cropped at random to this length
    max_eval_seconds: float = 30.0  # evaluation sees the centre of longer clips
    freeze_cnn: bool = True  # the convolutional front end (wav2vec 2.0's CNN, Whisper's conv stem)
    freeze_layers: int = 0  # also freeze the encoder's bottom N transformer layers
    num_layers: int | None = None  # keep only the encoder's bottom N layers (None: all)
    # Whisper: the head reads the last layer, or with `layer_sum` a learned softmax-weighted sum
    # of the layers from `freeze_layers` up (SUPERB style). Other families read the last layer.
    # Off by default: on EmoDB the sum lost to the last layer in most paired runs (BENCHMARKS.md).
    layer_sum: bool = False
    # The new head of a fine-tuned encoder starts "random", or as a "probe": the logistic
    # regression of the frozen-features learner on the untrained model's pooled frames (C by the
    # inner grouped CV), so that fine-tuning starts where frozen features end (LP-FT, Kumar et al.
    # 2022); the dev split then also judges that start (epoch 0). Warm starts keep their head.
    head_init: str = "random"
    # Dropout inside the transformer while fine-tuning (None: the backbone's own; Whisper's is 0,
    # wav2vec 2.0's 0.1).
    dropout: float | None = None
    # Cache the frozen bottom's outputs per clip (the CNN; for Whisper also the frozen layers).
    cache_cnn: bool = True
    # Frozen features: the logistic regression's C (None: chosen by CV within the labeled clips),
    # and whether to also fit the Laplace posterior over its weights (what BALD and DBAL sample).
    l2_c: float | None = None
    weight_posterior: bool = False
    # Frozen features: "clip" (as extracted), "speaker" (standardised per speaker over that
    # speaker's clips, labels never read: a transductive protocol), or "auto" (the default: the
    # inner CV that chooses C chooses between the two at every fit, where some speaker has
    # several clips); see after.models.linear.
    feature_view: str = "auto"
    # Frozen features, active learning: self-training on the unlabeled pool. Pool clips predicted
    # with probability >= pseudo_threshold join the fit with their predicted class, weighted by
    # self_training x that probability (0: off); C stays the one chosen on the labeled clips.
    self_training: float = 0.0
    pseudo_threshold: float = 0.9
    class_weighted: bool = True  # loss weighted by inverse class frequency of the labeled set
    soft_labels: bool = False  # train on annotator vote distributions where `votes` exist
    # SpecAugment on the encoder's input frames during training: about this share of each
    # clip's frames is masked (Whisper: not when the frozen bottom is cached above layer 0).
    spec_time_prob: float = 0.05
    spec_feature_prob: float = 0.0
    seed: int = 0
    precision: Precision = "auto"
    eval_batch_size: int = 16
    # An optimiser step is `grad_accum` batches of `batch_size` clips on each process.
    grad_accum: int = 1
    # Processes to start (`after.dist.launch`) for each fine-tuning and pool-scoring pass when
    # fit / score_pool are called in one plain process (e.g. by `after run --num-processes N`);
    # under `accelerate launch` or torchrun the launcher's processes are used.
    num_processes: int = 1

    def __post_init__(self) -> None:
        check(
            "training",
            self,
            {
                "epochs": (self.epochs >= 1, AT_LEAST_1),
                "batch_size": (self.batch_size >= 1, AT_LEAST_1),
                "lr": (self.lr > 0, ABOVE_0),
                "head_lr": (self.head_lr > 0, ABOVE_0),
                "warmup_ratio": (0 <= self.warmup_ratio < 1, SHARE_BELOW_1),
                "patience": (self.patience >= 0, AT_LEAST_0),
                "max_seconds": (self.max_seconds > 0, ABOVE_0),
                "max_eval_seconds": (self.max_eval_seconds > 0, ABOVE_0),
                "spec_time_prob": (0 <= self.spec_time_prob < 1, SHARE_BELOW_1),
                "spec_feature_prob": (0 <= self.spec_feature_prob < 1, SHARE_BELOW_1),
                "eval_batch_size": (self.eval_batch_size >= 1, AT_LEAST_1),
                "grad_accum": (self.grad_accum >= 1, AT_LEAST_1),
                "num_processes": (self.num_processes >= 1, AT_LEAST_1),
                "precision": (self.precision in PRECISIONS, one_of(PRECISIONS)),
                "freeze_layers": (self.freeze_layers >= 0, AT_LEAST_0),
                "max_steps": (self.max_steps is None or self.max_steps >= 1, AT_LEAST_1),
                "min_steps": (self.min_steps >= 0, AT_LEAST_0),
                "num_layers": (self.num_layers is None or self.num_layers >= 1, AT_LEAST_1),
                "l2_c": (self.l2_c is None or self.l2_c > 0, ABOVE_0),
                "feature_view": (self.feature_view in FEATURE_VIEWS, one_of(FEATURE_VIEWS)),
                "head_init": (self.head_init in HEAD_INITS, one_of(HEAD_INITS)),
                "dropout": (self.dropout is None or 0 <= self.dropout < 1, SHARE_BELOW_1),
                "self_training": (self.self_training >= 0, AT_LEAST_0),
                "pseudo_threshold": (0 < self.pseudo_threshold <= 1, SHARE_ABOVE_0),
            },
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def read_by(self, kinds: Iterable[str]) -> dict[str, Any]:
        """`to_dict()` cut to the options that a learner of one of `kinds` reads ("features":
        the frozen-features learner; "transformers": fine-tuning): what a record of such learners
        is compared on, so that a changed option of the other kind does not refuse it."""
        wanted = set(kinds)
        if unknown := wanted - {"features", "transformers"}:
            raise ValueError(f"unknown learner kind(s) {sorted(unknown)}")
        options = self.to_dict()
        read = set(FEATURE_LEARNER_OPTIONS) if "features" in wanted else set()
        if "transformers" in wanted:
            read |= options.keys() - FEATURE_ONLY_OPTIONS
        return {k: v for k, v in options.items() if k in read}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> TrainConfig:
        """The settings of a written `to_dict()` (keys that are no setting are left out); a
        setting it predates takes the value that reproduces it (`TRAIN_BEFORE`), not today's
        default."""
        known = {k: v for k, v in record.items() if k in cls.__dataclass_fields__}
        return cls(**{**TRAIN_BEFORE, **known})


# Training settings added since records were first written, at the value that reproduces what ran
# before they existed.
TRAIN_BEFORE: dict[str, Any] = {
    "min_steps": 0,
    "layer_sum": False,
    "head_init": "random",
    "dropout": None,
    "feature_view": "clip",
}


def audit_share(text: str) -> tuple[int | None, float | None] | None:
    """`--audit` as (count, None) for "40" or (None, share) for "10%" / "0.1"; None if it is
    neither (or not above 0; a share of at most 0.5: the pool must stay the larger part)."""
    value = text.strip()
    try:
        if value.endswith("%") or "." in value:
            share = float(value.removesuffix("%")) / (100 if value.endswith("%") else 1)
            return (None, share) if 0 < share <= 0.5 else None
        count = int(value)
    except ValueError:
        return None
    return (count, None) if count >= 1 else None


@dataclass(frozen=True)
class ALConfig:
    """An active-learning run: how the seed set is chosen, what is queried, when to stop.

    `schedule` gives the labeled-set size after each round, as fractions of the pool ("0.1"),
    counts ("40"), or minutes of audio ("5min"); the first entry is the seed set.
    """

    # BADGE by default: on frozen Whisper features it was at or above random at every budget
    # from 10% on both EmoDB (acted) and URDU (natural talk), and never significantly below it,
    # with or without the feature-view and self-training levers (README, BENCHMARKS.md);
    # entropy, the earlier default, fell 12 points under random at 5% on URDU (p = 0.013).
    strategy: str = "badge"
    schedule: tuple[str, ...] = ("0.02", "0.05", "0.1", "0.15", "0.2")
    # One of COLD_STARTS; the clustering ones read the run's frozen features when its backbone
    # is a feature backbone, else Resemblyzer's speaker embeddings.
    cold_start: str = "kmeans"
    warm_start: bool = False  # False: every round trains from the backbone, as in AFTER
    # Warm start: weights = shrink x the last round's + (1 - shrink) x a fresh start (see
    # after.train.shrink_toward), trained for `epochs` passes' worth of steps over the new labels.
    shrink: float = 0.5
    # Spread each round's queries over speakers and predicted classes (`after.loop.runner.spread`)
    spread: bool = False
    # The hybrid recipe: rounds select with the run's (frozen-features) learner, then this
    # transformers backbone is fine-tuned once on the final labeled set (None: no final fit).
    finetune: str | None = None
    mc_passes: int = 10  # MC-dropout passes for bald / dbal_*
    target_ua: float | None = None  # stop once dev UA reaches this
    stabilize_kappa: float | None = None  # stop once successive rounds agree this much
    stop_set_size: int = 200  # held-aside unlabeled clips for the agreement check
    surprisal_model: str | None = None  # wav2vec 2.0 pre-training model for alps (TAPT output)
    oracle: str = "simulated"  # simulated (the manifest's labels) or human (after label serve)
    min_votes: int = 1  # human: answers a clip needs before it counts
    # The audit set: a count of clips ("40") or a share of the pool ("10%", "0.1") drawn at the
    # start, labeled with round 0's queries and kept apart; each round's model is scored on it
    # (after.loop.runner). None: no audit set.
    audit: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check(
            "active-learning",
            self,
            {
                "schedule": (bool(self.schedule), "give label budgets like 0.05,0.1,0.2"),
                "cold_start": (self.cold_start in COLD_STARTS, one_of(tuple(COLD_STARTS))),
                "mc_passes": (self.mc_passes >= 2, "MC dropout needs 2 passes or more"),
                "oracle": (self.oracle in ORACLES, one_of(ORACLES)),
                "shrink": (0 <= self.shrink <= 1, "give a share from 0 (fresh) to 1 (as trained)"),
                "min_votes": (self.min_votes >= 1, "a clip needs 1 answer or more"),
                "audit": (
                    self.audit is None or audit_share(self.audit) is not None,
                    "give a count of clips (40) or a share of the pool (10% or 0.1)",
                ),
            },
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
