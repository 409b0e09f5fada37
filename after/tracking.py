"""Experiment logging through HF Accelerate's trackers: TensorBoard (`pip install tensorboard`),
Weights & Biases, MLflow, Aim, Comet, ClearML, DVCLive, SwanLab, Trackio (each with its own
package). `after train|cv|run|compare|tapt --log-with tensorboard` logs the settings and the
metrics: per epoch of each fine-tuning, per active-learning round, per logged TAPT step (followed
live from `tapt_log.jsonl`). The run's own files (result.json, rounds.csv, tapt_log.jsonl) stay the
record; a tracker is a view of them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from after.errors import AfterError

FOLLOW_EVERY_S = 2.0  # how often a followed log file is read for new lines


def tracker_names() -> list[str]:
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    return sorted(LOGGER_TYPE_TO_CLASS)


class Tracker:
    """One run of an Accelerate tracker: `log` numbers by step, `finish` at the end."""

    def __init__(self, kind: str, run_name: str, log_dir: Path, settings: dict[str, Any]):
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        if kind not in LOGGER_TYPE_TO_CLASS:
            raise AfterError(f"--log-with {kind!r}: choose one of {', '.join(tracker_names())}")
        cls = LOGGER_TYPE_TO_CLASS[kind]
        needs_dir = cls.requires_logging_directory
        self.tracker = cls(run_name, str(log_dir)) if needs_dir else cls(run_name)
        try:
            self.tracker.start()
        except ImportError as e:
            raise AfterError(
                f"--log-with {kind}: its package is not installed ({e}); install it (TensorBoard: "
                "pip install tensorboard)"
            ) from None
        self.tracker.store_init_configuration(_flat(settings))
        self._lock = threading.Lock()

    def log(self, values: dict[str, Any], step: int, prefix: str = "") -> None:
        """Log the numbers among `values` (others are skipped) at `step`."""
        numbers = {
            f"{prefix}{k}": float(v)
            for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        if numbers:
            with self._lock:
                self.tracker.log(numbers, step=step)

    def finish(self) -> None:
        self.tracker.finish()

    @contextmanager
    def following(self, jsonl: Path, prefix: str = "") -> Iterator[None]:
        """While inside, log each line appended to `jsonl` (records with a `step`) as it comes;
        the rest when the block ends. Lines there before are logged too (a resumed run's)."""
        done = threading.Event()
        read = 0

        def forward() -> None:
            nonlocal read
            if not jsonl.is_file():
                return
            with open(jsonl, encoding="utf-8") as f:
                f.seek(read)
                while (line := f.readline()).endswith("\n"):
                    read = f.tell()
                    record = json.loads(line)
                    self.log(record, int(record.get("step", 0)), prefix)

        def poll() -> None:
            while not done.wait(FOLLOW_EVERY_S):
                forward()

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            forward()


def open_tracker(
    kind: str | None, run_name: str, log_dir: Path, settings: dict[str, Any]
) -> Tracker | None:
    """A tracker for `--log-with KIND` (None when not asked for)."""
    return None if kind is None else Tracker(kind, run_name, log_dir, settings)


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as one level of `a.b` keys with values every tracker takes (bool, str,
    float, int; anything else, None included, as text)."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, bool | str | int | float):
            out[f"{prefix}{key}"] = value
        else:
            out[f"{prefix}{key}"] = str(value)
    return out
