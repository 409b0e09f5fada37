"""The one progress bar style: rich, on stderr, with elapsed time and ETA."""

from __future__ import annotations

from typing import Any


def progress_bar(enabled: bool = True, *, transient: bool = False) -> Any:
    """A `rich.progress.Progress`; tasks may carry an `info` field shown after the count."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}", markup=False),  # may name folds, strategies, files
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=transient,
    )
