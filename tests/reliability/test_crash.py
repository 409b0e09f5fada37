"""Crash-safety: SIGKILL at many points of a run (state writes, scoring, selection, training,
label import), then resume; the end is always the uninterrupted run's, and nothing is left
half-written."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from after.data.manifest import Manifest
from after.label.store import LabelStore
from after.loop.state import LoopState

ARGS = ["--backbone", "scratch:tiny", "--strategy", "margin", "--schedule", "4,8,12"]
ARGS += ["--cold-start", "random", "--epochs", "3", "--lr", "0.001", "--patience", "0"]
ARGS += ["--min-steps", "0"]

# Each resumed process is killed at the n-th time it reaches the point; later points of a
# chain apply to the process that resumes after the previous kill.
CHAIN = [
    "write:1",  # config.json not yet in place: the user repeats the command
    "write:2",  # config.json written, the first state not
    "select:1",  # queries chosen, nothing saved
    "train-step:2",  # mid fine-tuning
    "train:1",  # model saved, round record not
    "score-chunk:1",  # a pool-scoring chunk written, the rest of the pass not
    "score:1",  # the pool scored, nothing selected
    "write:4",
    "train:1",
    "select:1",
    "write:3",
]


def _after(*args: str, fault: str | None = None, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AFTER_CACHE_DIR": str(cache)}
    env.pop("AFTER_FAULT", None)
    if fault:
        env["AFTER_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "after", *args], env=env, capture_output=True, text=True
    )


def _start(corpus: tuple[Manifest, Path, Path], out: Path, *extra: str) -> list[str]:
    _, manifest, folds = corpus
    return ["run", "--manifest", str(manifest), "--folds", str(folds), "--fold", "0", *ARGS,
            *extra, "--out", str(out)]  # fmt: skip


def _no_half_files(folder: Path) -> None:
    for path in folder.rglob("*.json"):
        json.loads(path.read_text())  # every JSON file parses
    assert not list(folder.glob(".*.tmp"))  # resume swept what the kills left


def _same_end(a: LoopState, b: LoopState) -> None:
    assert b.phase == "done" and a.labeled == b.labeled and a.labels == b.labels
    keys = ("num_labeled", "test_ua", "test_wa", "dev_ua", "test_confusion")
    assert [{k: r[k] for k in keys} for r in a.rounds] == [
        {k: r[k] for k in keys} for r in b.rounds
    ]


@pytest.mark.slow
def test_kill_9_anywhere_then_resume_ends_like_the_uninterrupted_run(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path, tally: dict[str, int]
) -> None:
    cache = tmp_path / "cache"
    clean = tmp_path / "clean"
    done = _after(*_start(corpus, clean), cache=cache)
    assert done.returncode == 0, done.stderr

    cut = tmp_path / "cut"
    killed = []
    for fault in CHAIN:
        started = (cut / "config.json").exists()  # else the user repeats the command
        args = ["run", "--resume", str(cut)] if started else _start(corpus, cut)
        r = _after(*args, fault=fault, cache=cache)
        assert r.returncode == -9, f"{fault} was not reached: {r.returncode} {r.stderr[-500:]}"
        killed.append(fault)
        if (cut / "state.json").exists():
            assert LoopState.load(cut).phase != "done"  # loads after every kill
    r = _after("run", "--resume", str(cut), cache=cache)
    assert r.returncode == 0, r.stderr
    _same_end(LoopState.load(clean), LoopState.load(cut))
    _no_half_files(cut)
    tally["kill_points"] = tally.get("kill_points", 0) + len(killed)


@pytest.mark.slow
def test_kill_9_during_tapt_then_resume_gives_the_same_model(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path, tally: dict[str, int]
) -> None:
    from safetensors.numpy import load_file

    _, manifest, folds = corpus
    args = ["tapt", "--manifest", str(manifest), "--folds", str(folds), "--fold", "0"]
    args += ["--backbone", "scratch:tiny", "--steps", "12", "--save-every", "4"]
    args += ["--batch-size", "4"]
    cache = tmp_path / "cache"
    assert _after(*args, "--out", str(tmp_path / "clean"), cache=cache).returncode == 0
    cut = [*args, "--out", str(tmp_path / "cut")]
    assert _after(*cut, fault="tapt-step:6", cache=cache).returncode == -9  # after step 6
    assert _after(*cut, "--resume", fault="tapt-step:5", cache=cache).returncode == -9  # step 9
    r = _after(*cut, "--resume", cache=cache)
    assert r.returncode == 0, r.stderr
    a = load_file(tmp_path / "clean" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float(abs(a[k] - b[k]).max()) for k in a) < 1e-6
    tally["kill_points"] = tally.get("kill_points", 0) + 2


def _answer(run_dir: Path, manifest: Manifest, path: Path) -> Path:
    """People answer the round's queries as the corpus says (so the run must end like the
    simulated one)."""
    state = LoopState.load(run_dir)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clip_id", "label", "annotator"])
        w.writerows([i, manifest[i].label, "ann"] for i in state.pending)
    return path


@pytest.mark.slow
def test_kill_9_during_label_import_and_training_loses_no_label(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path, tally: dict[str, int]
) -> None:
    m = corpus[0]
    cache = tmp_path / "cache"
    clean = tmp_path / "clean"
    assert _after(*_start(corpus, clean), cache=cache).returncode == 0

    run = tmp_path / "people"
    assert _after(*_start(corpus, run, "--oracle", "human"), cache=cache).returncode == 0
    kills = 0
    for r in range(3):
        answers = _answer(run, m, tmp_path / f"round{r}.csv")
        cut = _after("label", "import", str(run), str(answers), fault="label-import:1", cache=cache)
        assert cut.returncode == -9
        kills += 1
        assert LabelStore(run).annotations(round=r) == []  # the killed import left nothing
        ok = _after("label", "import", str(run), str(answers), cache=cache)
        assert ok.returncode == 0, ok.stderr
        assert len(LabelStore(run).annotations(round=r)) == len(LoopState.load(run).pending)
        cut = _after("run", "--resume", str(run), fault="train:1", cache=cache)
        assert cut.returncode == -9
        kills += 1
        resumed = _after("run", "--resume", str(run), cache=cache)
        assert resumed.returncode == 0, resumed.stderr
    _same_end(LoopState.load(clean), LoopState.load(run))
    _no_half_files(run)
    tally["kill_points"] = tally.get("kill_points", 0) + kills


def test_damaged_run_files_get_a_clear_message(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path, tally: dict[str, Any]
) -> None:
    run = tmp_path / "people"
    assert _after(*_start(corpus, run, "--oracle", "human"), cache=tmp_path / "c").returncode == 0
    for name, damage in [
        ("state.json", '{"round": 1, "pha'),
        ("config.json", "{not json"),
        ("labels.sqlite", "SQLite format 3\x00" + "garbage" * 500),
    ]:
        path = run / name
        original = path.read_bytes()
        path.write_text(damage)
        r = _after("run", "--resume", str(run), cache=tmp_path / "c")
        assert r.returncode == 2, (name, r.stderr)
        assert name in r.stderr and "Traceback" not in r.stderr, r.stderr
        path.write_bytes(original)
