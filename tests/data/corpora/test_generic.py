"""Your own data: `prepare_folder` (nested or flat label folders) and `prepare_csv`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from after.data.corpora import prepare_csv, prepare_folder
from after.errors import AfterError, LayoutError, ManualDownloadRequired

Touch = Callable[..., list[Path]]


def test_nested_folder(tmp_path: Path, touch: Touch) -> None:
    root = tmp_path / "mydata"
    touch(root, "angry/alice/take1.wav", "angry/bob/take1.flac", "calm/alice/take2.wav")
    touch(root, "calm/alice/deeper/take3.wav", "calm/alice/notes.txt", ".git/x.wav")
    m = prepare_folder(root)
    assert {u.id: (u.label, u.speaker) for u in m} == {
        "mydata_alice_take1": ("angry", "mydata_alice"),
        "mydata_bob_take1": ("angry", "mydata_bob"),
        "mydata_alice_take2": ("calm", "mydata_alice"),
    }  # deeper folders, non-audio files and hidden folders are not read
    u = m["mydata_bob_take1"]
    assert u.path == str(root / "angry" / "bob" / "take1.flac")
    assert (u.corpus, u.session, u.split, u.votes) == ("mydata", None, None, None)


def test_flat_folder_with_speaker_regex(tmp_path: Path, touch: Touch) -> None:
    root = tmp_path / "lab"
    touch(root, "happy/07_take3.wav", "happy/12_take1.wav", "sad/07_take9.wav", "sad/take0.wav")
    m = prepare_folder(root, speaker_regex=r"(?P<speaker>\d+)_")
    assert {u.id: (u.label, u.speaker) for u in m} == {
        "lab_07_take3": ("happy", "lab_07"),
        "lab_12_take1": ("happy", "lab_12"),
        "lab_07_take9": ("sad", "lab_07"),
    }  # sad/take0.wav: the regex finds no speaker, skipped


def test_flat_folder_without_regex(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path, "happy/07_take3.wav")
    with pytest.raises(LayoutError, match=r"07_take3\.wav: clips lie directly.*speaker_regex"):
        prepare_folder(tmp_path)


@pytest.mark.parametrize("regex", ["(?P<speaker>[0-9+_", r"(\d+)_"])
def test_bad_speaker_regex(tmp_path: Path, touch: Touch, regex: str) -> None:
    touch(tmp_path, "happy/07_take3.wav")
    with pytest.raises(AfterError, match="speaker_regex"):
        prepare_folder(tmp_path, speaker_regex=regex)


def test_no_label_folders(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path, "07_take3.wav")
    with pytest.raises(LayoutError, match="no label folders"):
        prepare_folder(tmp_path)


@pytest.mark.parametrize("make", [False, True])
def test_missing_or_empty_folder(tmp_path: Path, make: bool) -> None:
    corpus = tmp_path / "mine"
    if make:
        corpus.mkdir()
    with pytest.raises(ManualDownloadRequired, match="one folder per label"):
        prepare_folder(corpus)


def test_csv(tmp_path: Path, touch: Touch) -> None:
    root = tmp_path / "study"
    touch(root, "clips/a.wav", "clips/b.wav", "clips/c.wav")
    (root / "list.csv").write_text(
        "path,label,speaker,session\n"
        "clips/a.wav,anger,s1,day1\n"
        "clips/b.wav,neutral,s2,\n"
        "clips/c.wav,,s2,day2\n"
    )
    m = prepare_csv(root / "list.csv")
    assert {u.id: (u.label, u.speaker, u.session) for u in m} == {
        "study_a": ("anger", "s1", "day1"),
        "study_b": ("neutral", "s2", None),
        "study_c": (None, "s2", "day2"),  # an empty label means unlabeled
    }
    assert m["study_a"].path == str(root / "clips" / "a.wav")
    assert m["study_a"].corpus == "study"
    assert prepare_csv(root / "list.csv", corpus="other").ids == ["other_a", "other_b", "other_c"]
