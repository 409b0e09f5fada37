"""Commands that show results: report, and the demo that makes some."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.table import Table

from after.cli.app import app, console, err, print_table


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
    print_table(table, console)
    f, t = result["finetune"], result["tapt"]
    console.print(
        f"fold {f['fold']}, test UA without / with TAPT ({t['steps']} steps, loss "
        f"{t['first_loss']:.3f} -> {t['final_loss']:.3f}): {f['backbone']} fine-tuned on all "
        f"labels ({f['epochs']} epochs) {100 * f['finetuned_ua']:.1f}% / "
        f"{100 * f['tapt_finetuned_ua']:.1f}%; frozen features {100 * f['frozen_ua']:.1f}% / "
        f"{100 * f['tapt_frozen_ua']:.1f}%",
        highlight=False,
    )
    console.print(result["verdict"], highlight=False)
    if result["vs_random"]:
        from after.metrics import few_pairs_warning

        warning = few_pairs_warning(min(d["n"] for d in result["vs_random"]))
        if warning:
            err.print(warning, highlight=False)
    console.print(
        f"report: {result['report']['html']}; everything in {out_dir} "
        f"({(time.perf_counter() - t0) / 60:.1f} min)",
        highlight=False,
    )
