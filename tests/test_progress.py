"""Progress where stderr is not a terminal (a log file, SLURM, nohup): plain lines with the ETA;
and displays opened inside others join them."""

from __future__ import annotations

import io
import re

import pytest

import after.progress
from after.errors import Interrupted
from after.progress import LineProgress, progress_bar


def test_plain_lines_only_for_long_steps_with_an_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr(after.progress, "FIRST_S", 3600.0)  # a short step prints nothing
    with LineProgress(out) as bar:
        task = bar.add_task("scoring", total=10)
        for _ in range(10):
            bar.advance(task)
    assert out.getvalue() == ""

    monkeypatch.setattr(after.progress, "FIRST_S", 0.0)
    monkeypatch.setattr(after.progress, "EVERY_S", 0.0)
    with LineProgress(out) as bar:
        task = bar.add_task("features (egemaps)", total=4)
        for k in range(4):
            bar.update(task, advance=1, info=f"clip {k}")
    lines = out.getvalue().splitlines()
    # The first line has no ETA: the start-up before it says nothing about the rest.
    assert lines[0] == "features (egemaps): 1/4 (25%) clip 0; 0:00 elapsed"
    assert re.fullmatch(
        r"features \(egemaps\): 2/4 \(50%\) clip 1; 0:00 elapsed, ETA 0:00", lines[1]
    )
    assert lines[-1] == "features (egemaps): 4/4 (100%) clip 3; ended after 0:00"
    assert len(lines) == 4


def test_a_display_inside_another_joins_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(after.progress, "FIRST_S", 0.0)
    out = io.StringIO()
    with LineProgress(out) as outer:
        with progress_bar() as inner:  # e.g. features inside a comparison
            task = inner.add_task("features (resemblyzer)", total=2)
            inner.advance(task, 2)
        assert outer._tasks == {}  # the inner task left with its display
    assert out.getvalue().startswith("features (resemblyzer): 2/2 (100%)")
    with progress_bar(enabled=False) as quiet, progress_bar() as inner:
        inner.add_task("scoring", total=1)
        assert inner.outer is quiet  # a display turned off keeps the steps inside it quiet


@pytest.mark.parametrize(
    ("error", "says"),
    [(KeyboardInterrupt, "INTERRUPTED"), (Interrupted, "INTERRUPTED"), (OSError, "STOPPED")],
)
def test_a_step_cut_short_never_reads_as_finished(
    monkeypatch: pytest.MonkeyPatch, error: type[BaseException], says: str
) -> None:
    """Ctrl-C (or an error) in a step: its last line says it stopped, not "ended after"."""
    monkeypatch.setattr(after.progress, "FIRST_S", 0.0)
    out = io.StringIO()
    with pytest.raises(error), LineProgress(out), progress_bar() as inner:
        task = inner.add_task("features (egemaps)", total=10)
        inner.advance(task, 3)
        raise error
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("features (egemaps): 3/10 (30%); " + says) and "ended" not in last


def test_a_long_step_without_a_count_says_when_it_starts() -> None:
    out = io.StringIO()
    with LineProgress(out) as bar:
        bar.add_task("TAPT targets: k-means, 100 clusters", total=1, announce=True)
    assert out.getvalue() == "TAPT targets: k-means, 100 clusters: started\n"
