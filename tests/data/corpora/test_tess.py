"""TESS adapter: label from the file name, any case, three spellings of pleasant surprise."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from after.data.corpora import prepare_tess
from after.errors import LayoutError, ManualDownloadRequired

Touch = Callable[..., list[Path]]


def test_labels_speakers_ids(tmp_path: Path, touch: Touch) -> None:
    touch(
        tmp_path,
        "OAF_angry/OAF_back_angry.wav",
        "OAF_disgust/OAF_bar_disgust.wav",
        "OAF_Fear/OAF_base_fear.wav",
        "OAF_happy/OAF_bath_happy.wav",
        "OAF_neutral/OAF_bean_neutral.wav",
        "OAF_Sad/OAF_beg_sad.wav",
        "YAF_happy/YAF_dog_Happy.wav",
    )
    m = prepare_tess(tmp_path)
    assert {u.id: (u.label, u.speaker) for u in m} == {
        "tess_OAF_back_angry": ("anger", "tess_OAF"),
        "tess_OAF_bar_disgust": ("disgust", "tess_OAF"),
        "tess_OAF_base_fear": ("fear", "tess_OAF"),
        "tess_OAF_bath_happy": ("happiness", "tess_OAF"),
        "tess_OAF_bean_neutral": ("neutral", "tess_OAF"),
        "tess_OAF_beg_sad": ("sadness", "tess_OAF"),
        "tess_YAF_dog_Happy": ("happiness", "tess_YAF"),
    }
    u = m["tess_OAF_back_angry"]
    assert u.path == str(tmp_path / "OAF_angry" / "OAF_back_angry.wav")
    assert (u.corpus, u.session, u.split, u.votes) == ("tess", None, None, None)


def test_pleasant_surprise_variants(tmp_path: Path, touch: Touch) -> None:
    touch(
        tmp_path,
        "OAF_Pleasant_surprise/OAF_back_ps.wav",
        "OAF_Pleasant_surprise/OAF_bar_pleasant_surprise.wav",
        "YAF_pleasant_surprised/YAF_back_pleasant_surprised.wav",
        "YAF_pleasant_surprised/YAF_bar_Pleasant_Surprised.wav",
        "YAF_pleasant_surprised/yaf_base_PS.wav",
    )
    m = prepare_tess(tmp_path)
    assert len(m) == 5
    assert m.labels == ["surprise"]
    assert m.speakers == ["tess_OAF", "tess_YAF"]
    assert m["tess_yaf_base_PS"].speaker == "tess_YAF"


def test_unparsable_names_are_skipped(tmp_path: Path, touch: Touch) -> None:
    touch(
        tmp_path,
        "OAF_angry/OAF_back_angry.wav",
        "OAF_angry/OAF_back_bored.wav",  # no such emotion
        "OAF_angry/MAF_back_angry.wav",  # no such speaker
        "OAF_angry/OAF_angry.wav",  # no word
    )
    assert prepare_tess(tmp_path).ids == ["tess_OAF_back_angry"]


@pytest.mark.parametrize("make", [False, True])
def test_missing_or_empty_folder(tmp_path: Path, make: bool) -> None:
    corpus = tmp_path / "tess"
    if make:
        corpus.mkdir()
    with pytest.raises(ManualDownloadRequired, match=r"10\.5683/SP2/E8H2MF"):
        prepare_tess(corpus)


def test_clips_without_folders(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path, "OAF_back_angry.wav", "notes/readme.txt")
    with pytest.raises(LayoutError, match="OAF_angry: not found"):
        prepare_tess(tmp_path)
