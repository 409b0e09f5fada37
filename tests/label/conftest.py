"""A run that people label: the demo corpus, fold 0, round 0 waiting for labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from after.config import ALConfig, TrainConfig
from after.data.folds import Folds, make_folds
from after.data.manifest import Manifest
from after.data.synth import synthesize
from after.loop.runner import Run, run_loop, start_run
from after.loop.state import LoopState

FAST = TrainConfig(epochs=3, batch_size=8, patience=0, lr=1e-3)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Path, Path]:
    """4 voices x 4 sentences x 4 emotions = 64 clips; fold 0 pools 2 voices (32 clips)."""
    root = tmp_path_factory.mktemp("label-corpus")
    m = synthesize(root / "corpus", num_speakers=4, num_sentences=4)
    manifest = m.to_jsonl(root / "manifest.jsonl")
    folds = make_folds(m, "loso", seed=0).to_json(root / "folds.json")
    return m, manifest, folds


def human_run(corpus: tuple[Manifest, Path, Path], out: Path, **al: Any) -> tuple[Run, LoopState]:
    """A new run with people as the oracle, advanced to round 0's labeling."""
    m, manifest, folds = corpus
    fold = Folds.from_json(folds, m).get(0)
    config = ALConfig(**{"schedule": ("6", "10"), "cold_start": "random", "oracle": "human", **al})
    run = Run(m, str(manifest), str(folds), fold, "scratch:tiny", config, FAST, out, None)
    state = run_loop(run, start_run(run))
    assert state.phase == "label" and len(state.pending) == 6
    return run, state


@pytest.fixture
def make_run(corpus: tuple[Manifest, Path, Path]) -> Any:
    """`make_run(folder, **al)`: a human-labeled run waiting at round 0."""
    return lambda out, **al: human_run(corpus, out, **al)


@pytest.fixture
def labeling(corpus: tuple[Manifest, Path, Path], tmp_path: Path) -> tuple[Run, LoopState]:
    return human_run(corpus, tmp_path / "run")
