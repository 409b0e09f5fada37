"""A run that people label: the demo corpus, fold 0, round 0 waiting for labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from after.config import ALConfig, TrainConfig
from after.data.folds import Folds
from after.data.manifest import Manifest
from after.loop.runner import Run, run_loop, start_run
from after.loop.state import LoopState

FAST = TrainConfig(epochs=3, min_steps=0, batch_size=8, patience=0, lr=1e-3)


def human_run(corpus: tuple[Manifest, Path, Path], out: Path, **al: Any) -> tuple[Run, LoopState]:
    """A new run with people as the oracle, advanced to round 0's labeling."""
    m, manifest, folds = corpus
    fold = Folds.from_json(folds, m).get(0)
    config = ALConfig(**{"schedule": ("6", "10"), "cold_start": "random", "oracle": "human", **al})
    run = Run(m, str(manifest), str(folds), fold, "scratch:tiny", config, FAST, out, None)
    state = run_loop(run, start_run(run))
    assert state.phase == "label" and len(state.pending) == 6 + len(state.audit)
    return run, state


@pytest.fixture
def make_run(corpus: tuple[Manifest, Path, Path]) -> Any:
    """`make_run(folder, **al)`: a human-labeled run waiting at round 0."""
    return lambda out, **al: human_run(corpus, out, **al)


@pytest.fixture
def labeling(corpus: tuple[Manifest, Path, Path], tmp_path: Path) -> tuple[Run, LoopState]:
    return human_run(corpus, tmp_path / "run")
