"""Active-learning commands: run, compare, and rerun (an experiment again from its settings)."""

from __future__ import annotations

import dataclasses
import json
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
    LABELS_FROM,
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
    ctx: typer.Context,
    manifest: Path | None = typer.Option(None, help="Manifest (JSONL)."),
    folds_file: Path = typer.Option(
        Path("folds.json"), "--folds", help="Folds of this manifest (with --fold)."
    ),
    fold: str | None = typer.Option(
        None,
        help="Fold name or index. Without it the whole manifest is the pool: no dev or test "
        "split (an audit set, --audit, estimates the accuracy).",
    ),
    backbone: str = SAME_BACKBONE,
    *,
    al: ALConfig,
    out: Path | None = typer.Option(
        None, help="Run folder; the same command again continues the run in it."
    ),
    resume: Path | None = typer.Option(
        None,
        help="Continue the run in this folder (its settings are in its config.json); with a "
        "longer --schedule that starts with its own, a finished run takes more rounds.",
    ),
    labels_from: Path | None = LABELS_FROM,
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
    from after.loop.runner import Run, read_carried, settings_differ, whole_pool

    if world_size() > 1:
        raise AfterError(
            "after run starts its own worker processes: run it as one process (not under "
            "accelerate launch or torchrun) and pass --num-processes N"
        )
    use_compute(device, threads)
    typed = _typed_settings(ctx)
    if resume is not None:
        if labels_from is not None:
            raise AfterError(
                f"--labels-from starts a new run; {resume} has its labels already (continue it "
                "with --resume alone, or start a new run with --labels-from and --out)"
            )
        the_run = Run.from_dir(resume)
        if config.num_processes not in (1, the_run.train.num_processes):
            raise AfterError(
                f"{resume} was started with --num-processes {the_run.train.num_processes}, "
                "which is part of its settings (a step's batch spans the processes); resume "
                "it without --num-processes"
            )
        given = {"backbone": backbone, "al": al.to_dict(), "train": config.to_dict()}
        _refuse_changes(the_run, given, typed)
        continue_run(_grown(the_run, al.schedule, "schedule" in typed), log_with, log_dir)
        return
    if manifest is None or out is None:
        raise AfterError(
            "give --manifest and --out for a new run (and --fold with a folds file), or "
            "--resume RUN_DIR"
        )
    if fold is None:
        if "folds_file" in typed:
            raise AfterError(f"--folds {folds_file}: give the fold to run on with --fold")
        m = Manifest.from_jsonl(manifest)
        chosen, folds_path = whole_pool(m), None
    else:
        m, chosen = load_fold(manifest, folds_file, fold)
        folds_path = str(folds_file.resolve())
    cache = str((cache_dir or default_cache_dir()).resolve())
    the_run = Run(m, str(manifest.resolve()), folds_path, chosen, backbone, al, config, out, cache)
    if RunFolder(out).config.is_file():  # the same command again: continue, if the same run
        found = read_json(RunFolder(out).config, "restore it from a backup, or another --out")
        started_from = found.get("labels_from") if isinstance(found, dict) else None
        if labels_from is not None and started_from != str(labels_from.resolve()):
            raise AfterError(
                f"{out}: holds a run already; --labels-from starts a new one: choose another --out"
            )
        wanted = the_run.settings()
        differ = settings_differ(found, wanted) if isinstance(found, dict) else ["config"]
        if differ and differ != ["al.schedule"]:
            raise AfterError(
                f"{out}: holds a run made with other settings ({', '.join(differ)}); its settings "
                f"are fixed: continue it as it is with after run --resume {out}, start a new run "
                f"from its labels (--labels-from {out} --out NEW), or choose another --out"
            )
        old = Run.from_dir(out)
        continue_run(_grown(old, al.schedule, bool(differ)), log_with, log_dir)
        return
    carried = None
    if labels_from is not None:
        carried, notes = read_carried(labels_from, the_run)
        the_run.labels_from = carried.source
        for note in notes:
            err.print(f"--labels-from {labels_from}: {note}", highlight=False)
    continue_run(the_run, log_with, log_dir, carried=carried)


def _typed_settings(ctx: typer.Context) -> set[str]:
    """The options of this command given on the command line (or by environment), by parameter
    name: a resumed run must know which settings were asked for, not defaulted."""
    typed = set()
    for p in ctx.command.params:
        source = ctx.get_parameter_source(p.name) if p.name else None
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            typed.add(str(p.name))
    return typed


def _refuse_changes(the_run: Any, given: dict[str, Any], typed: set[str]) -> None:
    """A resumed run keeps the settings it started with: refuse a typed option that would
    change one (silently ignoring it would look as if it applied). --schedule may grow."""
    from after.cli.configs import option_name
    from after.cli.options import AL_OPTIONS, TRAIN_OPTIONS

    own = the_run.to_json()
    changed = []
    for group, specs in (("al", AL_OPTIONS), ("train", TRAIN_OPTIONS)):
        for name, value in given[group].items():
            asked = name in typed and name not in ("schedule", "num_processes")
            if asked and json.loads(json.dumps(value)) != own[group].get(name, value):
                spec = specs.get(name)
                changed.append(spec.flag(name) if spec else option_name(name))
    if "backbone" in typed and given["backbone"] != own["backbone"]:
        changed.append("--backbone")
    if changed:
        raise AfterError(
            f"{the_run.run_dir}: a run keeps the settings it started with, so "
            f"{', '.join(sorted(set(changed)))} cannot change; resume it without them (a longer "
            f"--schedule that starts with its own gives it more rounds), or start a new run from "
            f"its labels: after run --labels-from {the_run.run_dir} ... --out NEW"
        )


def _grown(the_run: Any, schedule: tuple[str, ...], asked: bool) -> Any:
    """The run with `schedule` if that was asked for and grows it (`5%` and `0.05` are one
    budget); the run as it is when `schedule` is its own or the start of it (the command it was
    started with, again)."""
    from after.loop.runner import grow_schedule, schedule_relation

    own = tuple(the_run.al.schedule)
    if not asked or schedule_relation(the_run, schedule) in ("same", "prefix"):
        return the_run
    grown = grow_schedule(the_run, schedule)
    err.print(
        f"{the_run.run_dir}: schedule grown from {','.join(own)} to {','.join(schedule)}; every "
        "label, round and model it had is kept",
        highlight=False,
    )
    return grown


def continue_run(
    the_run: Any, log_with: str | None, log_dir: Path | None, *, carried: Any = None
) -> None:
    """Start (or continue) an active-learning run and report its rounds."""
    from after.loop.runner import check_run, run_loop, start_run
    from after.loop.state import LoopState
    from after.metrics import AUDIT_METHOD, describe_audit
    from after.tracking import open_tracker

    exists = the_run.folder.state.is_file()
    if not exists and carried is None and the_run.labels_from:  # its start was cut off
        from after.loop.runner import read_carried

        carried, _ = read_carried(the_run.labels_from, the_run)
    try:
        audit = LoopState.load(the_run.run_dir).audit if exists else None
        warnings = check_run(the_run, audit=audit, carried=carried)
    except AfterError as e:
        if not exists:
            raise
        raise AfterError(
            f"{the_run.run_dir} cannot continue: {e}. Its settings are fixed; start a new run "
            f"from its labels with the fix (after run --labels-from {the_run.run_dir} ... --out "
            "NEW)"
        ) from None
    for warning in warnings:
        err.print(f"warning: {warning}", highlight=False)
    state = LoopState.load(the_run.run_dir) if exists else start_run(the_run, carried)
    if state.rounds or state.phase != "select":
        err.print(f"continuing {the_run.run_dir} at round {state.round} ({state.phase})")
    elif state.carried:
        c = state.carried
        err.print(
            f"{the_run.run_dir}: starts from {c['labels']} label(s) and {c['audit_labels']} audit "
            f"label(s) of {c['from']}",
            highlight=False,
        )
    if not the_run.fold.test:
        err.print(
            "no test split"
            + (" (no folds: the whole manifest is the pool)" if not the_run.has_folds else "")
            + (
                f": accuracy is estimated on the audit set ({len(state.audit)} clips; "
                f"{AUDIT_METHOD})"
                if state.audit
                else ": no accuracy figure (add an audit set with --audit N to a new run)"
            ),
            highlight=False,
        )
    settings = {k: v for k, v in the_run.to_json().items() if k != "manifest_digest"}
    log_folder = log_dir or the_run.run_dir / "logs"
    tracker = open_tracker(log_with, the_run.run_dir.name, log_folder, settings)

    def scores(r: dict[str, Any]) -> str:
        parts = []
        if "audit_n" in r:
            parts.append(describe_audit(r))
        if "test_ua" in r:
            parts.append(f"test UA {100 * r['test_ua']:.2f}%")
        if r.get("dev_ua") is not None:
            parts.append(f"dev UA {100 * r['dev_ua']:.2f}%")
        return ", ".join(parts) or "no test split, no audit set"

    def show(r: dict[str, Any]) -> None:
        if r["round"] == "final":
            console.print(
                f"final: {r['model']}, {r['num_labeled']} labeled, {scores(r)}, train "
                f"{r['train_s']:.1f}s",
                highlight=False,
            )
            return
        if tracker:
            tracker.log(r, r["round"])
        console.print(
            f"round {r['round']}: {r['num_labeled']} labeled ({100 * r['fraction']:.1f}%, "
            f"{r['minutes']:.1f} min), {scores(r)}, train {r['train_s']:.1f}s",
            highlight=False,
        )

    try:
        state = run_loop(the_run, state, on_round=show, progress=True)
    finally:
        if tracker:
            tracker.finish()
    if state.phase == "done":
        final = f", {the_run.folder.final_model.name}/" if state.final else ""
        schedule = ",".join(the_run.al.schedule)
        more = (
            ""
            if state.stopped_because == "pool exhausted"
            else f"; more rounds: after run --resume {the_run.run_dir} --schedule {schedule},MORE"
        )
        console.print(
            f"{the_run.run_dir}: done ({state.stopped_because}); rounds.csv, model/{final}{more}",
            highlight=False,
        )
    elif the_run.al.oracle == "human":
        mixed = sum(1 for i in state.pending if i in set(state.audit))
        among = f" ({mixed} of them audit clips, mixed in)" if mixed else ""
        console.print(
            f"{the_run.run_dir}: round {state.round} waits for {len(state.pending)} label(s)"
            f"{among}. Label them with: after label serve {the_run.run_dir}  (or after label "
            f"export / import), then: after run --resume {the_run.run_dir}",
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
