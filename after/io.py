"""Durable file writes: write to a temporary file in the same folder, fsync, then rename over the
target.

A reader never sees a half-written file: it sees the old content or the new, even if the process is
killed.
"""

from __future__ import annotations

import codecs
import csv
import errno
import fcntl
import json
import os
import stat
import tempfile
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from after.errors import AfterError, quoted
from after.faults import fault_point


def check_file_name(name: str, what: str, fix: str, error: type[AfterError] = AfterError) -> str:
    """`name` if it can be one file name inside a folder: not empty, not `.` or `..`, no `/` or
    `\\`, no control characters. A name from a user's file (a speaker id that names a fold) that
    could climb out of its folder, or hide in a listing, is `error` naming it and `fix`."""
    problem = None
    if name in ("", ".", ".."):
        problem = "it is empty, '.' or '..'"
    elif "/" in name or "\\" in name:
        problem = "it holds '/' or '\\'"
    elif any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        problem = "it holds a control character"
    elif len(name.encode("utf-8", "surrogateescape")) > 200:
        problem = "it is over 200 bytes"
    if problem is not None:
        raise error(f"{what} {quoted(name)} cannot name a file ({problem}); {fix}")
    return name


def os_error_message(e: OSError) -> str:
    """One line for an operating-system error that reached the command line: what happened,
    to which file, what to do. Files already written are whole (every write is atomic)."""
    where = f"{e.filename}: " if e.filename else ""
    reason = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space (or choose another folder) and run the command again"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "make it writable (or choose another folder) and run the command again"
    elif e.errno in (errno.EISDIR, errno.ENOTDIR):
        fix = "a folder and a file are mixed up at that path; move the one in the way"
    else:
        fix = "fix that and run the command again"
    return f"{where}{reason}; {fix} (what was saved before is intact)"


def not_a_file(path: str | os.PathLike[str]) -> str | None:
    """Why `path` cannot be read or replaced as a file ("no such file", "a FIFO", ...), or None
    for a regular file or a link to one. Opening a FIFO or a device would block or never end, and
    replacing one with a rename would put a file where a device node was."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except ValueError:
        return "the path contains a NUL character"
    except OSError as e:
        return e.strerror or str(e)
    return None if stat.S_ISREG(mode) else _what_is(mode)


def _what_is(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a regular file"
    return "not a regular file"


def open_regular(path: str | os.PathLike[str], fix: str) -> BinaryIO:
    """`path` opened for reading in binary, if it is a regular file (or a link to one): a FIFO
    is not waited on and a device (a link to /dev/zero) never read, whatever happens to the path
    between a check and the open. Anything else is an `AfterError` naming the file and `fix`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except ValueError:
        raise AfterError(f"{path}: the path contains a NUL character; {fix}") from None
    except OSError as e:
        raise AfterError(f"{path}: {e.strerror or e}; {fix}") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise AfterError(f"{path}: {_what_is(mode)}; {fix}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_text_file(
    path: str | os.PathLike[str], fix: str, error: type[AfterError] = AfterError
) -> str:
    """The text of a file the user gave: UTF-8, with or without a BOM (Excel writes one). Anything
    else, or a path that is not a regular file, is `error` naming the file and `fix`."""
    file = Path(path)
    problem = not_a_file(file)
    if problem is not None:
        raise error(f"{file}: {problem}; {fix}")
    try:
        raw = file.read_bytes()
    except OSError as e:
        raise error(f"{file}: cannot read ({e.strerror}); {fix}") from None
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise error(f"{file}: not UTF-8 but UTF-16 text; save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise error(
            f"{file}: not UTF-8 text (byte 0x{raw[e.start]:02x} on line {line}); save it as UTF-8"
        ) from None


@contextmanager
def parsing(where: str, fix: str, error: type[AfterError] = AfterError) -> Iterator[None]:
    """Turn the failures of Python's parsers (json, csv, number conversion) inside the block into
    one line: `error` naming `where` (a file, line or item) and the fix."""
    try:
        yield
    except RecursionError:
        raise error(f"{where}: nested too deeply; {fix}") from None
    except (ValueError, csv.Error) as e:
        reason = str(e).split(";")[0].split("\n")[0]  # drop Python's own advice
        raise error(f"{where}: {reason}; {fix}") from None


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write `text` to `path` atomically, creating parent folders. Returns the path. A path that
    exists but is not a regular file (a device such as /dev/null, a FIFO, a folder) is refused."""
    target = Path(path)
    problem = not_a_file(target)
    if problem is not None and problem != "no such file":
        raise AfterError(f"{target}: {problem}; give the path of a file to write")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temp_file_for(target)
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


def temp_file_for(target: Path) -> tuple[int, str]:
    """A new temporary file beside `target` (for a write then a rename over it): its descriptor
    and path. It gets the mode a plain `open` would give, 0o666 less the umask, where `mkstemp`
    alone gives 0600: renamed into place, a 0600 file would keep colleagues on a shared server
    from reading a report or a model."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.fchmod(fd, file_mode())
    return fd, tmp


def file_mode() -> int:
    """The mode `open` gives a new file: 0o666 less this process's umask."""
    return 0o666 & ~current_umask()


def current_umask() -> int:
    # Linux shows it in /proc; elsewhere set and restore it (not thread-safe, but brief).
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(folder: str | os.PathLike[str]) -> None:
    """Give every file under `folder` the mode `open` would have given it. For folders written by
    libraries that make files 0600 whatever the umask (safetensors writes model.safetensors so)."""
    mode = file_mode()
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


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
    if not p.exists():
        raise AfterError(f"{p}: not found; {fix}")
    text = read_text_file(p, fix)
    with parsing(f"{p}: damaged", fix):
        return json.loads(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write `obj` as indented JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@contextmanager
def held_lock(path: Path, holder: str, busy: Callable[[str], str]) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` while the block runs, with `holder` written in
    it; if another process holds it, `AfterError(busy(what that process wrote))`. The lock goes
    with the process, even on kill -9."""
    try:
        f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held for the block)
    except OSError as e:
        raise AfterError(os_error_message(e)) from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise AfterError(busy(f.read(200).strip())) from None
        f.truncate(0)
        f.write(holder)
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)
