"""Shared fixtures. The real EmoDB copy lives beside the repository in ../shared/data/emodb."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from after.data.folds import make_folds
from after.data.manifest import Manifest
from after.data.synth import synthesize

EMODB_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emodb"


@pytest.fixture(scope="session")
def emodb_dir() -> Path:
    """The real EmoDB folder. Skips where it is absent, except in CI (AFTER_REQUIRE_SHARED=1)."""
    if not (EMODB_DIR / "manifest.csv").is_file():
        if os.environ.get("AFTER_REQUIRE_SHARED") == "1":
            pytest.fail(f"EmoDB not found at {EMODB_DIR}; CI needs ../shared beside the clone")
        pytest.skip(f"EmoDB not found at {EMODB_DIR}")
    return EMODB_DIR


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Path, Path]:
    """The synthetic corpus the loop, labeling, report and reliability tests share (read only):
    4 voices x 4 sentences x 4 emotions = 64 clips; fold 0 pools 2 voices (32 clips). Returns
    the manifest, its JSONL file and the leave-one-speaker-out folds file."""
    root = tmp_path_factory.mktemp("corpus")
    m = synthesize(root / "corpus", num_speakers=4, num_sentences=4)
    manifest = m.to_jsonl(root / "manifest.jsonl")
    folds = make_folds(m, "loso", seed=0).to_json(root / "folds.json")
    return m, manifest, folds


@pytest.fixture(autouse=True)
def _private_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests never write to the user's feature cache (~/.cache/after)."""
    monkeypatch.setenv("AFTER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "after-cache"))


@contextmanager
def served(app: Any) -> Iterator[str]:
    """Serve an ASGI app on a free loopback port as `after label serve` does (same server
    settings and limits); yields its base URL."""
    from after.label.app import make_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = make_server(app, "127.0.0.1", port)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def serve() -> Any:
    """`with serve(app) as url:` runs an ASGI app on a free loopback port."""
    return served


# ---- the reliability summary: figures the crash, hostile-input and load tests report -----------

RELIABILITY: dict[str, int] = {}


@pytest.fixture
def tally() -> dict[str, int]:
    """Counters for the one-line reliability summary printed at the end of the run."""
    return RELIABILITY


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    r = RELIABILITY
    if not r:
        return
    lost = r.get("lost", 0)
    terminalreporter.write_line(
        f"reliability: {r.get('kill_points', 0)} kill points survived, "
        f"{r.get('hostile_inputs', 0)} hostile inputs tried "
        f"({r.get('clear_messages', 0)} refused with a clear message, "
        f"{r.get('hostile_inputs', 0) - r.get('clear_messages', 0)} read correctly), "
        f"{r.get('stored', 0)}/{r.get('sent', 0)} concurrent submissions stored, "
        f"{r.get('attacks_rejected', 0)}/{r.get('attacks', 0)} attacks rejected, "
        f"the page answered through {r.get('idle_connections', 0)} idle or slow connections and "
        f"a locked label store ({r.get('locked_store_writes', 0)} writes refused, then stored), "
        f"{r.get('late_changes_refused', 0)} changes to clips already taken refused, "
        f"{r.get('verbatim', 0)} markup-like strings shown verbatim, "
        f"{r.get('path_escapes', 0)} ids that would climb out of a folder refused, "
        f"{r.get('second_servers', 0)} second labeling servers on a run refused, "
        f"{r.get('look_alike_names', 0)} look-alike annotator names taken for one, "
        f"{r.get('faults', 0)} disk, run-folder, model-file and cache faults told in one line, "
        f"{r.get('shared_audio', 0)} manifests whose rows share audio caught, "
        f"{r.get('round_trips', 0)} round trips and messages kept whole, "
        + ("nothing lost" if lost == 0 else f"{lost} LOST")
    )
