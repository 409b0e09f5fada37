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
