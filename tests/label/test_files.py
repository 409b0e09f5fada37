"""Labels as files: CSV and Label Studio out and in, then the loop goes on with them."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from after.errors import AfterError
from after.label.files import export, import_labels
from after.label.store import ClipTaken, LabelStore
from after.loop.folder import RunFolder
from after.loop.runner import Run, run_loop
from after.loop.state import LoopState


def test_export_writes_csv_and_label_studio_files(
    labeling: tuple[Run, LoopState], tmp_path: Path
) -> None:
    run, state = labeling
    LabelStore(run.run_dir).put(state.pending[0], "ann", "anger", 0)
    got = export(
        run.run_dir, tmp_path / "out", audio_url="http://127.0.0.1:8765/api/audio/{handle}"
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
    assert [t["data"]["key"] for t in tasks] == [r["key"] for r in tasks_csv]
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
    round1 = json.loads(RunFolder(run.run_dir).queries(1).read_text())
    assert round1["ids"] == state.pending and len(round1["probs"]) == 5  # the model's guesses


def test_label_studio_json_min_export(labeling: tuple[Run, LoopState], tmp_path: Path) -> None:
    run, state = labeling
    path = tmp_path / "min.json"
    rows = [{"id": 1, "clip_id": state.pending[0], "emotion": "anger", "annotator": "ann@x"}]
    path.write_text(json.dumps(rows))
    assert import_labels(run.run_dir, path)["stored"] == 1
    path.write_text(json.dumps([{"id": 1, "emotion": "anger"}]))
    with pytest.raises(AfterError, match="no task key"):
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


def test_csv_cells_that_look_like_formulas_are_neutralised(
    labeling: tuple[Run, LoopState], tmp_path: Path, tally: dict[str, int]
) -> None:
    run, state = labeling
    store = LabelStore(run.run_dir)
    names = [
        '=HYPERLINK("http://evil.example","x")',
        "+1+1",
        "-2+3",
        "@SUM(A1:A9)",
        "=1|' /C x'!A0",
    ]
    for clip, name in zip(state.pending, names, strict=False):
        store.put(clip, name, "anger", 0)
    export(run.run_dir, tmp_path / "out")
    with open(tmp_path / "out" / "labels.csv", newline="") as f:
        cells = [cell for row in csv.reader(f) for cell in row]
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@", "\t", "\r"))]
    assert {"'" + n for n in names} <= set(cells)
    before = {(a.clip_id, a.annotator) for a in store.annotations()}
    import_labels(run.run_dir, tmp_path / "out" / "labels.csv")  # read back: names as they were
    assert {(a.clip_id, a.annotator) for a in store.annotations()} == before
    tally["hostile_inputs"] = tally.get("hostile_inputs", 0) + len(names)
    tally["clear_messages"] = tally.get("clear_messages", 0) + len(names)


def _ls_task(clip: str, **annotation: Any) -> dict[str, Any]:
    base = {"completed_by": 3, "was_cancelled": False, "result": []}
    return {"data": {"clip_id": clip}, "annotations": [{**base, **annotation}]}


def _choices(value: Any) -> list[dict[str, Any]]:
    return [{"type": "choices", "from_name": "emotion", "value": {"choices": value}}]


CSV_HEAD = "clip_id,label,annotator\n"

# name -> (file name, its content given the first queried clip, what the message must say)
BAD_IMPORTS: dict[str, tuple[str, Any, str]] = {
    "annotations a string": (
        "a.json",
        lambda c: [{"data": {"clip_id": c}, "annotations": "x"}],
        "'annotations' is not a list",
    ),
    "result null": ("a.json", lambda c: [_ls_task(c, result=None)], "no result list"),
    "nested choices": (
        "a.json",
        lambda c: [_ls_task(c, result=_choices([["anger"]]))],
        "malformed choices",
    ),
    "choices a dict": (
        "a.json",
        lambda c: [_ls_task(c, result=_choices({"anger": 1}))],
        "malformed choices",
    ),
    "choices a string": (
        "a.json",
        lambda c: [_ls_task(c, result=_choices("anger"))],
        "malformed choices",
    ),
    "no choice": ("a.json", lambda c: [_ls_task(c)], "0 choices"),
    "two choices": (
        "a.json",
        lambda c: [_ls_task(c, result=_choices(["anger", "sadness"]))],
        "2 choices",
    ),
    "json-min object": (
        "a.json",
        lambda c: [{"clip_id": c, "emotion": {"x": 1}}],
        "not one label",
    ),
    "huge email": (
        "a.json",
        lambda c: [_ls_task(c, completed_by={"email": "x" * 200_000}, result=_choices(["anger"]))],
        "annotator name",
    ),
    "utf-16": ("a.json", lambda c: json.dumps([]).encode("utf-16"), "UTF-16"),
    "deep": ("a.json", lambda c: "[" * 100_000, "nested too deeply"),
    "5000 digits": ("a.json", lambda c: "[" + "9" * 5000 + "]", "4300 digits"),
    "latin-1 csv": (
        "a.csv",
        lambda c: f"{CSV_HEAD}{c},anger,Jos\xe9\n".encode("latin-1"),
        "not UTF-8",
    ),
    "cell over 128 KiB": (
        "a.csv",
        lambda c: f"{CSV_HEAD}{c},anger,{'x' * 200_000}\n",
        "field larger than",
    ),
    "100 KB name": ("a.csv", lambda c: f"{CSV_HEAD}{c},anger,{'x' * 100_000}\n", "annotator name"),
    "NUL in a name": ("a.csv", lambda c: f"{CSV_HEAD}{c},anger,a\x00b\n", "annotator name"),
    "newline in a name": ("a.csv", lambda c: f'{CSV_HEAD}{c},anger,"a\nb"\n', "annotator name"),
    "two labels for one answer": (
        "a.csv",
        lambda c: f"{CSV_HEAD}{c},anger,ann\n{c},sadness,ann\n",
        "again with another label",
    ),
}


@pytest.mark.parametrize("case", list(BAD_IMPORTS))
def test_bad_imports_store_nothing_and_say_why(
    case: str, labeling: tuple[Run, LoopState], tmp_path: Path, tally: dict[str, int]
) -> None:
    run, state = labeling
    name, make, expected = BAD_IMPORTS[case]
    content = make(state.pending[0])
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))
    with pytest.raises(AfterError) as e:
        import_labels(run.run_dir, path)
    assert expected in str(e.value) and name in str(e.value) and len(str(e.value)) < 2000
    assert LabelStore(run.run_dir).history() == []
    tally["hostile_inputs"] = tally.get("hostile_inputs", 0) + 1
    tally["clear_messages"] = tally.get("clear_messages", 0) + 1


def test_an_import_stores_a_repeated_row_once(
    labeling: tuple[Run, LoopState], tmp_path: Path
) -> None:
    run, state = labeling
    a = state.pending[0]
    row = [a, "anger", "ann"]
    path = _write_csv(tmp_path / "twice.csv", [["clip_id", "label", "annotator"], row, row])
    assert import_labels(run.run_dir, path)["stored"] == 1
    assert len(LabelStore(run.run_dir).history()) == 1


def test_answers_to_clips_the_loop_took_are_refused(
    labeling: tuple[Run, LoopState], tmp_path: Path, tally: dict[str, int]
) -> None:
    """The loop takes a clip's label once it is decided; a later change would be stored but
    never reach state.json, so it is refused, and nothing is half-imported."""
    run, state = labeling
    a, b = state.pending[:2]
    import_labels(
        run.run_dir,
        _write_csv(tmp_path / "1.csv", [["clip_id", "label"], [a, "anger"]]),
        annotator="ann",
    )
    state = run_loop(run, LoopState.load(run.run_dir))  # takes a, waits for the rest
    assert state.labels == {a: "anger"} and state.phase == "label"
    late = _write_csv(tmp_path / "2.csv", [["clip_id", "label"], [b, "anger"], [a, "sadness"]])
    with pytest.raises(AfterError, match="taken by the loop already"):
        import_labels(run.run_dir, late, annotator="ann")
    store = LabelStore(run.run_dir)
    assert [(x.clip_id, x.label) for x in store.annotations()] == [(a, "anger")]
    with pytest.raises(ClipTaken):
        store.undo("ann", 0)  # her latest answer is the one the loop took
    assert LoopState.load(run.run_dir).labels == {a: "anger"}
    tally["late_changes_refused"] = tally.get("late_changes_refused", 0) + 2


def test_audio_urls_for_label_studio(labeling: tuple[Run, LoopState], tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from after.label.app import create_app

    run, _ = labeling
    export(run.run_dir, tmp_path / "out", audio_url="http://127.0.0.1:8765/api/audio/{handle}")
    tasks = json.loads((tmp_path / "out" / "label_studio_tasks.json").read_text())
    urls = [t["data"]["audio"] for t in tasks]
    assert urls == [f"http://127.0.0.1:8765/api/audio/0.{k + 1}" for k in range(6)]
    client = TestClient(create_app(run.run_dir), base_url="http://127.0.0.1")
    assert client.get(urls[0].removeprefix("http://127.0.0.1:8765")).status_code == 200
    for bad in ("http://x/{id}", "{0}", "{key.__class__}", "http://x/{"):
        with pytest.raises(AfterError, match="--audio-url"):
            export(run.run_dir, tmp_path / "bad", audio_url=bad)


def test_label_studio_tasks_carry_no_clip_id_or_path(
    labeling: tuple[Run, LoopState], tmp_path: Path
) -> None:
    """Annotators see a task's data in Label Studio, and corpus ids and file names often spell
    the label: a task holds an opaque key and its audio's URL, and the key maps back on
    import."""
    run, state = labeling
    export(run.run_dir, tmp_path / "out")
    text = (tmp_path / "out" / "label_studio_tasks.json").read_text()
    tasks = json.loads(text)
    for clip in state.pending:
        path = run.manifest[clip].path
        assert clip not in text and path not in text and Path(path).stem not in text
    assert all(set(t["data"]) == {"audio", "key"} for t in tasks)
    keys = [t["data"]["key"] for t in tasks]
    assert [t["data"]["audio"] for t in tasks] == [
        f"/data/local-files/?d=audio/{k}.wav" for k in keys
    ]
    for key in keys:  # the audio is there, converted, under the key alone
        assert sf.info(str(tmp_path / "out" / "audio" / f"{key}.wav")).samplerate == 16000
    export(run.run_dir, tmp_path / "again")  # a clip keeps its key
    again = json.loads((tmp_path / "again" / "label_studio_tasks.json").read_text())
    assert [t["data"]["key"] for t in again] == keys
    labels = run.manifest.labels
    answered = _label_studio_export(state.pending, labels)
    for task, key in zip(answered, keys, strict=True):
        task["data"] = {"audio": "/x", "key": key}
    path = tmp_path / "project.json"
    path.write_text(json.dumps(answered))
    assert import_labels(run.run_dir, path)["stored"] == 6
    stored = {a.clip_id: a.label for a in LabelStore(run.run_dir).annotations()}
    assert stored[state.pending[0]] == labels[0]
    answered[0]["data"]["key"] = "0123456789abcdef"
    path.write_text(json.dumps(answered))
    with pytest.raises(AfterError, match="task key '0123456789abcdef' was not exported"):
        import_labels(run.run_dir, path)
    with pytest.raises(AfterError, match=r"\{path\} would show annotators"):
        export(run.run_dir, tmp_path / "bad", audio_url="/data/local-files/?d={path}")
