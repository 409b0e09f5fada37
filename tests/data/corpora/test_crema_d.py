"""CREMA-D adapter: names, label map, voice-only rater votes from finishedResponses.csv."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from after.data.corpora import prepare_crema_d
from after.errors import LayoutError, ManualDownloadRequired

Touch = Callable[..., list[Path]]

CLIPS = ("1001_DFA_ANG_XX.wav", "1001_IEO_HAP_HI.wav", "1091_TSI_NEU_XX.wav", "1076_MTI_SAD_XX.wav")

# queryType 1 = voice only, 2 = face only, 3 = audio-visual: only 1 counts.
RESPONSES = (
    ",localid,pos,ans,ttr,queryType,numTries,clipNum,questNum,subType,clipName,sessionNums,"
    "respEmo,respLevel,dispEmo,dispVal,dispLevel\n"
    """\
0,O1,56,A_60,4152,1,0,7443,1,1,1001_DFA_ANG_XX,1,A,60,A,60,60
1,O2,12,A_50,3021,1,0,7443,1,1,1001_DFA_ANG_XX,1,A,50,A,50,50
2,O3,88,D_40,2871,1,0,7443,1,1,1001_DFA_ANG_XX,1,D,40,D,40,40
3,O4,31,N_50,1999,2,0,7443,1,1,1001_DFA_ANG_XX,1,N,50,N,50,50
4,O5,17,H_70,2510,3,0,7443,1,1,1001_DFA_ANG_XX,1,H,70,H,70,70
5,O6,45,H_80,2301,2,0,7444,1,1,1001_IEO_HAP_HI,1,H,80,H,80,80
6,O7,46,N_50,2201,1,0,7445,1,1,1091_TSI_NEU_XX,1,N,50,N,50,50
"""
)


def test_labels_speakers_votes(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path / "AudioWAV", *CLIPS)
    (tmp_path / "finishedResponses.csv").write_text(RESPONSES)
    m = prepare_crema_d(tmp_path)
    assert m.ids == [
        "crema-d_1001_DFA_ANG_XX",
        "crema-d_1001_IEO_HAP_HI",
        "crema-d_1076_MTI_SAD_XX",
        "crema-d_1091_TSI_NEU_XX",
    ]
    rows = {u.id: (u.label, u.speaker, u.votes) for u in m}
    assert rows["crema-d_1001_DFA_ANG_XX"] == ("anger", "crema-d_1001", {"anger": 2, "disgust": 1})
    assert rows["crema-d_1001_IEO_HAP_HI"] == ("happiness", "crema-d_1001", None)  # face-only
    assert rows["crema-d_1091_TSI_NEU_XX"] == ("neutral", "crema-d_1091", {"neutral": 1})
    assert rows["crema-d_1076_MTI_SAD_XX"] == ("sadness", "crema-d_1076", None)
    u = m["crema-d_1001_DFA_ANG_XX"]
    assert u.path == str(tmp_path / "AudioWAV" / "1001_DFA_ANG_XX.wav")
    assert (u.corpus, u.session, u.split) == ("crema-d", None, None)


def test_ratings_in_processed_results(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path / "AudioWAV", *CLIPS)
    (tmp_path / "processedResults").mkdir()
    (tmp_path / "processedResults" / "finishedResponses.csv").write_text(RESPONSES)
    assert prepare_crema_d(tmp_path)["crema-d_1091_TSI_NEU_XX"].votes == {"neutral": 1}


def test_no_ratings_file_no_votes(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path / "AudioWAV", *CLIPS)
    m = prepare_crema_d(tmp_path)
    assert len(m) == 4
    assert all(u.votes is None for u in m)


def test_unparsable_names_are_skipped(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path / "AudioWAV", "1001_DFA_ANG_XX.wav", "1001_DFA_XYZ_XX.wav", "1001_DFA.wav")
    touch(tmp_path / "AudioWAV", "README.txt")
    assert prepare_crema_d(tmp_path).ids == ["crema-d_1001_DFA_ANG_XX"]


@pytest.mark.parametrize("make", [False, True])
def test_missing_or_empty_folder(tmp_path: Path, make: bool) -> None:
    corpus = tmp_path / "CREMA-D"
    if make:
        corpus.mkdir()
    with pytest.raises(ManualDownloadRequired, match="git lfs"):
        prepare_crema_d(corpus)


def test_wrong_layout_names_audio_folder(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path / "AudioMP3", "1001_DFA_ANG_XX.mp3")
    with pytest.raises(LayoutError, match="AudioWAV: not found"):
        prepare_crema_d(tmp_path)
