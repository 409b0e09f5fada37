"""Options generated from the settings dataclasses: each defined once, alike in every command that
takes it, each reaching its dataclass, checked there and refused naming the option."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import typer

from after.cli import app, main
from after.cli.options import (
    AL_OPTIONS,
    CPU_TAPT_STEPS,
    FINE_TUNING,
    SELF_TRAINING,
    TAPT_OPTIONS,
    TRAIN_OPTIONS,
)
from after.config import (
    COLD_STARTS,
    FEATURE_VIEWS,
    HEAD_INITS,
    ORACLES,
    PRECISIONS,
    ALConfig,
    TaptConfig,
    TrainConfig,
)
from after.data.corpora import CORPORA
from after.data.folds import PROTOCOLS, make_folds
from after.data.manifest import Manifest
from after.data.synth import PROSODY
from after.models.features import FEATURE_BACKBONES
from after.models.whisper import WHEEL_MODELS
from after.strategies import STRATEGIES
from after.testing.dummies import tone_corpus

FINE_TUNERS = ("train", "cv", "run", "compare")

# Every fine-tuning option at a value other than its default, as typed and as the setting.
CHANGED_TRAINING: dict[str, tuple[list[str], Any]] = {
    "epochs": (["--epochs", "3"], 3),
    "min_steps": (["--min-steps", "7"], 7),
    "batch_size": (["--batch-size", "2"], 2),
    "lr": (["--lr", "0.001"], 0.001),
    "head_lr": (["--head-lr", "0.01"], 0.01),
    "patience": (["--patience", "2"], 2),
    "soft_labels": (["--soft-labels"], True),
    "class_weighted": (["--no-class-weights"], False),
    "freeze_cnn": (["--train-cnn"], False),
    "freeze_layers": (["--freeze-layers", "1"], 1),
    "num_layers": (["--num-layers", "2"], 2),
    "layer_sum": (["--last-layer"], False),
    "head_init": (["--head-init", "probe"], "probe"),
    "dropout": (["--dropout", "0.1"], 0.1),
    "feature_view": (["--feature-view", "speaker"], "speaker"),
    "precision": (["--precision", "bf16"], "bf16"),
    "grad_accum": (["--grad-accum", "2"], 2),
    "num_processes": (["--num-processes", "2"], 2),
    "self_training": (["--self-training", "0.5"], 0.5),
    "pseudo_threshold": (["--pseudo-threshold", "0.8"], 0.8),
    "seed": (["--seed", "3"], 3),
}


def run(*args: str) -> int:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    return int(e.value.code or 0)


def _options(command: str) -> dict[str, Any]:
    """The command's options by parameter name, as Typer's click holds them."""
    found = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    return {p.name: p for p in found.params if p.param_type_name == "option"}


def _described(option: Any) -> tuple[Any, ...]:
    return (option.opts, option.secondary_opts, option.help, option.default, option.hidden)


def _help_blocks(text: str) -> dict[str, str]:
    """`--help` output as one block of lines per option, by its first spelling."""
    blocks: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("  --"):
            current = line.split()[0]
            blocks[current] = ""
        if current:
            blocks[current] += line + "\n"
    return blocks


def test_every_command_that_fine_tunes_takes_every_training_option_alike(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Every training option of the command line is in the test, and reaches a command.
    assert set(CHANGED_TRAINING) == set(TRAIN_OPTIONS) == {*FINE_TUNING, *SELF_TRAINING, "seed"}
    wanted = {name: _described(_options("train")[name]) for name in FINE_TUNING}
    for command in FINE_TUNERS:
        options = _options(command)
        assert {name: _described(options[name]) for name in FINE_TUNING} == wanted, command
        for name in FINE_TUNING:  # the default is the dataclass's
            assert options[name].default == getattr(TrainConfig, name), (command, name)
    # Learning from the unlabeled pool: only active learning has one.
    pool = [set(SELF_TRAINING) <= set(_options(c)) for c in FINE_TUNERS]
    assert pool == [False, False, True, True]
    for name in SELF_TRAINING:
        assert _described(_options("run")[name]) == _described(_options("compare")[name])
    # The help as users read it: the same block of text for each option in each command.
    texts = {}
    for command in FINE_TUNERS:
        assert run(command, "--help") == 0
        texts[command] = _help_blocks(capsys.readouterr().out)
    flags = [TRAIN_OPTIONS[name].flag(name) for name in FINE_TUNING]
    assert "--head-init" in flags and "--precision" in flags and "--class-weights" in flags
    for flag in flags:
        assert flag in texts["train"]
        assert {texts[c][flag] for c in FINE_TUNERS} == {texts["train"][flag]}, flag
    assert "--log-with" in texts["compare"] and "--grad-accum" in texts["compare"]


def test_help_lists_come_from_the_registries(capsys: pytest.CaptureFixture[str]) -> None:
    def help_of(command: str, name: str) -> str:
        option = _options(command)[name]
        return " ".join((option.help or "").split())

    def cli(name: str) -> str:
        return name.replace("_", "-")

    for command, name in (("run", "strategy"), ("compare", "strategies")):
        assert all(cli(s) in help_of(command, name) for s in STRATEGIES)
    for command in ("run", "compare"):
        assert all(c in help_of(command, "cold_start") for c in COLD_STARTS)
    for command in FINE_TUNERS:
        assert all(v in help_of(command, "feature_view") for v in FEATURE_VIEWS)
        assert all(h in help_of(command, "head_init") for h in HEAD_INITS)
        assert all(p in help_of(command, "precision") for p in PRECISIONS)
    assert all(p in help_of("tapt", "precision") for p in PRECISIONS)
    assert all(o in help_of("run", "oracle") for o in ORACLES)
    assert all(p in help_of("folds", "protocol") for p in PROTOCOLS)
    assert all(e in help_of("synth", "emotions") for e in PROSODY)
    assert all(b in help_of("train", "backbone") for b in (*WHEEL_MODELS, *FEATURE_BACKBONES))
    assert run("prepare", "--help") == 0
    text = " ".join(capsys.readouterr().out.split())
    assert all(c in text for c in CORPORA)


@pytest.fixture
def fold_args(tmp_path: Path) -> list[str]:
    m = tone_corpus(tmp_path / "tones").to_jsonl(tmp_path / "m.jsonl")
    folds = make_folds(Manifest.from_jsonl(m), "loso").to_json(tmp_path / "folds.json")
    return ["--manifest", str(m), "--folds", str(folds)]


class Captured(Exception):
    """What a command handed on, caught in place of the work."""


def _capture(*_: Any, **kwargs: Any) -> None:
    raise Captured(_, kwargs)


def _handed_on(args: list[str]) -> tuple[Any, ...]:
    with pytest.raises(Captured) as e:
        main(args)
    positional, keywords = e.value.args
    return (*positional, *keywords.values())


def _settings(handed: tuple[Any, ...], kind: type[Any]) -> Any:
    (found,) = [x for x in handed if isinstance(x, kind)]
    return found


@pytest.mark.parametrize("command", FINE_TUNERS)
def test_every_training_option_reaches_the_training_settings(
    command: str, fold_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import after.cli.loop
    import after.cli.models
    import after.experiments
    import after.loop.compare

    targets = {
        "train": (after.cli.models, "train_and_save"),
        "cv": (after.experiments, "fit_and_test_folds"),
        "run": (after.cli.loop, "continue_run"),
        "compare": (after.loop.compare, "compare"),
    }
    monkeypatch.setattr(*targets[command], _capture)
    names = [*FINE_TUNING, *SELF_TRAINING] if command in ("run", "compare") else [*FINE_TUNING]
    if command in ("train", "run"):
        names.append("seed")
    typed = [word for name in names for word in CHANGED_TRAINING[name][0]]
    args = [command, *fold_args, "--backbone", "egemaps", "--out", str(tmp_path / "out")]
    args += ["--fold", "0"] if command in ("train", "run") else []
    handed = _handed_on([*args, *typed])
    config = handed[0].train if command == "run" else _settings(handed, TrainConfig)
    for name in names:
        assert getattr(config, name) == CHANGED_TRAINING[name][1], name


def test_active_learning_and_tapt_options_reach_their_settings(
    fold_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    import after.cli.loop
    import after.loop.compare
    import after.tapt

    monkeypatch.setattr(after.cli.loop, "continue_run", _capture)
    typed = ["--strategy", "least-confidence", "--schedule", "10%, 20%", "--cold-start", "random"]
    typed += ["--warm-start", "--shrink", "0.3", "--spread", "--finetune", "whisper-tiny.en"]
    typed += ["--target-ua", "0.6", "--stabilize", "0.9", "--mc-passes", "4"]
    typed += ["--surprisal-model", "scratch:tiny", "--oracle", "human", "--min-votes", "2"]
    out = ["--fold", "0", "--out", str(tmp_path / "run")]
    (the_run,) = _handed_on(["run", *fold_args, *out, *typed, "--seed", "5"])[:1]
    assert the_run.al == ALConfig(
        strategy="least_confidence",
        schedule=("10%", "20%"),
        cold_start="random",
        warm_start=True,
        shrink=0.3,
        spread=True,
        finetune="whisper-tiny.en",
        target_ua=0.6,
        stabilize_kappa=0.9,
        mc_passes=4,
        surprisal_model="scratch:tiny",
        oracle="human",
        min_votes=2,
        seed=5,
    )
    assert the_run.train.seed == 5  # --seed seeds the loop and the training alike
    assert set(AL_OPTIONS) == {f.name for f in dataclasses.fields(ALConfig)} - {
        "seed",
        "stop_set_size",
    }

    monkeypatch.setattr(after.loop.compare, "compare", _capture)
    typed = ["--schedule", "5,10", "--cold-start", "typiclust", "--spread"]
    handed = _handed_on(["compare", *fold_args, "--out", str(tmp_path / "c"), *typed])
    al = _settings(handed, ALConfig)
    assert (al.schedule, al.cold_start, al.spread) == (("5", "10"), "typiclust", True)

    monkeypatch.setattr(after.tapt, "run_tapt", _capture)
    args = ["tapt", *fold_args, "--fold", "0", "--out", str(tmp_path / "tapt")]
    typed = ["--batch-size", "2", "--max-seconds", "2.5", "--lr", "0.001", "--freeze-cnn"]
    typed += ["--seed", "4", "--precision", "no", "--save-every", "5", "--grad-accum", "3"]
    typed += ["--num-processes", "2", "--objective", "teacher", "--head-lr", "0.01"]
    typed += ["--head-warmup-steps", "2", "--freeze-layers", "1", "--l2sp", "0.5"]
    typed += ["--distill", "0.25", "--distill-layer", "1", "--mask-prob", "0.3"]
    typed += ["--mask-length", "5"]
    config = _settings(_handed_on([*args, *typed, "--steps", "9"]), TaptConfig)
    assert config == TaptConfig(
        steps=9,
        batch_size=2,
        max_seconds=2.5,
        lr=0.001,
        freeze_cnn=True,
        seed=4,
        precision="no",
        save_every=5,
        grad_accum=3,
        num_processes=2,
        objective="teacher",
        head_lr=0.01,
        head_warmup_steps=2,
        freeze_layers=1,
        l2sp=0.5,
        distill=0.25,
        distill_layer=1,
        mask_prob=0.3,
        mask_length=5,
    )
    assert set(TAPT_OPTIONS) == {"batch_size", "max_seconds", "lr", "freeze_cnn", "seed"} | {
        "precision",
        "save_every",
        "grad_accum",
        "num_processes",
        "objective",
        "head_lr",
        "head_warmup_steps",
        "freeze_layers",
        "l2sp",
        "distill",
        "distill_layer",
        "mask_prob",
        "mask_length",
    }
    config = _settings(_handed_on(args), TaptConfig)
    assert config.steps == (TaptConfig.steps if torch.cuda.is_available() else CPU_TAPT_STEPS)


def test_values_out_of_range_are_refused_naming_the_option(
    fold_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--fold", "0", "--out", str(tmp_path / "out")]
    assert run("train", *fold_args, *out, "--epochs", "0", "--head-init", "zero") == 2
    err = capsys.readouterr().err
    assert "--epochs 0: give 1 or more; --head-init zero: choose one of random, probe" in err
    assert run("compare", *fold_args, *out[2:], "--precision", "fp8") == 2
    assert "--precision fp8: choose one of auto, no, fp16, bf16" in capsys.readouterr().err
    assert run("run", *fold_args, *out, "--shrink", "2", "--schedule", ",") == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--schedule ,: give label budgets like 0.05,0.1,0.2" in err
    assert "--shrink 2.0: give a share from 0 (fresh) to 1 (as trained)" in err
    assert run("tapt", *fold_args, *out, "--steps", "0", "--save-every", "0") == 2
    assert "--save-every 0: give 1 or more" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before any work
