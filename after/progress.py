"""The one progress display, on stderr: a rich bar with elapsed time and ETA in a terminal, and
plain lines with the ETA where stderr is a file or a pipe (SLURM, nohup, `2> log`), where a bar
would show nothing until it ends.

Bars nest: a `progress_bar` opened while another is open adds its tasks to that one (and removes
them when it closes), so a step inside a longer one (features inside a comparison) shows as
another line of the same display, and a display turned off keeps the steps inside it quiet.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from after.errors import Interrupted

# Plain lines: the first once a task has run this long (shorter steps print nothing), then one
# at most every `EVERY_S`, and a last one when a task that printed ends.
FIRST_S = 5.0
EVERY_S = 30.0

_open: list[Any] = []  # the outermost display while one is open


def progress_bar(enabled: bool = True, *, transient: bool = False) -> Any:
    """A display with rich `Progress`'s task methods (`add_task`, `update`, `advance`,
    `remove_task`); tasks may carry an `info` field shown after the count, and `announce=True`
    (a step with no count to show while it runs: plain lines say when it starts). `transient`:
    a terminal's bar disappears when it ends."""
    if _open:
        return _Nested(_open[-1])
    console = Console(stderr=True)
    if enabled and not console.is_terminal:
        return LineProgress(sys.stderr)
    return _Bar(
        TextColumn("{task.description}", markup=False),  # may name folds, strategies, files
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}", markup=False),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
        transient=transient,
    )


class _Bar(Progress):
    """rich's `Progress`, known as the open display while it is open."""

    def __enter__(self) -> _Bar:
        _open.append(self)
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        _open.remove(self)
        super().__exit__(*exc)

    def add_task(self, description: str, *args: Any, **fields: Any) -> Any:
        fields.setdefault("info", "")
        return super().add_task(description, *args, **fields)


class _Nested:
    """A display opened inside another: its tasks go to the outer one, and leave it on close."""

    def __init__(self, outer: Any) -> None:
        self.outer = outer
        self.tasks: list[int] = []

    def __enter__(self) -> _Nested:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        for task in self.tasks:
            if isinstance(self.outer, LineProgress):
                self.outer.remove_task(task, stopped=stopped_by(kind))
            else:
                self.outer.remove_task(task)

    def add_task(self, description: str, **fields: Any) -> int:
        task: int = self.outer.add_task(description, **fields)
        self.tasks.append(task)
        return task

    def __getattr__(self, name: str) -> Any:
        return getattr(self.outer, name)


class LineProgress:
    """Progress as plain lines on `stream`, e.g.
    `fine-tuning: 120/500 (24%) epoch 3 loss 1.234; 1:02 elapsed, ETA 3:17`. Thread-safe (feature
    extraction advances from worker threads)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.first_s, self.every_s = stream, FIRST_S, EVERY_S
        self._tasks: dict[int, dict[str, Any]] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def __enter__(self) -> LineProgress:
        _open.append(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        _open.remove(self)
        for task in list(self._tasks):
            self.remove_task(task, stopped=stopped_by(kind))

    def add_task(
        self, description: str, *, total: float | None = None, completed: float = 0, **fields: Any
    ) -> int:
        with self._lock:
            task = next(self._ids)
            self._tasks[task] = {
                "description": description,
                "total": total,
                "completed": completed,
                # The rate is measured from the first update on: the start-up before it (loading
                # a model, work resumed from a checkpoint) says nothing about the rest.
                "mark": None,
                "info": str(fields.get("info", "")),
                "start": time.monotonic(),
                "printed": None,  # when its last line was printed
                "ended": False,  # its last line is printed
            }
            if fields.get("announce"):  # one long step with no count to show: say it began
                self.stream.write(f"{description}: started\n")
                self.stream.flush()
            return task

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def update(
        self,
        task: int,
        *,
        advance: float | None = None,
        completed: float | None = None,
        total: float | None = None,
        description: str | None = None,
        **fields: Any,
    ) -> None:
        with self._lock:
            t = self._tasks.get(task)
            if t is None:
                return
            if completed is not None:
                t["completed"] = completed
            if advance is not None:
                t["completed"] += advance
            if total is not None:
                t["total"] = total
            if description is not None:
                t["description"] = description
            if "info" in fields:
                t["info"] = str(fields["info"])
            if t["mark"] is None:
                t["mark"] = (time.monotonic(), t["completed"])
            if t["ended"]:
                return
            now = time.monotonic()
            finished = t["total"] is not None and t["completed"] >= t["total"]
            if finished and t["printed"] is not None:
                self._print(t, now, final=True)
            elif now >= (
                t["start"] + self.first_s if t["printed"] is None else t["printed"] + self.every_s
            ):
                self._print(t, now)

    def remove_task(self, task: int, *, stopped: str = "") -> None:
        """Close a task; one that printed says how long it took ("ended after"), or, with
        `stopped` (why the step stopped before its end), that it stopped, so that an
        interrupted step never reads like a finished one."""
        with self._lock:
            t = self._tasks.pop(task, None)
            if t is not None and t["printed"] is not None and not t["ended"]:
                self._print(t, time.monotonic(), final=True, stopped=stopped)

    def _print(
        self, t: dict[str, Any], now: float, *, final: bool = False, stopped: str = ""
    ) -> None:
        elapsed = now - t["start"]
        done, total = t["completed"], t["total"]
        count = f"{done:g}/{total:g} ({100 * done / total:.0f}%)" if total else f"{done:g}"
        tail = f"{_clock(elapsed)} elapsed"
        since, then = t["mark"] or (now, done)
        if final:
            tail = (
                f"{stopped} after {_clock(elapsed)}"
                if stopped
                else f"ended after {_clock(elapsed)}"
            )
        elif total and done > then and now > since:
            tail += f", ETA {_clock((total - done) * (now - since) / (done - then))}"
        info = f" {t['info']}" if t["info"] else ""
        self.stream.write(f"{t['description']}: {count}{info}; {tail}\n")
        self.stream.flush()
        t["printed"], t["ended"] = now, final


def stopped_by(kind: type[BaseException] | None) -> str:
    """How a step ended early, in words, from the exception that ended it ("" for none)."""
    if kind is None or issubclass(kind, GeneratorExit):
        return ""
    interrupted = issubclass(kind, KeyboardInterrupt | Interrupted)
    return "INTERRUPTED" if interrupted else "STOPPED by an error"


def _clock(seconds: float) -> str:
    """1:02, or 1:02:03 from an hour on."""
    s = round(seconds)
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"
