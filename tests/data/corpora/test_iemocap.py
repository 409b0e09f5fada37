"""IEMOCAP adapter: EmoEvaluation blocks, 4-class label map, evaluator votes, session speakers."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from after.data.corpora import prepare_iemocap
from after.errors import LayoutError, ManualDownloadRequired

Touch = Callable[..., list[Path]]

# One dialogue per session; {d} is the dialogue name. Real files start with this header line.
EVALUATION = """\
% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]

[6.2901 - 8.2357]\t{d}_F000\tneu\t[2.5000, 2.5000, 2.5000]
C-E1:\tNeutral state;\t()
C-E2:\tNeutral state; Frustration;\t()
C-E3:\tNeutral state;\t()
C-F1:\tAnger;\t()
A-E1:\tval 3; act 2; dom  2;\t()

[10.0100 - 11.3925]\t{d}_M000\texc\t[3.5000, 3.5000, 3.0000]
C-E1:\tExcited; Happiness;\t(laughing; cheerful)
C-E2:\tHappiness;\t()
C-E4:\tNeutral state;\t()
C-M1:\tSadness;\t()

[14.8872 - 18.0175]\t{d}_F001\txxx\t[2.0000, 3.0000, 3.0000]
C-E1:\tFrustration;\t()
C-E2:\tAnger;\t()

[19.2900 - 20.7875]\t{d}_M001\tfru\t[2.0000, 3.5000, 3.5000]
C-E1:\tFrustration;\t()

[21.0100 - 22.5000]\t{d}_F002\tang\t[1.5000, 4.0000, 4.0000]
C-E1:\tAnger;\t()
"""


def _make_iemocap(root: Path, touch: Touch) -> None:
    """Sessions 1-5, one dialogue each; every utterance except F002 has a wav."""
    for n in range(1, 6):
        d = f"Ses0{n}F_impro01"
        session = root / f"Session{n}"
        label_file = session / "dialog" / "EmoEvaluation" / f"{d}.txt"
        label_file.parent.mkdir(parents=True)
        label_file.write_text(EVALUATION.format(d=d))
        for utt in ("F000", "M000", "F001", "M001"):
            touch(session / "sentences" / "wav" / d, f"{d}_{utt}.wav")


def test_labels_votes_speakers_sessions(tmp_path: Path, touch: Touch) -> None:
    _make_iemocap(tmp_path, touch)
    m = prepare_iemocap(tmp_path)
    expected = [f"iemocap_Ses0{n}F_impro01_{u}" for n in range(1, 6) for u in ("F000", "M000")]
    assert m.ids == expected  # xxx and fru dropped, F002 (no audio) skipped
    neu, hap = m["iemocap_Ses01F_impro01_F000"], m["iemocap_Ses03F_impro01_M000"]
    assert (neu.label, neu.speaker, neu.session, neu.corpus) == (
        "neu",
        "iemocap_Ses01_F",
        "Ses01",
        "iemocap",
    )
    assert neu.path == str(
        tmp_path / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"
    )
    # Only C-E* lines vote; C-F1's "Anger" does not count; Frustration maps to no label.
    assert neu.votes == {"neu": 3}
    # exc -> hap; C-E1 chose Excited and Happiness but counts once; C-M1 is a self-evaluation.
    assert (hap.label, hap.speaker, hap.session) == ("hap", "iemocap_Ses03_M", "Ses03")
    assert hap.votes == {"hap": 2, "neu": 1}
    assert m.labels == ["hap", "neu"]
    assert len(m.speakers) == 10
    assert all(u.split is None for u in m)


def test_release_folder_inside_corpus_dir(tmp_path: Path, touch: Touch) -> None:
    _make_iemocap(tmp_path / "IEMOCAP_full_release", touch)
    assert len(prepare_iemocap(tmp_path)) == 10


def test_unparsable_names_are_skipped(tmp_path: Path, touch: Touch) -> None:
    _make_iemocap(tmp_path, touch)
    odd = tmp_path / "Session1/dialog/EmoEvaluation/Ses01M_script01_1.txt"
    odd.write_text(
        "[1.0 - 2.0]\tSes01M_script01_1_F000\tsad\t[2.0, 2.0, 2.0]\nC-E1:\tSadness;\t()\n\n"
        "[3.0 - 4.0]\tnot_an_utterance\tneu\t[2.0, 2.0, 2.0]\nC-E1:\tNeutral state;\t()\n"
    )
    touch(tmp_path / "Session1/sentences/wav/Ses01M_script01_1", "Ses01M_script01_1_F000.wav")
    touch(tmp_path / "Session1/sentences/wav/Ses01M_script01_1", "not_an_utterance.wav")
    m = prepare_iemocap(tmp_path)
    scripted = m["iemocap_Ses01M_script01_1_F000"]
    assert (scripted.label, scripted.speaker, scripted.votes) == (
        "sad",
        "iemocap_Ses01_F",
        {"sad": 1},
    )
    assert len(m) == 11


@pytest.mark.parametrize("make", [False, True])
def test_missing_or_empty_folder(tmp_path: Path, make: bool) -> None:
    corpus = tmp_path / "iemocap"
    if make:
        corpus.mkdir()
    with pytest.raises(ManualDownloadRequired, match=r"sail\.usc\.edu"):
        prepare_iemocap(corpus)


def test_missing_session_names_the_path(tmp_path: Path, touch: Touch) -> None:
    _make_iemocap(tmp_path, touch)
    shutil.rmtree(tmp_path / "Session3")
    with pytest.raises(LayoutError, match="Session3/dialog/EmoEvaluation"):
        prepare_iemocap(tmp_path)


def test_missing_wav_folder_names_the_path(tmp_path: Path, touch: Touch) -> None:
    _make_iemocap(tmp_path, touch)
    (tmp_path / "Session2/sentences").rename(tmp_path / "Session2/other")
    with pytest.raises(LayoutError, match="Session2/sentences/wav"):
        prepare_iemocap(tmp_path)
