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
import logging
import math
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from after.errors import ManifestError, quoted
from after.io import atomic_write_text, parsing, read_text_file

logger = logging.getLogger(__name__)

LABEL_SET = "label_set"  # the key of a JSONL manifest's first line when it declares its labels
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
                "another control character; fix the file (a label or speaker is one line; in a "
                "CSV, a quote that does not pair up swallows the lines after it)"
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


def check_label_set(labels: Iterable[str], source: str = "labels") -> tuple[str, ...]:
    """A declared label set: at least two distinct labels, each a non-empty line of text."""
    found = tuple(labels)
    bad = [x for x in found if not isinstance(x, str) or not x.strip() or _has_control(x)]
    if bad:
        raise ManifestError(
            f"{source}: label {quoted(bad[0])} is not a label (a non-empty line of text); give "
            "the labels like anger,happiness,neutral,sadness"
        )
    doubled = sorted(x for x, n in Counter(found).items() if n > 1)
    if doubled:
        raise ManifestError(f"{source}: the label {quoted(doubled[0])} is given twice")
    if len(found) < 2:
        raise ManifestError(
            f"{source}: {len(found)} label(s); a classifier needs 2 or more, e.g. "
            "--labels anger,happiness,neutral,sadness"
        )
    return found


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
    """An ordered collection of utterances with unique ids.

    `labels` declares the label set (the classes a model of this manifest tells apart), which a
    pool of unlabeled audio needs: none of its clips has a label yet. Without it the label set is
    the labels the clips have. Every clip's label must be one of a declared set."""

    def __init__(
        self,
        utterances: Iterable[Utterance],
        *,
        source: str = "manifest",
        labels: Iterable[str] | None = None,
    ) -> None:
        self.label_set: tuple[str, ...] | None = (
            None if labels is None else check_label_set(labels, source)
        )
        allowed = set(self.label_set or ())
        self._items: dict[str, Utterance] = {}
        for i, u in enumerate(utterances):
            where = f"{source} (record {i + 1})"
            _check(u, where)
            if self.label_set is not None and u.label is not None and u.label not in allowed:
                raise ManifestError(
                    f"{where}: utterance {quoted(u.id)} has the label {quoted(u.label)}, which is "
                    f"not one of the manifest's labels ({', '.join(self.label_set)}); fix the "
                    "label, or add it to the label set (--labels)"
                )
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
        """The label set, sorted: the class order used everywhere. A declared set (`label_set`)
        if there is one, else the distinct labels of the labeled utterances."""
        if self.label_set is not None:
            return sorted(self.label_set)
        return sorted({u.label for u in self if u.label is not None})

    @property
    def speakers(self) -> list[str]:
        return sorted({u.speaker for u in self})

    def label_counts(self) -> Counter[str]:
        return Counter(u.label for u in self if u.label is not None)

    def subset(self, ids: Iterable[str]) -> Manifest:
        """The utterances with these ids, in the given order."""
        return Manifest((self[i] for i in ids), source="subset", labels=self.label_set)

    def replace(self, utt_id: str, **changes: Any) -> None:
        """Replace fields of one utterance (e.g. a measured duration)."""
        self._items[utt_id] = dataclasses.replace(self[utt_id], **changes)

    # ---- files -----------------------------------------------------------------------------------

    def to_jsonl(self, path: str | os.PathLike[str]) -> Path:
        """Write one JSON object per line, atomically; a declared label set goes first, as a
        line of its own (`{"label_set": [...]}`)."""
        lines = [json.dumps(u.to_dict(), ensure_ascii=False).translate(_ODD_BREAKS) for u in self]
        if self.label_set is not None:
            header = {LABEL_SET: list(self.label_set)}
            lines.insert(0, json.dumps(header, ensure_ascii=False).translate(_ODD_BREAKS))
        return atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike[str]) -> Manifest:
        """Read a JSONL manifest. Relative audio paths are taken relative to the manifest's
        folder."""
        file = Path(path)
        text = read_text_file(file, "run `after prepare ...` to create a manifest", ManifestError)
        root = file.parent
        items: list[Utterance] = []
        label_set = None
        for n, line in enumerate(text.split("\n"), start=1):  # JSON Lines end lines with \n only
            if not line.strip():
                continue
            where = f"{file}:{n}"
            with parsing(f"{where}: not valid JSON", "fix or remove the line", ManifestError):
                row = json.loads(line)
            if not isinstance(row, dict):
                raise ManifestError(f"{where}: expected a JSON object per line")
            if LABEL_SET in row and "id" not in row:
                if items or label_set is not None or set(row) != {LABEL_SET}:
                    raise ManifestError(
                        f'{where}: a label set ({{"{LABEL_SET}": [...]}}) must be the first '
                        "line, alone; fix the file"
                    )
                label_set = row[LABEL_SET]
                if not isinstance(label_set, list):
                    raise ManifestError(f"{where}: {LABEL_SET} must be a list of labels")
                continue
            items.append(_from_row(row, root, where))
        return cls(items, source=str(file), labels=label_set)

    @classmethod
    def from_csv(
        cls,
        path: str | os.PathLike[str],
        *,
        corpus: str | None = None,
        root: str | os.PathLike[str] | None = None,
        labels: Iterable[str] | None = None,
        speaker_regex: re.Pattern[str] | None = None,
    ) -> Manifest:
        """Import a CSV with a `path` column and optionally `id,label,speaker,corpus,session,
        duration_s,votes,split` (votes as JSON, e.g. `{"anger": 2, "neutral": 1}`).

        Relative paths are read relative to `root` (default: the CSV's folder). An empty label
        means unlabeled; without a label column every clip is, and `labels` (the label set,
        which a declared set always is) must be given. Without a speaker column the speaker is
        what `speaker_regex` finds in the path (`speaker_of_path`; rows it finds none in are
        left out, and a regex that finds none at all is an error), else unknown: each clip is
        its own speaker. Without an id column the id is `<corpus>_<file stem>`, made unique from
        the rest of the path where stems repeat (`unique_ids`); `corpus` defaults to the CSV's
        corpus column, else the CSV folder's name.
        """
        file = Path(path)
        text = read_text_file(file, "check the path", ManifestError)
        base = Path(root) if root is not None else file.parent
        with parsing(str(file), "fix the CSV (quotes must pair up)", ManifestError):
            label_set = None if labels is None else check_label_set(labels, "--labels")
            rows = _csv_rows(file, text, base, corpus, label_set, speaker_regex)
            return cls(rows, source=str(file), labels=label_set)


def speaker_of_path(pattern: re.Pattern[str], path: str) -> str | None:
    """The speaker that `pattern` finds in a clip's path: its group `speaker` if it has one,
    else its first group; searched in the file name without its extension, then in the whole
    `path` as given (e.g. relative to the corpus folder: `alice/take3.wav`). None if neither
    matches, or the group is empty."""
    pure = Path(path)
    for text in (pure.stem, pure.as_posix()):
        match = pattern.search(text)
        if match is not None:
            found = match["speaker"] if "speaker" in pattern.groupindex else match[1]
            return found or None
    return None


def compile_speaker_regex(regex: str) -> re.Pattern[str]:
    """`--speaker-regex`: a valid regular expression with a group (named `speaker`, or the
    first one) that captures the speaker; else `ManifestError` with an example."""
    example = "e.g. '^([^_]+)_' for alice_take3.wav, or '^([^/]+)/' for alice/take3.wav"
    try:
        pattern = re.compile(regex)
    except re.error as e:
        raise ManifestError(
            f"--speaker-regex '{regex}' is not a valid regex ({e}); {example}"
        ) from None
    if pattern.groups == 0:
        raise ManifestError(
            f"--speaker-regex '{regex}' has no group: put the speaker part of the path in "
            f"parentheses (or name it (?P<speaker>...)), {example}"
        )
    return pattern


def unique_ids(corpus: str, paths: list[str]) -> list[str]:
    """Ids `<corpus>_<file stem>` for files given by (relative) `paths`; where stems repeat
    (`a/clip.wav`, `b/clip.wav`) the id holds the folders too (`<corpus>_a_clip`), and where the
    same name comes in several formats (`clip.mp3`, `clip.ogg`) the extension
    (`<corpus>_clip_mp3`). Whitespace becomes `_`."""

    def join(*parts: str) -> str:
        return "_".join("_".join(p.split()) for p in (corpus, *parts) if p)

    pure = [Path(p) for p in paths]
    ids = [join(p.stem) for p in pure]
    for level in ("folders", "extension"):
        counts = Counter(ids)
        for k, p in enumerate(pure):
            if counts[ids[k]] > 1:
                folders = [x for x in p.parent.parts if x not in ("/", ".", "..")]
                ids[k] = join(*folders, p.stem)
                if level == "extension":
                    ids[k] = join(*folders, p.stem, p.suffix.lstrip(".").lower())
    return ids


def _csv_rows(
    file: Path,
    text: str,
    base: Path,
    corpus: str | None,
    label_set: tuple[str, ...] | None,
    speaker_regex: re.Pattern[str] | None,
) -> list[Utterance]:
    """The utterances of a manifest CSV, checked row by row (see `Manifest.from_csv`)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))  # a quoted cell may hold a line break
    columns = set(reader.fieldnames or [])
    if "path" not in columns:
        raise ManifestError(
            f"{file}: missing column 'path'; found {sorted(columns)}. A manifest CSV needs a "
            "path column, and may have label, speaker, id, corpus, session, duration_s, votes, "
            "split"
        )
    if "label" not in columns and label_set is None:
        raise ManifestError(
            f"{file}: missing column 'label'; found {sorted(columns)}. If one of them holds "
            "the labels, rename it to label; if the clips are unlabeled, give the label set "
            "with --labels (e.g. --labels anger,happiness,neutral,sadness)"
        )
    inside = os.path.abspath(base)
    rows: list[tuple[str, dict[str, Any]]] = []
    unmatched: list[str] = []
    for row in reader:
        where = f"{file}:{reader.line_num}"
        row = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
        row.setdefault("label", None)
        if label_set is not None and row["label"] is not None and row["label"] not in label_set:
            raise ManifestError(
                f"{where}: label {quoted(row['label'])} is not one of --labels "
                f"({', '.join(label_set)}); fix the cell, or add the label to --labels"
            )
        row["corpus"] = row.get("corpus") or corpus or base.resolve().name
        if "speaker" not in row and speaker_regex is not None and "path" in row:
            found = speaker_of_path(speaker_regex, row["path"])
            if found is None:
                unmatched.append(f"{row['path']} (line {reader.line_num})")
                continue
            row["speaker"] = found
        rows.append((where, row))
    if unmatched:
        if not rows:
            raise ManifestError(
                f"{file}: --speaker-regex '{speaker_regex.pattern if speaker_regex else ''}' "
                f"finds a speaker in none of the {len(unmatched)} paths (e.g. {unmatched[0]}); "
                "fix the regex (it is searched in the file name, then in the path as written), "
                "or add a speaker column"
            )
        logger.warning(
            "%s: --speaker-regex finds no speaker in %d path(s), left out: %s",
            file,
            len(unmatched),
            ", ".join(unmatched[:5]) + (", …" if len(unmatched) > 5 else ""),
        )
    need_id = [(where, row) for where, row in rows if "id" not in row and "path" in row]
    for name in {row["corpus"] for _, row in need_id}:
        mine = [row for _, row in need_id if row["corpus"] == name]
        for row, made in zip(mine, unique_ids(name, [r["path"] for r in mine]), strict=True):
            row["id"] = made
    out = []
    for where, row in rows:
        if "speaker" not in row and isinstance(row.get("id"), str):
            row["speaker"] = row["id"]  # unknown: each clip is its own speaker
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
        out.append(u)
    return out


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
