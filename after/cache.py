"""A disk cache of one array per utterance (frozen-backbone features, frozen CNN outputs).

Layout: `<folder>/<h[:2]>/<h[2:32]>.feat`, where h = sha256(utterance id): one small file per
utterance in 256 shard folders (about 400 files each at 100k utterances), and no id characters
in paths. A file is a magic line, one line of JSON (`id`, the audio file's `size` and
`mtime_ns`, `shape`, `dtype`, `crc32`), then the array's bytes. An entry is used only when all
of these match the utterance and the bytes; anything else (a changed audio file, a truncated or
garbled entry) is a miss, and the caller recomputes and overwrites it. Entries are written to a
temporary file and renamed, so a killed run leaves the old entry or the new one, never half of one.
They are not fsynced (it is a cache): a power cut's empty or partial file fails the checks.

What the array depends on besides the audio (the extractor, its weights, its settings) goes into
the folder name: `cache_folder(root, name, version)`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from after.data.manifest import Utterance
from after.errors import AfterError
from after.io import open_regular, temp_file_for

_MAGIC = b"AFTER-FEATURES 2\n"
_DTYPES = ("<f4", "<f2")


def cache_folder(root: str | os.PathLike[str], name: str, version: str) -> Path:
    """`<root>/<name>-<sha256(version)[:12]>`: one folder per extractor and version. The name
    (`frozen:SPEC` may hold a path, `../..` among it) keeps only `A-Z a-z 0-9 . _ -`, the rest
    `_`, so the folder is always one level inside `root`."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "cache"
    return Path(root) / f"{safe}-{hashlib.sha256(version.encode()).hexdigest()[:12]}"


class ArrayCache:
    """Arrays keyed by utterance, valid while the utterance's audio file is unchanged."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def path(self, utt_id: str) -> Path:
        h = hashlib.sha256(utt_id.encode()).hexdigest()
        return self.folder / h[:2] / f"{h[2:32]}.feat"

    def get(self, utt: Utterance) -> np.ndarray | None:
        """The cached array, or None when absent, stale or damaged."""
        stat = _stat(utt.path)
        if stat is None:
            return None
        try:  # an entry that is not a regular file (a link to /dev/zero) is a miss, not read
            with open_regular(self.path(utt.id), "") as f:
                return _read_entry(f, utt, stat)
        except (OSError, AfterError, ValueError, TypeError, OverflowError, RecursionError):
            return None

    def put(self, utt: Utterance, array: np.ndarray) -> None:
        """Store `array` (float32 or float16) for `utt`, atomically."""
        stat = _stat(utt.path)
        if stat is None:
            return  # the audio is gone: nothing to key the entry on
        dtype = np.dtype(array.dtype).newbyteorder("<")
        if dtype.str not in _DTYPES:
            raise AfterError(f"the cache stores float32 or float16 arrays, not {array.dtype}")
        body = np.ascontiguousarray(array, dtype=dtype).tobytes()
        meta = {
            "id": utt.id,
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "shape": list(array.shape),
            "dtype": dtype.str,
            "crc32": zlib.crc32(body),
        }
        header = json.dumps(meta, ensure_ascii=True).encode() + b"\n"
        path = self.path(utt.id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = temp_file_for(path)
        except OSError as e:
            raise AfterError(
                f"{path.parent}: cannot write the feature cache here ({e.strerror}); "
                "choose a writable cache folder"
            ) from e
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(_MAGIC + header + body)
            os.replace(tmp, path)
        except OSError as e:
            Path(tmp).unlink(missing_ok=True)
            raise AfterError(f"{path}: writing the feature cache failed ({e.strerror})") from e


def _read_entry(f: BinaryIO, utt: Utterance, audio: os.stat_result) -> np.ndarray | None:
    """The array of an open cache entry if it is whole and for this audio, else None. Reads the
    header (bounded by the id's length), then exactly the bytes the header promises, never more:
    a huge or endless file costs no memory."""
    size = os.fstat(f.fileno()).st_size
    head = f.read(min(size, len(_MAGIC) + 12 * len(utt.id) + 4096))  # ids are \u-escaped
    end = head.find(b"\n", len(_MAGIC))
    if not head.startswith(_MAGIC) or end < 0:
        return None
    meta = json.loads(head[len(_MAGIC) : end])
    if (
        not isinstance(meta, dict)
        or meta.get("id") != utt.id
        or meta.get("size") != audio.st_size
        or meta.get("mtime_ns") != audio.st_mtime_ns
        or meta.get("dtype") not in _DTYPES
        or not isinstance(meta.get("shape"), list)
    ):
        return None
    dtype = np.dtype(meta["dtype"])
    shape = tuple(int(n) for n in meta["shape"])
    if min(shape, default=0) < 0 or end + 1 + dtype.itemsize * math.prod(shape) != size:
        return None
    f.seek(end + 1)
    body = f.read(size - end - 1)
    if len(body) != size - end - 1 or meta.get("crc32") != zlib.crc32(body):
        return None
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def default_cache_dir() -> Path:
    """`$AFTER_CACHE_DIR`, else `$XDG_CACHE_HOME/after`, else `~/.cache/after`."""
    if os.environ.get("AFTER_CACHE_DIR"):
        return Path(os.environ["AFTER_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "after"
