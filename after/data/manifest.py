"""Utterance records and manifests (JSON Lines on disk, CSV import).

Everything downstream (folds, queries, labels, caches, run state) refers to utterances by their
`id`, a stable string, never by position. Paths are kept absolute in memory; in a JSONL file a
relative path is read relative to the file's folder, so a corpus and its manifest can move together.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from after.errors import ManifestError, quoted
from after.io import atomic_write_text, parsing, read_text_file

_FIELDS = ("id", "path", "label", "speaker", "session", "corpus", "duration_s", "votes", "split")
SPLITS = ("train", "dev", "test")
# Line breaks that are not "\n": JSON leaves them unescaped, and line-based readers (Python's
# str.splitlines among them) split on them.
_ODD_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


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
    if not u.id or any(c.isspace() for c in u.id) or _has_control(u.id):
        raise ManifestError(
            f"{where}: id {quoted(u.id)} must be non-empty, with no whitespace or control "
            "characters"
        )
    name = quoted(u.id)
    if not u.path:
        raise ManifestError(f"{where}: utterance {name} has no path")
    if "\x00" in u.path:
        raise ManifestError(f"{where}: utterance {name}: its path contains a NUL character")
    if not u.speaker:
        raise ManifestError(
            f"{where}: utterance {name} has no speaker; "
            "speaker-independent splits need one per clip"
        )
    if u.label == "":
        raise ManifestError(f"{where}: utterance {name} has an empty label; use null for unlabeled")
    for field in ("label", "speaker", "corpus", "session", "split"):
        value = getattr(u, field)
        if value is not None and _has_control(value):
            raise ManifestError(
                f"{where}: utterance {name}: {field} {quoted(value)} holds a line break or "
                "another control character; fix the file (a label or speaker is one line)"
            )
    if u.duration_s is not None and not (math.isfinite(u.duration_s) and u.duration_s >= 0):
        raise ManifestError(f"{where}: utterance {name} has invalid duration_s {u.duration_s!r}")
    if u.split is not None and u.split not in SPLITS:
        raise ManifestError(
            f"{where}: utterance {name} has split {quoted(u.split)}; use one of {SPLITS}"
        )
    if u.votes is not None and (
        not u.votes
        or any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in u.votes.values())
        or any(not k or _has_control(k) for k in u.votes)
    ):
        raise ManifestError(
            f"{where}: utterance {name} votes must map labels to counts >= 0, e.g. "
            '{"anger": 2, "neutral": 1}'
        )
    return u


def _has_control(text: str) -> bool:
    """A control character (line breaks, NUL, ...) or a line or paragraph separator."""
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in text)


def shared_audio(manifest: Manifest) -> list[list[Utterance]]:
    """The rows of `manifest` grouped by audio file, for every file that backs more than one
    row (the same file under two paths, or linked, counts as one). Such rows count the same
    audio twice; under two speakers they put it on both sides of a speaker-independent split."""
    by_file: dict[object, list[Utterance]] = {}
    for u in manifest:
        by_file.setdefault(_audio_key(u.path), []).append(u)
    return [rows for rows in by_file.values() if len(rows) > 1]


def _audio_key(path: str) -> object:
    try:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)
    except (OSError, ValueError):
        return os.path.normpath(os.path.abspath(path))


def shared_audio_warning(manifest: Manifest) -> str | None:
    """One line on the files that back several rows (`shared_audio`), or None."""
    shared = shared_audio(manifest)
    if not shared:
        return None
    rows = sum(len(r) for r in shared)
    crossing = [r for r in shared if len({u.speaker for u in r}) > 1]
    example = max(shared, key=lambda r: (len({u.speaker for u in r}), len(r)))
    speakers = sorted({u.speaker for u in example})
    return (
        f"{len(shared)} audio file(s) back {rows} rows, {len(crossing)} of them under several "
        f"speakers; e.g. {quoted(example[0].path)} backs {len(example)} rows (ids "
        f"{', '.join(quoted(u.id, 40) for u in example[:3])}{', …' if len(example) > 3 else ''}) "
        f"of {len(speakers)} speaker(s) ({', '.join(quoted(s, 40) for s in speakers[:3])}). "
        "The same audio is counted more than once, and under several speakers it lands in both "
        "training and test; give each row its own file"
    )


class Manifest:
    """An ordered collection of utterances with unique ids."""

    def __init__(self, utterances: Iterable[Utterance], *, source: str = "manifest") -> None:
        self._items: dict[str, Utterance] = {}
        for i, u in enumerate(utterances):
            _check(u, f"{source} (record {i + 1})")
            if u.id in self._items:
                raise ManifestError(
                    f"{source}: duplicate id {quoted(u.id)} ({quoted(self._items[u.id].path)} "
                    f"and {quoted(u.path)}); ids must be unique, give the clips distinct ids"
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
            raise ManifestError(f"unknown utterance id {quoted(utt_id)}") from None

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
        lines = [json.dumps(u.to_dict(), ensure_ascii=False).translate(_ODD_BREAKS) for u in self]
        return atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike[str]) -> Manifest:
        """Read a JSONL manifest. Relative audio paths are taken relative to the manifest's
        folder."""
        file = Path(path)
        text = read_text_file(file, "run `after prepare ...` to create a manifest", ManifestError)
        root = file.parent
        items = []
        for n, line in enumerate(text.split("\n"), start=1):  # JSON Lines end lines with \n only
            if not line.strip():
                continue
            where = f"{file}:{n}"
            with parsing(f"{where}: not valid JSON", "fix or remove the line", ManifestError):
                row = json.loads(line)
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
        text = read_text_file(file, "check the path", ManifestError)
        base = Path(root) if root is not None else file.parent
        with parsing(str(file), "fix the CSV (quotes must pair up)", ManifestError):
            return cls(_csv_rows(file, text, base, corpus), source=str(file))


def _csv_rows(file: Path, text: str, base: Path, corpus: str | None) -> Iterator[Utterance]:
    """The utterances of a manifest CSV, checked row by row (see `Manifest.from_csv`)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))  # a quoted cell may hold a line break
    columns = set(reader.fieldnames or [])
    missing = {"path", "label", "speaker"} - columns
    if missing:
        raise ManifestError(
            f"{file}: missing column(s) {sorted(missing)}; found {sorted(columns)}. "
            "A manifest CSV needs path,label,speaker (label may be empty for unlabeled clips)"
        )
    inside = os.path.abspath(base)
    for row in reader:
        where = f"{file}:{reader.line_num}"
        row = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
        row.setdefault("label", None)
        name = row.get("corpus") or corpus or base.resolve().name
        row["corpus"] = name
        if "path" in row:
            row.setdefault("id", f"{name}_{Path(row['path']).stem}")
        if "votes" in row:
            fix = 'write them as e.g. {"anger": 2, "neutral": 1}'
            with parsing(f"{where}: votes must be JSON", fix, ManifestError):
                row["votes"] = json.loads(row["votes"])
        u = _from_row(row, base, where)
        # Lexical, as `_from_row` joins them: a data folder reached through a symlink is fine.
        if not os.path.isabs(row["path"]) and not Path(u.path).is_relative_to(inside):
            raise ManifestError(
                f"{where}: path {quoted(row['path'])} points outside {inside}; keep the "
                "audio under the CSV's folder, or give an absolute path"
            )
        yield u


def _from_row(row: dict[str, Any], root: Path, where: str) -> Utterance:
    unknown = set(row) - set(_FIELDS)
    if unknown:
        raise ManifestError(
            f"{where}: unknown field(s) {quoted(sorted(unknown))}; known: {list(_FIELDS)}"
        )
    for key in ("id", "path", "speaker", "corpus"):
        if not isinstance(row.get(key), str) or not row[key]:
            raise ManifestError(f"{where}: field {key!r} is missing or not a string")
    label = row.get("label")
    if label is not None and not isinstance(label, str):
        raise ManifestError(f"{where}: label must be a string or null, got {quoted(label)}")
    duration = row.get("duration_s")
    if duration is not None:
        try:
            duration = float(duration)
        except (TypeError, ValueError, OverflowError):
            raise ManifestError(f"{where}: duration_s {quoted(duration)} is not a number") from None
    votes = row.get("votes")
    if votes is not None and not isinstance(votes, dict):
        raise ManifestError(f"{where}: votes must be an object mapping label to count")
    session = row.get("session")
    if session is not None and not isinstance(session, str | int):
        raise ManifestError(f"{where}: session must be a string, got {quoted(session)}")
    split = row.get("split")
    if split is not None and not isinstance(split, str):
        raise ManifestError(f"{where}: split must be one of {SPLITS} or null")
    return Utterance(
        id=str(row["id"]),
        path=os.path.normpath(os.path.join(os.path.abspath(root), row["path"])),
        label=label,
        speaker=row["speaker"],
        corpus=row["corpus"],
        session=None if session is None else str(session),
        duration_s=duration,
        votes=votes,
        split=split,
    )
