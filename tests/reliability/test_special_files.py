"""Files that are not regular files (FIFOs, devices) are refused at once instead of read (a FIFO
waits for a writer for ever) or replaced (a rename would put a file where /dev/null was); `after
predict` classifies every good file of a batch, and long files window by window."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from after.cli import main
from after.errors import AfterError
from after.io import atomic_write_text
from after.models.classifier import new_classifier

SR = 16_000


def _speech(path: Path, seconds: float = 1.0, sr: int = SR, channels: int = 1) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    sf.write(path, np.repeat(x[:, None], channels, axis=1), sr)
    return path


def _after(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`after ARGS` in a new process: a command that waits on a FIFO fails the test by timing
    out instead of hanging the suite."""
    return subprocess.run(
        [sys.executable, "-m", "after", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained scratch:tiny classifier: enough to check what predict does with files."""
    out = tmp_path_factory.mktemp("model") / "model"
    new_classifier("scratch:tiny", ["anger", "joy"]).save(out)
    return out


def test_fifos_are_refused_not_waited_on(
    model: Path, tmp_path: Path, tally: dict[str, int]
) -> None:
    good = _speech(tmp_path / "good.wav")
    os.mkfifo(tmp_path / "x.wav")
    os.mkfifo(tmp_path / "m.jsonl")
    (tmp_path / "clips.csv").write_text("path,label,speaker\nx.wav,anger,s1\ngood.wav,joy,s1\n")
    (tmp_path / "clips.jsonl").write_text(
        "".join(
            json.dumps({"id": n, "path": n + ".wav", "label": "joy", "speaker": "s", "corpus": "c"})
            + "\n"
            for n in ("x", "good")
        )
    )
    out = str(tmp_path / "out.jsonl")
    r = _after("prepare", "csv", "--data-dir", str(tmp_path / "clips.csv"), "--out", out)
    assert r.returncode == 0 and "FIFO" in r.stderr, r.stderr
    kept = [json.loads(line)["path"] for line in Path(out).read_text().splitlines()]
    assert kept == [str(good)]
    r = _after("validate", str(tmp_path / "clips.jsonl"))
    assert r.returncode == 1 and "FIFO" in r.stdout + r.stderr and "1 usable" in r.stdout
    for args in (["validate", str(tmp_path / "m.jsonl")], ["stats", str(tmp_path / "m.jsonl")]):
        r = _after(*args)
        assert r.returncode == 2 and "m.jsonl: a FIFO" in r.stderr, r.stderr
    r = _after("predict", str(tmp_path / "x.wav"), str(good), "--model", str(model))
    assert r.returncode == 2 and "x.wav: not_audio (a FIFO" in r.stderr, r.stderr
    assert [json.loads(line)["file"] for line in r.stdout.splitlines()] == [str(good)]
    tally["hostile_inputs"] = tally.get("hostile_inputs", 0) + 5
    tally["clear_messages"] = tally.get("clear_messages", 0) + 5


def test_writes_never_replace_a_device_or_a_fifo(tmp_path: Path, tally: dict[str, int]) -> None:
    """As root, `--out /dev/null` renamed a file over the device node. The device here is a copy
    of /dev/null's node in tmp_path (where root may make one), never the real one: if this ever
    regressed, the test must not break the machine."""
    os.mkfifo(tmp_path / "pipe")
    targets = [tmp_path / "pipe", tmp_path / "folder"]
    targets[1].mkdir()
    with contextlib.suppress(PermissionError):
        os.mknod(tmp_path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        targets.append(tmp_path / "null")
    for target in targets:
        with pytest.raises(AfterError, match="give the path of a file"):
            atomic_write_text(target, "{}")
    assert (tmp_path / "pipe").is_fifo() and (tmp_path / "folder").is_dir()
    assert len(targets) == 2 or (tmp_path / "null").is_char_device()
    assert not list(tmp_path.glob(".*.tmp"))
    tally["hostile_inputs"] = tally.get("hostile_inputs", 0) + len(targets)
    tally["clear_messages"] = tally.get("clear_messages", 0) + len(targets)


def _predict(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[Any], str]:
    try:
        main(["predict", *args])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, [json.loads(line) for line in out.out.splitlines()], out.err


def test_predict_goes_on_past_bad_files_and_windows_long_ones(
    model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tally: dict[str, int]
) -> None:
    first = _speech(tmp_path / "first.wav")
    late_nan = tmp_path / "late_nan.wav"  # fine for its first seconds: the old check read 1 s
    x = np.full(3 * SR, 0.1, dtype=np.float32)
    x[2 * SR] = np.nan
    sf.write(late_nan, x, SR, subtype="FLOAT")
    long = _speech(tmp_path / "long.flac", seconds=70.0, sr=44_100, channels=2)
    folder = tmp_path / "a folder.wav"
    folder.mkdir()
    last = _speech(tmp_path / "last.wav", seconds=2.0)
    files = [first, late_nan, long, folder, last]
    code, lines, err = _predict(capsys, *map(str, files), "--model", str(model))
    assert code == 2  # an input error, as everywhere; the usable files are classified
    assert "late_nan.wav: nonfinite" in err and "a folder.wav: not_audio" in err
    assert [Path(line["file"]).name for line in lines] == [
        "first.wav",
        *["long.flac"] * 3,
        "last.wav",
    ]
    windows = [(line["start_s"], line["end_s"]) for line in lines[1:4]]
    assert windows == [(0.0, 23.333), (23.333, 46.667), (46.667, 70.0)]  # 3 equal, <= 30 s
    assert all(abs(sum(line["scores"].values()) - 1) < 1e-4 for line in lines)
    assert "start_s" not in lines[0] and "start_s" not in lines[-1]
    tally["hostile_inputs"] = tally.get("hostile_inputs", 0) + 2
    tally["clear_messages"] = tally.get("clear_messages", 0) + 2
