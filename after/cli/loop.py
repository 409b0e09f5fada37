"""Active-learning commands: run, compare, and rerun (an experiment again from its settings)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer

from after.cli.app import app, console, corpus_name, err, load_fold
from after.cli.configs import Group, with_configs
from after.cli.models import log_fit, train_and_save
from after.cli.options import (
    AL_OPTIONS,
    CACHE,
    COMPARE_AL,
    DEVICE,
    FOLD_LIST,
    FOLDS_FILE,
    LOG_DIR,
    LOG_WITH,
    MANIFEST,
    SAME_BACKBONE,
    SELF_TRAINING,
    STRATEGY_HELP,
    THREADS,
    chosen_folds,
    parse_seeds,
    training,
)
from after.config import ALConfig, TrainConfig
from after.data.folds import Folds
from after.data.manifest import Manifest
from after.errors import AfterError
from after.io import read_json

# A run takes every active-learning setting the command line offers; its --seed (a training
# option) seeds the loop too.
RUN_AL = Group(ALConfig, AL_OPTIONS, tuple(AL_OPTIONS), shared=("seed",))


@app.command()
@with_configs(al=RUN_AL, config=training(*SELF_TRAINING, "seed"))
def run(
    manifest: Path | None = typer.Option(None, help="Manifest (JSONL)."),
    folds_file: Path = FOLDS_FILE,
    fold: str | None = typer.Option(None, help="Fold name or index."),
    backbone: str = SAME_BACKBONE,
    *,
    al: ALConfig,
    out: Path | None = typer.Option(
        None, help="Run folder; the same command again continues the run in it."
    ),
    resume: Path | None = typer.Option(
        None, help="Continue the run in this folder (its settings are in its config.json)."
    ),
    config: TrainConfig,
    cache_dir: Path | None = CACHE,
    threads: int | None = THREADS,
    device: str = DEVICE,
    log_with: str | None = LOG_WITH,
    log_dir: Path | None = LOG_DIR,
) -> None:
    """Active learning: cold start, then rounds of fine-tune, evaluate, query, label."""
    from after.cache import default_cache_dir
    from after.dist import use_compute, world_size
    from after.loop.folder import RunFolder
    from after.loop.runner import RUN_SETTINGS, Run, check_same_settings

    if world_size() > 1:
        raise AfterError(
            "after run starts its own worker processes: run it as one process (not under "
            "accelerate launch or torchrun) and pass --num-processes N"
        )
    use_compute(device, threads)
    if resume is not None:
        the_run = Run.from_dir(resume)
        if config.num_processes not in (1, the_run.train.num_processes):
            raise AfterError(
                f"{resume} was started with --num-processes {the_run.train.num_processes}, "
                "which is part of its settings (a step's batch spans the processes); resume "
                "it without --num-processes"
            )
        continue_run(the_run, log_with, log_dir)
        return
    if manifest is None or fold is None or out is None:
        raise AfterError("give --manifest, --fold and --out for a new run, or --resume RUN_DIR")
    m, chosen = load_fold(manifest, folds_file, fold)
    cache = str((cache_dir or default_cache_dir()).resolve())
    the_run = Run(
        m,
        str(manifest.resolve()),
        str(folds_file.resolve()),
        chosen,
        backbone,
        al,
        config,
        out,
        cache,
    )
    if RunFolder(out).config.is_file():  # the same command again: continue, if the same run
        found = read_json(RunFolder(out).config, "delete the folder, or choose another --out")
        wanted = {k: the_run.to_json()[k] for k in RUN_SETTINGS}
        check_same_settings(out, found, wanted)
        the_run = Run.from_dir(out)
    continue_run(the_run, log_with, log_dir)


def continue_run(the_run: Any, log_with: str | None, log_dir: Path | None) -> None:
    """Start (or continue) an active-learning run and report its rounds."""
    from after.loop.runner import check_run, load_state, run_loop
    from after.tracking import open_tracker

    try:
        warnings = check_run(the_run)
    except AfterError as e:
        if not (the_run.run_dir / "state.json").is_file():
            raise
        raise AfterError(
            f"{the_run.run_dir} cannot continue: {e}. Its settings are fixed; start a new run "
            "(another --out) with the fix"
        ) from None
    for warning in warnings:
        err.print(f"warning: {warning}", highlight=False)
    state = load_state(the_run)
    if state.rounds or state.phase != "select":
        err.print(f"continuing {the_run.run_dir} at round {state.round} ({state.phase})")
    settings = {k: v for k, v in the_run.to_json().items() if k != "manifest_digest"}
    log_folder = log_dir or the_run.run_dir / "logs"
    tracker = open_tracker(log_with, the_run.run_dir.name, log_folder, settings)

    def show(r: dict[str, Any]) -> None:
        if r["round"] == "final":
            console.print(
                f"final: {r['model']}, {r['num_labeled']} labeled, test UA "
                f"{100 * r['test_ua']:.2f}%, train {r['train_s']:.1f}s",
                highlight=False,
            )
            return
        if tracker:
            tracker.log(r, r["round"])
        console.print(
            f"round {r['round']}: {r['num_labeled']} labeled ({100 * r['fraction']:.1f}%, "
            f"{r['minutes']:.1f} min), test UA {100 * r['test_ua']:.2f}%, dev UA "
            f"{100 * (r['dev_ua'] or 0):.2f}%, train {r['train_s']:.1f}s",
            highlight=False,
        )

    try:
        state = run_loop(the_run, state, on_round=show, progress=True)
    finally:
        if tracker:
            tracker.finish()
    if state.phase == "done":
        final = f", {the_run.folder.final_model.name}/" if state.final else ""
        console.print(
            f"{the_run.run_dir}: done ({state.stopped_because}); rounds.csv, model/{final}"
        )
    elif the_run.al.oracle == "human":
        console.print(
            f"{the_run.run_dir}: round {state.round} waits for {len(state.pending)} label(s). "
            f"Label them with: after label serve {the_run.run_dir}  (or after label export / "
            f"import), then: after run --resume {the_run.run_dir}",
            highlight=False,
        )
    else:
        console.print(f"{the_run.run_dir}: {len(state.pending)} queries wait for labels")


@app.command()
@with_configs(al=Group(ALConfig, AL_OPTIONS, COMPARE_AL), config=training(*SELF_TRAINING))
def compare(
    manifest: Path = MANIFEST,
    folds_file: Path = FOLDS_FILE,
    fold: list[str] = FOLD_LIST,
    backbone: str = SAME_BACKBONE,
    strategies: str = typer.Option("random,entropy,margin,badge", help=STRATEGY_HELP),
    seeds: str = typer.Option("0,1,2", help="Comma-separated seeds."),
    *,
    al: ALConfig,
    out: Path = typer.Option(
        ..., help="Output folder; the same command again continues in it.", show_default=False
    ),
    config: TrainConfig,
    cache_dir: Path | None = CACHE,
    threads: int | None = THREADS,
    device: str = DEVICE,
    log_with: str | None = LOG_WITH,
    log_dir: Path | None = LOG_DIR,
) -> None:
    """Run strategies x seeds (+ all labels) on the same folds; learning curves with mean ± std
    and per-class recall."""
    from after.cache import default_cache_dir
    from after.checks import strategy_name
    from after.dist import use_compute
    from after.loop.compare import compare as run_compare

    use_compute(device, threads)
    m = Manifest.from_jsonl(manifest)
    chosen = chosen_folds(Folds.from_json(folds_file, m), fold)
    names = list(dict.fromkeys(strategy_name(x) for x in strategies.split(",") if x.strip()))
    trackers = _RunTrackers(log_with, log_dir or out / "logs", corpus_name(m))
    try:
        run_compare(
            m,
            str(manifest.resolve()),
            str(folds_file.resolve()),
            chosen,
            backbone,
            names,
            parse_seeds(seeds),
            al,
            config,
            out,
            cache_dir=str((cache_dir or default_cache_dir()).resolve()),
            log=lambda line: err.print(line, highlight=False),
            progress=True,
            on_fit=trackers.fit if log_with else None,
            on_round=trackers.round if log_with else None,
        )
    finally:
        trackers.finish()
    console.print((out / "summary.md").read_text(), highlight=False)


class _RunTrackers:
    """`--log-with` for a comparison: each all-labels fit as `after cv` logs it, and each
    active-learning run as `after run` logs it (one tracker run each; the runs go one after
    another, so one is open at a time)."""

    def __init__(self, kind: str | None, log_dir: Path, corpus: str) -> None:
        self.kind, self.log_dir, self.corpus = kind, log_dir, corpus
        self.current: tuple[Path, Any] | None = None

    def fit(self, fit: Any, record: dict[str, Any]) -> None:
        name = f"{record['fold']}_all_seed{record['seed']}"
        log_fit(self.kind, self.log_dir, name, {"corpus": self.corpus, **record}, fit.history)

    def round(self, the_run: Any, record: dict[str, Any]) -> None:
        from after.tracking import open_tracker

        if self.current is None or self.current[0] != the_run.run_dir:
            self.finish()
            settings = {k: v for k, v in the_run.to_json().items() if k != "manifest_digest"}
            name = f"{the_run.fold.name}_{the_run.run_dir.name}"
            self.current = (the_run.run_dir, open_tracker(self.kind, name, self.log_dir, settings))
        tracker = self.current[1]
        if tracker is not None and record["round"] != "final":
            tracker.log(record, record["round"])

    def finish(self) -> None:
        if self.current is not None and self.current[1] is not None:
            self.current[1].finish()
        self.current = None


@app.command()
def rerun(
    folder: Path = typer.Argument(
        ...,
        metavar="FOLDER",
        help="A run folder of after run (config.json) or an output folder of after train "
        "(result.json).",
    ),
    out: Path = typer.Option(..., help="New output folder.", show_default=False),
    seed: int | None = typer.Option(None, help="Another seed (default: the saved one)."),
    threads: int | None = THREADS,
    device: str = DEVICE,
) -> None:
    """Run an experiment again from its saved settings, into a new folder: the same manifest,
    folds, fold, backbone and options (and seed, unless --seed)."""
    from after.dist import use_compute
    from after.loop.folder import RunFolder
    from after.loop.runner import Run

    use_compute(device, threads)
    if RunFolder(folder).config.is_file():
        old = Run.from_dir(folder)
        s = old.al.seed if seed is None else seed
        new = dataclasses.replace(
            old,
            run_dir=out,
            al=dataclasses.replace(old.al, seed=s),
            train=dataclasses.replace(old.train, seed=s),
        )
        if RunFolder(out).config.exists():
            raise AfterError(f"{out}: holds a run already; choose another --out")
        continue_run(new, None, None)
        return
    record = read_json(folder / "result.json", "give a run folder of after run or after train")
    if "manifest" not in record:
        raise AfterError(
            f"{folder / 'result.json'}: made before results named their manifest and folds; run "
            "after train again with the options in its config"
        )
    m, chosen = load_fold(Path(record["manifest"]), Path(record["folds"]), record["fold"])
    config = TrainConfig.from_record(
        {**record["config"], **({} if seed is None else {"seed": seed})}
    )
    paths = {"manifest": record["manifest"], "folds": record["folds"]}
    cache = Path(record["cache_dir"]) if record.get("cache_dir") else None
    train_and_save(m, chosen, record["backbone"], config, out, cache, paths, None, None)
