"""MSP-Podcast adapter: consensus labels, official splits, test set choice, unknown speakers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from after.data.corpora import prepare_msp_podcast
from after.errors import AfterError, LayoutError, ManualDownloadRequired

Touch = Callable[..., list[Path]]

LABELS_CSV = """\
FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set
MSP-PODCAST_0001_0008.wav,N,4.2,4.0,4.4,127,Female,Train
MSP-PODCAST_0001_0019.wav,A,5.6,2.2,5.0,127,Female,Development
MSP-PODCAST_0002_0033.wav,H,4.8,5.6,4.2,Unknown,Unknown,Test1
MSP-PODCAST_0002_0034.wav,S,2.4,2.6,3.0,Unknown,Unknown,Test1
MSP-PODCAST_0003_0001.wav,X,3.0,3.0,3.0,5,Male,Train
MSP-PODCAST_0003_0002.wav,O,3.2,4.0,3.6,5,Male,Train
MSP-PODCAST_0004_0001.wav,C,3.4,3.0,4.6,88,Male,Test2
MSP-PODCAST_0005_0001.wav,U,5.0,4.8,4.0,90,Female,Test3
MSP-PODCAST_0006_0001.wav,F,4.4,2.0,2.6,91,Female,Train
"""


def _make_msp(root: Path, touch: Touch) -> None:
    """All clips of LABELS_CSV have audio except MSP-PODCAST_0006_0001."""
    (root / "Labels").mkdir(parents=True)
    (root / "Labels" / "labels_consensus.csv").write_text(LABELS_CSV)
    names = [line.split(",")[0] for line in LABELS_CSV.splitlines()[1:]]
    touch(root / "Audios", *(n for n in names if "0006" not in n))


def test_labels_splits_speakers(tmp_path: Path, touch: Touch) -> None:
    _make_msp(tmp_path, touch)
    m = prepare_msp_podcast(tmp_path)
    rows = {u.id.removeprefix("msp-podcast_MSP-PODCAST_"): (u.label, u.speaker, u.split) for u in m}
    assert rows == {  # X and O dropped; 0006_0001 has no audio
        "0001_0008": ("neutral", "msp-podcast_127", "train"),
        "0001_0019": ("anger", "msp-podcast_127", "dev"),
        "0002_0033": ("happiness", "msp-podcast_unknown_MSP-PODCAST_0002_0033", "test"),
        "0002_0034": ("sadness", "msp-podcast_unknown_MSP-PODCAST_0002_0034", "test"),
        "0004_0001": ("contempt", "msp-podcast_88", None),
        "0005_0001": ("surprise", "msp-podcast_90", None),
    }
    u = m["msp-podcast_MSP-PODCAST_0001_0008"]
    assert u.path == str(tmp_path / "Audios" / "MSP-PODCAST_0001_0008.wav")
    assert (u.corpus, u.session, u.votes) == ("msp-podcast", None, None)


def test_other_test_set(tmp_path: Path, touch: Touch) -> None:
    _make_msp(tmp_path, touch)
    m = prepare_msp_podcast(tmp_path, test_set="Test2")
    assert [u.id for u in m if u.split == "test"] == ["msp-podcast_MSP-PODCAST_0004_0001"]
    assert m["msp-podcast_MSP-PODCAST_0002_0033"].split is None
    assert m["msp-podcast_MSP-PODCAST_0001_0008"].split == "train"


def test_unknown_test_set(tmp_path: Path, touch: Touch) -> None:
    _make_msp(tmp_path, touch)
    with pytest.raises(AfterError, match=r"Test9.*\['Test1', 'Test2', 'Test3'\]"):
        prepare_msp_podcast(tmp_path, test_set="Test9")


@pytest.mark.parametrize("make", [False, True])
def test_missing_or_empty_folder(tmp_path: Path, make: bool) -> None:
    corpus = tmp_path / "msp"
    if make:
        corpus.mkdir()
    with pytest.raises(ManualDownloadRequired, match="licence agreement"):
        prepare_msp_podcast(corpus)


def test_missing_labels_file(tmp_path: Path, touch: Touch) -> None:
    touch(tmp_path, "Audios/MSP-PODCAST_0001_0008.wav")
    with pytest.raises(LayoutError, match=r"Labels/labels_consensus\.csv"):
        prepare_msp_podcast(tmp_path)


def test_missing_audio_folder(tmp_path: Path, touch: Touch) -> None:
    _make_msp(tmp_path, touch)
    (tmp_path / "Audios").rename(tmp_path / "Audio")
    with pytest.raises(LayoutError, match=r"Audios: not found"):
        prepare_msp_podcast(tmp_path)


def test_missing_column(tmp_path: Path, touch: Touch) -> None:
    _make_msp(tmp_path, touch)
    (tmp_path / "Labels" / "labels_consensus.csv").write_text("FileName,EmoClass\nx.wav,N\n")
    with pytest.raises(LayoutError, match="SpkrID"):
        prepare_msp_podcast(tmp_path)


def test_truncated_row_is_no_crash(tmp_path: Path, touch: Touch) -> None:
    _make_msp(tmp_path, touch)
    with (tmp_path / "Labels" / "labels_consensus.csv").open("a") as f:
        f.write("MSP-PODCAST_0007_0001.wav,N,4.2\n")
    touch(tmp_path / "Audios", "MSP-PODCAST_0007_0001.wav")
    with pytest.raises(LayoutError, match=r"labels_consensus.csv:\d+: 3 cells"):
        prepare_msp_podcast(tmp_path)
