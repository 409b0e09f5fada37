"""Shared fixtures. The real EmoDB copy lives beside the repository in ../shared/data/emodb."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

EMODB_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emodb"


@pytest.fixture(scope="session")
def emodb_dir() -> Path:
    """The real EmoDB folder. Skips where it is absent, except in CI (AFTER_REQUIRE_SHARED=1)."""
    if not (EMODB_DIR / "manifest.csv").is_file():
        if os.environ.get("AFTER_REQUIRE_SHARED") == "1":
            pytest.fail(f"EmoDB not found at {EMODB_DIR}; CI needs ../shared beside the clone")
        pytest.skip(f"EmoDB not found at {EMODB_DIR}")
    return EMODB_DIR


@pytest.fixture(autouse=True)
def _private_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tests never write to the user's feature cache (~/.cache/after)."""
    monkeypatch.setenv("AFTER_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "after-cache"))


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
        f"({r.get('clear_messages', 0)} clear messages), "
        f"{r.get('stored', 0)}/{r.get('sent', 0)} concurrent submissions stored, "
        f"{r.get('attacks_rejected', 0)}/{r.get('attacks', 0)} attacks rejected, "
        + ("nothing lost" if lost == 0 else f"{lost} LOST")
    )
