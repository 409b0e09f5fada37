"""The corpus registry: `CORPORA` and `prepare(name, data_dir, **options)`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from after.data.corpora import CORPORA, prepare, prepare_emodb
from after.errors import AfterError

Touch = Callable[..., list[Path]]


def test_names() -> None:
    assert list(CORPORA) == [
        "iemocap",
        "msp-podcast",
        "crema-d",
        "ravdess",
        "emodb",
        "savee",
        "tess",
        "meld",
        "csv",
        "folder",
    ]
    assert CORPORA["emodb"] is prepare_emodb


def test_prepare_by_name(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path / "wav", "03a01Fa.wav", "10b02Wc.wav")
    assert (
        prepare("emodb", tmp_path).ids
        == prepare_emodb(tmp_path).ids
        == [
            "emodb_03a01Fa",
            "emodb_10b02Wc",
        ]
    )


def test_unknown_name_lists_known(tmp_path: Path) -> None:
    with pytest.raises(AfterError, match="unknown corpus 'emo-db'") as info:
        prepare("emo-db", tmp_path)
    assert all(name in str(info.value) for name in CORPORA)


def test_unknown_option(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path / "wav", "03a01Fa.wav")
    with pytest.raises(AfterError, match=r"'emodb' does not take option\(s\) \['test_set'\]"):
        prepare("emodb", tmp_path, test_set="Test2")
    with pytest.raises(AfterError, match=r"it takes \['test_set'\]"):
        prepare("msp-podcast", tmp_path, speaker_regex="x")


def test_options_are_passed_through(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path / "mine", "happy/07_take3.wav")
    m = prepare("folder", tmp_path / "mine", speaker_regex=r"^(?P<speaker>\d+)_")
    assert m["mine_07_take3"].speaker == "mine_07"

    msp = tmp_path / "msp"
    (msp / "Labels").mkdir(parents=True)
    (msp / "Labels" / "labels_consensus.csv").write_text(
        "FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set\n"
        "MSP-PODCAST_0001_0008.wav,N,4.2,4.0,4.4,127,Female,Test1\n"
        "MSP-PODCAST_0004_0001.wav,A,3.4,3.0,4.6,88,Male,Test2\n"
    )
    touch(msp / "Audios", "MSP-PODCAST_0001_0008.wav", "MSP-PODCAST_0004_0001.wav")
    m = prepare("msp-podcast", msp, test_set="Test2")
    assert [u.split for u in m] == [None, "test"]
