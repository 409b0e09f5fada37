"""Experiment logging through Accelerate's trackers: TAPT's log followed as it grows; a
comparison's fits and runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from after.errors import AfterError
from after.tracking import Tracker


def test_a_growing_log_is_forwarded_to_tensorboard(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = tmp_path / "tapt_log.jsonl"
    log.write_text(json.dumps({"step": 1, "loss": 3.0}) + "\n")  # a resumed run's earlier steps
    tracker = Tracker("tensorboard", "tapt", tmp_path / "logs", {"tapt": {"steps": 3}, "x": None})
    with tracker.following(log, "tapt/"), log.open("a") as f:
        f.write(json.dumps({"step": 2, "loss": 2.5, "lr": 1e-4}) + "\n")
        f.write('{"step": 3, "loss"')  # half a line: read once it is whole
        f.flush()
        f.write(": 2.0}\n")
    tracker.finish()
    events = EventAccumulator(str(tmp_path / "logs" / "tapt")).Reload()
    assert [e.value for e in events.Scalars("tapt/loss")] == [3.0, 2.5, 2.0]
    assert [e.step for e in events.Scalars("tapt/loss")] == [1, 2, 3]


def test_an_unknown_tracker_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(AfterError, match=r"--log-with 'tensorbord': choose one of .*tensorboard"):
        Tracker("tensorbord", "x", tmp_path, {})


def test_compare_logs_each_all_labels_fit_and_each_run(
    corpus: tuple[Any, Path, Path], tmp_path: Path
) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from after.cli import main

    _, manifest, folds = corpus
    args = ["compare", "--manifest", str(manifest), "--folds", str(folds), "--fold", "0"]
    args += ["--backbone", "egemaps", "--strategies", "random", "--seeds", "0"]
    args += ["--schedule", "4,8", "--cold-start", "random", "--out", str(tmp_path / "c")]
    with pytest.raises(SystemExit) as e:
        main([*args, "--log-with", "tensorboard"])
    assert e.value.code in (0, None)
    (full,) = (tmp_path / "c" / "logs").glob("*_all_seed0")
    assert len(EventAccumulator(str(full)).Reload().Scalars("test_ua")) == 1  # as cv logs it
    (rounds,) = (tmp_path / "c" / "logs").glob("*_random_seed0")
    assert [e.step for e in EventAccumulator(str(rounds)).Reload().Scalars("test_ua")] == [0, 1]
