"""Labels in and out of a run as files: CSV for spreadsheets and scripts, and Label Studio's
task and export formats for teams that already label there.

`export` writes, into one folder:
- `labels.csv`: every answer in the store (clip_id, annotator, label, round, source, created_at;
  an empty label is a skip);
- `tasks.csv`: the round's queries in the strategy's order, with their priority and, when the
  run keeps them, the model's guesses;
- `label_studio_tasks.json` and `label_studio_config.xml`: the same queries as Label Studio
  tasks (audio + a single-choice emotion question), each with a prediction whose score is the
  query's priority, so Label Studio can order tasks as the strategy did.

`import_labels` reads a CSV (clip_id, label, optional annotator; an empty label is a skip) or a
Label Studio JSON / JSON-MIN export of those tasks, checks every row first, and stores all of
them in one transaction, or none.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

from after.errors import AfterError
from after.io import atomic_write_json, atomic_write_text
from after.label.store import LabelStore
from after.loop.runner import Run, queries_path
from after.loop.state import LoopState

CHOICES = "emotion"  # the name of the Label Studio question
DEFAULT_AUDIO_URL = "/data/local-files/?d={path}"
MAX_PROBLEMS = 20


def _round(run_dir: Path) -> tuple[Run, LoopState, dict[str, Any]]:
    run, state = Run.from_dir(run_dir), LoopState.load(run_dir)
    path = queries_path(run_dir, state.round)
    if state.phase != "label" or not path.is_file():
        raise AfterError(
            f"{run_dir}: round {state.round} is not waiting for labels (phase {state.phase}); "
            f"continue the run with after run --resume {run_dir}"
        )
    return run, state, json.loads(path.read_text())


def export(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    audio_url: str = DEFAULT_AUDIO_URL,
) -> dict[str, Any]:
    """Write the four files described in the module docstring into `out`; returns counts."""
    folder, out_dir = Path(run_dir), Path(out)
    store = LabelStore(folder)
    rows = store.annotations()
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["clip_id", "annotator", "label", "round", "source", "created_at"])
    for a in rows:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(a.created_at))
        writer.writerow([a.clip_id, a.annotator, a.label or "", a.round, a.source, stamp])
    atomic_write_text(out_dir / "labels.csv", buf.getvalue())
    result: dict[str, Any] = {"answers": len(rows), "tasks": 0, "folder": str(out_dir)}
    try:
        run, state, queries = _round(folder)
    except AfterError:
        return result  # no round open: only the answers
    ids, labels, probs = queries["ids"], queries["labels"], queries.get("probs")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["rank", "clip_id", "path", "duration_s", "priority", "guess", "guess_score"])
    tasks = []
    for k, clip in enumerate(ids):
        u = run.manifest[clip]
        priority = round(1.0 - k / len(ids), 6)
        guess, score = "", ""
        if probs:
            best = max(range(len(labels)), key=probs[k].__getitem__)
            guess, score = labels[best], probs[k][best]
        writer.writerow([k + 1, clip, u.path, u.duration_s or "", priority, guess, score])
        url = audio_url.format(
            clip_id=quote(clip, safe=""), path=quote(str(Path(u.path).resolve()).lstrip("/"))
        )
        result_items = []
        if guess:
            result_items.append(
                {
                    "from_name": CHOICES,
                    "to_name": "audio",
                    "type": "choices",
                    "value": {"choices": [guess]},
                }
            )
        tasks.append(
            {
                "data": {"audio": url, "clip_id": clip, "round": state.round, "rank": k + 1},
                "predictions": [
                    {
                        "model_version": f"after round {state.round}: {queries['method']}",
                        "score": priority,
                        "result": result_items,
                    }
                ],
            }
        )
    atomic_write_text(out_dir / "tasks.csv", buf.getvalue())
    atomic_write_json(out_dir / "label_studio_tasks.json", tasks)
    choices = "\n".join(
        f"    <Choice value={quoteattr(label)}" + (f' hotkey="{k + 1}"' if k < 9 else "") + "/>"
        for k, label in enumerate(run.manifest.labels)
    )
    config = (
        "<View>\n"
        '  <Audio name="audio" value="$audio"/>\n'
        f'  <Choices name="{CHOICES}" toName="audio" choice="single-radio" showInline="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )
    atomic_write_text(out_dir / "label_studio_config.xml", config)
    result["tasks"] = len(tasks)
    result["round"] = state.round
    return result


def import_labels(
    run_dir: str | os.PathLike[str], path: str | os.PathLike[str], *, annotator: str | None = None
) -> dict[str, Any]:
    """Store the answers in `path` (CSV or Label Studio JSON) for the round waiting for labels.
    Every row is checked first; any problem stores nothing and raises one error listing them."""
    folder, source = Path(run_dir), Path(path)
    run, state, queries = _round(folder)
    if not source.is_file():
        raise AfterError(f"{source}: not found")
    text = source.read_text(encoding="utf-8-sig")
    if source.suffix.lower() == ".json":
        kind, rows = "label-studio", _label_studio_rows(source, text)
    else:
        kind, rows = "csv", _csv_rows(source, text, annotator)
    wanted, labels = set(queries["ids"]), set(run.manifest.labels)
    problems = []
    for where, clip, _, label in rows:
        if clip not in wanted:
            problems.append(f"{where}: clip {clip!r} is not queried in round {state.round}")
        elif label is not None and label not in labels:
            problems.append(
                f"{where}: unknown label {label!r}; this run's labels: {sorted(labels)}"
            )
    if problems:
        more = (
            f"\n  … and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
        )
        raise AfterError(
            f"{source}: nothing imported, {len(problems)} problem(s):\n  "
            + "\n  ".join(problems[:MAX_PROBLEMS])
            + more
        )
    stored = LabelStore(folder).put_many(
        [(clip, who, label) for _, clip, who, label in rows], state.round, kind
    )
    return {"stored": stored, "round": state.round, "format": kind}


def _csv_rows(
    source: Path, text: str, annotator: str | None
) -> list[tuple[str, str, str, str | None]]:
    reader = csv.DictReader(io.StringIO(text))
    columns = set(reader.fieldnames or [])
    if not {"clip_id", "label"} <= columns:
        raise AfterError(
            f"{source}: needs the columns clip_id and label (and optionally annotator); "
            f"found {sorted(columns)}"
        )
    if "annotator" not in columns and not annotator:
        raise AfterError(f"{source}: no annotator column; give --annotator NAME")
    rows = []
    for line, row in enumerate(reader, start=2):
        who = (row.get("annotator") or annotator or "").strip()
        if not who:
            raise AfterError(f"{source}:{line}: empty annotator; fill it in or give --annotator")
        label = (row["label"] or "").strip() or None
        rows.append((f"{source.name}:{line}", (row["clip_id"] or "").strip(), who, label))
    return rows


def _label_studio_rows(source: Path, text: str) -> list[tuple[str, str, str, str | None]]:
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as e:
        raise AfterError(f"{source}: not JSON ({e}); export the project as JSON") from None
    if not isinstance(tasks, list):
        raise AfterError(f"{source}: expected a list of tasks (Label Studio JSON export)")
    rows: list[tuple[str, str, str, str | None]] = []
    for k, task in enumerate(tasks):
        where = f"{source.name} task {k + 1}"
        if not isinstance(task, dict):
            raise AfterError(f"{where}: not an object")
        data = task.get("data", task)
        clip = data.get("clip_id") if isinstance(data, dict) else None
        if not isinstance(clip, str):
            raise AfterError(
                f"{where}: no clip_id; import tasks made by after label export into Label Studio"
            )
        if "annotations" in task:  # the full JSON export
            for a in task["annotations"] or []:
                who = a.get("completed_by")
                if isinstance(who, dict):
                    who = who.get("email") or who.get("id")
                name = f"label-studio:{who}"
                if a.get("was_cancelled"):
                    rows.append((where, clip, name, None))
                    continue
                chosen = [
                    r["value"]["choices"][0]
                    for r in a.get("result", [])
                    if r.get("type") == "choices" and r.get("value", {}).get("choices")
                ]
                rows.append((where, clip, name, chosen[0] if chosen else None))
        elif CHOICES in task:  # JSON-MIN: one flat object per annotation
            value = task[CHOICES]
            label = value[0] if isinstance(value, list) and value else value
            name = f"label-studio:{task.get('annotator', 'unknown')}"
            rows.append((where, clip, name, label if isinstance(label, str) else None))
    return rows
