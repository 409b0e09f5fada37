"""`after label ...`: people label the clips a run queries (runs with --oracle human)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from after.cli.app import app, console, new_table, print_table

if TYPE_CHECKING:
    from after.label.app import LabelingSession

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
    _print_audit(session)
    answers = session.store.annotations()
    columns = ("round", "answers", "skips", "annotators", "clips rated ≥ 2", "Fleiss κ")
    table = new_table(*columns, "pairs agree", right=(*columns, "pairs agree"))
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
    print_table(table, console)


def _print_audit(session: LabelingSession) -> None:
    """The audit set's progress and each round's estimate (the run's owner runs this command;
    annotators see no score), or what stands in for a missing test split."""
    from after.loop.state import LoopState
    from after.metrics import AUDIT_METHOD, format_interval

    run = session.run
    state = LoopState.load(run.run_dir)
    no_test = "" if run.fold.test else "no test split"
    if not state.audit:
        if no_test:
            console.print(
                f"{no_test}, no audit set: this run has no accuracy figure (a new run with "
                f"--audit N, e.g. after run --labels-from {run.run_dir} --audit 40 ..., gets one)",
                highlight=False,
            )
        return
    dropped = sum(1 for i in state.audit if i in set(state.dropped))
    console.print(
        f"audit set: {len(state.audit_labels)} of {len(state.audit)} clips labeled"
        + (f", {dropped} skipped by everyone" if dropped else "")
        + (f"; {no_test}: the audit estimate is the run's accuracy figure" if no_test else "")
        + f" ({AUDIT_METHOD})",
        highlight=False,
    )
    columns = ("round", "labeled", "audit labels", "audit UA [95% CI]", "accuracy [95% CI]")
    table = new_table(*columns, right=columns)
    for r in state.rounds:
        if "audit_n" not in r:
            continue
        ua = format_interval(r.get("audit_ua"), r.get("audit_ua_lo"), r.get("audit_ua_hi"))
        acc = format_interval(r.get("audit_acc"), r.get("audit_acc_lo"), r.get("audit_acc_hi"))
        table.add_row(str(r["round"]), str(r["num_labeled"]), str(r["audit_n"]), ua, acc)
    if table.row_count:
        print_table(table, console)


@label_app.command("export")
def label_export(
    run_dir: Path = RUN_DIR,
    out: Path = typer.Option(
        ..., help="Folder for labels.csv, tasks.csv and the Label Studio files."
    ),
    audio_url: str | None = typer.Option(
        None,
        help="Label Studio audio URL with {key} (the task's key: the export writes its audio as "
        "audio/KEY.wav) or {handle} (what after label serve's /api/audio/ takes); default: Label "
        "Studio local files (/data/local-files/?d=audio/{key}.wav, with "
        "LOCAL_FILES_DOCUMENT_ROOT=OUT). Never a clip id or path: annotators see the URL.",
    ),
) -> None:
    """Answers as CSV; the round's queries as CSV and as Label Studio tasks + config."""
    from after.label.files import DEFAULT_AUDIO_URL, export

    r = export(run_dir, out, audio_url=audio_url or DEFAULT_AUDIO_URL)
    console.print(
        f"{r['folder']}: labels.csv ({r['answers']} answers)"
        + (
            f", tasks.csv and label_studio_tasks.json ({r['tasks']} queries of round "
            f"{r['round']}, their audio in audio/ under opaque keys: Label Studio serves it with "
            f"LOCAL_FILES_SERVING_ENABLED=true LOCAL_FILES_DOCUMENT_ROOT={r['folder']}), "
            "label_studio_config.xml"
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
