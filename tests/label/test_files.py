"""Labels as files: CSV and Label Studio out and in, then the loop goes on with them."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from after.errors import AfterError
from after.label.files import export, import_labels
from after.label.store import LabelStore
from after.loop.runner import Run, queries_path, run_loop
from after.loop.state import LoopState


def test_export_writes_csv_and_label_studio_files(
    labeling: tuple[Run, LoopState], tmp_path: Path
) -> None:
    run, state = labeling
    LabelStore(run.run_dir).put(state.pending[0], "ann", "anger", 0)
    got = export(
        run.run_dir, tmp_path / "out", audio_url="http://127.0.0.1:8765/api/audio/{clip_id}"
    )
    assert got == {"answers": 1, "tasks": 6, "round": 0, "folder": str(tmp_path / "out")}
    with open(tmp_path / "out" / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["clip_id"], r["annotator"], r["label"], r["round"]) for r in rows] == [
        (state.pending[0], "ann", "anger", "0")
    ]
    with open(tmp_path / "out" / "tasks.csv") as f:
        tasks_csv = list(csv.DictReader(f))
    assert [r["clip_id"] for r in tasks_csv] == state.pending
    tasks = json.loads((tmp_path / "out" / "label_studio_tasks.json").read_text())
    assert [t["data"]["clip_id"] for t in tasks] == state.pending
    scores = [t["predictions"][0]["score"] for t in tasks]
    assert scores == sorted(scores, reverse=True) and scores[0] == 1.0
    assert tasks[0]["data"]["audio"].startswith("http://127.0.0.1:8765/api/audio/")
    config = ET.fromstring((tmp_path / "out" / "label_studio_config.xml").read_text())
    choices = [c.get("value") for c in config.iter("Choice")]
    assert choices == run.manifest.labels
    assert config.find("Choices").get("toName") == config.find("Audio").get("name")  # type: ignore[union-attr]


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_csv_import_is_all_or_nothing_with_line_numbers(
    labeling: tuple[Run, LoopState], tmp_path: Path
) -> None:
    run, state = labeling
    a, b = state.pending[:2]
    bad = _write_csv(
        tmp_path / "bad.csv",
        [["clip_id", "label"], [a, "anger"], [b, "elation"], [run.fold.test[0], "anger"]],
    )
    with pytest.raises(AfterError) as e:
        import_labels(run.run_dir, bad, annotator="ann")
    message = str(e.value)
    assert "nothing imported" in message and "bad.csv:3: unknown label 'elation'" in message
    assert f"bad.csv:4: clip {run.fold.test[0]!r} is not queried" in message
    assert LabelStore(run.run_dir).annotations() == []
    with pytest.raises(AfterError, match="--annotator"):
        import_labels(run.run_dir, bad)
    missing = _write_csv(tmp_path / "cols.csv", [["id", "emotion"], [a, "anger"]])
    with pytest.raises(AfterError, match="clip_id and label"):
        import_labels(run.run_dir, missing, annotator="ann")
    with pytest.raises(AfterError, match="not found"):
        import_labels(run.run_dir, tmp_path / "nope.csv", annotator="ann")
    good = _write_csv(
        tmp_path / "good.csv",
        [
            ["clip_id", "label", "annotator"],
            [a, "anger", "ann"],
            [b, "", "ann"],
            [a, "anger", "bob"],
        ],
    )
    assert import_labels(run.run_dir, good)["stored"] == 3
    rows = LabelStore(run.run_dir).annotations()
    assert {(r.clip_id, r.annotator, r.label, r.source) for r in rows} == {
        (a, "ann", "anger", "csv"),
        (b, "ann", None, "csv"),
        (a, "bob", "anger", "csv"),
    }


def _label_studio_export(ids: list[str], labels: list[str]) -> list[dict[str, Any]]:
    """What Label Studio's JSON export gives for tasks made by `after label export`."""
    tasks = []
    for k, clip in enumerate(ids):
        annotation = {
            "id": 100 + k,
            "completed_by": {"id": 7, "email": "ann@lab.example"} if k % 2 else 3,
            "was_cancelled": k == 5,
            "result": []
            if k == 5
            else [
                {
                    "from_name": "emotion",
                    "to_name": "audio",
                    "type": "choices",
                    "value": {"choices": [labels[k % len(labels)]]},
                }
            ],
        }
        tasks.append(
            {"id": k + 1, "data": {"audio": "/x", "clip_id": clip}, "annotations": [annotation]}
        )
    return tasks


def test_label_studio_export_then_resume_trains_on_those_labels(
    labeling: tuple[Run, LoopState], tmp_path: Path
) -> None:
    run, state = labeling
    labels = run.manifest.labels
    path = tmp_path / "project-1.json"
    path.write_text(json.dumps(_label_studio_export(state.pending, labels)))
    assert import_labels(run.run_dir, path) == {"stored": 6, "round": 0, "format": "label-studio"}
    who = {a.annotator for a in LabelStore(run.run_dir).annotations()}
    assert who == {"label-studio:3", "label-studio:ann@lab.example"}
    queried = list(state.pending)
    state = run_loop(run, LoopState.load(run.run_dir))
    assert state.phase == "label" and state.round == 1  # trained round 0, queried round 1
    assert state.labels == {c: labels[k % 4] for k, c in enumerate(queried) if k != 5}
    assert state.dropped == [queried[5]]  # cancelled in Label Studio: nobody could label it
    assert state.votes[queried[0]] == {labels[0]: 1}
    assert len(state.pending) == 10 - 5 and not set(state.pending) & set(queried)
    round1 = json.loads(queries_path(run.run_dir, 1).read_text())
    assert round1["ids"] == state.pending and len(round1["probs"]) == 5  # the model's guesses


def test_label_studio_json_min_export(labeling: tuple[Run, LoopState], tmp_path: Path) -> None:
    run, state = labeling
    path = tmp_path / "min.json"
    rows = [{"id": 1, "clip_id": state.pending[0], "emotion": "anger", "annotator": "ann@x"}]
    path.write_text(json.dumps(rows))
    assert import_labels(run.run_dir, path)["stored"] == 1
    path.write_text(json.dumps([{"id": 1, "emotion": "anger"}]))
    with pytest.raises(AfterError, match="no clip_id"):
        import_labels(run.run_dir, path)
    path.write_text("{broken")
    with pytest.raises(AfterError, match="not JSON"):
        import_labels(run.run_dir, path)


def test_label_commands(labeling: tuple[Run, LoopState], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from after.cli import app

    run, state = labeling
    cli = CliRunner()
    good = _write_csv(
        tmp_path / "in.csv",
        [["clip_id", "label", "annotator"]]
        + [[c, "anger", who] for c in state.pending[:3] for who in ("ann", "bob")]
        + [[state.pending[3], "sadness", "ann"], [state.pending[3], "anger", "bob"]],
    )
    result = cli.invoke(app, ["label", "import", str(run.run_dir), str(good)])
    assert result.exit_code == 0 and "stored 8 answer(s)" in result.output, result.output
    result = cli.invoke(app, ["label", "status", str(run.run_dir)])
    assert result.exit_code == 0, result.output
    assert "4 of 6 clips decided" in result.output
    # 4 clips rated twice: 3 agree, 1 does not -> pairs agree 0.750
    assert "0.750" in result.output
    result = cli.invoke(app, ["label", "export", str(run.run_dir), "--out", str(tmp_path / "x")])
    assert result.exit_code == 0 and "labels.csv (8 answers)" in result.output
    assert (tmp_path / "x" / "label_studio_config.xml").is_file()
