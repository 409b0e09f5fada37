"""From a flat folder of unlabeled recordings to a model with an honest accuracy estimate, as a
practitioner goes (the README's quick start): prepare, run with people answering through the
labeling app's HTTP API, the audit estimate with its interval, more rounds, predict. No label
is made outside the tool: the test's "people" answer by ear, i.e. from a key only they hold."""

from __future__ import annotations

import csv
import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from after.cli import main
from after.label.app import create_app
from after.loop.folder import RunFolder
from after.loop.state import LoopState
from after.testing.dummies import TONE_HZ, write_tone

LABELS = sorted(TONE_HZ)


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err, out.err
    return code, out.out, out.err


def _recordings(folder: Path) -> dict[str, str]:
    """48 clips in one flat folder, named so that nothing spells a label; returns what each
    holds (what a listener would hear), by file name."""
    heard = {}
    for k in range(48):
        label = LABELS[k % 4]
        name = f"rec_{k:03d}.wav"
        write_tone(folder / name, TONE_HZ[label] * (1 + 0.01 * (k % 5)), 0.6, seed=k)
        heard[name] = label
    return heard


def _prepare(capsys: pytest.CaptureFixture[str], folder: Path, manifest: Path) -> str:
    """`after prepare folder` of the unlabeled recordings with the label set; its output."""
    args = ["prepare", "folder", str(folder), "--labels", ",".join(LABELS), "--out", str(manifest)]
    code, out, _ = _run(capsys, *args)
    assert code == 0, out
    return out


def _post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request) as response:
        return dict(json.loads(response.read()))


def _get(url: str, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + path) as response:
        return dict(json.loads(response.read()))


def _label_round(run_dir: Path, heard: dict[str, str], serve: Any) -> int:
    """Two people label the round through the app's HTTP API, one clip at a time, as their
    browsers would; returns how many answers they gave."""
    from after.loop.runner import Run

    paths = {u.id: Path(u.path).name for u in Run.from_dir(run_dir).manifest}
    queries = RunFolder(run_dir).read_queries(LoopState.load(run_dir).round)["ids"]
    given = 0
    with serve(create_app(run_dir)) as url:
        for who in ("ann", "ben"):
            while (clip := _get(url, f"/api/next?annotator={who}")["clip"]) is not None:
                assert set(clip) <= {"clip", "position", "audio", "duration_s"}  # no id, no score
                # What the person hears: the test looks it up by the clip's place in the queue.
                truth = heard[paths[queries[clip["position"] - 1]]]
                answer = _post(
                    url, "/api/answers", {"annotator": who, "clip": clip["clip"], "label": truth}
                )
                assert answer["stored"] is True
                given += 1
    return given


@pytest.mark.slow
def test_from_a_flat_folder_of_recordings_to_predictions_with_an_audit_estimate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], serve: Any
) -> None:
    folder = tmp_path / "recordings"
    heard = _recordings(folder)
    manifest, run_dir = tmp_path / "m.jsonl", tmp_path / "run"

    out = _prepare(capsys, folder, manifest)
    assert "48 clips (0 labeled), 4 labels (declared)" in out
    assert "speakers: unknown, each clip is its own" in out

    start = ["run", "--manifest", str(manifest), "--oracle", "human", "--audit", "12"]
    start += ["--backbone", "egemaps", "--cold-start", "random", "--schedule", "8,16"]
    code, out, err = _run(capsys, *start, "--out", str(run_dir))
    assert code == 0 and "no test split (no folds" in err and "audit set (12 clips" in err
    assert "round 0 waits for 20 label(s) (12 of them audit clips, mixed in)" in out

    assert _label_round(run_dir, heard, serve) == 20  # each clip once: ben finds none left
    code, out, _ = _run(capsys, "run", "--resume", str(run_dir))
    (line,) = [x for x in out.splitlines() if x.startswith("round 0:")]
    assert re.search(
        r"audit UA \d+\.\d% \[\d+\.\d-\d+\.\d\], accuracy .* \(12 audit labels\)", line
    )
    assert "test UA" not in out

    code, out, _ = _run(capsys, "label", "status", str(run_dir))
    assert code == 0 and "audit set: 12 of 12 clips labeled; no test split" in out
    assert "Wilson" in out and "bootstrap" in out

    _label_round(run_dir, heard, serve)
    code, out, _ = _run(capsys, "run", "--resume", str(run_dir))
    assert "done (budget spent)" in out and f"--resume {run_dir} --schedule 8,16,MORE" in out
    assert "delete" not in out

    # More rounds for the finished run: the schedule grows, nothing is lost.
    before = LoopState.load(run_dir)
    code, out, err = _run(capsys, "run", "--resume", str(run_dir), "--schedule", "8,16,24")
    assert code == 0 and "schedule grown from 8,16 to 8,16,24" in err
    assert "round 2 waits for 8 label(s)" in out
    _label_round(run_dir, heard, serve)
    code, out, _ = _run(capsys, "run", "--resume", str(run_dir))
    state = LoopState.load(run_dir)
    assert state.phase == "done" and [r["num_labeled"] for r in state.rounds] == [8, 16, 24]
    assert before.labels.items() <= state.labels.items() and state.audit == before.audit
    with open(run_dir / "rounds.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["audit_n"] for r in rows] == ["12", "12", "12"] and "test_ua" not in rows[0]
    assert all(
        float(r["audit_ua_lo"]) <= float(r["audit_ua"]) <= float(r["audit_ua_hi"]) for r in rows
    )

    # A setting of a started run cannot change behind its back, nor is deleting suggested.
    code, _, err = _run(capsys, "run", "--resume", str(run_dir), "--strategy", "margin")
    assert code == 2 and "--strategy cannot change" in err and "delete" not in err

    # The run folder stands for its model; every recording gets a label.
    code, out, err = _run(capsys, "predict", str(folder), "--model", str(run_dir))
    assert code == 0 and "using" in err and str(run_dir / "model") in err
    predicted = [json.loads(x) for x in out.splitlines()]
    assert len(predicted) == 48 and {p["label"] for p in predicted} <= set(LABELS)
    right = sum(p["label"] == heard[Path(p["file"]).name] for p in predicted)
    assert right >= 36  # tones: the learner hears them apart

    code, out, _ = _run(capsys, "report", str(run_dir), "--markdown")
    assert code == 0 and "(n=12)" in out and "audit estimate" in out

    # A new run (another strategy) starts from the labels people gave: its round 0 trains on
    # them at once, its audit set is theirs, and the same command again continues it.
    again = [
        *start[:-4],
        "--schedule",
        "24,32",
        "--strategy",
        "margin",
        "--out",
        str(tmp_path / "new"),
    ]
    again += ["--labels-from", str(run_dir)]
    code, out, err = _run(capsys, *again)
    assert code == 0 and "starts from 24 label(s) and 12 audit label(s)" in err, err
    assert "round 0: 24 labeled" in out and "round 1 waits for 8 label(s)" in out
    code, out, err = _run(capsys, *again)
    assert code == 0 and "continuing" in err and "round 1 waits for 8 label(s)" in out
    new = LoopState.load(tmp_path / "new")
    assert new.audit_labels == state.audit_labels and set(new.labeled.values()) == {-1}


def test_a_run_without_folds_or_audit_says_it_has_no_accuracy_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "recordings"
    _recordings(folder)
    manifest = tmp_path / "m.jsonl"
    _prepare(capsys, folder, manifest)
    run_dir = tmp_path / "run"
    args = ["run", "--manifest", str(manifest), "--oracle", "human", "--backbone", "egemaps"]
    args += ["--cold-start", "random", "--schedule", "8,16", "--out", str(run_dir)]
    code, _, err = _run(capsys, *args)
    assert code == 0 and "no test split (no folds" in err and "--audit N" in err
    code, out, _ = _run(capsys, "label", "status", str(run_dir))
    assert "no test split, no audit set: this run has no accuracy figure" in out
    # The same command with another setting: refused with the ways forward, none a deletion.
    code, _, err = _run(capsys, *args[:-2], "--strategy", "margin", "--out", str(run_dir))
    assert code == 2 and "its settings are fixed" in err and "--labels-from" in err
    assert "delete" not in err
    code, _, err = _run(
        capsys, "run", "--manifest", str(manifest), "--folds", "f.json", "--out", "x"
    )
    assert code == 2 and "give the fold to run on with --fold" in err


def test_folds_of_unlabeled_audio_or_unknown_speakers_say_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "recordings"
    heard = _recordings(folder)
    manifest = tmp_path / "m.jsonl"
    _prepare(capsys, folder, manifest)
    code, _, err = _run(capsys, "folds", str(manifest), "--out", str(tmp_path / "f.json"))
    assert code == 2 and "no clip of the manifest has a label" in err and "no --fold" in err
    # Labeled, but nobody said who speaks: the folds would split clips, not people.
    table = tmp_path / "labeled.csv"
    rows = "".join(f"recordings/{name},{label}\n" for name, label in heard.items())
    table.write_text("path,label\n" + rows)
    labeled = tmp_path / "labeled.jsonl"
    code, out, _ = _run(capsys, "prepare", "csv", str(table), "--out", str(labeled))
    assert code == 0 and "speakers: unknown, each clip is its own" in out
    code, _, err = _run(capsys, "folds", str(labeled), "--out", str(tmp_path / "g.json"))
    assert code == 0 and "these folds split clips, not people" in err
