"""Fixtures for the corpus adapter tests: fake corpus trees of empty files (adapters never read
audio, so empty files stand in for clips)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

Touch = Callable[..., list[Path]]


@pytest.fixture
def touch() -> Touch:
    """`touch(root, "a/b.wav", ...)` creates empty files (and their folders) under `root`."""

    def make(root: Path, *names: str) -> list[Path]:
        paths = [root / name for name in names]
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        return paths

    return make
