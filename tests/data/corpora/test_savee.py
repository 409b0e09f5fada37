"""SAVEE adapter: nested AudioData/<speaker>/ and flat ALL/ layouts, emotion codes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from after.data.corpora import prepare_savee
from after.errors import LayoutError, ManualDownloadRequired

Touch = Callable[..., list[Path]]

EXPECTED = {
    "savee_DC_a01": ("anger", "savee_DC"),
    "savee_DC_sa01": ("sadness", "savee_DC"),
    "savee_JE_su15": ("surprise", "savee_JE"),
    "savee_JE_a01": ("anger", "savee_JE"),
    "savee_JK_n30": ("neutral", "savee_JK"),
    "savee_KL_d02": ("disgust", "savee_KL"),
    "savee_KL_f03": ("fear", "savee_KL"),
    "savee_KL_h15": ("happiness", "savee_KL"),
}


def _names() -> list[list[str]]:
    """[speaker, stem] of every clip in EXPECTED."""
    return [i.split("_")[1:] for i in EXPECTED]


def test_nested_layout(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path / "AudioData", *(f"{spk}/{stem}.wav" for spk, stem in _names()))
    touch(tmp_path / "AudioData", "DC/x01.wav", "DC/a1.wav", "JE/Info.txt")  # skipped / ignored
    m = prepare_savee(tmp_path)
    assert {u.id: (u.label, u.speaker) for u in m} == EXPECTED
    u = m["savee_DC_sa01"]
    assert u.path == str(tmp_path / "AudioData" / "DC" / "sa01.wav")
    assert (u.corpus, u.session, u.split, u.votes) == ("savee", None, None, None)


def test_flat_layout(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path / "ALL", *(f"{spk}_{stem}.wav" for spk, stem in _names()), "DC_zz01.wav")
    m = prepare_savee(tmp_path)
    assert {u.id: (u.label, u.speaker) for u in m} == EXPECTED
    assert m["savee_KL_h15"].path == str(tmp_path / "ALL" / "KL_h15.wav")


def test_nested_layout_wins(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path, "AudioData/DC/a01.wav", "ALL/KL_h15.wav")
    assert prepare_savee(tmp_path).ids == ["savee_DC_a01"]


@pytest.mark.parametrize("make", [False, True])
def test_missing_or_empty_folder(tmp_path: Path, make: bool) -> None:
    corpus = tmp_path / "savee"
    if make:
        corpus.mkdir()
    with pytest.raises(ManualDownloadRequired, match=r"kahlan\.eps\.surrey\.ac\.uk"):
        prepare_savee(corpus)


def test_wrong_layout_names_audio_data(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path, "DC/a01.wav")
    with pytest.raises(LayoutError, match=r"AudioData: not found \(nor .*ALL\)"):
        prepare_savee(tmp_path)
