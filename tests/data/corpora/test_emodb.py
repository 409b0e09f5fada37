"""EmoDB adapter: fake trees (wav/ or audio/, .wav or .flac) and the real corpus copy."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest

from after.data.corpora import prepare_emodb
from after.errors import LayoutError, ManualDownloadRequired

Touch = Callable[..., list[Path]]


def test_labels_speakers_ids(tmp_path: Path, touch: Touch) -> None:
    names = ("03a01Fa", "03a01Wa", "08b02Lb", "09a05Ec", "11b03Ad", "13a07Na", "16b10Td")
    touch(tmp_path / "wav", *(f"{n}.wav" for n in names))
    m = prepare_emodb(tmp_path)
    assert m.ids == [f"emodb_{n}" for n in names]
    assert [u.label for u in m] == [
        "happiness",
        "anger",
        "boredom",
        "disgust",
        "fear",
        "neutral",
        "sadness",
    ]
    assert m.speakers == ["emodb_03", "emodb_08", "emodb_09", "emodb_11", "emodb_13", "emodb_16"]
    u = m["emodb_03a01Fa"]
    assert u.path == str(tmp_path / "wav" / "03a01Fa.wav")
    assert (u.speaker, u.corpus, u.session, u.split, u.votes) == (
        "emodb_03",
        "emodb",
        None,
        None,
        None,
    )


def test_audio_folder_and_flac(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path / "audio", "03a01Fa.flac", "10a02Wb.FLAC")
    m = prepare_emodb(tmp_path)
    assert m.ids == ["emodb_03a01Fa", "emodb_10a02Wb"]
    assert m["emodb_03a01Fa"].path == str(tmp_path / "audio" / "03a01Fa.flac")


def test_wav_folder_wins_over_audio(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path / "wav", "03a01Fa.wav")
    touch(tmp_path / "audio", "03a01Fa.flac", "10a02Wb.flac")
    assert prepare_emodb(tmp_path).ids == ["emodb_03a01Fa"]


def test_unparsable_names_are_skipped(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path / "wav", "03a01Fa.wav", "03a01Xa.wav", "3a01Fa.wav", "silence.wav")
    touch(tmp_path / "wav", "03a01Fa.txt", ".03a01Wa.wav")
    assert prepare_emodb(tmp_path).ids == ["emodb_03a01Fa"]


@pytest.mark.parametrize("make", [False, True])
def test_missing_or_empty_folder(tmp_path: Path, make: bool) -> None:
    corpus = tmp_path / "emodb"
    if make:
        corpus.mkdir()
    with pytest.raises(ManualDownloadRequired, match=r"emodb\.bilderbar\.info"):
        prepare_emodb(corpus)


def test_wrong_layout_names_wav_folder(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path / "clips", "03a01Fa.wav")
    with pytest.raises(LayoutError, match="wav: not found"):
        prepare_emodb(tmp_path)


def test_corpus_dir_is_a_file(tmp_path: Path, touch: Touch) -> None:
    (file,) = touch(tmp_path, "download.zip")
    with pytest.raises(LayoutError, match="is a file"):
        prepare_emodb(file)


@pytest.mark.corpus
def test_real_emodb(emodb_dir: Path) -> None:
    m = prepare_emodb(emodb_dir)
    assert len(m) == 535
    assert len(m.speakers) == 10
    assert m.labels == ["anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness"]
    assert "emodb_03a01Fa" in m
    assert all(u.id == f"emodb_{Path(u.path).stem}" for u in m)
    # manifest.csv uses the same label names as the adapter, so no mapping is needed.
    with (emodb_dir / "manifest.csv").open(newline="") as f:
        reference = {Path(row["path"]).stem: row for row in csv.DictReader(f)}
    assert {Path(u.path).stem: u.label for u in m} == {
        stem: row["label"] for stem, row in reference.items()
    }
    assert {Path(u.path).stem: u.speaker for u in m} == {
        stem: row["speaker"] for stem, row in reference.items()
    }
