"""The label store: answers, decisions, undo, agreement, and concurrent writers."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from after.errors import AfterError
from after.label.store import (
    Annotation,
    ClipTaken,
    LabelStore,
    NameInUse,
    StoreBusy,
    agreement,
    fleiss_kappa,
)
from after.loop.folder import RunFolder


def test_answers_decide_clips_by_plurality_with_first_vote_tie_break(tmp_path: Path) -> None:
    store = LabelStore(tmp_path)
    store.put("a", "ann", "anger", 0)
    store.put("a", "bob", "joy", 0)
    store.put("a", "cy", "joy", 0)
    store.put("b", "ann", "sad", 0)
    store.put("b", "bob", "anger", 0)  # tie: the label voted first wins
    store.put("c", "ann", None, 0)  # skipped by everyone: dropped
    store.put("c", "bob", None, 0)
    store.put("d", "ann", "joy", 0)  # one answer: not decided at min_votes=2
    store.put("e", "ann", None, 0)
    store.put("e", "bob", "sad", 0)  # a skip and a label: the label
    got = store.take(["a", "b", "c", "d", "e", "f"], min_votes=2)
    assert got.labels == {"a": "joy", "b": "sad", "e": "sad"}
    assert got.votes == {"a": {"anger": 1, "joy": 2}, "b": {"sad": 1, "anger": 1}, "e": {"sad": 1}}
    assert got.dropped == ["c"]
    assert store.take(["d", "f"], min_votes=1).labels == {"d": "joy"}


def test_relabel_replaces_and_undo_withdraws_but_history_keeps_all(tmp_path: Path) -> None:
    store = LabelStore(tmp_path)
    store.put("a", "ann", "anger", 3)
    store.put("a", "ann", "joy", 3)  # changed her mind: one row, the latest answer
    store.put("b", "ann", "sad", 3)
    assert [(a.clip_id, a.label) for a in store.annotations()] == [("a", "joy"), ("b", "sad")]
    assert store.undo("ann", 3) == "b"
    assert store.undo("ann", 2) is None  # nothing of hers in round 2
    assert [a.clip_id for a in store.annotations()] == ["a"]
    assert store.undo("ann", 3) == "a"
    assert store.undo("ann", 3) is None
    history = store.history()
    assert [(h["action"], h["clip_id"], h["label"]) for h in history] == [
        ("set", "a", "anger"),
        ("set", "a", "joy"),
        ("set", "b", "sad"),
        ("undo", "b", "sad"),
        ("undo", "a", "joy"),
    ]


def test_taken_clips_are_final(tmp_path: Path) -> None:
    """What the loop takes (in the same transaction that decides it) can no longer change: a
    later answer or undo is refused instead of stored and ignored."""
    store = LabelStore(tmp_path)
    store.put("a", "ann", "anger", 0)
    store.put("b", "ann", None, 0)
    store.put("c", "bob", "joy", 0)
    got = store.take(["a", "b", "c"], min_votes=2)  # c: one vote of two, stays open
    assert got.labels == {} and got.dropped == []
    store.put("c", "cy", "joy", 0)
    got = store.take(["a", "b", "c"], min_votes=1)
    assert got.labels == {"a": "anger", "c": "joy"} and got.dropped == ["b"]
    assert store.taken(["a", "b", "c", "d"]) == {"a", "b", "c"}
    for late in (lambda: store.put("a", "ann", "joy", 0), lambda: store.put("b", "dan", "joy", 0)):
        with pytest.raises(ClipTaken, match="taken by the active-learning loop"):
            late()
    with pytest.raises(ClipTaken):
        store.put_many([("d", "ann", "joy"), ("a", "ann", "joy")], 0, "csv")  # all or nothing
    with pytest.raises(ClipTaken):
        store.undo("cy", 0)
    assert store.take(["a", "b", "c"], min_votes=1) == got  # a resumed loop takes the same
    assert [(h["clip_id"], h["annotator"]) for h in store.history()] == [
        ("a", "ann"),
        ("b", "ann"),
        ("c", "bob"),
        ("c", "cy"),
    ]


def test_a_name_belongs_to_the_browser_that_used_it_first(tmp_path: Path) -> None:
    store = LabelStore(tmp_path)
    store.put("a", "ann", "anger", 0, key="ann's browser")
    store.put("b", "ann", "joy", 0, key="ann's browser")
    with pytest.raises(NameInUse, match="'ann' is in use in another browser"):
        store.put("a", "ann", "sad", 0, key="bob's browser")
    with pytest.raises(NameInUse):
        store.undo("ann", 0, key="bob's browser")
    assert store.undo("ann", 0, key="ann's browser") == "b"
    assert [(a.clip_id, a.label) for a in store.annotations()] == [("a", "anger")]


def test_a_locked_store_says_so_after_a_bounded_wait(tmp_path: Path) -> None:
    store = LabelStore(tmp_path, wait_s=0.2)
    store.put("a", "ann", "anger", 0)
    other = sqlite3.connect(RunFolder(tmp_path).store, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # e.g. a sqlite3 shell, or a backup, holding the lock
    try:
        with pytest.raises(StoreBusy) as e:
            store.put("b", "ann", "joy", 0)
        assert "another process" in str(e.value) and "damaged" not in str(e.value)
        assert [a.clip_id for a in store.annotations()] == ["a"]  # reads go on
    finally:
        other.execute("ROLLBACK")
    store.put("b", "ann", "joy", 0)
    assert [a.clip_id for a in store.annotations()] == ["a", "b"]


def test_the_store_is_wal_durable_and_schema_checked(tmp_path: Path) -> None:
    LabelStore(tmp_path).put("a", "ann", "joy", 0)
    db = sqlite3.connect(RunFolder(tmp_path).store)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(AfterError, match="schema 99"):
        LabelStore(tmp_path)
    (tmp_path / "junk").mkdir()
    (RunFolder(tmp_path / "junk").store).write_bytes(b"this is not a database" * 100)
    with pytest.raises(AfterError, match=r"restore it from a backup|cannot open"):
        LabelStore(tmp_path / "junk")
    with pytest.raises(AfterError, match="no such run folder"):
        LabelStore(tmp_path / "missing")


def test_fleiss_kappa_matches_the_textbook_example() -> None:
    # Fleiss (1971) as worked in the literature: 10 items, 14 raters, 5 categories -> 0.210.
    counts = np.array(
        [
            [0, 0, 0, 0, 14],
            [0, 2, 6, 4, 2],
            [0, 0, 3, 5, 6],
            [0, 3, 9, 2, 0],
            [2, 2, 8, 1, 1],
            [7, 7, 0, 0, 0],
            [3, 2, 6, 3, 0],
            [2, 5, 3, 2, 2],
            [6, 5, 2, 1, 0],
            [0, 2, 2, 3, 7],
        ]
    )
    assert fleiss_kappa(counts) == pytest.approx(0.210, abs=5e-4)
    assert fleiss_kappa(np.array([[2, 0], [0, 2], [2, 0]])) == pytest.approx(1.0)
    assert np.isnan(fleiss_kappa(np.array([[1, 0]])))  # one rater per item: undefined


def test_agreement_counts_only_clips_rated_twice() -> None:
    rows = [
        Annotation("a", "x", "joy", 0, "web", 0.0),
        Annotation("a", "y", "joy", 0, "web", 0.0),
        Annotation("b", "x", "joy", 0, "web", 0.0),
        Annotation("b", "y", "sad", 0, "web", 0.0),
        Annotation("c", "x", "sad", 0, "web", 0.0),  # one rating
        Annotation("d", "x", None, 0, "web", 0.0),  # a skip is not a rating
        Annotation("d", "y", "sad", 0, "web", 0.0),
    ]
    got = agreement(rows, ["joy", "sad"])
    assert got["clips"] == 2 and got["annotators"] == 2
    assert got["pairwise_agreement"] == pytest.approx(0.5)
    # p = (3/4, 1/4): chance 0.625, observed 0.5 -> kappa (0.5 - 0.625) / 0.375
    assert got["fleiss_kappa"] == pytest.approx(-1 / 3)


def _writer(folder: str, who: str, n: int) -> None:
    store = LabelStore(folder)
    for k in range(n):
        store.put(f"clip{k}", who, "joy" if k % 2 else "sad", 0)


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    LabelStore(tmp_path)
    threads = [
        threading.Thread(target=_writer, args=(str(tmp_path), f"t{k}", 60)) for k in range(8)
    ]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), f"p{k}", 60)) for k in range(3)]
    for w in [*threads, *procs]:
        w.start()
    for w in [*threads, *procs]:
        w.join(120)
    assert all(p.exitcode == 0 for p in procs)
    store = LabelStore(tmp_path)
    rows = store.annotations()
    assert len(rows) == 11 * 60
    assert len({(a.clip_id, a.annotator) for a in rows}) == 11 * 60
    assert len(store.history()) == 11 * 60
