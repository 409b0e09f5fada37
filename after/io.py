"""Durable file writes: write to a temporary file in the same folder, fsync, then rename over the
target.

A reader never sees a half-written file: it sees the old content or the new, even if the process is
killed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from after.errors import AfterError
from after.faults import fault_point


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` to `path` atomically, creating parent folders. Returns the path."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as e:
        raise AfterError(
            f"{target}: cannot write here ({e.strerror}); choose a writable path"
        ) from e
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        fault_point("write")
        os.replace(tmp, target)
        _fsync_folder(target.parent)  # the rename itself survives a power cut
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise AfterError(
            f"{target}: write failed ({e.strerror}); the previous file, if any, is unchanged"
        ) from e
    return target


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temp files an atomic write left when its process was killed before the
    rename (their targets are intact). Only call it while no other process writes here."""
    stale = sorted(Path(folder).glob(".*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def read_json(path: str | os.PathLike[str], fix: str) -> Any:
    """Load a JSON file this package wrote; a missing or damaged file is an `AfterError` that
    names it and says what to do (`fix`)."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AfterError(f"{p}: not found; {fix}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AfterError(f"{p}: damaged ({e}); {fix}") from None
    except OSError as e:
        raise AfterError(f"{p}: cannot read ({e.strerror}); {fix}") from None


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write `obj` as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
