"""Utterance records and manifests (JSON Lines on disk, CSV import).

Everything downstream (folds, queries, labels, caches, run state) refers to utterances by their
`id`, a stable string, never by position. Paths are kept absolute in memory; in a JSONL file a
relative path is read relative to the file's folder, so a corpus and its manifest can move together.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from after.errors import ManifestError
from after.io import atomic_write_text

_FIELDS = ("id", "path", "label", "speaker", "session", "corpus", "duration_s", "votes", "split")
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True, slots=True)
class Utterance:
    """One clip.

    `label` is None for unlabeled audio (usable for TAPT and as pool, never for evaluation). `votes`
    maps label to the number of annotators who chose it (for soft-label training), when the corpus
    publishes them. `split` is the corpus's own official partition (train/dev/test) where it has
    one, e.g. MSP-Podcast; most corpora have none.
    """

    id: str
    path: str
    label: str | None
    speaker: str
    corpus: str
    session: str | None = None
    duration_s: float | None = None
    votes: dict[str, int] | None = None
    split: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in _FIELDS}


def _check(u: Utterance, where: str) -> Utterance:
    """Validate one record; `where` names its origin (file and line) for the message."""
    if not u.id or any(c.isspace() for c in u.id):
        raise ManifestError(f"{where}: id {u.id!r} must be non-empty with no whitespace")
    if not u.path:
        raise ManifestError(f"{where}: utterance {u.id!r} has no path")
    if not u.speaker:
        raise ManifestError(
            f"{where}: utterance {u.id!r} has no speaker; "
            "speaker-independent splits need one per clip"
        )
    if u.label == "":
        raise ManifestError(
            f"{where}: utterance {u.id!r} has an empty label; use null for unlabeled"
        )
    if u.duration_s is not None and not (math.isfinite(u.duration_s) and u.duration_s >= 0):
        raise ManifestError(f"{where}: utterance {u.id!r} has invalid duration_s {u.duration_s!r}")
    if u.split is not None and u.split not in SPLITS:
        raise ManifestError(
            f"{where}: utterance {u.id!r} has split {u.split!r}; use one of {SPLITS}"
        )
    if u.votes is not None and (
        not u.votes or any(not isinstance(n, int) or n < 0 for n in u.votes.values())
    ):
        raise ManifestError(f"{where}: utterance {u.id!r} votes must map labels to counts >= 0")
    return u


class Manifest:
    """An ordered collection of utterances with unique ids."""

    def __init__(self, utterances: Iterable[Utterance], *, source: str = "manifest") -> None:
        self._items: dict[str, Utterance] = {}
        for i, u in enumerate(utterances):
            _check(u, f"{source} (record {i + 1})")
            if u.id in self._items:
                raise ManifestError(
                    f"{source}: duplicate id {u.id!r} ({self._items[u.id].path} and {u.path}); "
                    "ids must be unique, give the clips distinct ids"
                )
            self._items[u.id] = u

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self._items.values())

    def __contains__(self, utt_id: object) -> bool:
        return utt_id in self._items

    def __getitem__(self, utt_id: str) -> Utterance:
        try:
            return self._items[utt_id]
        except KeyError:
            raise ManifestError(f"unknown utterance id {utt_id!r}") from None

    @property
    def ids(self) -> list[str]:
        return list(self._items)

    @property
    def labels(self) -> list[str]:
        """Sorted distinct labels of the labeled utterances: the class order used everywhere."""
        return sorted({u.label for u in self if u.label is not None})

    @property
    def speakers(self) -> list[str]:
        return sorted({u.speaker for u in self})

    def label_counts(self) -> Counter[str]:
        return Counter(u.label for u in self if u.label is not None)

    def subset(self, ids: Iterable[str]) -> Manifest:
        """The utterances with these ids, in the given order."""
        return Manifest((self[i] for i in ids), source="subset")

    def replace(self, utt_id: str, **changes: Any) -> None:
        """Replace fields of one utterance (e.g. a measured duration)."""
        self._items[utt_id] = dataclasses.replace(self[utt_id], **changes)

    # ---- files -----------------------------------------------------------------------------------

    def to_jsonl(self, path: str | os.PathLike[str]) -> Path:
        """Write one JSON object per line, atomically."""
        lines = [json.dumps(u.to_dict(), ensure_ascii=False) for u in self]
        return atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike[str]) -> Manifest:
        """Read a JSONL manifest. Relative audio paths are taken relative to the manifest's
        folder."""
        file = Path(path)
        text = _read_text(file, "run `after prepare ...` to create a manifest")
        root = file.parent
        items = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{file}:{n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ManifestError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ManifestError(f"{where}: expected a JSON object per line")
            items.append(_from_row(row, root, where))
        return cls(items, source=str(file))

    @classmethod
    def from_csv(
        cls,
        path: str | os.PathLike[str],
        *,
        corpus: str | None = None,
        root: str | os.PathLike[str] | None = None,
    ) -> Manifest:
        """Import a CSV with columns `path,label,speaker` and optionally
        `id,corpus,session,duration_s, votes,split` (votes as JSON, e.g. `{"anger": 2, "neutral":
        1}`).

        Relative paths are read relative to `root` (default: the CSV's folder). An empty label means
        unlabeled. Without an id column the id is `<corpus>_<file stem>`; `corpus` defaults to the
        CSV's corpus column, else the CSV folder's name.
        """
        file = Path(path)
        text = _read_text(file, "check the path")
        base = Path(root) if root is not None else file.parent
        reader = csv.DictReader(text.splitlines())
        columns = set(reader.fieldnames or [])
        missing = {"path", "label", "speaker"} - columns
        if missing:
            raise ManifestError(
                f"{file}: missing column(s) {sorted(missing)}; found {sorted(columns)}. "
                "A manifest CSV needs path,label,speaker (label may be empty for unlabeled clips)"
            )
        items = []
        for n, row in enumerate(reader, start=2):
            where = f"{file}:{n}"
            row = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
            row.setdefault("label", None)
            name = row.get("corpus") or corpus or base.resolve().name
            row["corpus"] = name
            if "path" in row:
                row.setdefault("id", f"{name}_{Path(row['path']).stem}")
            if "votes" in row:
                try:
                    row["votes"] = json.loads(row["votes"])
                except json.JSONDecodeError:
                    raise ManifestError(
                        f'{where}: votes must be JSON, e.g. {{"anger": 2}}'
                    ) from None
            u = _from_row(row, base, where)
            # Lexical, as `_from_row` joins them: a data folder reached through a symlink is fine.
            inside = os.path.abspath(base)
            if not os.path.isabs(row["path"]) and not Path(u.path).is_relative_to(inside):
                raise ManifestError(
                    f"{where}: path {row['path']!r} points outside {inside}; keep the "
                    "audio under the CSV's folder, or give an absolute path"
                )
            items.append(u)
        return cls(items, source=str(file))


def _read_text(file: Path, fix: str) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(f"{file}: no such file; {fix}") from None
    except IsADirectoryError:
        raise ManifestError(f"{file}: is a folder, expected a file") from None
    except PermissionError:
        raise ManifestError(f"{file}: permission denied; make it readable") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{file}: not UTF-8 text; is this really a manifest?") from None


def _from_row(row: dict[str, Any], root: Path, where: str) -> Utterance:
    unknown = set(row) - set(_FIELDS)
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {sorted(unknown)}; known: {list(_FIELDS)}")
    for key in ("id", "path", "speaker", "corpus"):
        if not isinstance(row.get(key), str) or not row[key]:
            raise ManifestError(f"{where}: field {key!r} is missing or not a string")
    label = row.get("label")
    if label is not None and not isinstance(label, str):
        raise ManifestError(f"{where}: label must be a string or null, got {label!r}")
    duration = row.get("duration_s")
    if duration is not None:
        try:
            duration = float(duration)
        except (TypeError, ValueError):
            raise ManifestError(f"{where}: duration_s {duration!r} is not a number") from None
    votes = row.get("votes")
    if votes is not None and not isinstance(votes, dict):
        raise ManifestError(f"{where}: votes must be an object mapping label to count")
    session = row.get("session")
    return Utterance(
        id=str(row["id"]),
        path=os.path.normpath(os.path.join(os.path.abspath(root), row["path"])),
        label=label,
        speaker=row["speaker"],
        corpus=row["corpus"],
        session=None if session is None else str(session),
        duration_s=duration,
        votes=votes,
        split=row.get("split"),
    )
