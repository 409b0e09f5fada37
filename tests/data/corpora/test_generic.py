"""Your own data: `prepare_folder` (nested or flat label folders, or unlabeled audio with a
declared label set) and `prepare_csv` (with or without label and speaker columns)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from after.data.corpora import prepare_csv, prepare_folder
from after.errors import AfterError, LayoutError

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
    with pytest.raises(LayoutError, match=r"07_take3\.wav: clips lie directly.*--speaker-regex"):
        prepare_folder(tmp_path)


@pytest.mark.parametrize(
    ("regex", "says"), [("(?P<speaker>[0-9+_", "not a valid regex"), (r"\d+_", "has no group")]
)
def test_bad_speaker_regex(tmp_path: Path, touch: Touch, regex: str, says: str) -> None:
    touch(tmp_path, "happy/07_take3.wav")
    with pytest.raises(AfterError, match=f"--speaker-regex .*{says}.*e.g."):
        prepare_folder(tmp_path, speaker_regex=regex)


def test_the_first_group_finds_the_speaker_too(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path / "lab", "happy/07_take3.wav")
    assert prepare_folder(tmp_path / "lab", speaker_regex=r"(\d+)_").speakers == ["lab_07"]


def test_no_label_folders_names_the_fix_for_unlabeled_audio(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path, "07_take3.wav")
    with pytest.raises(
        LayoutError, match=r"no label folders.*1 audio file.*give the label set: --labels"
    ):
        prepare_folder(tmp_path)


@pytest.mark.parametrize("make", [False, True])
def test_missing_or_empty_folder(tmp_path: Path, touch: Touch, make: bool) -> None:
    """Your own folder is no corpus to download: missing or without audio, one line says so."""
    corpus = tmp_path / "mine"
    if make:
        touch(corpus, "notes.txt", "sub/readme.md")
    with pytest.raises(LayoutError, match=r"mine: (not found|holds no audio file \(\.wav)"):
        prepare_folder(corpus, labels=["a", "b"])


LABELS = ["anger", "happiness", "neutral", "sadness"]


def test_a_flat_folder_of_unlabeled_audio(tmp_path: Path, touch: Touch) -> None:
    root = tmp_path / "calls"
    touch(root, "rec 1.wav", "rec2.flac", "clip.mp3", "clip.ogg", "notes.txt", ".hidden.wav")
    m = prepare_folder(root, labels=LABELS)
    assert m.labels == LABELS and m.label_set == tuple(LABELS)
    assert {u.id: (u.label, u.speaker) for u in m} == {
        "calls_rec_1": (None, "calls_rec_1"),  # unknown speaker: each clip is its own
        "calls_rec2": (None, "calls_rec2"),
        "calls_clip_mp3": (None, "calls_clip_mp3"),  # one name in two formats: ids differ
        "calls_clip_ogg": (None, "calls_clip_ogg"),
    }


def test_nested_unlabeled_audio_with_speakers_from_the_path(tmp_path: Path, touch: Touch) -> None:
    root = tmp_path / "study"
    touch(root, "alice/day1/take.wav", "alice/day2/take.wav", "bob/take.wav", "take9.wav")
    m = prepare_folder(root, labels=LABELS, speaker_regex=r"^([^/]+)/")
    assert {u.id: u.speaker for u in m} == {
        "study_alice_day1_take": "study_alice",  # stems repeat: the folders make ids unique
        "study_alice_day2_take": "study_alice",
        "study_bob_take": "study_bob",
    }  # take9.wav: no folder, so no speaker: skipped (and counted)
    with pytest.raises(LayoutError, match=r"--speaker-regex 'x\(\\d\)' finds a speaker in none"):
        prepare_folder(root, labels=LABELS, speaker_regex=r"x(\d)")


def test_label_folders_beside_unlabeled_audio(tmp_path: Path, touch: Touch) -> None:
    root = tmp_path / "mix"
    touch(root, "anger/ann/a1.wav", "inbox/u1.wav", "u2.wav", "angry/u3.wav")
    m = prepare_folder(root, labels=LABELS)
    assert {u.id: u.label for u in m} == {
        "mix_ann_a1": "anger",
        "mix_u1": None,
        "mix_u2": None,
        "mix_u3": None,  # "angry" is not one of the labels: its clips are unlabeled
    }
    with pytest.raises(AfterError, match="is given twice"):
        prepare_folder(root, labels=["anger", "anger"])


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


def test_csv_without_labels_or_speakers(tmp_path: Path, touch: Touch) -> None:
    root = tmp_path / "calls"
    touch(root, "a/clip.mp3", "a/clip.ogg", "b/clip.wav", "s07_x.wav")
    (root / "list.csv").write_text("path\na/clip.mp3\na/clip.ogg\nb/clip.wav\ns07_x.wav\n")
    with pytest.raises(AfterError, match=r"missing column .label.*--labels"):
        prepare_csv(root / "list.csv")
    m = prepare_csv(root / "list.csv", labels=LABELS)
    assert m.labels == LABELS and all(u.label is None for u in m)
    assert m.ids == ["calls_a_clip_mp3", "calls_a_clip_ogg", "calls_b_clip", "calls_s07_x"]
    assert [u.speaker for u in m] == m.ids  # unknown: each clip is its own speaker
    m = prepare_csv(root / "list.csv", labels=LABELS, speaker_regex=r"^(\w)/")
    assert [u.speaker for u in m] == ["a", "a", "b"]  # s07_x.wav has no folder: left out
    with pytest.raises(AfterError, match="finds a speaker in none of the 4 paths"):
        prepare_csv(root / "list.csv", labels=LABELS, speaker_regex=r"^(zz)")


def test_csv_labels_outside_the_label_set_are_named(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path, "a.wav", "b.wav")
    (tmp_path / "l.csv").write_text("path,label\na.wav,anger\nb.wav,angry\n")
    with pytest.raises(AfterError, match=r"l\.csv:3: label 'angry' is not one of --labels"):
        prepare_csv(tmp_path / "l.csv", labels=LABELS)
