"""Every parser's failure is one line naming the file (and line) and the fix, with exit 2 and no
traceback: encodings, JSON nested or with 5000-digit numbers, CSV cells over the csv module's
limit, NUL characters, labels broken over lines, ids megabytes long. Files in Excel's UTF-8
(with a BOM) and file names holding unusual line separators are read as they are."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from after.data.manifest import Manifest
from after.testing.cli import invoke

SR = 16_000
HEADER = "path,label,speaker"


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("parsers")
    t = np.arange(SR) / SR
    sf.write(root / "a.wav", 0.3 * np.sin(2 * np.pi * 200 * t), SR)
    return root


def _jsonl(**fields: object) -> str:
    row = {"id": "a", "path": "a.wav", "label": "anger", "speaker": "s1", "corpus": "c"}
    return json.dumps({**row, **fields}, ensure_ascii=False)


# name -> (file content, what the one-line message must say)
BAD_CSVS: dict[str, tuple[str | bytes, str]] = {
    "utf16": (f"{HEADER}\na.wav,anger,s1\n".encode("utf-16"), "UTF-16"),
    "cell over 128 KiB": (f"{HEADER}\na.wav,{'x' * 200_000},s1\n", "field larger than"),
    "NUL in a path": (f"{HEADER}\na\x00.wav,anger,s1\n", "NUL"),
    "label over two lines": (f'{HEADER}\na.wav,"anger\nmild",s1\n', "line break"),
    "unpaired quote": (f'{HEADER}\na.wav,"anger,s1\n', "quote that does not pair up"),
    "5000-digit duration": (f"{HEADER},duration_s\na.wav,anger,s1,{'9' * 5000}\n", "duration_s"),
    "nested votes": (f'{HEADER},votes\na.wav,anger,s1,"{{""anger"": {{""x"": 1}}}}"\n', "votes"),
    "deep votes": (f"{HEADER},votes\na.wav,anger,s1,{'[' * 100_000}\n", "nested too deeply"),
}
BAD_JSONL: dict[str, tuple[str | bytes, str]] = {
    "utf16": ((_jsonl() + "\n").encode("utf-16"), "UTF-16"),
    "latin1": ((_jsonl(label="colère") + "\n").encode("latin-1"), "not UTF-8"),
    "deep": ("[" * 100_000 + "\n", "nested too deeply"),
    "5000 digits": (_jsonl(duration_s=0).replace(": 0", ": " + "9" * 5000) + "\n", "4300 digits"),
    "NUL in a path": (_jsonl(path="a\x00.wav") + "\n", "NUL"),
    "nested votes": (_jsonl(votes={"anger": {"x": 1}}) + "\n", "votes"),
    "votes as a list": (_jsonl(votes=[["anger", 1]]) + "\n", "votes"),
    "session as an object": (_jsonl(session={"a": 1}) + "\n", "session"),
    "control character in a label": (_jsonl(label="anger\x1b[2J") + "\n", "control"),
}


@pytest.mark.parametrize("case", list(BAD_CSVS))
def test_bad_csv_manifests(
    case: str,
    audio: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    tally: dict[str, int],
) -> None:
    content, expected = BAD_CSVS[case]
    path = audio / f"{case.replace(' ', '_')}.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, text = invoke(
        ["prepare", "csv", "--data-dir", str(path), "--out", str(tmp_path / "m")], capsys
    )
    assert code == 2 and expected in text and path.name in text, text
    assert len(text.strip().splitlines()) == 1 and len(text) < 2000, text
    tally["hostile_inputs"] = tally.get("hostile_inputs", 0) + 1
    tally["clear_messages"] = tally.get("clear_messages", 0) + 1


@pytest.mark.parametrize("case", list(BAD_JSONL))
def test_bad_jsonl_manifests(
    case: str, audio: Path, capsys: pytest.CaptureFixture[str], tally: dict[str, int]
) -> None:
    content, expected = BAD_JSONL[case]
    path = audio / f"{case.replace(' ', '_')}.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, text = invoke(["stats", str(path)], capsys)
    assert code == 2 and expected in text and path.name in text, text
    assert len(text.strip().splitlines()) == 1 and len(text) < 2000, text
    tally["hostile_inputs"] = tally.get("hostile_inputs", 0) + 1
    tally["clear_messages"] = tally.get("clear_messages", 0) + 1


def test_an_id_megabytes_long_is_not_echoed_whole(
    audio: Path, capsys: pytest.CaptureFixture[str], tally: dict[str, int]
) -> None:
    path = audio / "long_id.jsonl"
    path.write_text(_jsonl(id="x" * 10_000_000 + " y") + "\n")
    code, text = invoke(["validate", str(path)], capsys)
    assert code == 2 and "long_id.jsonl (record 1)" in text and "10000002 characters" in text
    assert len(text) < 1000
    tally["hostile_inputs"] = tally.get("hostile_inputs", 0) + 1
    tally["clear_messages"] = tally.get("clear_messages", 0) + 1


def test_excel_csv_with_a_bom_is_read(
    audio: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tally: dict[str, int]
) -> None:
    path = audio / "excel.csv"
    path.write_bytes(f"{HEADER}\r\na.wav,anger,s1\r\n".encode("utf-8-sig"))
    out = tmp_path / "m.jsonl"
    code, text = invoke(["prepare", "csv", "--data-dir", str(path), "--out", str(out)], capsys)
    assert code == 0, text
    assert [(u.label, u.speaker) for u in Manifest.from_jsonl(out)] == [("anger", "s1")]
    tally["hostile_inputs"] = tally.get("hostile_inputs", 0) + 1


@pytest.mark.parametrize("odd", ["\u2028", "\u2029", "\x85"])
def test_file_names_with_unusual_line_breaks_survive_a_round_trip(
    odd: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], tally: dict[str, int]
) -> None:
    root = tmp_path / "corpus"
    for label in ("anger", "joy"):
        (root / label / "s1").mkdir(parents=True)
        t = np.arange(SR) / SR
        sf.write(
            root / label / "s1" / f"{label}{odd}take.wav", 0.3 * np.sin(2 * np.pi * 200 * t), SR
        )
    out = tmp_path / "m.jsonl"
    code, text = invoke(["prepare", "folder", "--data-dir", str(root), "--out", str(out)], capsys)
    assert code == 0, text
    assert odd not in out.read_text()  # escaped: line-based readers see one record per line
    code, text = invoke(["validate", str(out)], capsys)
    assert code == 0 and "2 usable, 0 with problems" in text, text
    assert sorted(Path(u.path).name for u in Manifest.from_jsonl(out)) == [
        f"anger{odd}take.wav",
        f"joy{odd}take.wav",
    ]
    tally["hostile_inputs"] = tally.get("hostile_inputs", 0) + 1
