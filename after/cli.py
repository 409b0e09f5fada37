"""The `after` command line: the only place that parses arguments."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from after.config import ALConfig, TaptConfig, TrainConfig
from after.data.audio import DECODE_LIMIT_S, MAX_DURATION_S, validate_manifest, write_rejections
from after.data.folds import PROTOCOLS, Folds, make_folds
from after.data.manifest import Manifest, shared_audio_warning
from after.data.stats import summarize
from after.errors import AfterError, cut
from after.io import atomic_write_json, atomic_write_text, read_json
from after.progress import progress_bar

app = typer.Typer(
    help="Label-efficient speech emotion recognition with task adaptation and active learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    # Plain help: readable when piped and at any width; flags listed without a value.
    rich_markup_mode=None,
)
# What these print quotes the user's paths, ids and labels: never read it as rich markup (a path
# with "[/]" would crash, a label "[laughter]" would vanish) or as emoji codes.
console = Console(soft_wrap=True, markup=False, emoji=False)
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False)
MAX_LINE = 1000  # characters of one line of an error message


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"after {version('after')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        is_eager=True,
        callback=_print_version,
    ),
) -> None:
    """Label-efficient speech emotion recognition with task adaptation and active learning."""


def _table(*columns: str, title: str | None = None, right: tuple[str, ...] = ()) -> Table:
    """A table whose cells fold onto more lines where the terminal is narrow (rich would cut
    them to "emod…")."""
    table = Table(title=title, title_justify="left")
    for name in columns:
        table.add_column(name, justify="right" if name in right else "left", overflow="fold")
    return table


def _print_table(table: Table, to: Console) -> None:
    """Print `table` whole: in a terminal at its width; piped or in a file at the table's own
    width (a console there is 80 columns, which would fold every wide table)."""
    if to.is_terminal:
        to.print(table)
        return
    width = to.measure(table, options=to.options.update_width(100_000)).maximum
    Console(file=to.file, width=width, soft_wrap=True, markup=False, emoji=False).print(table)


class _Interrupted(BaseException):
    """Ctrl-C, raised by our SIGINT handler: click turns a KeyboardInterrupt into "Aborted!"
    (exit 1) before `main` could say how to continue."""


def _on_sigint(signum: int, frame: object) -> None:
    raise _Interrupted


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one clear message (exit 2), never a traceback; Ctrl-C
    says how to continue (exit 130)."""
    import shlex
    import signal
    import threading

    args = sys.argv[1:] if argv is None else list(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _on_sigint) if in_main_thread else None
    try:
        app(args=args, prog_name="after")
    except AfterError as e:
        _print_error(e)
        raise SystemExit(2) from None
    except OSError as e:  # a full disk, a read-only folder: what, where, what to do
        from after.io import os_error_message

        _print_error(AfterError(os_error_message(e)))
        raise SystemExit(2) from None
    except (KeyboardInterrupt, _Interrupted):
        again = cut(shlex.join(["after", *args]), MAX_LINE)
        err.print(f"interrupted; continue with: {again} (what was saved is kept)", highlight=False)
        raise SystemExit(130) from None
    except SystemExit as e:
        if e.code in (0, None) and "torch.distributed" in sys.modules:  # else no group to leave
            from after.dist import leave_process_group

            leave_process_group()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _print_error(e: Exception) -> None:
    """`error: MESSAGE` on stderr, each line cut to `MAX_LINE` characters (a message may quote a
    value megabytes long)."""
    lines = [cut(line, MAX_LINE) for line in str(e).split("\n")]
    err.print(Text("error:", style="bold red"), "\n".join(lines), highlight=False)


def _validate(
    manifest: Manifest,
    *,
    min_duration: float,
    max_duration: float,
    silence_dbfs: float,
    labels: list[str] | None = None,
    workers: int = 4,
) -> tuple[Manifest, list[Any]]:
    with progress_bar(transient=True) as bar:
        task = bar.add_task("checking audio", total=len(manifest), info="")
        report = validate_manifest(
            manifest,
            min_duration_s=min_duration,
            max_duration_s=max_duration,
            silence_dbfs=silence_dbfs,
            labels=labels,
            num_workers=workers,
            on_item=lambda: bar.advance(task),
        )
    return report.usable, report.rejected


def _warn_shared_audio(m: Manifest) -> None:
    """A warning when one audio file backs several rows (counted twice, or a speaker leak)."""
    warning = shared_audio_warning(m)
    if warning is not None:
        err.print(f"warning: {warning}", highlight=False)


def _print_rejections(rejected: list[Any], limit: int = 50) -> None:
    table = _table("id", "reason", "detail", "fix", title=f"{len(rejected)} unusable clip(s)")
    for r in rejected[:limit]:
        table.add_row(cut(r.id), r.reason, cut(r.detail), r.fix)
    _print_table(table, err)
    if len(rejected) > limit:
        err.print(f"... and {len(rejected) - limit} more")


MIN_DURATION = typer.Option(0.25, help="Clips shorter than this (seconds) are rejected.")
MAX_DURATION = typer.Option(
    MAX_DURATION_S,
    min=0.0,
    max=DECODE_LIMIT_S,
    help="Clips longer than this (seconds) are rejected.",
)
SILENCE_DBFS = typer.Option(
    -60.0, help="Clips whose loudest 50 ms is below this level (dBFS) are rejected as silent."
)
WORKERS = typer.Option(4, min=1, help="Threads reading audio.")


@app.command()
def prepare(
    corpus: str = typer.Argument(
        ...,
        metavar="CORPUS",
        help="iemocap, msp-podcast, crema-d, ravdess, emodb, savee, tess, meld, csv, folder.",
    ),
    data_dir: Path = typer.Option(
        ..., help="The corpus folder (for csv: the CSV file).", show_default=False
    ),
    out: Path = typer.Option(Path("manifest.jsonl"), help="Manifest to write (JSONL)."),
    speaker_regex: str | None = typer.Option(
        None, help="folder only: regex with a (?P<speaker>...) group matched on file names."
    ),
    test_set: str | None = typer.Option(
        None, help="msp-podcast only: the Split_Set that becomes the test split (default Test1)."
    ),
    min_duration: float = MIN_DURATION,
    max_duration: float = MAX_DURATION,
    silence_dbfs: float = SILENCE_DBFS,
    workers: int = WORKERS,
) -> None:
    """Build a manifest from a corpus folder, checking every clip's audio."""
    from after.data.corpora import prepare as prepare_corpus

    given = {"speaker_regex": speaker_regex, "test_set": test_set}
    options = {k: v for k, v in given.items() if v is not None}
    found = prepare_corpus(corpus, data_dir, **options)
    usable, rejected = _validate(
        found,
        min_duration=min_duration,
        max_duration=max_duration,
        silence_dbfs=silence_dbfs,
        workers=workers,
    )
    rejected_path = out.with_name(f"{out.name.removesuffix('.jsonl')}.rejected.jsonl")
    if rejected:
        write_rejections(rejected_path, rejected)
        _print_rejections(rejected)
        err.print(f"rejected clips and reasons: {rejected_path}")
    else:
        rejected_path.unlink(missing_ok=True)
    if not len(usable):
        raise AfterError(f"{corpus}: no usable clip in {data_dir}; see {rejected_path}")
    usable.to_jsonl(out)
    _warn_shared_audio(usable)
    console.print(
        f"{out}: {len(usable)} clips, {len(usable.speakers)} speakers, "
        f"{len(usable.labels)} labels ({cut(', '.join(usable.labels))})",
        highlight=False,
    )


@app.command()
def validate(
    manifest: Path = typer.Argument(..., metavar="MANIFEST", help="Manifest (JSONL) to check."),
    labels: str | None = typer.Option(
        None, help="Comma-separated allowed labels; others are reported as unknown_label."
    ),
    min_duration: float = MIN_DURATION,
    max_duration: float = MAX_DURATION,
    silence_dbfs: float = SILENCE_DBFS,
    workers: int = WORKERS,
) -> None:
    """Check every clip of a manifest and print a table of problems (exit 1 if any)."""
    m = Manifest.from_jsonl(manifest)
    allowed = [s.strip() for s in labels.split(",") if s.strip()] if labels else None
    usable, rejected = _validate(
        m,
        min_duration=min_duration,
        max_duration=max_duration,
        silence_dbfs=silence_dbfs,
        labels=allowed,
        workers=workers,
    )
    if rejected:
        _print_rejections(rejected)
    _warn_shared_audio(m)
    console.print(
        f"{manifest}: {len(usable)} usable, {len(rejected)} with problems", highlight=False
    )
    if rejected:
        raise typer.Exit(1)


@app.command()
def folds(
    manifest: Path = typer.Argument(..., metavar="MANIFEST", help="Manifest (JSONL)."),
    out: Path = typer.Option(Path("folds.json"), help="Folds file to write."),
    protocol: str = typer.Option(
        "loso", help=f"One of {', '.join(PROTOCOLS)} (loso-session: IEMOCAP)."
    ),
    num_folds: int = typer.Option(5, help="kfold only: number of speaker groups."),
    dev_speakers: int = typer.Option(
        1, min=0, help="Speakers (sessions for loso-session) per fold moved from train to dev."
    ),
    seed: int = typer.Option(0, help="Seed for the speaker shuffle and the dev choice."),
    allow_speaker_overlap: bool = typer.Option(
        False, help="official only: accept a partition sharing speakers across sides (MELD)."
    ),
    shared_speakers: bool = typer.Option(
        False, help="A speaker id found in several corpora is one person (default: refuse)."
    ),
) -> None:
    """Write speaker-independent train/dev/test folds."""
    m = Manifest.from_jsonl(manifest)
    _warn_shared_audio(m)
    result = make_folds(
        m,
        protocol,  # type: ignore[arg-type]  # checked by make_folds against PROTOCOLS
        num_folds=num_folds,
        num_dev_groups=dev_speakers,
        seed=seed,
        allow_speaker_overlap=allow_speaker_overlap,
        shared_speakers=shared_speakers,
    )
    result.to_json(out)
    _print_folds(summarize(m, result)["folds"])
    console.print(f"{out}: {len(result)} {protocol} folds", highlight=False)


def _print_folds(info: dict[str, Any]) -> None:
    table = _table(
        "fold",
        "test speakers",
        "dev speakers",
        "train clips",
        "dev clips",
        "test clips",
        title=f"folds ({info['protocol']}, seed {info['seed']})",
        right=("train clips", "dev clips", "test clips"),
    )
    for f in info["folds"]:
        table.add_row(
            cut(f["name"]),
            cut(",".join(f["test_groups"])) or "-",
            cut(",".join(f["dev_groups"])) or "-",
            str(f["train"]["total"]),
            str(f["dev"]["total"]),
            str(f["test"]["total"]),
        )
    _print_table(table, console)


@app.command()
def stats(
    manifest: Path = typer.Argument(..., metavar="MANIFEST", help="Manifest (JSONL)."),
    folds_file: Path | None = typer.Option(None, "--folds", help="Also count clips per fold."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Summarise a manifest: clips per label, per speaker, per fold, and durations."""
    m = Manifest.from_jsonl(manifest)
    _warn_shared_audio(m)
    f = Folds.from_json(folds_file, m) if folds_file else None
    s = summarize(m, f)
    if as_json:
        sys.stdout.write(json.dumps(s, indent=2) + "\n")
        return
    _print_summary(s)


def _print_summary(s: dict[str, Any]) -> None:
    console.print(
        f"{s['num_clips']} clips ({s['num_labeled']} labeled), {s['num_speakers']} speakers, "
        f"corpora: {', '.join(f'{k} ({v})' for k, v in s['corpora'].items())}",
        highlight=False,
    )
    labels = _table("label", "clips", "share", title="clips per label", right=("clips", "share"))
    total = max(1, s["num_labeled"])
    for lab, n in s["labels"].items():
        labels.add_row(cut(lab), str(n), f"{100 * n / total:.1f}%")
    _print_table(labels, console)
    names = [*s["labels"], "(unlabeled)"]
    heads = [cut(n) for n in names]
    speakers = _table(
        "speaker", *heads, "total", title="clips per speaker", right=(*heads, "total")
    )
    for spk, counts in s["speakers"].items():
        speakers.add_row(
            cut(spk), *(str(counts.get(lab, 0)) for lab in names), str(sum(counts.values()))
        )
    _print_table(speakers, console)
    d = s["durations"]
    if d["num_known"]:
        console.print(
            f"durations: {d['total_min']} min in all; min {d['min_s']} s, "
            f"median {d['median_s']} s, mean {d['mean_s']} s, max {d['max_s']} s "
            f"({d['num_at_max']} clips at the max); {d['num_unknown']} unknown",
            highlight=False,
        )
    if "folds" in s:
        _print_folds(s["folds"])


@app.command()
def synth(
    out_dir: Path = typer.Option(Path("data/synth"), "--out", help="Folder for audio + manifest."),
    speakers: int = typer.Option(8, min=2, help="Voices used as speakers."),
    sentences: int = typer.Option(12, min=1, help="Sentences each speaker says in each emotion."),
    emotions: str = typer.Option(
        "anger,happiness,neutral,sadness", help="Comma-separated; also fear, disgust."
    ),
    snr_db: float | None = typer.Option(None, help="Add noise at this SNR (dB); default clean."),
    seed: int = typer.Option(0, help="Seed for voices, prosody jitter and noise."),
) -> None:
    """Synthesize the built-in demo corpus with espeak-ng (no download)."""
    from after.data.synth import synthesize

    m = synthesize(
        out_dir,
        num_speakers=speakers,
        num_sentences=sentences,
        emotions=tuple(e.strip() for e in emotions.split(",") if e.strip()),
        snr_db=snr_db,
        seed=seed,
    )
    console.print(f"{out_dir / 'manifest.jsonl'}: {len(m)} clips, {len(m.speakers)} speakers")


NUM_PROCESSES = typer.Option(
    1,
    min=1,
    help="Processes (DDP: one per GPU, or gloo on CPUs) to start; not with accelerate launch or "
    "torchrun, whose processes are used.",
)
# TAPT steps when no GPU is there: a run of minutes for Whisper tiny.en on a few hundred clips.
CPU_TAPT_STEPS = 300
GRAD_ACCUM = typer.Option(1, min=1, help="Batches per device accumulated into one step.")
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
LOG_WITH = typer.Option(
    None,
    help="Also log settings and metrics to an Accelerate tracker: tensorboard (pip install "
    "tensorboard), wandb, mlflow, aim, comet_ml, clearml, dvclive, swanlab, trackio.",
)
LOG_DIR = typer.Option(None, help="The tracker's folder (default: OUT/logs).")


@app.command()
def tapt(
    manifest: Path = typer.Option(..., help="Manifest (JSONL).", show_default=False),
    folds_file: Path = typer.Option(Path("folds.json"), "--folds", help="Folds of this manifest."),
    fold: str = typer.Option(..., help="Fold name or index; only its training audio is used."),
    backbone: str = typer.Option(
        "whisper-tiny.en",
        help="whisper-tiny.en, whisper-base (offline), a folder, a hub id (local cache), or "
        "scratch:SIZE.",
    ),
    out: Path = typer.Option(
        ..., help="Output folder (a from_pretrained model).", show_default=False
    ),
    steps: int | None = typer.Option(
        None,
        min=1,
        help=f"Optimiser steps (default: {TaptConfig.steps} on a GPU, {CPU_TAPT_STEPS} on a CPU, "
        "a run of minutes).",
    ),
    batch_size: int = typer.Option(TaptConfig.batch_size, min=1, help="Clips per step and device."),
    max_seconds: float = typer.Option(TaptConfig.max_seconds, help="Random crop length (s)."),
    lr: float = typer.Option(TaptConfig.lr, help="Peak learning rate."),
    freeze_cnn: bool = typer.Option(
        TaptConfig.freeze_cnn,
        "--freeze-cnn/--train-cnn",
        help="Freeze the CNN feature encoder. TAPT trains it by default, as wav2vec 2.0's "
        "pre-training does; fine-tuning (train, run) freezes it by default, as its fine-tuning "
        "does.",
    ),
    seed: int = typer.Option(TaptConfig.seed, help="Seed for batches, crops, masks and init."),
    precision: str = typer.Option(TaptConfig.precision, help="auto, no, fp16 or bf16."),
    save_every: int = typer.Option(TaptConfig.save_every, min=1, help="Checkpoint every N steps."),
    resume: bool = typer.Option(
        False, hidden=True, help="Old spelling: a stopped run in --out continues by itself."
    ),
    grad_accum: int = GRAD_ACCUM,
    num_processes: int = NUM_PROCESSES,
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

    use_compute(device, threads)
    m = Manifest.from_jsonl(manifest)
    chosen = Folds.from_json(folds_file, m).get(int(fold) if fold.isdigit() else fold)
    config = TaptConfig(
        steps=steps or (TaptConfig.steps if torch.cuda.is_available() else CPU_TAPT_STEPS),
        batch_size=batch_size,
        max_seconds=max_seconds,
        lr=lr,
        freeze_cnn=freeze_cnn,
        seed=seed,
        precision=precision,  # type: ignore[arg-type]  # checked by TaptConfig
        save_every=save_every,
        grad_accum=grad_accum,
        num_processes=num_processes,
    )
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


# ---- fine-tuning -------------------------------------------------------------------------------

EPOCHS = typer.Option(TrainConfig.epochs, min=1, help="Maximum epochs.")
MIN_STEPS = typer.Option(
    TrainConfig.min_steps,
    min=0,
    help="At least this many optimiser steps per fit: a small labeled set takes several passes "
    "per epoch (0: just the epochs).",
)
BATCH = typer.Option(TrainConfig.batch_size, min=1, help="Clips per step and device.")
LR = typer.Option(TrainConfig.lr, help="Learning rate of the backbone.")
HEAD_LR = typer.Option(TrainConfig.head_lr, help="Learning rate of the new head.")
PATIENCE = typer.Option(
    TrainConfig.patience, min=0, help="Stop after N epochs without a better dev UA (0: never)."
)
SOFT = typer.Option(False, "--soft-labels", help="Train on annotator vote distributions.")
WEIGHTED = typer.Option(
    True, "--class-weights/--no-class-weights", help="Weight the loss by inverse class frequency."
)
FREEZE = typer.Option(
    True,
    "--freeze-cnn/--train-cnn",
    help="Freeze the convolutional front end (wav2vec 2.0's CNN, Whisper's conv stem).",
)
FREEZE_LAYERS = typer.Option(
    0, min=0, help="Also freeze the encoder's bottom N layers (Whisper: cached with the front end)."
)
NUM_LAYERS = typer.Option(
    None, min=1, help="Keep only the encoder's bottom N layers (default: all)."
)
LAYER_SUM = typer.Option(
    TrainConfig.layer_sum,
    "--layer-sum/--last-layer",
    help="Whisper: the head reads a learned weighted sum of the layers from --freeze-layers up, "
    "or the last layer.",
)
CACHE = typer.Option(
    None, "--cache-dir", help="Feature cache (default $AFTER_CACHE_DIR or ~/.cache/after)."
)
SEED = typer.Option(0, help="Seed of the head init, batches and crops.")
FEATURE_VIEW = typer.Option(
    TrainConfig.feature_view,
    help="Frozen features: clip (as extracted), speaker (standardised per speaker on that "
    "speaker's clips, test speakers included: transductive, no label read), or auto (chosen with "
    "C by the inner cross-validation).",
)
SELF_TRAINING = typer.Option(
    TrainConfig.self_training,
    min=0.0,
    help="Frozen features: weight of self-training on the unlabeled pool (confident predictions "
    "join the fit; 0: off).",
)
PSEUDO_THRESHOLD = typer.Option(
    TrainConfig.pseudo_threshold,
    min=0.0,
    max=1.0,
    help="Self-training: the smallest predicted probability a pool clip needs to join.",
)


FOLD_LIST = typer.Option(
    [],
    "--fold",
    help="A fold name or index; give --fold once per fold (or a comma-separated list). Default: "
    "every fold.",
    show_default=False,
)


def _chosen_folds(all_folds: Folds, given: list[str]) -> list[Any]:
    """The folds `--fold` names (repeated, or comma-separated), or all of them."""
    names = [x.strip() for item in given for x in item.split(",") if x.strip()]
    if not names or names == ["all"]:
        return list(all_folds.folds)
    return [all_folds.get(int(x) if x.isdigit() else x) for x in dict.fromkeys(names)]


def _seeds(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise AfterError(f"--seeds {text!r}: give whole numbers separated by commas") from None


def _load_fold(manifest: Path, folds_file: Path, fold: str) -> tuple[Manifest, Any]:
    m = Manifest.from_jsonl(manifest)
    return m, Folds.from_json(folds_file, m).get(int(fold) if fold.isdigit() else fold)


def _corpus_name(m: Manifest) -> str:
    return ", ".join(sorted({u.corpus for u in m}))


@app.command()
def train(
    manifest: Path = typer.Option(..., help="Manifest (JSONL).", show_default=False),
    folds_file: Path = typer.Option(Path("folds.json"), "--folds", help="Folds of this manifest."),
    fold: str = typer.Option(..., help="Fold name or index."),
    backbone: str = typer.Option(
        "whisper-tiny.en",
        help="whisper-tiny.en, whisper-base (offline), a folder (a TAPT output...), a hub id "
        "(local cache), scratch:SIZE; frozen features: frozen:ENCODER[@LAYER], egemaps, "
        "resemblyzer.",
    ),
    out: Path = typer.Option(..., help="Output folder.", show_default=False),
    epochs: int = EPOCHS,
    min_steps: int = MIN_STEPS,
    batch_size: int = BATCH,
    lr: float = LR,
    head_lr: float = HEAD_LR,
    patience: int = PATIENCE,
    soft_labels: bool = SOFT,
    class_weighted: bool = WEIGHTED,
    freeze_cnn: bool = FREEZE,
    freeze_layers: int = FREEZE_LAYERS,
    feature_view: str = FEATURE_VIEW,
    num_layers: int | None = NUM_LAYERS,
    layer_sum: bool = LAYER_SUM,
    cache_dir: Path | None = CACHE,
    seed: int = SEED,
    grad_accum: int = GRAD_ACCUM,
    num_processes: int = NUM_PROCESSES,
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
    m, chosen = _load_fold(manifest, folds_file, fold)
    config = TrainConfig(
        epochs=epochs,
        min_steps=min_steps,
        batch_size=batch_size,
        lr=lr,
        head_lr=head_lr,
        patience=patience,
        soft_labels=soft_labels,
        class_weighted=class_weighted,
        freeze_cnn=freeze_cnn,
        freeze_layers=freeze_layers,
        feature_view=feature_view,
        num_layers=num_layers,
        layer_sum=layer_sum,
        seed=seed,
        grad_accum=grad_accum,
        num_processes=num_processes,
    )
    paths = {"manifest": str(manifest.resolve()), "folds": str(folds_file.resolve())}
    _train_and_save(m, chosen, backbone, config, out, cache_dir, paths, log_with, log_dir)


def _train_and_save(
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
        "corpus": _corpus_name(m),
        "backbone": backbone,
        **paths,
        "cache_dir": str(cache_dir.resolve()) if cache_dir else None,
        **run,
        "config": settings,
    }
    save_result(out, result, fold=chosen.name, corpus=record["corpus"])
    atomic_write_json(out / "result.json", record)
    plot_confusion(test, out / "confusion.png", f"{backbone}, fold {chosen.name} (test)")
    _log_fit(log_with, log_dir or out / "logs", out.name, record, result.history)
    console.print(
        f"fold {chosen.name} test: UA {100 * test['ua']:.2f}%, WA {100 * test['wa']:.2f}% "
        f"({test['num_clips']} clips); model in {out / 'model'}",
        highlight=False,
    )


def _log_fit(
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
    manifest: Path = typer.Option(..., help="Manifest (JSONL).", show_default=False),
    folds_file: Path = typer.Option(Path("folds.json"), "--folds", help="Folds of this manifest."),
    fold: str = typer.Option(..., help="Fold name or index."),
    split: str = typer.Option("test", help="test or dev."),
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
    if split not in ("test", "dev"):
        raise AfterError(f"--split {split!r}: choose test or dev")
    m, chosen = _load_fold(manifest, folds_file, fold)
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


@app.command()
def predict(
    files: list[Path] = typer.Argument(
        ...,
        metavar="FILES_OR_FOLDERS",
        help="Audio files (any format soundfile reads), or folders of them.",
    ),
    model: Path = typer.Option(..., help="Model folder.", show_default=False),
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
        _print_error(e)

    if speaker_by not in ("folder", "file"):
        raise typer.BadParameter(
            f"{speaker_by!r}: choose folder or file", param_hint="--speaker-by"
        )
    found = audio_files(files, on_error=report)
    clf = load_classifier(model)
    for record in predict_files(clf, found, on_error=report, speaker_by=speaker_by):
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
    if bad:
        raise typer.Exit(2)


@app.command()
def cv(
    manifest: Path = typer.Option(..., help="Manifest (JSONL).", show_default=False),
    folds_file: Path = typer.Option(Path("folds.json"), "--folds", help="Folds of this manifest."),
    fold: list[str] = FOLD_LIST,
    backbone: str = typer.Option("whisper-tiny.en", help="As for after train."),
    out: Path = typer.Option(..., help="Output folder.", show_default=False),
    seeds: str = typer.Option("0", help="Comma-separated seeds; every fold runs with each."),
    epochs: int = EPOCHS,
    min_steps: int = MIN_STEPS,
    batch_size: int = BATCH,
    lr: float = LR,
    head_lr: float = HEAD_LR,
    patience: int = PATIENCE,
    soft_labels: bool = SOFT,
    class_weighted: bool = WEIGHTED,
    freeze_cnn: bool = FREEZE,
    freeze_layers: int = FREEZE_LAYERS,
    feature_view: str = FEATURE_VIEW,
    num_layers: int | None = NUM_LAYERS,
    layer_sum: bool = LAYER_SUM,
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
    chosen = _chosen_folds(all_folds, fold)
    seed_list = _seeds(seeds)
    cache = cache_dir or default_cache_dir()
    config = TrainConfig(
        epochs=epochs,
        min_steps=min_steps,
        batch_size=batch_size,
        lr=lr,
        head_lr=head_lr,
        patience=patience,
        soft_labels=soft_labels,
        class_weighted=class_weighted,
        freeze_cnn=freeze_cnn,
        freeze_layers=freeze_layers,
        feature_view=feature_view,
        num_layers=num_layers,
        layer_sum=layer_sum,
    )

    def done(fit: FitResult, record: dict[str, Any]) -> None:
        name, test = f"{record['fold']}_seed{record['seed']}", record["test"]
        logged = {"corpus": _corpus_name(m), **record}
        _log_fit(log_with, log_dir or out / "logs", name, logged, fit.history)
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
        "corpus": _corpus_name(m),
        "protocol": all_folds.protocol,
        "num_folds": len(chosen),
        "seeds": seed_list,
        "training": describe_training(backbone, config.to_dict()),
    }
    table = cv_table(runs, protocol)
    atomic_write_text(out / "cv.md", table)
    atomic_write_json(out / "cv.json", {"protocol": protocol, "runs": runs})
    console.print(table, highlight=False)


# ---- active learning ---------------------------------------------------------------------------

STRATEGY_HELP = (
    "random, entropy, least-confidence, margin, bald, dbal-variation-ratios, dbal-max-entropy, "
    "badge, coreset, alps, cluster-margin, typiclust, probcover (underscores work too)"
)
SCHEDULE = typer.Option(
    "0.02,0.05,0.1,0.15,0.2",
    help="Labeled-set size after each round: shares of the pool (5% or 0.05; 100% or 1.0 is the "
    "whole pool), clip counts (a whole number: 40), or minutes of audio (5min).",
)
SPREAD = typer.Option(
    False,
    help="Spread each round's queries over speakers and predicted classes (round-robin over "
    "the strategy's top 4x picks).",
)
COLD_START = typer.Option(
    "kmeans",
    help="Seed set: kmeans, typiclust or probcover on clip embeddings (a frozen feature "
    "backbone's own, else Resemblyzer's), random, or alps.",
)


@app.command()
def run(
    manifest: Path | None = typer.Option(None, help="Manifest (JSONL)."),
    folds_file: Path = typer.Option(Path("folds.json"), "--folds", help="Folds of this manifest."),
    fold: str | None = typer.Option(None, help="Fold name or index."),
    backbone: str = typer.Option("whisper-tiny.en", help="As for after train."),
    strategy: str = typer.Option("entropy", help=STRATEGY_HELP),
    schedule: str = SCHEDULE,
    cold_start: str = COLD_START,
    warm_start: bool = typer.Option(
        False,
        help="Start each fine-tuned round from the last round's model (shrunk toward a fresh "
        "start by --shrink), trained for epochs' worth of steps over the new labels only.",
    ),
    shrink: float = typer.Option(
        ALConfig.shrink,
        min=0.0,
        max=1.0,
        help="With --warm-start: the share of the last round's weights kept (the rest: a fresh "
        "start).",
    ),
    spread: bool = SPREAD,
    finetune: str | None = typer.Option(
        None,
        help="The hybrid recipe: select with the frozen-features --backbone, then fine-tune this "
        "speech encoder (e.g. whisper-tiny.en) once on the final labeled set (model_finetuned/; "
        "the last row of rounds.csv).",
    ),
    target_ua: float | None = typer.Option(None, help="Stop once dev UA reaches this (0-1)."),
    stabilize: float | None = typer.Option(
        None, help="Stop once successive rounds agree (Cohen's kappa) this much on a stop set."
    ),
    mc_passes: int = typer.Option(10, min=2, help="MC-dropout passes (bald, dbal-*)."),
    surprisal_model: str | None = typer.Option(
        None, help="alps: a wav2vec 2.0 model with its pre-training head (an after tapt output)."
    ),
    oracle: str = typer.Option(
        "simulated",
        help="Who labels: simulated (the manifest's labels) or human (after label serve/import).",
    ),
    min_votes: int = typer.Option(1, min=1, help="human: answers a clip needs to count."),
    seed: int = SEED,
    out: Path | None = typer.Option(
        None, help="Run folder; the same command again continues the run in it."
    ),
    resume: Path | None = typer.Option(
        None, help="Continue the run in this folder (its settings are in its config.json)."
    ),
    epochs: int = EPOCHS,
    min_steps: int = MIN_STEPS,
    batch_size: int = BATCH,
    lr: float = LR,
    head_lr: float = HEAD_LR,
    patience: int = PATIENCE,
    soft_labels: bool = SOFT,
    class_weighted: bool = WEIGHTED,
    freeze_cnn: bool = FREEZE,
    freeze_layers: int = FREEZE_LAYERS,
    feature_view: str = FEATURE_VIEW,
    self_training: float = SELF_TRAINING,
    pseudo_threshold: float = PSEUDO_THRESHOLD,
    num_layers: int | None = NUM_LAYERS,
    layer_sum: bool = LAYER_SUM,
    cache_dir: Path | None = CACHE,
    grad_accum: int = GRAD_ACCUM,
    num_processes: int = typer.Option(
        1,
        min=1,
        help="Processes (DDP: one per GPU, or gloo on CPUs) that each round's fine-tuning and "
        "pool scoring run on; the loop itself stays one process.",
    ),
    threads: int | None = THREADS,
    device: str = DEVICE,
    log_with: str | None = LOG_WITH,
    log_dir: Path | None = LOG_DIR,
) -> None:
    """Active learning: cold start, then rounds of fine-tune, evaluate, query, label."""
    from after.cache import default_cache_dir
    from after.checks import strategy_name
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
        if num_processes not in (1, the_run.train.num_processes):
            raise AfterError(
                f"{resume} was started with --num-processes {the_run.train.num_processes}, "
                "which is part of its settings (a step's batch spans the processes); resume "
                "it without --num-processes"
            )
        _continue_run(the_run, log_with, log_dir)
        return
    if manifest is None or fold is None or out is None:
        raise AfterError("give --manifest, --fold and --out for a new run, or --resume RUN_DIR")
    m, chosen = _load_fold(manifest, folds_file, fold)
    al = ALConfig(
        strategy=strategy_name(strategy),
        schedule=tuple(x.strip() for x in schedule.split(",") if x.strip()),
        cold_start=cold_start,
        warm_start=warm_start,
        shrink=shrink,
        spread=spread,
        finetune=finetune,
        mc_passes=mc_passes,
        target_ua=target_ua,
        stabilize_kappa=stabilize,
        surprisal_model=surprisal_model,
        oracle=oracle,
        min_votes=min_votes,
        seed=seed,
    )
    config = TrainConfig(
        epochs=epochs,
        min_steps=min_steps,
        batch_size=batch_size,
        lr=lr,
        head_lr=head_lr,
        patience=patience,
        soft_labels=soft_labels,
        class_weighted=class_weighted,
        freeze_cnn=freeze_cnn,
        freeze_layers=freeze_layers,
        feature_view=feature_view,
        self_training=self_training,
        pseudo_threshold=pseudo_threshold,
        num_layers=num_layers,
        layer_sum=layer_sum,
        seed=seed,
        grad_accum=grad_accum,
        num_processes=num_processes,
    )
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
    _continue_run(the_run, log_with, log_dir)


def _continue_run(the_run: Any, log_with: str | None, log_dir: Path | None) -> None:
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


# ---- people label: after label ... ---------------------------------------------------------------

label_app = typer.Typer(
    help="People label the clips a run queries (runs started with --oracle human).",
    no_args_is_help=True,
)
app.add_typer(label_app, name="label")
RUN_DIR = typer.Argument(..., metavar="RUN_DIR", help="Run folder of after run --oracle human.")


@label_app.command("serve")
def label_serve(
    run_dir: Path = RUN_DIR,
    host: str = typer.Option(
        "127.0.0.1", help="Address to bind; other than loopback needs a token."
    ),
    port: int = typer.Option(8765, help="Port."),
    token: str | None = typer.Option(
        None, help="Access token (made for you when --host is not loopback)."
    ),
    show_guess: bool = typer.Option(
        False, help="Show the model's guess for each clip (off: it anchors annotators)."
    ),
    guidelines: Path | None = typer.Option(
        None,
        help="Annotation guidelines (text or Markdown: what each label means, what to do when "
        "unsure), shown on the page.",
    ),
) -> None:
    """A local web page to label the current round: keyboard-driven, several annotators. It
    prints two addresses: one for annotators, and one for the run's owner, who alone may start
    training the next round from the page."""
    import secrets

    from after.label.app import create_app, is_loopback, read_guidelines, url_host

    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    owner_key = secrets.token_urlsafe(18)
    text = read_guidelines(guidelines) if guidelines else ""
    options = {"token": token, "show_guess": show_guess, "owner_key": owner_key}
    create_app(run_dir, host=host, guidelines=text, **options)  # type: ignore[arg-type]
    url = f"http://{url_host(host)}:{port}/" + (f"?token={token}" if token else "")
    owner = url + ("&" if token else "?") + f"owner={owner_key}"

    def announce() -> None:
        console.print(f"labeling {run_dir}  (Ctrl+C to stop)", highlight=False)
        console.print(f"  annotators: {url}", highlight=False)
        console.print(
            f"  owner (may train the next round; keep it to yourself): {owner}", highlight=False
        )

    from after.label.app import serve

    serve(run_dir, host=host, port=port, guidelines=text, announce=announce, **options)  # type: ignore[arg-type]


@label_app.command("status")
def label_status(run_dir: Path = RUN_DIR) -> None:
    """The round's progress, answers per annotator, and agreement per round."""
    from after.label.app import LabelingSession
    from after.label.store import agreement

    session = LabelingSession(run_dir)
    p = session.progress()
    console.print(
        f"round {p['round']} ({p['phase']}): {p['decided']} of {p['total']} clips decided",
        highlight=False,
    )
    answers = session.store.annotations()
    columns = ("round", "answers", "skips", "annotators", "clips rated ≥ 2", "Fleiss κ")
    table = _table(*columns, "pairs agree", right=(*columns, "pairs agree"))
    for r in sorted({a.round for a in answers}):
        in_round = [a for a in answers if a.round == r]
        agree = agreement(in_round, session.labels)
        table.add_row(
            str(r),
            str(len(in_round)),
            str(sum(a.label is None for a in in_round)),
            str(len({a.annotator for a in in_round})),
            str(agree["clips"]),
            *(
                "—" if v != v else f"{v:.3f}"  # NaN: no clip rated twice
                for v in (agree["fleiss_kappa"], agree["pairwise_agreement"])
            ),
        )
    _print_table(table, console)


@label_app.command("export")
def label_export(
    run_dir: Path = RUN_DIR,
    out: Path = typer.Option(
        ..., help="Folder for labels.csv, tasks.csv and the Label Studio files."
    ),
    audio_url: str | None = typer.Option(
        None,
        help="Label Studio audio URL with {clip_id}, {path} or {handle} (what after label serve's "
        "/api/audio/ takes); default: Label Studio local files (/data/local-files/?d={path}, with "
        "LOCAL_FILES_DOCUMENT_ROOT=/).",
    ),
) -> None:
    """Answers as CSV; the round's queries as CSV and as Label Studio tasks + config."""
    from after.label.files import DEFAULT_AUDIO_URL, export

    r = export(run_dir, out, audio_url=audio_url or DEFAULT_AUDIO_URL)
    console.print(
        f"{r['folder']}: labels.csv ({r['answers']} answers)"
        + (
            f", tasks.csv and label_studio_tasks.json ({r['tasks']} queries of round "
            f"{r['round']}), label_studio_config.xml"
            if r["tasks"]
            else " (no round waits for labels)"
        ),
        highlight=False,
    )


@label_app.command("import")
def label_import(
    run_dir: Path = RUN_DIR,
    file: Path = typer.Argument(
        ..., metavar="FILE", help="CSV (clip_id,label[,annotator]) or Label Studio JSON."
    ),
    annotator: str | None = typer.Option(None, help="Annotator, for a CSV without that column."),
) -> None:
    """Store answers made elsewhere (all rows, or none if any is wrong)."""
    from after.label.files import import_labels

    r = import_labels(run_dir, file, annotator=annotator)
    console.print(
        f"stored {r['stored']} answer(s) from {file} ({r['format']}) for round {r['round']}; "
        f"continue with after run --resume {run_dir}",
        highlight=False,
    )


@app.command()
def compare(
    manifest: Path = typer.Option(..., help="Manifest (JSONL).", show_default=False),
    folds_file: Path = typer.Option(Path("folds.json"), "--folds", help="Folds of this manifest."),
    fold: list[str] = FOLD_LIST,
    backbone: str = typer.Option("whisper-tiny.en", help="As for after train."),
    strategies: str = typer.Option("random,entropy,margin,badge", help=STRATEGY_HELP),
    seeds: str = typer.Option("0,1,2", help="Comma-separated seeds."),
    schedule: str = SCHEDULE,
    cold_start: str = COLD_START,
    spread: bool = SPREAD,
    out: Path = typer.Option(
        ..., help="Output folder; the same command again continues in it.", show_default=False
    ),
    epochs: int = EPOCHS,
    min_steps: int = MIN_STEPS,
    batch_size: int = BATCH,
    lr: float = LR,
    head_lr: float = HEAD_LR,
    patience: int = PATIENCE,
    freeze_cnn: bool = FREEZE,
    freeze_layers: int = FREEZE_LAYERS,
    feature_view: str = FEATURE_VIEW,
    self_training: float = SELF_TRAINING,
    pseudo_threshold: float = PSEUDO_THRESHOLD,
    num_layers: int | None = NUM_LAYERS,
    layer_sum: bool = LAYER_SUM,
    cache_dir: Path | None = CACHE,
    threads: int | None = THREADS,
    device: str = DEVICE,
) -> None:
    """Run strategies x seeds (+ all labels) on the same folds; learning curves with mean ± std
    and per-class recall."""
    from after.cache import default_cache_dir
    from after.checks import strategy_name
    from after.dist import use_compute
    from after.loop.compare import compare as run_compare

    use_compute(device, threads)
    m = Manifest.from_jsonl(manifest)
    chosen = _chosen_folds(Folds.from_json(folds_file, m), fold)
    names = list(dict.fromkeys(strategy_name(x) for x in strategies.split(",") if x.strip()))
    al = ALConfig(
        schedule=tuple(x.strip() for x in schedule.split(",")),
        cold_start=cold_start,
        spread=spread,
    )
    config = TrainConfig(
        epochs=epochs,
        min_steps=min_steps,
        batch_size=batch_size,
        lr=lr,
        head_lr=head_lr,
        patience=patience,
        freeze_cnn=freeze_cnn,
        freeze_layers=freeze_layers,
        feature_view=feature_view,
        self_training=self_training,
        pseudo_threshold=pseudo_threshold,
        num_layers=num_layers,
        layer_sum=layer_sum,
    )
    run_compare(
        m,
        str(manifest.resolve()),
        str(folds_file.resolve()),
        chosen,
        backbone,
        names,
        _seeds(seeds),
        al,
        config,
        out,
        cache_dir=str((cache_dir or default_cache_dir()).resolve()),
        log=lambda line: err.print(line, highlight=False),
        progress=True,
    )
    console.print((out / "summary.md").read_text(), highlight=False)


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
        _continue_run(new, None, None)
        return
    record = read_json(folder / "result.json", "give a run folder of after run or after train")
    if "manifest" not in record:
        raise AfterError(
            f"{folder / 'result.json'}: made before results named their manifest and folds; run "
            "after train again with the options in its config"
        )
    m, chosen = _load_fold(Path(record["manifest"]), Path(record["folds"]), record["fold"])
    config = TrainConfig.from_record(
        {**record["config"], **({} if seed is None else {"seed": seed})}
    )
    paths = {"manifest": record["manifest"], "folds": record["folds"]}
    cache = Path(record["cache_dir"]) if record.get("cache_dir") else None
    _train_and_save(m, chosen, record["backbone"], config, out, cache, paths, None, None)


@app.command()
def report(
    dirs: list[Path] = typer.Argument(
        ..., metavar="DIRS", help="Run folders of after run and/or folders of after compare."
    ),
    out: Path | None = typer.Option(None, help="Output folder (default: FIRST_DIR/report)."),
    markdown: bool = typer.Option(
        False, "--markdown", help="Print the Markdown table (for papers and READMEs)."
    ),
) -> None:
    """Report active-learning runs: learning curves, time per round, labels queried per round,
    confusion matrices and the protocol, as PNGs, one self-contained HTML page and Markdown."""
    from after.report import write_report

    files = write_report(dirs, out)
    if markdown:
        sys.stdout.write(files["markdown"].read_text())
    console.print(
        f"{files['html']} (self-contained), {files['markdown']}, and "
        f"{len(files) - 2} PNGs in {files['html'].parent}",
        highlight=False,
    )


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for everything."),
    seed: int = typer.Option(0, help="Seed."),
    quick: bool = typer.Option(False, help="A tiny corpus and few steps: checks it all runs."),
) -> None:
    """Run the built-in demo on a synthesized corpus with Whisper tiny.en: a fine-tuning check,
    then active learning (default strategy vs random, and all labels) on its frozen features,
    and a report."""
    import time

    from after.demo import DEMO, QUICK, run_demo

    t0 = time.perf_counter()
    result = run_demo(
        out_dir,
        QUICK if quick else DEMO,
        seed=seed,
        log=lambda line: err.print(line, highlight=False),
    )
    header, rows = result["table"]["header"], result["table"]["rows"]
    table = Table(title="test UA (%), mean ± std over folds x seeds", title_justify="left")
    for k, name in enumerate(header):
        table.add_column(name, justify="left" if k == 0 else "right", no_wrap=True)
    for row, following in zip(rows, [*rows[1:], None], strict=True):
        baseline_next = following is not None and following[0].startswith("all labels")
        table.add_row(*row, end_section=baseline_next and not row[0].startswith("all labels"))
    _print_table(table, console)
    f, t = result["finetune"], result["tapt"]
    console.print(
        f"fold {f['fold']}, test UA without / with TAPT ({t['steps']} steps, loss "
        f"{t['first_loss']:.3f} -> {t['final_loss']:.3f}): {f['backbone']} fine-tuned on all "
        f"labels ({f['epochs']} epochs) {100 * f['finetuned_ua']:.1f}% / "
        f"{100 * f['tapt_finetuned_ua']:.1f}%; frozen features {100 * f['frozen_ua']:.1f}% / "
        f"{100 * f['tapt_frozen_ua']:.1f}%",
        highlight=False,
    )
    console.print(
        f"report: {result['report']['html']}; everything in {out_dir} "
        f"({(time.perf_counter() - t0) / 60:.1f} min)",
        highlight=False,
    )
