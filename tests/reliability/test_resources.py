"""Out of disk and permission errors while a run writes: the previous state stays intact, the
message says what happened, and the run resumes once the disk is back."""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

import after.io
from after.config import ALConfig, TrainConfig
from after.data.folds import Folds
from after.data.manifest import Manifest
from after.errors import AfterError
from after.io import atomic_write_text
from after.label.app import create_app
from after.label.store import LabelStore
from after.loop.runner import Run, run_loop, start_run
from after.loop.state import LoopState

FAST = TrainConfig(epochs=3, min_steps=0, batch_size=8, patience=0, lr=1e-3)


def _run(corpus: tuple[Manifest, Path, Path], out: Path, **al: Any) -> Run:
    m, manifest, folds = corpus
    config = ALConfig(**{"schedule": ("4", "8", "12"), "cold_start": "random", **al})
    fold = Folds.from_json(folds, m).get(0)
    return Run(m, str(manifest), str(folds), fold, "scratch:tiny", config, FAST, out, None)


@contextmanager
def disk_full_after(writes: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every atomic write after the first `writes` fails as on a full disk."""
    real = os.fsync
    count = {"n": 0}

    def fsync(fd: int) -> None:
        count["n"] += 1
        if count["n"] > writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    with monkeypatch.context() as m:
        m.setattr(after.io.os, "fsync", fsync)
        yield


def test_a_full_disk_mid_run_keeps_the_last_state_and_resumes(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = run_loop(_run(corpus, tmp_path / "clean"), start_run(_run(corpus, tmp_path / "clean")))
    run = _run(corpus, tmp_path / "full")
    state = start_run(run)
    for budget in (3, 9, 14):  # each time the disk fills at a later write
        before = (run.run_dir / "state.json").read_text()
        with disk_full_after(budget, monkeypatch), pytest.raises(AfterError) as e:
            run_loop(run, state)
        assert "No space left on device" in str(e.value) and "unchanged" in str(e.value)
        state = LoopState.load(run.run_dir)  # the last good state, whole
        assert (run.run_dir / "state.json").read_text() != before or budget == 3
        assert not list(run.run_dir.glob(".*.tmp"))  # a failed write cleans up after itself
    state = run_loop(run, LoopState.load(run.run_dir))  # disk freed
    assert state.phase == "done" and state.labeled == clean.labeled
    assert [r["test_ua"] for r in state.rounds] == [r["test_ua"] for r in clean.rounds]


def test_permission_errors_name_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(*args: Any, **kw: Any) -> Any:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(after.io.tempfile, "mkstemp", denied)
    with pytest.raises(AfterError, match=r"cannot write here \(Permission denied\); choose"):
        atomic_write_text(tmp_path / "runs" / "state.json", "{}")


def test_a_full_disk_under_the_label_store_refuses_cleanly(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _run(corpus, tmp_path / "people", oracle="human")
    state = run_loop(run, start_run(run))
    client = TestClient(create_app(run.run_dir), base_url="http://127.0.0.1")
    body = {"annotator": "ann", "clip_id": state.pending[0], "label": "anger"}
    assert client.post("/api/answers", json=body).status_code == 200

    connect = LabelStore._connect

    @contextmanager
    def full(self: LabelStore, **kw: Any) -> Iterator[sqlite3.Connection]:
        with connect(self, **kw) as db:
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            db.execute(f"PRAGMA max_page_count={pages}")  # SQLite's own "disk is full"
            yield db

    monkeypatch.setattr(LabelStore, "_connect", full)
    many = [
        {**body, "annotator": f"ann{k}", "clip_id": c} for k in range(40) for c in state.pending
    ]
    statuses = {client.post("/api/answers", json=b).status_code for b in many}
    assert 503 in statuses
    r = client.post("/api/answers", json=many[-1])
    assert r.status_code == 503 and "full" in r.json()["error"], r.text
    monkeypatch.setattr(LabelStore, "_connect", connect)
    rows = LabelStore(run.run_dir).annotations()
    history = LabelStore(run.run_dir).history()
    assert len(rows) == len(history)  # every stored answer whole, none half-stored
    assert (rows[0].clip_id, rows[0].annotator, rows[0].label) == (state.pending[0], "ann", "anger")
    assert client.post("/api/answers", json=many[-1]).status_code == 200  # space again
