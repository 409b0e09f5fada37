"""Commands that make and use models: tapt, train, evaluate, predict, cv."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import typer

from after.cli.app import app, console, corpus_name, err, load_fold, print_error
from after.cli.configs import replace, with_configs
from after.cli.options import (
    BACKBONE,
    CACHE,
    CPU_TAPT_STEPS,
    DEVICE,
    FOLD,
    FOLD_LIST,
    FOLDS_FILE,
    LOG_DIR,
    LOG_WITH,
    MANIFEST,
    MIN_DURATION,
    SAME_BACKBONE,
    SILENCE_DBFS,
    TAPT,
    TAPT_BACKBONE,
    TAPT_OPTIONS,
    THREADS,
    chosen_folds,
    parse_seeds,
    training,
)
from after.config import TaptConfig, TrainConfig
from after.data.folds import Folds
from after.data.manifest import Manifest
from after.errors import AfterError
from after.io import atomic_write_json, atomic_write_text

OUT = typer.Option(..., help="Output folder.", show_default=False)
SPLITS = ("test", "dev")  # what `after evaluate` scores a model on


@app.command()
@with_configs(config=TAPT)
def tapt(
    manifest: Path = MANIFEST,
    folds_file: Path = FOLDS_FILE,
    fold: str = typer.Option(..., help="Fold name or index; only its training audio is used."),
    backbone: str = TAPT_BACKBONE,
    out: Path = typer.Option(
        ..., help="Output folder (a from_pretrained model).", show_default=False
    ),
    steps: int | None = typer.Option(
        None,
        help=f"Optimiser steps (default: {TaptConfig.steps} on a GPU, {CPU_TAPT_STEPS} on a CPU, "
        "a run of minutes).",
    ),
    *,
    config: TaptConfig,
    resume: bool = typer.Option(
        False, hidden=True, help="Old spelling: a stopped run in --out continues by itself."
    ),
    threads: int | None = THREADS,
    device: str = DEVICE,
    log_with: str | None = LOG_WITH,
    log_dir: Path | None = LOG_DIR,
) -> None:
    """Task-adaptive pre-training on one fold's training audio (never its dev or test audio).
    The same command again continues a stopped run from its last checkpoint."""
    import torch

    from after.dist import use_compute
    from after.io import apply_umask
    from after.tapt import CHECKPOINTS, DONE_FILE, LOG_FILE, STATE_FILE, run_tapt
    from after.tracking import open_tracker

    use_compute(device, threads)  # before torch is asked about GPUs
    if steps is None:
        steps = TaptConfig.steps if torch.cuda.is_available() else CPU_TAPT_STEPS
    config = replace(config, TAPT_OPTIONS, steps=steps)
    m, chosen = load_fold(manifest, folds_file, fold)
    if (out / DONE_FILE).exists():
        raise AfterError(
            f"{out}: holds a finished TAPT run ({DONE_FILE}); choose another --out, or use it: "
            f"--backbone {out}"
        )
    stopped = any((out / CHECKPOINTS).glob(f"step_*/{STATE_FILE}"))
    what = "continuing TAPT" if stopped else "TAPT"
    err.print(f"{what} of {backbone} on fold {chosen.name}: {len(chosen.train)} training clips")
    settings = {"backbone": backbone, "fold": chosen.name, "tapt": config.to_dict()}
    tracker = open_tracker(log_with, f"tapt_{chosen.name}", log_dir or out / "logs", settings)
    with tracker.following(out / LOG_FILE, "tapt/") if tracker else contextlib.nullcontext():
        run_tapt(m, chosen, backbone, out, config, resume=resume or stopped)
    if tracker:
        tracker.finish()
    apply_umask(out)  # safetensors writes the weights 0600 whatever the umask
    console.print(f"{out}: TAPT model (load with from_pretrained); log in {out}/tapt_log.jsonl")


@app.command()
@with_configs(config=training("seed"))
def train(
    manifest: Path = MANIFEST,
    folds_file: Path = FOLDS_FILE,
    fold: str = FOLD,
    backbone: str = BACKBONE,
    out: Path = OUT,
    *,
    config: TrainConfig,
    cache_dir: Path | None = CACHE,
    threads: int | None = THREADS,
    device: str = DEVICE,
    log_with: str | None = LOG_WITH,
    log_dir: Path | None = LOG_DIR,
) -> None:
    """Fine-tune on all labeled training clips of a fold (the V-FT baseline), test once."""
    from after.checks import check_backbone
    from after.dist import use_compute

    use_compute(device, threads)
    check_backbone(backbone)
    m, chosen = load_fold(manifest, folds_file, fold)
    paths = {"manifest": str(manifest.resolve()), "folds": str(folds_file.resolve())}
    train_and_save(m, chosen, backbone, config, out, cache_dir, paths, log_with, log_dir)


def train_and_save(
    m: Manifest,
    chosen: Any,
    backbone: str,
    config: TrainConfig,
    out: Path,
    cache_dir: Path | None,
    paths: dict[str, str],
    log_with: str | None,
    log_dir: Path | None,
) -> None:
    """`after train`'s work (also `after rerun`'s): fit, test, write the model and result.json
    (with what a rerun needs: manifest and folds paths, settings)."""
    from after.cache import default_cache_dir
    from after.dist import state
    from after.experiments import fit_and_test, save_result
    from after.report import plot_confusion

    cache = cache_dir or default_cache_dir()
    err.print(f"fine-tuning {backbone} on fold {chosen.name}: {len(chosen.train)} training clips")
    result, run = fit_and_test(m, chosen, backbone, config, cache_dir=cache)
    if not state().is_main_process:
        return  # under accelerate launch / torchrun, the main process writes the results
    test = run["test"]
    settings = {**config.to_dict(), "num_processes": result.num_processes}
    record = {
        "corpus": corpus_name(m),
        "backbone": backbone,
        **paths,
        "cache_dir": str(cache_dir.resolve()) if cache_dir else None,
        **run,
        "config": settings,
    }
    save_result(out, result, fold=chosen.name, corpus=record["corpus"])
    atomic_write_json(out / "result.json", record)
    plot_confusion(test, out / "confusion.png", f"{backbone}, fold {chosen.name} (test)")
    log_fit(log_with, log_dir or out / "logs", out.name, record, result.history)
    console.print(
        f"fold {chosen.name} test: UA {100 * test['ua']:.2f}%, WA {100 * test['wa']:.2f}% "
        f"({test['num_clips']} clips); model in {out / 'model'}",
        highlight=False,
    )


def log_fit(
    kind: str | None,
    log_dir: Path,
    name: str,
    record: dict[str, Any],
    history: list[dict[str, Any]],
) -> None:
    """A finished fine-tuning to the tracker of `--log-with`: settings, each epoch, the test."""
    from after.tracking import open_tracker

    settings = {k: v for k, v in record.items() if k in ("corpus", "backbone", "fold", "config")}
    tracker = open_tracker(kind, name, log_dir, settings)
    if tracker is None:
        return
    for epoch in history:
        tracker.log(epoch, int(epoch.get("epoch", 1)))
    test = {f"test_{k}": record["test"][k] for k in ("ua", "wa", "macro_f1")}
    tracker.log(test, len(history))
    tracker.finish()


@app.command()
def evaluate(
    model: Path = typer.Option(
        ..., help="Model folder (after train's out/model).", show_default=False
    ),
    manifest: Path = MANIFEST,
    folds_file: Path = FOLDS_FILE,
    fold: str = FOLD,
    split: str = typer.Option(SPLITS[0], help=f"{' or '.join(SPLITS)}."),
    out: Path | None = typer.Option(
        None,
        help="Scores (JSON); the PNG goes beside it. Default: evaluation_FOLD_SPLIT.json beside "
        "the model folder.",
        show_default=False,
    ),
    cache_dir: Path | None = CACHE,
    threads: int | None = THREADS,
    device: str = DEVICE,
) -> None:
    """Score a model on a fold's test (or dev) split: metrics and a confusion-matrix PNG."""
    from after.cache import default_cache_dir
    from after.dist import use_compute
    from after.inference import evaluate as score
    from after.models.classifier import load_classifier
    from after.report import plot_confusion

    use_compute(device, threads)
    if split not in SPLITS:
        raise AfterError(f"--split {split!r}: choose {' or '.join(SPLITS)}")
    m, chosen = load_fold(manifest, folds_file, fold)
    model = model_folder(model)
    out = out or model.resolve().parent / f"evaluation_{chosen.name}_{split}.json"
    clf = load_classifier(model)
    scores = score(clf, m, getattr(chosen, split), cache_dir=cache_dir or default_cache_dir())
    atomic_write_json(out, {"model": str(model), "fold": chosen.name, "split": split, **scores})
    png = plot_confusion(
        scores, out.with_suffix(".png"), f"{model.name}, fold {chosen.name} ({split})"
    )
    console.print(
        f"UA {100 * scores['ua']:.2f}%, WA {100 * scores['wa']:.2f}%, macro-F1 "
        f"{100 * scores['macro_f1']:.2f}% on {scores['num_clips']} clips; {out}, {png}",
        highlight=False,
    )


def model_folder(given: Path) -> Path:
    """The model folder that `--model` means: a model folder as it is; for a run folder of
    after run its fine-tuned final model (the hybrid recipe) or else its latest round's model;
    for an output folder of after train its model/. Says which on stderr when it is not the
    folder given."""
    from after.loop.folder import RunFolder
    from after.models.classifier import INFO_FILE

    run = RunFolder(given)
    if run.is_run():
        chosen = run.final_model if (run.final_model / INFO_FILE).is_file() else run.model
        what = (
            "the hybrid recipe's final model"
            if chosen == run.final_model
            else "its latest round's model"
        )
        if not chosen.is_dir():
            raise AfterError(
                f"{given}: a run folder of after run with no model yet (no round has trained); "
                f"continue it with after run --resume {given}"
            )
        err.print(f"{given}: a run folder; using {chosen} ({what})", highlight=False)
        return chosen
    if not (given / INFO_FILE).is_file() and (given / "model" / INFO_FILE).is_file():
        err.print(f"{given}: using {given / 'model'}", highlight=False)
        return given / "model"
    return given


@app.command()
def predict(
    files: list[Path] = typer.Argument(
        ...,
        metavar="FILES_OR_FOLDERS",
        help="Audio files (any format soundfile reads), or folders of them.",
    ),
    model: Path = typer.Option(
        ...,
        help="Model folder; or a run folder of after run (its final or latest model), or an "
        "output folder of after train (its model/).",
        show_default=False,
    ),
    min_duration: float = MIN_DURATION,
    silence_dbfs: float = SILENCE_DBFS,
    speaker_by: str = typer.Option(
        "folder",
        help="For a model on speaker-standardised features: the files of one folder are one "
        "speaker's (folder), or each file stands alone (file).",
    ),
    threads: int | None = THREADS,
    device: str = DEVICE,
) -> None:
    """Classify audio files: one JSON line each (file, label, per-class scores); a file longer
    than 30 s gets one line per window of at most 30 s, with its start and end (start_s, end_s).
    A folder stands for the audio files directly inside it. A file that cannot be used is
    reported and skipped, the others classified; the exit status is then 2."""
    import os

    from after.dist import use_compute
    from after.errors import AudioError
    from after.models.classifier import load_classifier
    from after.predict import audio_files, predict_files

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no bar for loading weights
    use_compute(device, threads)
    bad: list[AudioError] = []

    def report(e: AudioError) -> None:
        bad.append(e)
        print_error(e)

    if speaker_by not in ("folder", "file"):
        raise typer.BadParameter(
            f"{speaker_by!r}: choose folder or file", param_hint="--speaker-by"
        )
    found = audio_files(files, on_error=report)
    clf = load_classifier(model_folder(model))
    records = predict_files(
        clf,
        found,
        on_error=report,
        speaker_by=speaker_by,
        min_duration_s=min_duration,
        silence_dbfs=silence_dbfs,
    )
    for record in records:
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
    if bad:
        raise typer.Exit(2)


@app.command()
@with_configs(config=training())
def cv(
    manifest: Path = MANIFEST,
    folds_file: Path = FOLDS_FILE,
    fold: list[str] = FOLD_LIST,
    backbone: str = SAME_BACKBONE,
    out: Path = OUT,
    seeds: str = typer.Option("0", help="Comma-separated seeds; every fold runs with each."),
    *,
    config: TrainConfig,
    cache_dir: Path | None = CACHE,
    threads: int | None = THREADS,
    device: str = DEVICE,
    log_with: str | None = LOG_WITH,
    log_dir: Path | None = LOG_DIR,
) -> None:
    """Fine-tune and test on every fold (x seeds); write a table with mean ± std. The same
    command again keeps the runs done in --out and does the rest; runs there made with other
    settings are refused."""
    from after.cache import default_cache_dir
    from after.checks import check_backbone
    from after.dist import use_compute
    from after.experiments import fit_and_test_folds
    from after.report import cv_table
    from after.train import FitResult, describe_training

    use_compute(device, threads)
    check_backbone(backbone)
    m = Manifest.from_jsonl(manifest)
    all_folds = Folds.from_json(folds_file, m)
    chosen = chosen_folds(all_folds, fold)
    seed_list = parse_seeds(seeds)
    cache = cache_dir or default_cache_dir()

    def done(fit: FitResult, record: dict[str, Any]) -> None:
        name, test = f"{record['fold']}_seed{record['seed']}", record["test"]
        logged = {"corpus": corpus_name(m), **record}
        log_fit(log_with, log_dir or out / "logs", name, logged, fit.history)
        console.print(
            f"fold {record['fold']} seed {record['seed']}: UA {100 * test['ua']:.2f}%, "
            f"WA {100 * test['wa']:.2f}%",
            highlight=False,
        )

    runs = fit_and_test_folds(
        m,
        chosen,
        seed_list,
        backbone,
        config,
        out / "runs",
        cache_dir=cache,
        log=err.print,
        on_fit=done,
    )
    protocol = {
        "backbone": backbone,
        "corpus": corpus_name(m),
        "protocol": all_folds.protocol,
        "num_folds": len(chosen),
        "seeds": seed_list,
        "training": describe_training(backbone, config.to_dict()),
    }
    table = cv_table(runs, protocol)
    atomic_write_text(out / "cv.md", table)
    atomic_write_json(out / "cv.json", {"protocol": protocol, "runs": runs})
    console.print(table, highlight=False)
