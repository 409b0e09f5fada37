"""Every option of the command line, defined once.

The settings of `after.config` that commands offer are `Spec`s keyed by field (`TRAIN_OPTIONS`,
`AL_OPTIONS`, `TAPT_OPTIONS`); the dataclass gives the type and default, and checks the value.
Options that set no dataclass field (paths, devices, logging) are Typer options here. Lists in
help texts (strategies, cold starts, feature views, ...) are read from their registries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from after.checks import strategy_name, strategy_names
from after.cli.configs import Group, Spec
from after.config import (
    COLD_STARTS,
    FEATURE_VIEWS,
    HEAD_INITS,
    ORACLES,
    PRECISIONS,
    TAPT_OBJECTIVES,
    TaptConfig,
    TrainConfig,
)
from after.data.folds import Folds
from after.errors import AfterError
from after.models.features import FEATURE_BACKBONES, FROZEN_PREFIX
from after.models.whisper import WHEEL_MODELS
from after.strategies import STRATEGIES


def _names(names: Any) -> str:
    return ", ".join(names)


# ---- settings shared by TAPT and fine-tuning ------------------------------------------------

BATCH_SIZE = Spec("Clips per step and device.")
GRAD_ACCUM = Spec("Batches per device accumulated into one step.")
PRECISION = Spec(
    f"Training precision, one of {_names(PRECISIONS)} (auto: bf16 on a GPU that has it, else "
    "fp16 on a GPU, no on a CPU)."
)

# ---- fine-tuning (after.config.TrainConfig) ---------------------------------------------------

TRAIN_OPTIONS: dict[str, Spec] = {
    "epochs": Spec("Maximum epochs."),
    "min_steps": Spec(
        "At least this many optimiser steps per fit: a small labeled set takes several passes "
        "per epoch (0: just the epochs)."
    ),
    "batch_size": BATCH_SIZE,
    "lr": Spec("Learning rate of the backbone."),
    "head_lr": Spec("Learning rate of the new head."),
    "patience": Spec("Stop after N epochs without a better dev UA (0: never)."),
    "soft_labels": Spec("Train on annotator vote distributions.", ("--soft-labels",)),
    "class_weighted": Spec(
        "Weight the loss by inverse class frequency.", ("--class-weights/--no-class-weights",)
    ),
    "freeze_cnn": Spec(
        "Freeze the convolutional front end (wav2vec 2.0's CNN, Whisper's conv stem).",
        ("--freeze-cnn/--train-cnn",),
    ),
    "freeze_layers": Spec(
        "Also freeze the encoder's bottom N layers (Whisper: cached with the front end)."
    ),
    "num_layers": Spec("Keep only the encoder's bottom N layers (default: all)."),
    "layer_sum": Spec(
        "Whisper: the head reads the last layer, or a learned weighted sum of the layers from "
        "--freeze-layers up.",
        ("--layer-sum/--last-layer",),
    ),
    "head_init": Spec(
        f"How a fine-tuned encoder's new head starts, one of {_names(HEAD_INITS)}. probe: as the "
        "frozen-features learner's logistic regression on the untrained model's pooled frames "
        "(LP-FT), a start that dev UA also judges (epoch 0)."
    ),
    "dropout": Spec(
        "Dropout inside the encoder while fine-tuning (default: the backbone's own; Whisper's "
        "is 0)."
    ),
    "feature_view": Spec(
        f"Frozen features, one of {_names(FEATURE_VIEWS)}. clip: as extracted; speaker: "
        "standardised per speaker on that speaker's clips, test speakers included "
        "(transductive, no label read); auto: chosen with C by the inner cross-validation."
    ),
    "self_training": Spec(
        "Frozen features: weight of self-training on the unlabeled pool (confident predictions "
        "join the fit; 0: off)."
    ),
    "pseudo_threshold": Spec(
        "Self-training: the smallest predicted probability a pool clip needs to join."
    ),
    "seed": Spec(
        "Seed of the head init, batches and crops (after run: also of its cold start and queries)."
    ),
    "precision": PRECISION,
    "grad_accum": GRAD_ACCUM,
    "num_processes": Spec(
        "Processes (DDP: one per GPU, or gloo on CPUs) that after starts for each fine-tuning "
        "and pool scoring. after train also runs under accelerate launch or torchrun: leave this "
        "out there, their processes are used."
    ),
}
# What every command that fine-tunes takes (train, cv, run, compare), in the order of its help.
FINE_TUNING = (
    "epochs",
    "min_steps",
    "batch_size",
    "lr",
    "head_lr",
    "patience",
    "soft_labels",
    "class_weighted",
    "freeze_cnn",
    "freeze_layers",
    "num_layers",
    "layer_sum",
    "head_init",
    "dropout",
    "feature_view",
    "precision",
    "grad_accum",
    "num_processes",
)
# Learning from the unlabeled pool: only active learning (run, compare) has one.
SELF_TRAINING = ("self_training", "pseudo_threshold")


def training(*more: str) -> Group:
    """The fine-tuning options, and `more` fields of `TrainConfig`."""
    return Group(TrainConfig, TRAIN_OPTIONS, (*FINE_TUNING, *more))


# ---- active learning (after.config.ALConfig) --------------------------------------------------


def _budgets(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


STRATEGY_HELP = f"{strategy_names()} (underscores work too)"
_MC_DROPOUT = [n.replace("_", "-") for n, c in STRATEGIES.items() if "mc_probs" in c.requires]

AL_OPTIONS: dict[str, Spec] = {
    "strategy": Spec(STRATEGY_HELP, parse=strategy_name),
    "schedule": Spec(
        "Labeled-set size after each round: shares of the pool (5% or 0.05; 100% or 1.0 is the "
        "whole pool), clip counts (a whole number: 40), or minutes of audio (5min).",
        parse=_budgets,
        show=",".join,
    ),
    "cold_start": Spec(
        f"Seed set, one of {_names(COLD_STARTS)}. Those chosen on clip embeddings read a frozen "
        "feature backbone's own, else Resemblyzer's; alps reads the surprisal model's."
    ),
    "warm_start": Spec(
        "Start each fine-tuned round from the last round's model (shrunk toward a fresh start "
        "by --shrink), trained for epochs' worth of steps over the new labels only."
    ),
    "shrink": Spec(
        "With --warm-start: the share of the last round's weights kept (the rest: a fresh start)."
    ),
    "spread": Spec(
        "Spread each round's queries over speakers and predicted classes (round-robin over the "
        "strategy's top 4x picks)."
    ),
    "finetune": Spec(
        "The hybrid recipe: select with the frozen-features --backbone, then fine-tune this "
        "speech encoder (e.g. whisper-tiny.en) once on the final labeled set (model_finetuned/; "
        "the last row of rounds.csv)."
    ),
    "target_ua": Spec("Stop once dev UA reaches this (0-1)."),
    "stabilize_kappa": Spec(
        "Stop once successive rounds agree (Cohen's kappa) this much on a stop set.",
        ("--stabilize",),
    ),
    "mc_passes": Spec(f"MC-dropout passes ({_names(_MC_DROPOUT)})."),
    "surprisal_model": Spec(
        "alps: a wav2vec 2.0 model with its pre-training head (an after tapt output)."
    ),
    "oracle": Spec(
        f"Who labels, one of {_names(ORACLES)}. simulated: the manifest's labels; human: "
        "people, with after label serve or export/import."
    ),
    "min_votes": Spec("human: answers a clip needs to count."),
    "audit": Spec(
        "An audit set: N clips (or a share of the pool: 10%) drawn at random from the pool at "
        "the start (by speaker, where speakers are known), labeled with round 0's queries and "
        "mixed among them, and never used to train, select or cold-start; each round's model "
        "is scored on them: accuracy and UA with 95% confidence intervals. The estimate where "
        "there is no labeled test set; --target-ua reads it where there is no dev split."
    ),
}
# What a comparison of strategies shares with a run (its strategies are an option of its own).
COMPARE_AL = ("schedule", "cold_start", "spread")

# ---- TAPT (after.config.TaptConfig) -------------------------------------------------------------

TAPT_OPTIONS: dict[str, Spec] = {
    "batch_size": BATCH_SIZE,
    "max_seconds": Spec("Random crop length (s)."),
    "lr": Spec("Peak learning rate."),
    "freeze_cnn": Spec(
        "Freeze the CNN feature encoder. TAPT trains it by default, as wav2vec 2.0's "
        "pre-training does; fine-tuning (train, run) freezes it by default, as its fine-tuning "
        "does.",
        ("--freeze-cnn/--train-cnn",),
    ),
    "objective": Spec(
        "The objective: the backbone family's own by default (wav2vec 2.0: contrastive; "
        "HuBERT, WavLM, Whisper: masked prediction of k-means ids), or one of "
        f"{_names(TAPT_OBJECTIVES)} (teacher: data2vec-style, any family)."
    ),
    "head_lr": Spec("Learning rate of the objective's new head (default: --lr)."),
    "head_warmup_steps": Spec("The first N steps train only the objective's new head."),
    "freeze_layers": Spec("Also freeze the encoder's bottom N transformer layers."),
    "l2sp": Spec("Weight of an L2 penalty toward the starting weights (L2-SP; 0: off)."),
    "distill": Spec(
        "Weight of a distance between the encoder's hidden states and a frozen copy of the "
        "starting encoder's (0: off)."
    ),
    "distill_layer": Spec("The layer --distill compares (default: the mean over every layer)."),
    "mask_prob": Spec("Share of frames where a masked span starts."),
    "mask_length": Spec("Frames per masked span."),
    "seed": Spec("Seed for batches, crops, masks and init."),
    "precision": PRECISION,
    "save_every": Spec("Checkpoint every N steps."),
    "grad_accum": GRAD_ACCUM,
    "num_processes": Spec(
        "Processes (DDP: one per GPU, or gloo on CPUs) to start; not with accelerate launch or "
        "torchrun, whose processes are used."
    ),
}
TAPT = Group(TaptConfig, TAPT_OPTIONS, tuple(TAPT_OPTIONS))
# TAPT steps when no GPU is there: a run of minutes for Whisper tiny.en on a few hundred clips.
CPU_TAPT_STEPS = 300

# ---- options that set no dataclass field --------------------------------------------------------

MANIFEST = typer.Option(..., help="Manifest (JSONL).", show_default=False)
FOLDS_FILE = typer.Option(Path("folds.json"), "--folds", help="Folds of this manifest.")
FOLD = typer.Option(..., help="Fold name or index.")
FOLD_LIST = typer.Option(
    [],
    "--fold",
    help="A fold name or index; give --fold once per fold (or a comma-separated list). Default: "
    "every fold.",
    show_default=False,
)
_WHEELS = f"{_names(WHEEL_MODELS)} (offline)"
BACKBONE = typer.Option(
    "whisper-tiny.en",
    help=f"{_WHEELS}, a folder (a TAPT output...), a hub id (local cache), scratch:SIZE; frozen "
    f"features: {FROZEN_PREFIX}ENCODER[@LAYER], {_names(FEATURE_BACKBONES)}.",
)
TAPT_BACKBONE = typer.Option(
    "whisper-tiny.en", help=f"{_WHEELS}, a folder, a hub id (local cache), or scratch:SIZE."
)
SAME_BACKBONE = typer.Option("whisper-tiny.en", help="As for after train.")
CACHE = typer.Option(
    None, "--cache-dir", help="Feature cache (default $AFTER_CACHE_DIR or ~/.cache/after)."
)
THREADS = typer.Option(
    None,
    min=1,
    show_default=False,
    help="Torch CPU threads per process (default: half this machine's cores, at least 1; "
    "torch's own default, every core, stalls on a busy machine).",
)
DEVICE = typer.Option(
    "auto", help="Where models run: auto (a GPU where torch sees one), cpu, cuda or cuda:N."
)
# Accelerate's trackers are not listed: reading its list imports torch, seconds for every command;
# a wrong name is refused with the list (after.tracking).
LOG_WITH = typer.Option(
    None,
    help="Also log settings and metrics to an Accelerate tracker: tensorboard (pip install "
    "tensorboard), or any other tracker Accelerate knows, with its package (a name it does not "
    "know is refused with the list).",
)
LOG_DIR = typer.Option(None, help="The tracker's folder (default: OUT/logs).")


# ---- checking audio (prepare, validate, predict) -------------------------------------------------

MIN_DURATION = typer.Option(0.25, help="Clips shorter than this (seconds) are rejected.")
SILENCE_DBFS = typer.Option(
    -60.0, help="Clips whose loudest 50 ms is below this level (dBFS) are rejected as silent."
)

# ---- preparing your own data --------------------------------------------------------------------

LABEL_SET = typer.Option(
    None,
    "--labels",
    help="csv and folder: the label set, comma-separated (e.g. anger,happiness,neutral,sadness). "
    "Needed where the clips have no labels yet (a folder of recordings, a CSV without a label "
    "column): people label them with after run --oracle human.",
    show_default=False,
)
SPEAKER_REGEX = typer.Option(
    None,
    help="csv (without a speaker column) and folder: a regex whose group (named speaker, or the "
    "first) finds the speaker in each file's path: searched in the file name, then in the path "
    "under the folder, e.g. '^([^_]+)_' or '^([^/]+)/'. Without it, unlabeled clips have an "
    "unknown speaker: each is its own.",
)


LABELS_FROM = typer.Option(
    None,
    help="Start a new run from the labels of this run folder: they count as labeled before "
    "round 0 (its audit labels stay audit labels where this run has --audit). Nothing of the "
    "old run changes.",
    show_default=False,
)


def parse_labels(text: str | None) -> list[str] | None:
    """`--labels a,b,c` as a list (None when not given)."""
    if text is None:
        return None
    return [x.strip() for x in text.split(",") if x.strip()]


def chosen_folds(all_folds: Folds, given: list[str]) -> list[Any]:
    """The folds `--fold` names (repeated, or comma-separated), or all of them."""
    names = [x.strip() for item in given for x in item.split(",") if x.strip()]
    if not names or names == ["all"]:
        return list(all_folds.folds)
    return [all_folds.get(int(x) if x.isdigit() else x) for x in dict.fromkeys(names)]


def parse_seeds(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise AfterError(f"--seeds {text!r}: give whole numbers separated by commas") from None
