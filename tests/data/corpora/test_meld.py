"""MELD adapter: three split CSVs (not always UTF-8), converted audio, the mp4-only hint."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from after.data.corpora import prepare_meld
from after.errors import AfterError, LayoutError, ManualDownloadRequired

Touch = Callable[..., list[Path]]

HEADER = (
    "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,Episode,"
    "StartTime,EndTime\n"
)
ROWS = {
    "train": [
        '1,"also I was the point person on my company\u2019s transition from the KL-5 to GR-6 '
        'system.",Chandler,neutral,neutral,0,0,8,21,"00:16:16,059","00:16:21,731"',
        '2,"You must\u2019ve had your hands full.",The Interviewer,neutral,neutral,0,1,8,21,'
        '"00:16:21,940","00:16:23,442"',
        '3,"That I did. That I did.",Chandler,Joy,positive,0,2,8,21,"00:16:23,442","00:16:26,389"',
        '4,"Hey!",Joey,surprise,positive,1,0,8,22,"00:00:01,000","00:00:02,000"',
    ],
    "dev": [
        '1,"Oh my God, he\u2019s lost it.",Phoebe,surprise,negative,0,0,4,7,'
        '"00:00:09,000","00:00:11,000"',
        '2,"What?",Joey,anger,negative,0,1,4,7,"00:00:11,000","00:00:12,000"',  # no audio
    ],
    "test": [
        '1,"Why do all you\u2019re coffee mugs have numbers on them?",Mark,surprise,positive,0,0,'
        '3,19,"00:14:38,104","00:14:40,106"',
        '2,"Oh. That\u2019s so Monica.",Joey,sadness,negative,0,1,3,19,'
        '"00:14:40,106","00:14:43,104"',
    ],
}
AUDIO = {
    "train": ("dia0_utt0", "dia0_utt1", "dia0_utt2", "dia1_utt0"),
    "dev": ("dia0_utt0",),
    "test": ("dia0_utt0", "dia0_utt1"),
}


def _write_csvs(root: Path) -> None:
    """The three label CSVs, in Windows-1252 like some of the release's files."""
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in ROWS.items():
        text = HEADER + "\n".join(rows) + "\n"
        (root / f"{split}_sent_emo.csv").write_bytes(text.encode("cp1252"))


def _make_meld(root: Path, touch: Touch) -> None:
    _write_csvs(root)
    for split, stems in AUDIO.items():
        touch(root / split, *(f"{s}.wav" for s in stems))


def test_labels_splits_speakers(tmp_path: Path, touch: Touch) -> None:
    _make_meld(tmp_path, touch)
    m = prepare_meld(tmp_path)
    assert {u.id: (u.label, u.speaker, u.split) for u in m} == {
        "meld_train_dia0_utt0": ("neutral", "meld_Chandler", "train"),
        "meld_train_dia0_utt1": ("neutral", "meld_The_Interviewer", "train"),
        "meld_train_dia0_utt2": ("joy", "meld_Chandler", "train"),
        "meld_train_dia1_utt0": ("surprise", "meld_Joey", "train"),
        "meld_dev_dia0_utt0": ("surprise", "meld_Phoebe", "dev"),
        "meld_test_dia0_utt0": ("surprise", "meld_Mark", "test"),
        "meld_test_dia0_utt1": ("sadness", "meld_Joey", "test"),
    }  # dev dia0_utt1 has no audio
    u = m["meld_test_dia0_utt1"]
    assert u.path == str(tmp_path / "test" / "dia0_utt1.wav")
    assert (u.corpus, u.session, u.votes) == ("meld", None, None)


def test_flac_audio(tmp_path: Path, touch: Touch) -> None:
    _write_csvs(tmp_path)
    for split, stems in AUDIO.items():
        touch(tmp_path / split, *(f"{s}.flac" for s in stems))
    assert prepare_meld(tmp_path)["meld_dev_dia0_utt0"].path.endswith("dev/dia0_utt0.flac")


def test_only_mp4_folders_gives_ffmpeg_command(tmp_path: Path, touch: Touch) -> None:
    _write_csvs(tmp_path)
    touch(tmp_path / "train_splits", "dia0_utt0.mp4")
    touch(tmp_path / "dev_splits_complete", "dia0_utt0.mp4")
    touch(tmp_path / "output_repeated_splits_test", "dia0_utt0.mp4")
    with pytest.raises(AfterError) as info:
        prepare_meld(tmp_path)
    assert not isinstance(info.value, LayoutError)
    message = str(info.value)
    assert "train_splits" in message
    assert "ffmpeg" in message
    assert "-ac 1 -ar 16000" in message


def test_unknown_emotion_is_skipped(tmp_path: Path, touch: Touch) -> None:
    _make_meld(tmp_path, touch)
    text = (tmp_path / "test_sent_emo.csv").read_bytes().replace(b"sadness", b"sarcasm")
    (tmp_path / "test_sent_emo.csv").write_bytes(text)
    m = prepare_meld(tmp_path)
    assert "meld_test_dia0_utt1" not in m
    assert len(m) == 6


@pytest.mark.parametrize("make", [False, True])
def test_missing_or_empty_folder(tmp_path: Path, make: bool) -> None:
    corpus = tmp_path / "MELD.Raw"
    if make:
        corpus.mkdir()
    with pytest.raises(ManualDownloadRequired, match=r"MELD\.Raw\.tar\.gz"):
        prepare_meld(corpus)


def test_missing_csv_names_it(tmp_path: Path, touch: Touch) -> None:
    _make_meld(tmp_path, touch)
    (tmp_path / "dev_sent_emo.csv").unlink()
    with pytest.raises(LayoutError, match=r"dev_sent_emo\.csv: not found"):
        prepare_meld(tmp_path)


def test_missing_audio_folder_names_it(tmp_path: Path, touch: Touch) -> None:
    _make_meld(tmp_path, touch)
    (tmp_path / "test").rename(tmp_path / "test_audio")
    with pytest.raises(LayoutError, match=re.escape(f"{tmp_path / 'test'}: not found")):
        prepare_meld(tmp_path)
