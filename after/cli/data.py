"""Commands on corpora and manifests: prepare, validate, folds, stats, synth."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from after.cli.app import app, console, err, new_table, print_table
from after.cli.options import (
    LABEL_SET,
    MIN_DURATION,
    SILENCE_DBFS,
    SPEAKER_REGEX,
    parse_labels,
)
from after.data.audio import DECODE_LIMIT_S, MAX_DURATION_S, validate_manifest, write_rejections
from after.data.corpora import CORPORA
from after.data.folds import PROTOCOLS, Folds, make_folds
from after.data.manifest import Manifest, shared_audio_warning
from after.data.stats import summarize
from after.data.synth import DEFAULT_EMOTIONS, PROSODY
from after.errors import AfterError, cut
from after.progress import progress_bar

MAX_DURATION = typer.Option(
    MAX_DURATION_S,
    min=0.0,
    max=DECODE_LIMIT_S,
    help="Clips longer than this (seconds) are rejected.",
)
WORKERS = typer.Option(4, min=1, help="Threads reading audio.")


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
    table = new_table("id", "reason", "detail", "fix", title=f"{len(rejected)} unusable clip(s)")
    for r in rejected[:limit]:
        table.add_row(cut(r.id), r.reason, cut(r.detail), r.fix)
    print_table(table, err)
    if len(rejected) > limit:
        err.print(f"... and {len(rejected) - limit} more")


@app.command()
def prepare(
    corpus: str = typer.Argument(
        ...,
        metavar="CORPUS",
        help=f"{', '.join(CORPORA)}.",
    ),
    data: Path | None = typer.Argument(
        None, metavar="[DIR]", help="The corpus folder (for csv: the CSV file); or --data-dir."
    ),
    data_dir: Path | None = typer.Option(
        None, help="The corpus folder (for csv: the CSV file).", show_default=False
    ),
    out: Path = typer.Option(Path("manifest.jsonl"), help="Manifest to write (JSONL)."),
    labels: str | None = LABEL_SET,
    speaker_regex: str | None = SPEAKER_REGEX,
    test_set: str | None = typer.Option(
        None, help="msp-podcast only: the Split_Set that becomes the test split (default Test1)."
    ),
    min_duration: float = MIN_DURATION,
    max_duration: float = MAX_DURATION,
    silence_dbfs: float = SILENCE_DBFS,
    workers: int = WORKERS,
) -> None:
    """Build a manifest from a corpus folder, checking every clip's audio. Your own recordings:
    after prepare folder DIR --labels a,b,c (no labels needed yet), or after prepare csv
    FILE.csv."""
    from after.data.corpora import prepare as prepare_corpus

    if (data is None) == (data_dir is None):
        raise AfterError(
            "give the corpus folder (for csv: the CSV file) once: after prepare CORPUS DIR, or "
            "--data-dir DIR"
        )
    folder = data if data is not None else data_dir
    assert folder is not None
    given = {
        "speaker_regex": speaker_regex,
        "test_set": test_set,
        "labels": parse_labels(labels),
    }
    options = {k: v for k, v in given.items() if v is not None}
    found = prepare_corpus(corpus, folder, **options)
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
        raise AfterError(f"{corpus}: no usable clip in {folder}; see {rejected_path}")
    usable.to_jsonl(out)
    _warn_shared_audio(usable)
    num_labeled = sum(u.label is not None for u in usable)
    labeled = "all labeled" if num_labeled == len(usable) else f"{num_labeled} labeled"
    declared = " (declared)" if usable.label_set is not None else ""
    console.print(
        f"{out}: {len(usable)} clips ({labeled}), {len(usable.labels)} labels{declared} "
        f"({cut(', '.join(usable.labels))}); speakers: {_speakers(usable, corpus, speaker_regex)}",
        highlight=False,
    )


def _speakers(m: Manifest, corpus: str, speaker_regex: str | None) -> str:
    """Where the speakers of a prepared manifest come from, in words: speaker-independent
    splits, the audit set's strata and `--spread` rely on them."""
    unknown = sum(u.speaker == u.id for u in m)
    count = f"{len(m.speakers)} found"
    if speaker_regex is not None:
        where = f"{count} by --speaker-regex '{speaker_regex}'"
    elif corpus == "csv":
        where = f"{count} in the speaker column" if unknown < len(m) else ""
    elif corpus == "folder":
        where = f"{count} in the speaker sub-folders" if unknown < len(m) else ""
    else:
        where = f"{count} as the corpus names them"
    if unknown == len(m):
        return (
            "unknown, each clip is its own (give --speaker-regex, or a speaker column in a CSV, "
            "to group a person's clips)"
        )
    if unknown:
        where += f"; {unknown} clip(s) without one are each their own speaker"
    return where


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
    if len(m) > 1 and all(u.speaker == u.id for u in m):
        err.print(
            "warning: each clip is its own speaker (none was given when the manifest was "
            "prepared), so these folds split clips, not people: a voice may be in training and "
            "test. Prepare it with --speaker-regex (or a speaker column) to group a person's clips",
            highlight=False,
        )
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
    table = new_table(
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
    print_table(table, console)


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
    labels = new_table("label", "clips", "share", title="clips per label", right=("clips", "share"))
    total = max(1, s["num_labeled"])
    for lab, n in s["labels"].items():
        labels.add_row(cut(lab), str(n), f"{100 * n / total:.1f}%")
    print_table(labels, console)
    names = [*s["labels"], "(unlabeled)"]
    heads = [cut(n) for n in names]
    speakers = new_table(
        "speaker", *heads, "total", title="clips per speaker", right=(*heads, "total")
    )
    for spk, counts in s["speakers"].items():
        speakers.add_row(
            cut(spk), *(str(counts.get(lab, 0)) for lab in names), str(sum(counts.values()))
        )
    print_table(speakers, console)
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
        ",".join(DEFAULT_EMOTIONS),
        help=f"Comma-separated, from {', '.join(PROSODY)}.",
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
