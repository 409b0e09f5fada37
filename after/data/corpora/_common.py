"""What every corpus adapter shares: checking the corpus folder, listing audio files, reading label
tables in whatever encoding they come in, and accounting for the clips that were left out.

Adapters only look at file names and label files, never at audio content: `duration_s` stays None
and a later validation step (`after.data.audio.validate_manifest`) measures it.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from after.data.manifest import Manifest, Utterance
from after.errors import LayoutError, ManualDownloadRequired

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")

# How many example names a warning about skipped items lists.
_NUM_EXAMPLES = 5


@dataclass(frozen=True)
class CorpusInfo:
    """What an adapter tells the user when the corpus is missing or laid out differently.

    `name` is the corpus name written into every utterance (and the prefix of its ids);
    `instructions` says where to get the corpus; `layout` sketches the expected folder layout.
    """

    name: str
    instructions: str
    layout: str

    def root(self, corpus_dir: str | os.PathLike[str]) -> Path:
        """The corpus folder as an absolute path.

        Raises `ManualDownloadRequired` when it does not exist or holds nothing (no corpus here
        yet), and `LayoutError` when it is a file.
        """
        root = Path(os.path.abspath(Path(corpus_dir).expanduser()))
        if not root.exists() or (root.is_dir() and not any(_visible(root.iterdir()))):
            raise ManualDownloadRequired(self.name, self.instructions, self.layout, str(root))
        if not root.is_dir():
            raise LayoutError(
                f"{root}: is a file; expected the {self.name} corpus folder ({self.layout})"
            )
        return root

    def manifest(self, root: Path, utterances: list[Utterance], skipped: Skipped) -> Manifest:
        """Report what was skipped, then build the manifest; `LayoutError` if nothing was
        usable."""
        skipped.report(self.name)
        if not utterances:
            raise LayoutError(
                f"{root}: found no usable {self.name} clips ({skipped.summary()}); "
                f"expected layout: {self.layout}"
            )
        return Manifest(utterances, source=f"{self.name} corpus at {root}")


class Skipped:
    """Items an adapter left out, grouped by reason, reported once at the end.

    `skip` is for items that should have been usable but were not (a file name that does not
    parse, a label row whose audio is missing): logged as a warning. `drop` is for items left out
    by design (a category outside the label map, a song instead of speech): logged as info.
    """

    def __init__(self) -> None:
        self._skipped: dict[str, list[str]] = defaultdict(list)
        self._dropped: dict[str, list[str]] = defaultdict(list)

    def skip(self, reason: str, name: str) -> None:
        self._skipped[reason].append(name)

    def drop(self, reason: str, name: str) -> None:
        self._dropped[reason].append(name)

    def count(self) -> int:
        """How many items were skipped (not counting those dropped by design)."""
        return sum(len(names) for names in self._skipped.values())

    def summary(self) -> str:
        """One line, e.g. "skipped 3 (name does not parse), dropped 10 (category not used)"."""
        parts = [
            f"{verb} {len(names)} ({reason})"
            for verb, groups in (("skipped", self._skipped), ("dropped", self._dropped))
            for reason, names in groups.items()
        ]
        return ", ".join(parts) or "no files found"

    def report(self, corpus: str) -> None:
        for reason, names in self._skipped.items():
            logger.warning(
                "%s: skipped %d item(s): %s (e.g. %s)",
                corpus,
                len(names),
                reason,
                ", ".join(names[:_NUM_EXAMPLES]),
            )
        for reason, names in self._dropped.items():
            logger.info("%s: left out %d item(s): %s", corpus, len(names), reason)


def make_id(*parts: str) -> str:
    """Join id parts with "_"; whitespace inside a part becomes "_" (ids hold no whitespace)."""
    return "_".join(re.sub(r"\s+", "_", p.strip()) for p in parts)


def require_dir(path: Path, what: str) -> Path:
    """`path` if it is a folder, else `LayoutError` naming it and what belongs there."""
    if not path.is_dir():
        state = "is not a folder" if path.exists() else "not found"
        raise LayoutError(f"{path}: {state}; expected {what} there")
    return path


def require_file(path: Path, what: str) -> Path:
    """`path` if it is a file, else `LayoutError` naming it and what it should hold."""
    if not path.is_file():
        state = "is not a file" if path.exists() else "not found"
        raise LayoutError(f"{path}: {state}; expected {what}")
    return path


def list_audio(folder: Path) -> list[Path]:
    """The audio files directly inside `folder` (by extension, any case), sorted by name.

    Hidden files (e.g. macOS `._clip.wav` resource forks) are left out.
    """
    with os.scandir(folder) as entries:
        return sorted(
            Path(e.path)
            for e in entries
            if e.is_file()
            and not e.name.startswith(".")
            and os.path.splitext(e.name)[1].lower() in AUDIO_EXTENSIONS
        )


def list_dirs(folder: Path) -> list[Path]:
    """The visible sub-folders of `folder`, sorted by name."""
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if e.is_dir() and not e.name.startswith("."))


def audio_by_stem(folder: Path) -> dict[str, Path]:
    """Map file stem -> audio file for the audio directly inside `folder` ({} if it is missing).

    When one stem exists in several formats, the earlier in `AUDIO_EXTENSIONS` wins.
    """
    if not folder.is_dir():
        return {}
    rank = {ext: i for i, ext in enumerate(AUDIO_EXTENSIONS)}
    found: dict[str, Path] = {}
    for path in sorted(list_audio(folder), key=lambda p: rank[p.suffix.lower()], reverse=True):
        found[path.stem] = path
    return found


def read_table(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    """The rows of a CSV file (read with `read_text`) as dicts, header names and cells stripped of
    spaces. Raises `LayoutError` naming the missing columns, or the line of a row with fewer
    cells than the header (a truncated file)."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise LayoutError(f"{path}: missing column(s) {missing}; found {header}")
    rows = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise LayoutError(
                f"{path}:{reader.line_num}: {len(row)} cells, but the header has {len(header)}; "
                "the file is damaged or truncated, restore it from the corpus release"
            )
        rows.append({key: cell.strip() for key, cell in zip(header, row, strict=False)})
    return rows


def read_text(path: Path) -> str:
    """A label file's text: UTF-8 (with or without BOM), else Windows-1252, else Latin-1.

    Label files of some corpora are not UTF-8 (MELD's transcripts), and adapters only need their
    ASCII fields, so a wrong guess among these costs nothing.
    """
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")  # decodes any byte string: the last resort


def _visible(paths: Iterable[Path]) -> Iterable[Path]:
    return (p for p in paths if not p.name.startswith("."))
