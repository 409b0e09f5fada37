"""RAVDESS adapter: seven-field names, audio-only speech kept, songs and video left out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from after.data.corpora import prepare_ravdess
from after.errors import LayoutError, ManualDownloadRequired

Touch = Callable[..., list[Path]]


def test_labels_speakers_ids(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path / "Actor_01", "03-01-05-01-01-01-01.wav", "03-01-02-02-02-02-01.wav")
    touch(tmp_path / "Actor_12", "03-01-01-01-02-02-12.wav", "03-01-08-02-01-01-12.wav")
    m = prepare_ravdess(tmp_path)
    rows = {u.id: (u.label, u.speaker) for u in m}
    assert rows == {
        "ravdess_03-01-05-01-01-01-01": ("anger", "ravdess_01"),
        "ravdess_03-01-02-02-02-02-01": ("calm", "ravdess_01"),
        "ravdess_03-01-01-01-02-02-12": ("neutral", "ravdess_12"),
        "ravdess_03-01-08-02-01-01-12": ("surprise", "ravdess_12"),
    }
    u = m["ravdess_03-01-05-01-01-01-01"]
    assert u.path == str(tmp_path / "Actor_01" / "03-01-05-01-01-01-01.wav")
    assert (u.corpus, u.session, u.split, u.votes) == ("ravdess", None, None, None)


def test_songs_video_and_bad_names_left_out(tmp_path: Path, touch: Touch) -> None:
    touch(
        tmp_path / "Actor_12",
        "03-01-04-01-01-01-12.wav",  # kept: audio-only speech, sadness
        "03-02-04-01-01-01-12.wav",  # song
        "01-01-04-01-01-01-12.wav",  # audio-video modality
        "02-01-04-01-01-01-12.wav",  # video-only modality
        "01-01-04-01-01-01-12.mp4",  # not audio
        "03-01-09-01-01-01-12.wav",  # emotion 09 does not exist
        "03-01-04-01-01-12.wav",  # six fields
        "notes.wav",
    )
    m = prepare_ravdess(tmp_path)
    assert m.ids == ["ravdess_03-01-04-01-01-01-12"]
    assert m.labels == ["sadness"]


@pytest.mark.parametrize("make", [False, True])
def test_missing_or_empty_folder(tmp_path: Path, make: bool) -> None:
    corpus = tmp_path / "ravdess"
    if make:
        corpus.mkdir()
    with pytest.raises(ManualDownloadRequired, match=r"zenodo\.org/record/1188976"):
        prepare_ravdess(corpus)


def test_no_actor_folders(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path / "Audio_Speech_Actors_01-24" / "Actor_01", "03-01-05-01-01-01-01.wav")
    with pytest.raises(LayoutError, match="Actor_01: not found"):
        prepare_ravdess(tmp_path)


def test_only_songs_is_a_layout_error(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path / "Actor_01", "03-02-05-01-01-01-01.wav")
    with pytest.raises(LayoutError, match="no usable ravdess clips"):
        prepare_ravdess(tmp_path)
