"""User-controlled text (paths, ids, labels, speakers, strategy and fold names) is shown as it is:
never read as rich markup (a path with `[/]` crashed, a label `[laughter]` vanished from tables)
or as matplotlib mathtext (a label `$\\nope$` crashed `train` and `report`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from after.config import ALConfig, TrainConfig
from after.data.folds import make_folds
from after.data.manifest import Manifest
from after.loop.runner import Run, run_loop, start_run
from after.progress import progress_bar
from after.testing.cli import invoke

# Each is markup, an emoji code or mathtext to someone; all must come out verbatim.
WEIRD = {
    "anger": "$\\nope$",
    "happiness": "[laughter]",
    "neutral": ":smile: [/]",
    "sadness": "$x$ [bold]sad",
}


@pytest.fixture(scope="module")
def weird(corpus: tuple[Manifest, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared corpus with labels and speakers renamed to markup, in a folder named so."""
    m, _, _ = corpus
    root = tmp_path_factory.mktemp("out") / "runs [/] $x$"
    renamed = Manifest(
        dataclasses.replace(u, label=WEIRD[u.label or ""], speaker=f"[red]{u.speaker}") for u in m
    )
    return renamed.to_jsonl(root / "m.jsonl")


def test_tables_and_errors_print_user_text_verbatim(
    weird: Path, capsys: pytest.CaptureFixture[str], tally: dict[str, int]
) -> None:
    code, text = invoke(["stats", str(weird)], capsys)
    assert code == 0
    shown = [*WEIRD.values(), "[red]"]
    assert all(s in text for s in shown), text
    code, text = invoke(["stats", str(weird.parent / "no [" / "] such.jsonl")], capsys)
    assert code == 2 and "no [/] such.jsonl: no such file" in text, text
    with progress_bar() as bar:  # progress lines name folds and strategies
        bar.add_task("[/] fold", total=1, info="[bold]x[/] $y$")
    tally["verbatim"] = tally.get("verbatim", 0) + len(shown) + 3


@pytest.mark.slow
def test_plots_show_labels_and_names_verbatim(
    weird: Path,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    tally: dict[str, int],
) -> None:
    m = Manifest.from_jsonl(weird)
    folds = make_folds(m, "loso", seed=0).to_json(weird.with_name("folds.json"))
    fold = make_folds(m, "loso", seed=0).get(0)
    al = ALConfig(strategy="entropy", schedule=("4", "8"), cold_start="random")
    fast = TrainConfig(epochs=2, min_steps=0, batch_size=8, patience=0)
    cache = str(tmp_path_factory.getbasetemp() / "features")
    out = weird.parent / "run $\\bad$ [" / "]"
    run = Run(m, str(weird), str(folds), fold, "egemaps", al, fast, out, cache)
    run_loop(run, start_run(run))
    code, text = invoke(["report", str(out)], capsys)
    assert code == 0, text
    assert len(list((out / "report").glob("*.png"))) == 4  # curves, times, labels, confusion
    tally["verbatim"] = tally.get("verbatim", 0) + len(WEIRD) + 1
