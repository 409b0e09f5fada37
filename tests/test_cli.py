"""The command line, driven as a user would: exit codes, files written, messages (no tracebacks)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from after.cli import main
from after.data.folds import Folds
from after.data.manifest import Manifest
from after.testing.dummies import TONE_HZ, write_tone


def run(*args: str) -> int:
    with pytest.raises(SystemExit) as e:
        main(list(args))
    return int(e.value.code or 0)


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--help") == 0
    text = capsys.readouterr().out
    for command in ("prepare", "validate", "folds", "stats", "synth", "demo"):
        assert command in text


def _folder_corpus(root: Path) -> Path:
    """A folder-per-label corpus (label/speaker/file.wav) with a few bad files mixed in."""
    for s in range(4):
        for label, hz in TONE_HZ.items():
            write_tone(root / label / f"spk{s}" / f"{label}_{s}.wav", hz, 0.5, seed=s)
    (root / "anger" / "spk0" / "broken.wav").write_text("not audio at all")
    sf.write(root / "neutral" / "spk1" / "silence.wav", np.zeros(8000, np.float32), 16_000)
    return root


def test_prepare_keeps_going_and_writes_rejections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _folder_corpus(tmp_path / "corpus")
    out = tmp_path / "m.jsonl"
    assert run("prepare", "folder", "--data-dir", str(data), "--out", str(out)) == 0
    m = Manifest.from_jsonl(out)
    assert len(m) == 16 and len(m.speakers) == 4 and all(u.duration_s == 0.5 for u in m)
    rejected = [json.loads(x) for x in (tmp_path / "m.rejected.jsonl").read_text().splitlines()]
    assert sorted(r["reason"] for r in rejected) == ["not_audio", "silent"]
    assert "2 unusable clip(s)" in capsys.readouterr().err


def test_prepare_fails_only_when_nothing_is_usable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "corpus" / "anger" / "spk0"
    data.mkdir(parents=True)
    (data / "a.wav").write_text("text")
    out = str(tmp_path / "m.jsonl")
    code = run("prepare", "folder", "--data-dir", str(tmp_path / "corpus"), "--out", out)
    assert code == 2
    err = capsys.readouterr().err
    assert "no usable clip" in err and "Traceback" not in err


def test_user_errors_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("stats", str(tmp_path / "missing.jsonl")) == 2
    assert "no such file" in capsys.readouterr().err
    assert run("prepare", "nosuchcorpus", "--data-dir", str(tmp_path)) == 2
    assert "emodb" in capsys.readouterr().err  # the message lists the known corpora


def test_validate_reports_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _folder_corpus(tmp_path / "corpus")
    good = tmp_path / "good.jsonl"
    assert run("prepare", "folder", "--data-dir", str(data), "--out", str(good)) == 0
    assert run("validate", str(good)) == 0
    (data / "anger" / "spk2" / "anger_2.wav").write_bytes(b"RIFF\x00\x00")  # damaged since
    capsys.readouterr()
    assert run("validate", str(good), "--labels", "anger,happiness,neutral") == 1
    err = capsys.readouterr().err
    assert "corrupt" in err and "unknown_label" in err


def test_folds_and_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _folder_corpus(tmp_path / "corpus")
    m = tmp_path / "m.jsonl"
    f = tmp_path / "folds.json"
    run("prepare", "folder", "--data-dir", str(data), "--out", str(m))
    assert run("folds", str(m), "--out", str(f)) == 0
    folds = Folds.from_json(f, Manifest.from_jsonl(m))
    assert folds.protocol == "loso" and len(folds) == 4
    capsys.readouterr()
    assert run("stats", str(m), "--folds", str(f), "--json") == 0
    s = json.loads(capsys.readouterr().out)
    assert s["num_clips"] == 16 and s["labels"] == {lab: 4 for lab in sorted(TONE_HZ)}
    assert [x["test"]["total"] for x in s["folds"]["folds"]] == [4, 4, 4, 4]
    assert run("stats", str(m), "--folds", str(f)) == 0
    assert "clips per speaker" in capsys.readouterr().out


@pytest.mark.corpus
def test_prepare_emodb(emodb_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.jsonl"
    assert run("prepare", "emodb", "--data-dir", str(emodb_dir), "--out", str(out)) == 0
    m = Manifest.from_jsonl(out)
    assert (len(m), len(m.speakers), len(m.labels)) == (535, 10, 7)
    assert not (tmp_path / "m.rejected.jsonl").exists()
    assert run("folds", str(out), "--out", str(tmp_path / "f.json")) == 0
    folds = Folds.from_json(tmp_path / "f.json", m)
    assert len(folds) == 10
    for f in folds.folds:
        train = {m[i].speaker for i in f.train}
        assert not train & {m[i].speaker for i in f.test}


def test_module_entry_point_prints_no_traceback(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "after", "folds", str(tmp_path / "none.jsonl")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "error:" in r.stderr and "Traceback" not in r.stderr


def test_tapt_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "synth"
    assert run("synth", "--out", str(corpus), "--speakers", "3", "--sentences", "2") == 0
    m, f = corpus / "manifest.jsonl", tmp_path / "folds.json"
    assert run("folds", str(m), "--out", str(f)) == 0
    args = ["tapt", "--manifest", str(m), "--folds", str(f), "--fold", "1"]
    args += ["--backbone", "scratch:tiny", "--out", str(tmp_path / "t"), "--steps", "4"]
    args += ["--save-every", "2"]
    assert run(*args) == 0
    done = tmp_path / "t" / "tapt.json"
    info = json.loads(done.read_text())
    assert info["fold"] == Folds.from_json(f).get(1).name and info["steps"] == 4
    capsys.readouterr()
    assert run(*args) == 2  # the folder holds a finished run: nothing is overwritten
    assert "finished TAPT run" in capsys.readouterr().err
    # A run stopped after its checkpoint at step 2: the same command continues it (no --resume).
    done.unlink()
    assert run(*args) == 0
    assert json.loads(done.read_text())["resumed_from_step"] == 2
    assert "continuing TAPT" in capsys.readouterr().err
    bad = [*args[:6], "nosuchfold", *args[7:]]
    assert run(*bad) == 2 and "nosuchfold" in capsys.readouterr().err


def test_train_evaluate_predict_and_cv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "synth"
    assert run("synth", "--out", str(corpus), "--speakers", "4", "--sentences", "2") == 0
    m, f = corpus / "manifest.jsonl", tmp_path / "folds.json"
    assert run("folds", str(m), "--out", str(f)) == 0
    common = ["--manifest", str(m), "--folds", str(f)]
    fast = ["--backbone", "egemaps", "--epochs", "3", "--cache-dir", str(tmp_path / "cache")]
    out = tmp_path / "run"
    assert run("train", *common, "--fold", "0", *fast, "--out", str(out)) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["num_train"] == 16 and result["test"]["num_clips"] == 8
    assert (out / "confusion.png").stat().st_size > 1000

    model = str(out / "model")
    assert run("evaluate", "--model", model, *common, "--fold", "0") == 0
    scores = out / f"evaluation_{result['fold']}_test.json"  # beside the model, not in the cwd
    assert json.loads(scores.read_text())["confusion"] == result["test"]["confusion"]
    assert scores.with_suffix(".png").is_file()

    clip = next(iter(Manifest.from_jsonl(m))).path
    capsys.readouterr()
    # Input errors exit 2, as everywhere; the usable files are classified all the same.
    assert run("predict", clip, str(tmp_path / "missing.wav"), "--model", model) == 2
    captured = capsys.readouterr()
    (line,) = captured.out.splitlines()
    assert json.loads(line)["file"] == clip and "missing.wav: missing" in captured.err
    assert "check the path" in captured.err and "prepare" not in captured.err
    # A folder stands for the audio files in it; one without any is reported.
    assert run("predict", str(Path(clip).parent), str(tmp_path), "--model", model) == 2
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == len(list(Path(clip).parent.glob("*.flac")))
    assert "a folder with no audio file" in captured.err

    cv_out = tmp_path / "cv"
    assert run("cv", *common, *fast[:4], "--out", str(cv_out), "--fold", "0", "--fold", "1") == 0
    assert len(json.loads((cv_out / "cv.json").read_text())["runs"]) == 2  # the folds asked for
    assert run("cv", *common, *fast[:4], "--out", str(cv_out), "--seeds", "0,1") == 0
    runs = json.loads((cv_out / "cv.json").read_text())["runs"]
    assert len(runs) == 8  # 4 folds x 2 seeds
    assert "mean ± sample std over 8 runs" in (cv_out / "cv.md").read_text()
    (cv_out / "runs" / f"{runs[0]['fold']}_seed0.json").unlink()
    capsys.readouterr()
    assert run("cv", *common, *fast[:4], "--out", str(cv_out), "--seeds", "0,1") == 0
    redone = re.findall(r"^fold \S+ seed \d: UA", capsys.readouterr().out, flags=re.M)
    assert len(redone) == 1  # the deleted run is redone, the others kept
