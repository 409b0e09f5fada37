"""The label store: every answer people gave, durable, in one SQLite file inside the run folder.

One row per (clip, annotator) holds that person's current answer: a label, or NULL for "skip" (the
annotator cannot tell). Every change is also appended to `history`, so an undo or a re-label never
erases what was said. The file runs in WAL mode with `synchronous=FULL`: a committed answer survives
a crash or a power cut, and many annotators (threads or processes) can write at once; every write
is one `BEGIN IMMEDIATE` transaction.

A clip is *decided* once it has `min_votes` answers. It then takes the most voted label (ties go to
the label voted first), and its vote counts are its soft label; a decided clip with only skips is
*dropped*: nobody could label it, so the loop takes it out of the pool. When the loop takes a
decided clip (`take`), the store records it in the same transaction, and from then on refuses to
change its answers (`ClipTaken`): a change the loop would never see must not be accepted.

Writers wait at most `wait_s` for another process's write lock (an import, the loop, a backup,
a `sqlite3` shell), then fail with `StoreBusy`, having stored nothing; readers wait `read_wait_s`
(a process holding the file in `locking_mode=EXCLUSIVE` blocks readers too). An annotator name given
with a browser key (`key`) belongs to the first key that used it (`NameInUse` for the others), so
nobody can answer or undo in another person's name.

`HumanOracle` is the loop's oracle over this store.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from after.errors import AfterError, quoted
from after.faults import fault_point
from after.loop.folder import RunFolder
from after.loop.oracle import Answers

SCHEMA_VERSION = 1
MAX_NAME = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS annotations (
    clip_id TEXT NOT NULL,
    annotator TEXT NOT NULL,
    label TEXT,                -- NULL: skipped, the annotator could not tell
    round INTEGER NOT NULL,
    source TEXT NOT NULL,      -- web, csv, label-studio
    created_at REAL NOT NULL,  -- unix seconds
    seq INTEGER NOT NULL,      -- order of the last change, for undo and tie-breaks
    PRIMARY KEY (clip_id, annotator)
);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    action TEXT NOT NULL,      -- set or undo
    clip_id TEXT NOT NULL,
    annotator TEXT NOT NULL,
    label TEXT,
    round INTEGER NOT NULL,
    source TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS annotations_round ON annotations (round, annotator, seq);
CREATE TABLE IF NOT EXISTS taken (  -- clips the loop has taken: their answers are final
    clip_id TEXT PRIMARY KEY,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS names (  -- annotator name -> digest of the browser key that owns it
    annotator TEXT PRIMARY KEY,
    key_digest TEXT NOT NULL
);
"""


class StoreBusy(AfterError):
    """Another process held the store's write lock longer than we wait; nothing was written."""


class ClipTaken(AfterError):
    """An answer to a clip that the loop has already taken; it would have no effect."""


class NameInUse(AfterError):
    """An annotator name that belongs to another browser."""


def check_annotator(value: object) -> str:
    """An annotator name, stripped and in Unicode NFC (`José` typed as one character or as `e`
    and a combining accent is one person): 1 to `MAX_NAME` printable characters; else
    `AfterError`."""
    name = unicodedata.normalize("NFC", value).strip() if isinstance(value, str) else ""
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise AfterError(
            f"give an annotator name of at most {MAX_NAME} printable characters, not "
            f"{quoted(value)}"
        )
    return name


@dataclass(frozen=True)
class Annotation:
    clip_id: str
    annotator: str
    label: str | None  # None: skipped
    round: int
    source: str
    created_at: float


class LabelStore:
    """`LabelStore(run_dir)` opens (or creates) `run_dir/labels.sqlite`. Safe to share between
    threads and processes: every call opens its own connection. A call waits at most `wait_s`
    for another process's write lock."""

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        wait_s: float = 60.0,
        read_wait_s: float | None = None,
    ) -> None:
        self.path = RunFolder(run_dir).store
        self.wait_s = wait_s
        self.read_wait_s = wait_s if read_wait_s is None else read_wait_s
        if not self.path.parent.is_dir():
            raise AfterError(f"{self.path.parent}: no such run folder")
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
                )
            elif int(row[0]) != SCHEMA_VERSION:
                raise AfterError(
                    f"{self.path}: label store schema {row[0]}, this version of after reads "
                    f"{SCHEMA_VERSION}"
                )

    @contextmanager
    def _connect(self, *, read: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection that turns SQLite's failures into one line: what happened, to which
        file, what to do. A reader waits `read_wait_s` for a lock, a writer `wait_s`."""
        wait_s = self.read_wait_s if read else self.wait_s
        try:
            db = sqlite3.connect(self.path, timeout=wait_s, isolation_level=None)
        except sqlite3.Error as e:
            raise self._failed(e, wait_s, read) from None
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA busy_timeout={int(wait_s * 1000)}")
            yield db
        except sqlite3.DatabaseError as e:
            raise self._failed(e, wait_s, read) from None
        finally:
            db.close()

    def _failed(self, e: sqlite3.Error, wait_s: float, read: bool) -> AfterError:
        outcome = "nothing was read" if read else "nothing was stored"
        code = getattr(e, "sqlite_errorname", "")
        if code.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return StoreBusy(
                f"{self.path}: another process (an import, the active-learning loop, a backup "
                f"or a sqlite3 shell) has held the label store locked for over {wait_s:g} s; "
                f"{outcome}, try again when it is done"
            )
        if code.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")):
            return AfterError(
                f"{self.path}: damaged ({e}); restore it from a backup (every answer is also in "
                "its history table)"
            )
        if code.startswith("SQLITE_FULL"):
            fix = "the disk is full: free some space and try again"
        elif code.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")):
            fix = (
                "the run folder or the file cannot be written (read-only, or not a file): make "
                "them writable and try again"
            )
        elif code.startswith("SQLITE_IOERR"):
            fix = "the disk failed a read or a write (often: it is full); check it, try again"
        else:
            fix = "try again"
        return AfterError(f"{self.path}: {e}; {outcome}, earlier answers are intact; {fix}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # ---- writes

    def put(
        self,
        clip_id: str,
        annotator: str,
        label: str | None,
        round: int,
        source: str = "web",
        *,
        key: str | None = None,
    ) -> None:
        """Record (or replace) one annotator's answer for one clip; with `key`, only if the name
        is free or belongs to that key."""
        self.put_many([(clip_id, annotator, label)], round, source, key=key)

    def put_many(
        self,
        rows: Iterable[tuple[str, str, str | None]],
        round: int,
        source: str,
        *,
        key: str | None = None,
    ) -> int:
        """Record many (clip, annotator, label-or-None) answers in one transaction: all or
        none. Returns how many were written. Raises `ClipTaken` if a clip was taken by the loop,
        `NameInUse` if `key` is given and a name belongs to another key."""
        now = time.time()
        rows = [(clip, _nfc(annotator), label) for clip, annotator, label in rows]
        count = 0
        with self._write() as db:
            taken = _taken(db, [clip for clip, _, _ in rows])
            if taken:
                raise ClipTaken(
                    f"{len(taken)} clip(s) were taken by the active-learning loop already (e.g. "
                    f"{quoted(min(taken))}); their labels can no longer change"
                )
            if key is not None:
                for name in {annotator for _, annotator, _ in rows}:
                    _claim(db, name, key)
            for k, (clip_id, annotator, label) in enumerate(rows):
                if k == 1:
                    fault_point("label-import")  # mid-transaction: nothing may land
                cur = db.execute(
                    "INSERT INTO history (action, clip_id, annotator, label, round, source, at) "
                    "VALUES ('set', ?, ?, ?, ?, ?, ?)",
                    (clip_id, annotator, label, round, source, now),
                )
                db.execute(
                    "INSERT INTO annotations VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (clip_id, annotator) DO UPDATE SET label=excluded.label, "
                    "round=excluded.round, source=excluded.source, "
                    "created_at=excluded.created_at, seq=excluded.seq",
                    (clip_id, annotator, label, round, source, now, cur.lastrowid),
                )
                count += 1
        return count

    def undo(self, annotator: str, round: int, *, key: str | None = None) -> str | None:
        """Withdraw `annotator`'s latest answer of `round`; returns its clip id (None if there
        is nothing to undo). The answer stays in the history. Raises `ClipTaken` if the loop has
        taken that clip, `NameInUse` if `key` is given and the name belongs to another key."""
        annotator = _nfc(annotator)
        with self._write() as db:
            if key is not None:
                _claim(db, annotator, key)
            row = db.execute(
                "SELECT clip_id, label, source FROM annotations WHERE annotator=? AND round=? "
                "ORDER BY seq DESC LIMIT 1",
                (annotator, round),
            ).fetchone()
            if row is None:
                return None
            clip_id, label, source = row
            if _taken(db, [clip_id]):
                raise ClipTaken(
                    "your latest answer was taken by the active-learning loop already; it can no "
                    "longer be undone"
                )
            db.execute(
                "DELETE FROM annotations WHERE clip_id=? AND annotator=?", (clip_id, annotator)
            )
            db.execute(
                "INSERT INTO history (action, clip_id, annotator, label, round, source, at) "
                "VALUES ('undo', ?, ?, ?, ?, ?, ?)",
                (clip_id, annotator, label, round, source, time.time()),
            )
        return str(clip_id)

    # ---- reads

    def annotations(
        self, clip_ids: Sequence[str] | None = None, round: int | None = None
    ) -> list[Annotation]:
        """Current answers, oldest change first; filtered by clips and/or round."""
        with self._connect(read=True) as db:
            return _annotations(db, clip_ids, round)

    def history(self) -> list[dict[str, Any]]:
        """Every change ever made, in order."""
        with self._connect(read=True) as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM history ORDER BY seq")]

    def taken(self, clip_ids: Sequence[str]) -> set[str]:
        """The clips among `clip_ids` that the loop has taken (their answers are final)."""
        with self._connect(read=True) as db:
            return _taken(db, clip_ids)

    def take(self, clip_ids: Sequence[str], min_votes: int = 1) -> Answers:
        """The decided clips among `clip_ids` (their label and votes, or dropped), recorded as
        taken in the same transaction: an answer is either in what the loop takes, or refused."""
        with self._write() as db:
            answers = _resolve(_annotations(db, clip_ids), clip_ids, min_votes)
            now = time.time()
            db.executemany(
                "INSERT OR IGNORE INTO taken VALUES (?, ?)",
                [(clip, now) for clip in [*answers.labels, *answers.dropped]],
            )
        return answers


class HumanOracle:
    """The loop's oracle in real use: answers from the run's label store (`after label serve`,
    `after label import`). A clip counts once `min_votes` annotators answered it; the clips it
    answers are taken, so the store refuses later changes to them, which the loop would not see."""

    reveals_manifest_labels = False

    def __init__(self, run_dir: str | os.PathLike[str], min_votes: int = 1) -> None:
        self.store = LabelStore(run_dir)
        self.min_votes = min_votes

    def label(self, ids: Sequence[str]) -> Answers:
        return self.store.take(ids, self.min_votes)


def _annotations(
    db: sqlite3.Connection, clip_ids: Sequence[str] | None = None, round: int | None = None
) -> list[Annotation]:
    sql, args = "SELECT * FROM annotations", []
    if round is not None:
        sql += " WHERE round=?"
        args.append(round)
    rows = db.execute(sql + " ORDER BY seq", args).fetchall()
    wanted = set(clip_ids) if clip_ids is not None else None
    return [
        Annotation(r[0], r[1], r[2], int(r[3]), r[4], float(r[5]))
        for r in rows
        if wanted is None or r[0] in wanted
    ]


def _nfc(annotator: str) -> str:
    """The one spelling of a name that the store keeps, claims and counts."""
    return unicodedata.normalize("NFC", annotator)


def _taken(db: sqlite3.Connection, clip_ids: Iterable[str]) -> set[str]:
    wanted = set(clip_ids)
    return {r[0] for r in db.execute("SELECT clip_id FROM taken") if r[0] in wanted}


def _claim(db: sqlite3.Connection, annotator: str, key: str) -> None:
    """Give `annotator` to `key` if the name is free; refuse it if another key has it."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    db.execute("INSERT OR IGNORE INTO names VALUES (?, ?)", (annotator, digest))
    (owner,) = db.execute("SELECT key_digest FROM names WHERE annotator=?", (annotator,)).fetchone()
    if owner != digest:
        raise NameInUse(
            f"the name {quoted(annotator)} is in use in another browser; choose another name"
        )


def _resolve(given: Sequence[Annotation], clip_ids: Sequence[str], min_votes: int) -> Answers:
    """The decided clips among `clip_ids`, from their current answers `given` (oldest first)."""
    by_clip: dict[str, list[Annotation]] = {}
    for a in given:
        by_clip.setdefault(a.clip_id, []).append(a)
    answers = Answers()
    for clip in clip_ids:
        mine = by_clip.get(clip, [])
        if len(mine) < min_votes:
            continue
        labels = [a.label for a in mine if a.label is not None]  # oldest first
        if not labels:
            answers.dropped.append(clip)
            continue
        counts = Counter(labels)
        top = max(counts.values())
        answers.labels[clip] = next(x for x in labels if counts[x] == top)
        answers.votes[clip] = dict(counts)
    return answers


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa of an (items, categories) matrix of rating counts. Items may have different
    numbers of raters (each needs at least 2); NaN when fewer than one such item or when every
    rating falls in one category."""
    counts = np.asarray(counts, dtype=float)
    n = counts.sum(axis=1)
    counts = counts[n >= 2]
    n = n[n >= 2]
    if len(counts) == 0:
        return float("nan")
    agreement = ((counts * (counts - 1)).sum(axis=1) / (n * (n - 1))).mean()
    shares = counts.sum(axis=0) / n.sum()
    chance = float((shares**2).sum())
    if chance >= 1.0:
        return float("nan")
    return float((agreement - chance) / (1.0 - chance))


def agreement(annotations: Sequence[Annotation], labels: Sequence[str]) -> dict[str, Any]:
    """How much annotators agree on clips labeled by two or more of them: Fleiss' kappa, the
    share of rater pairs that agree, and how many clips and raters that covers (skips are not
    ratings)."""
    index = {label: k for k, label in enumerate(labels)}
    rows: dict[str, np.ndarray] = {}
    raters = set()
    for a in annotations:
        if a.label is None or a.label not in index:
            continue
        rows.setdefault(a.clip_id, np.zeros(len(labels)))[index[a.label]] += 1
        raters.add(a.annotator)
    counts = np.array([r for r in rows.values() if r.sum() >= 2]).reshape(-1, len(labels))
    if len(counts):
        n = counts.sum(axis=1)
        pair = float(((counts * (counts - 1)).sum(axis=1) / (n * (n - 1))).mean())
    else:
        pair = float("nan")
    return {
        "fleiss_kappa": fleiss_kappa(counts) if len(counts) else float("nan"),
        "pairwise_agreement": pair,
        "clips": len(counts),
        "annotators": len(raters),
    }
