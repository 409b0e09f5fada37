"""The command line, driven as a user would: exit codes, files written, messages (no tracebacks)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from after.cli import main
from after.data.folds import Folds, make_folds
from after.data.manifest import Manifest
from after.errors import AfterError
from after.testing.dummies import TONE_HZ, tone_corpus, write_tone


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
    # The fixes name options predict has; the folder of after train stands for its model.
    short, silent = tmp_path / "short.wav", tmp_path / "silent.wav"
    write_tone(short, 220.0, 0.1)
    sf.write(silent, np.zeros(16_000, np.float32), 16_000)
    assert run("predict", str(short), str(silent), clip, "--model", str(out)) == 2
    captured = capsys.readouterr()
    assert "too_short" in captured.err and "silent" in captured.err
    assert f"{out}: using {out / 'model'}" in captured.err and len(captured.out.splitlines()) == 1
    assert run("predict", "--help") == 0
    options = set(re.findall(r"--[a-z-]+", capsys.readouterr().out))
    assert set(re.findall(r"--[a-z-]+", captured.err)) <= options
    assert run("predict", str(short), "--min-duration", "0.05", "--model", model) == 0

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


def test_cv_refuses_runs_made_with_other_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = tone_corpus(tmp_path / "tones").to_jsonl(tmp_path / "m.jsonl")
    folds = make_folds(Manifest.from_jsonl(m), "loso").to_json(tmp_path / "folds.json")
    out = tmp_path / "cv"
    args = ["cv", "--manifest", str(m), "--folds", str(folds), "--fold", "0", "--out", str(out)]
    args += ["--cache-dir", str(tmp_path / "cache")]
    assert run(*args, "--backbone", "egemaps", "--epochs", "3") == 0
    table = (out / "cv.md").read_text()
    (record,) = out.glob("runs/*_seed0.json")
    capsys.readouterr()
    # Other settings into the same --out: refused, naming the file, what differs, and the fix.
    assert run(*args, "--backbone", "resemblyzer", "--no-class-weights") == 2
    message = " ".join(capsys.readouterr().err.split())
    assert (
        f"{record}: made with other settings (backbone 'egemaps' there, 'resemblyzer' here; "
        in message
    )
    assert "config.class_weighted True there, False here)" in message
    assert "choose another output folder (--out) for these" in message
    assert (out / "cv.md").read_text() == table  # not relabeled with the new settings
    # An option the frozen-features learner never reads leaves its record good.
    made = record.read_text()
    assert run(*args, "--backbone", "egemaps", "--epochs", "4", "--layer-sum") == 0
    assert record.read_text() == made and (out / "cv.md").read_text() == table
    # A record of an earlier version, which did not say how it was made, is not trusted either.
    old = json.loads(record.read_text())
    keep = ("fold", "seed", "num_train", "best_epoch", "dev", "test", "seconds")
    record.write_text(json.dumps({k: old[k] for k in keep}))
    assert run(*args, "--backbone", "egemaps", "--epochs", "3") == 2
    assert "did not record its settings" in capsys.readouterr().err


def test_help_has_no_value_for_flags_and_there_is_a_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run("--version") == 0
    assert re.fullmatch(r"after \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)
    assert run("train", "--help") == 0
    text = capsys.readouterr().out
    assert "<bool>" not in text and "--soft-labels " in text
    for option in ("--threads", "--device", "--log-with", "--freeze-cnn / --train-cnn"):
        assert option in text


def _long_names_manifest(tmp_path: Path) -> Path:
    """Seven labels and speaker ids longer than an 80-column table leaves them."""
    labels = ["anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness"]
    rows = []
    for s in range(2):
        for k, label in enumerate(labels):
            path = write_tone(tmp_path / "audio" / f"{s}_{k}.wav", 200.0 + 20 * k, 0.5, seed=k)
            speaker = f"emodb_speaker_with_a_long_name_{s:02d}"
            rows.append(f"{path},{label},{speaker}")
    csv = tmp_path / "clips.csv"
    csv.write_text("path,label,speaker\n" + "\n".join(rows) + "\n")
    out = tmp_path / "m.jsonl"
    assert run("prepare", "csv", "--data-dir", str(csv), "--out", str(out)) == 0
    return out


def test_tables_stay_whole_when_piped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = _long_names_manifest(tmp_path)
    capsys.readouterr()
    assert run("stats", str(m)) == 0  # stdout is captured: not a terminal, as with | cat
    out = capsys.readouterr().out
    assert "…" not in out
    assert re.search(r"│ emodb_speaker_with_a_long_name_00 +│ +1 │ +1 │", out)


def test_files_written_respect_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        corpus = tmp_path / "synth"
        assert run("synth", "--out", str(corpus), "--speakers", "4", "--sentences", "1") == 0
        m, f, out = corpus / "manifest.jsonl", tmp_path / "folds.json", tmp_path / "run"
        assert run("folds", str(m), "--out", str(f)) == 0
        args = ["--manifest", str(m), "--folds", str(f), "--fold", "0", "--out", str(out)]
        assert run("train", *args, "--backbone", "egemaps", "--cache-dir", str(tmp_path / "c")) == 0
    finally:
        os.umask(old)
    written = [m, f, out / "result.json", out / "model" / "model.safetensors"]
    written += list((tmp_path / "c").rglob("*.feat"))
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o644, path  # colleagues can read them


def test_long_steps_print_progress_lines_when_not_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import after.progress

    monkeypatch.setattr(after.progress, "FIRST_S", 0.0)  # every step counts as long here
    monkeypatch.setattr(after.progress, "EVERY_S", 0.0)
    corpus = tmp_path / "synth"
    assert run("synth", "--out", str(corpus), "--speakers", "4", "--sentences", "1") == 0
    m, f = corpus / "manifest.jsonl", tmp_path / "folds.json"
    assert run("folds", str(m), "--out", str(f)) == 0
    capsys.readouterr()
    args = ["--manifest", str(m), "--folds", str(f), "--fold", "0", "--out", str(tmp_path / "r")]
    assert run("train", *args, "--backbone", "egemaps", "--cache-dir", str(tmp_path / "c")) == 0
    err = capsys.readouterr().err  # a file or a pipe: SLURM, nohup
    assert re.search(
        r"^features \(egemaps\): \d+/8 \(\d+%\); 0:\d\d elapsed, ETA 0:\d\d$", err, re.M
    )
    assert re.search(r"^features \(egemaps\): 8/8 \(100%\); ended after 0:\d\d$", err, re.M)


def test_device_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from after.dist import default_threads, use_compute

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        use_compute("cpu", 1)
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ""  # no GPU is used, nor started
        use_compute("auto")
        assert (
            torch.get_num_threads()
            == default_threads()
            == max(1, len(os.sched_getaffinity(0)) // 2)
        )
    finally:
        torch.set_num_threads(before)
    if not torch.cuda.is_available():
        with pytest.raises(AfterError, match="--device cuda: torch sees no such CUDA GPU"):
            use_compute("cuda")
    with pytest.raises(AfterError, match="--device 'tpu': give one of auto, cpu, cuda or cuda:N"):
        use_compute("tpu")


def _synth_folds(tmp_path: Path) -> list[str]:
    corpus = tmp_path / "synth"
    assert run("synth", "--out", str(corpus), "--speakers", "4", "--sentences", "2") == 0
    m, f = corpus / "manifest.jsonl", tmp_path / "folds.json"
    assert run("folds", str(m), "--out", str(f)) == 0
    return ["--manifest", str(m), "--folds", str(f), "--fold", "0"]


def test_run_options_one_convention(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from after.config import config_hash
    from after.io import atomic_write_json
    from after.loop.runner import Run
    from after.loop.state import LoopState

    common = _synth_folds(tmp_path)
    out = tmp_path / "al"
    fast = ["--backbone", "egemaps", "--cold-start", "random", "--schedule", "25%,50%"]
    fast += ["--cache-dir", str(tmp_path / "c")]
    # Hyphens, as corpus and protocol names have them (underscores work too).
    args = [*common, *fast, "--strategy", "least-confidence", "--out", str(out)]
    capsys.readouterr()
    assert run("run", *args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["al"]["strategy"] == "least_confidence" and config["al"]["schedule"][0] == "25%"
    assert "round 1: 8 labeled (50.0%" in capsys.readouterr().out
    # The same command again continues the run (here: it is done); other settings are refused.
    assert run("run", *args) == 0
    assert "done (budget spent)" in capsys.readouterr().out
    assert run("run", *[a if a != "least-confidence" else "margin" for a in args]) == 2
    assert "made with other settings (al.strategy)" in capsys.readouterr().err
    # A fine-tuning option changed (a new default, say) does not refuse a frozen-features run.
    assert run("run", *args, "--layer-sum", "--epochs", "7") == 0
    assert "done (budget spent)" in capsys.readouterr().out

    # Refused before anything is written: ALPS without a wav2vec 2.0 surprisal model.
    bad = tmp_path / "alps"
    assert run("run", *common, *fast, "--strategy", "alps", "--out", str(bad)) == 2
    err = capsys.readouterr().err
    assert "--strategy alps" in err and "--surprisal-model DIR" in err and not bad.exists()
    # A run folder made before that check continues nowhere; it says so, and what to do.
    old = Run.from_dir(out)
    old.al = dataclasses.replace(old.al, strategy="alps")
    old.run_dir = bad
    atomic_write_json(bad / "config.json", old.to_json())
    LoopState(config_hash=config_hash(old.to_json()), seed=0).save(bad)
    assert run("run", "--resume", str(bad)) == 2
    err = capsys.readouterr().err
    assert "cannot continue" in err and "start a new run" in err and "resemblyzer" not in err

    # An experiment again from its saved settings, with another seed.
    again = tmp_path / "again"
    assert run("rerun", str(out), "--out", str(again), "--seed", "1") == 0
    redone = json.loads((again / "config.json").read_text())
    assert redone["al"] == {**config["al"], "seed": 1} and redone["backbone"] == "egemaps"


def test_train_logs_to_tensorboard_and_reruns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    common = _synth_folds(tmp_path)
    out = tmp_path / "t"
    fast = ["--backbone", "egemaps", "--cache-dir", str(tmp_path / "c")]
    assert run("train", *common, *fast, "--out", str(out), "--log-with", "tensorboard") == 0
    scalars = EventAccumulator(str(out / "logs" / out.name)).Reload().Tags()["scalars"]
    assert {"dev_ua", "test_ua", "test_wa"} <= set(scalars)
    result = json.loads((out / "result.json").read_text())
    assert run("rerun", str(out), "--out", str(tmp_path / "t2")) == 0
    again = json.loads((tmp_path / "t2" / "result.json").read_text())
    assert again["test"] == result["test"] and again["config"] == result["config"]
