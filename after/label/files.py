"""Labels in and out of a run as files: CSV for spreadsheets and scripts, and Label Studio's
task and export formats for teams that already label there.

`export` writes, into one folder:
- `labels.csv`: every answer in the store (clip_id, annotator, label, round, source, created_at;
  an empty label is a skip);
- `tasks.csv`: the round's queries in the strategy's order, with their priority and, when the
  run keeps them, the model's guesses;
- `label_studio_tasks.json` and `label_studio_config.xml`: the same queries as Label Studio
  tasks (audio + a single-choice emotion question), each with a prediction whose score is the
  query's priority, so Label Studio can order tasks as the strategy did;
- `audio/KEY.wav`: each task's audio as 16 kHz WAV under an opaque key.

A task carries no clip id and no path, which annotators would see in Label Studio (corpus ids
and file names often spell the label): only its key, a random string that the run folder maps
back to the clip (`label_studio_keys.json`) when the answers are imported, and its audio's URL,
by default the exported copy under the key (`/data/local-files/?d=audio/KEY.wav`: serve the export
folder as Label Studio's LOCAL_FILES_DOCUMENT_ROOT), or `after label serve`'s `/api/audio/{handle}`.

Cells of the CSVs that start with `= + - @` (or a tab or carriage return) get a leading `'`, so
that a spreadsheet shows an annotator's name or a label as text instead of running it as a formula;
so do cells that start with `'` themselves, and importing such a CSV removes the one `'` again:
every clip id, name and label comes back as it was.

`import_labels` reads a CSV (clip_id, label, optional annotator; an empty label is a skip) or a
Label Studio JSON / JSON-MIN export of those tasks, checks every row first (annotator names as the
web app does, labels, clips still open, one answer per clip and annotator), and stores all of them
in one transaction, or none. Any problem is reported as one message listing them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
import string
import time
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from after.errors import AfterError, quoted
from after.io import atomic_write_json, atomic_write_text, parsing, read_text_file
from after.label.store import LabelStore, check_annotator
from after.loop.folder import RunFolder
from after.loop.runner import Run
from after.loop.state import LoopState

CHOICES = "emotion"  # the name of the Label Studio question
DEFAULT_AUDIO_URL = "/data/local-files/?d=audio/{key}.wav"
MAX_PROBLEMS = 20
AUDIO_URL_FIELDS = {"key", "handle"}
# What an audio URL may not hold: annotators see it, and ids and paths often spell the label.
REVEALING_FIELDS = {"clip_id", "path"}
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets run as a formula

Row = tuple[str, str, str, str | None]  # (where, clip, annotator, label or None: skip)


def _cell(value: object) -> object:
    """A CSV cell that a spreadsheet shows as text: a string starting like a formula gets `'`,
    and so does one starting with `'` (so that `_uncell` can tell the two apart)."""
    if isinstance(value, str) and value.startswith((*FORMULA_START, "'")):
        return "'" + value
    return value


def _check_audio_url(template: str) -> None:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError:  # an unmatched brace
        fields = {"{"}
    if fields & REVEALING_FIELDS:
        raise AfterError(
            f"--audio-url {quoted(template)}: {{{min(fields & REVEALING_FIELDS)}}} would show "
            "annotators the clip's id or path, which often spell its label; use {key} (the "
            "exported audio/KEY.wav) or {handle} (after label serve's /api/audio/{handle})"
        )
    if not fields <= AUDIO_URL_FIELDS:
        raise AfterError(
            f"--audio-url {quoted(template)}: use only {sorted(AUDIO_URL_FIELDS)} in braces "
            "(double a literal brace: {{ }})"
        )


def _uncell(value: str) -> str:
    """The inverse of `_cell` for cells read back: `_uncell(_cell(x)) == x` for every string."""
    guarded = value.startswith("'") and value[1:].startswith((*FORMULA_START, "'"))
    return value[1:] if guarded else value


def _waiting(run_dir: Path) -> bool:
    """Whether a round waits for labels (its queries file is then read, and must be whole)."""
    state = LoopState.load(run_dir)
    return state.phase == "label" and RunFolder(run_dir).queries(state.round).is_file()


def _round(run_dir: Path) -> tuple[Run, LoopState, dict[str, Any]]:
    run, state = Run.from_dir(run_dir), LoopState.load(run_dir)
    path = RunFolder(run_dir).queries(state.round)
    if state.phase != "label" or not path.is_file():
        raise AfterError(
            f"{run_dir}: round {state.round} is not waiting for labels (phase {state.phase}); "
            f"continue the run with after run --resume {run_dir}"
        )
    return run, state, RunFolder(run_dir).read_queries(state.round)


def export(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    audio_url: str = DEFAULT_AUDIO_URL,
) -> dict[str, Any]:
    """Write the files described in the module docstring into `out`; returns counts.
    `audio_url` may hold `{key}` (the task's key) and `{handle}` (round.rank, as `after label
    serve` names the clip)."""
    _check_audio_url(audio_url)
    folder, out_dir = Path(run_dir), Path(out)
    store = LabelStore(folder)
    rows = store.annotations()
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["clip_id", "annotator", "label", "round", "source", "created_at"])
    for a in rows:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(a.created_at))
        cells = [a.clip_id, a.annotator, a.label or "", a.round, a.source, stamp]
        writer.writerow([_cell(c) for c in cells])
    atomic_write_text(out_dir / "labels.csv", buf.getvalue())
    result: dict[str, Any] = {"answers": len(rows), "tasks": 0, "folder": str(out_dir)}
    if not _waiting(folder):
        return result  # no round open: only the answers
    run, state, queries = _round(folder)
    ids, labels, probs = queries["ids"], queries["labels"], queries.get("probs")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(
        ["rank", "clip_id", "key", "path", "duration_s", "priority", "guess", "guess_score"]
    )
    keys = task_keys(folder, ids)
    tasks = []
    for k, clip in enumerate(ids):
        u = run.manifest[clip]
        priority = round(1.0 - k / len(ids), 6)
        guess, score = "", ""
        if probs:
            best = max(range(len(labels)), key=probs[k].__getitem__)
            guess, score = labels[best], probs[k][best]
        cells = [k + 1, clip, keys[clip], u.path, u.duration_s or "", priority, guess, score]
        writer.writerow([_cell(c) for c in cells])
        _write_audio(u.path, out_dir / "audio" / f"{keys[clip]}.wav")
        url = audio_url.format(
            key=keys[clip],
            handle=f"{state.round}.{k + 1}",  # what after label serve's /api/audio/ takes
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
                "data": {"audio": url, "key": keys[clip]},
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


def task_keys(run_dir: Path, ids: list[str]) -> dict[str, str]:
    """An opaque key for each clip of `ids` (a clip exported before keeps its key), kept in the
    run folder's `label_studio_keys.json` (key -> clip id) before any task names it."""
    path = RunFolder(run_dir).task_keys
    known = _read_keys(path)
    by_clip = {clip: key for key, clip in known.items()}
    new = {clip: secrets.token_hex(8) for clip in ids if clip not in by_clip}
    if new:
        atomic_write_json(path, {**known, **{key: clip for clip, key in new.items()}})
    return {clip: by_clip.get(clip) or new[clip] for clip in ids}


def _read_keys(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    from after.io import read_json

    keys = read_json(path, "export the tasks again (after label export)")
    if not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values()):
        raise AfterError(f"{path}: not a map of task keys to clip ids; export the tasks again")
    return keys


def _write_audio(source: str, target: Path) -> None:
    """The clip as 16 kHz 16-bit WAV (as `after label serve` plays it), once per key: a copy of
    the file would carry its own tags and name."""
    if target.is_file():
        return
    import numpy as np
    import soundfile as sf

    from after.data.audio import MAX_DURATION_S, SAMPLE_RATE, load_audio
    from after.errors import AudioError

    try:
        wave = load_audio(source, max_duration_s=MAX_DURATION_S)
    except AudioError as e:
        raise AfterError(f"{source}: {e.reason} ({e.detail}); see after validate") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(target)  # a half-written file never has the key's name


def import_labels(
    run_dir: str | os.PathLike[str], path: str | os.PathLike[str], *, annotator: str | None = None
) -> dict[str, Any]:
    """Store the answers in `path` (CSV or Label Studio JSON) for the round waiting for labels.
    Every row is checked first; any problem stores nothing and raises one error listing them.
    A row repeated word for word is stored once; the same clip and annotator with two labels is
    a problem."""
    folder, source = Path(run_dir), Path(path)
    run, state, queries = _round(folder)
    if not source.exists():
        raise AfterError(f"{source}: not found")
    fix = "export the answers again"
    text = read_text_file(source, fix)
    if source.suffix.lower() == ".json":
        keys = _read_keys(RunFolder(folder).task_keys)
        kind, (rows, problems) = "label-studio", _label_studio_rows(source, text, keys)
    else:
        if annotator is not None:
            annotator = _checked_name(annotator, "--annotator", [])
        kind, (rows, problems) = "csv", _csv_rows(source, text, annotator)
    store = LabelStore(folder)
    wanted, labels = set(queries["ids"]), set(run.manifest.labels)
    taken = store.taken(sorted({clip for _, clip, _, _ in rows}))
    answers: dict[tuple[str, str], tuple[str, str | None]] = {}
    for where, clip, who, label in rows:
        if clip not in wanted:
            problems.append(f"{where}: clip {quoted(clip)} is not queried in round {state.round}")
        elif label is not None and label not in labels:
            problems.append(
                f"{where}: unknown label {quoted(label)}; this run's labels: {sorted(labels)}"
            )
        elif clip in taken:
            problems.append(
                f"{where}: clip {quoted(clip)} was taken by the loop already; its label can no "
                "longer change"
            )
        elif (clip, who) in answers and answers[clip, who][1] != label:
            problems.append(
                f"{where}: clip {quoted(clip)} by {quoted(who)} again with another label (first "
                f"at {answers[clip, who][0]}); keep one answer"
            )
        else:
            answers.setdefault((clip, who), (where, label))
    if problems:
        more = (
            f"\n  … and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
        )
        raise AfterError(
            f"{source}: nothing imported, {len(problems)} problem(s):\n  "
            + "\n  ".join(problems[:MAX_PROBLEMS])
            + more
        )
    stored = store.put_many(
        [(clip, who, label) for (clip, who), (_, label) in answers.items()], state.round, kind
    )
    return {"stored": stored, "round": state.round, "format": kind}


def _checked_name(value: object, where: str, problems: list[str]) -> str:
    """The annotator name, checked as the web app checks it; a bad one is added to `problems`."""
    try:
        return check_annotator(value)
    except AfterError as e:
        problems.append(f"{where}: {e}")
        return ""


def _csv_rows(source: Path, text: str, annotator: str | None) -> tuple[list[Row], list[str]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    with parsing(str(source), "export the answers again"):
        columns = set(reader.fieldnames or [])
        if not {"clip_id", "label"} <= columns:
            raise AfterError(
                f"{source}: needs the columns clip_id and label (and optionally annotator); "
                f"found {quoted(sorted(columns))}"
            )
        if "annotator" not in columns and not annotator:
            raise AfterError(f"{source}: no annotator column; give --annotator NAME")
        rows: list[Row] = []
        problems: list[str] = []
        for row in reader:
            where = f"{source.name}:{reader.line_num}"
            given = _uncell(row.get("annotator") or "").strip() or annotator
            if not given:
                problems.append(f"{where}: empty annotator; fill it in or give --annotator")
                continue
            who = _checked_name(given, where, problems)
            label = _uncell((row["label"] or "").strip()) or None
            rows.append((where, _uncell((row["clip_id"] or "").strip()), who, label))
    return rows, problems


def _label_studio_rows(
    source: Path, text: str, keys: dict[str, str]
) -> tuple[list[Row], list[str]]:
    """Rows of a Label Studio JSON export (`annotations` per task; a cancelled annotation is a
    skip) or JSON-MIN export (one flat object per annotation, the choice under `CHOICES`)."""
    with parsing(f"{source}: not JSON", "export the project as JSON from Label Studio"):
        tasks = json.loads(text)
    if not isinstance(tasks, list):
        raise AfterError(f"{source}: expected a list of tasks (Label Studio JSON export)")
    rows: list[Row] = []
    problems: list[str] = []
    for k, task in enumerate(tasks):
        where = f"{source.name} task {k + 1}"
        data = task.get("data", task) if isinstance(task, dict) else None
        key = data.get("key") if isinstance(data, dict) else None
        # Tasks of earlier versions carried the clip id itself.
        clip = keys.get(key) if isinstance(key, str) else None
        if clip is None and isinstance(data, dict) and isinstance(data.get("clip_id"), str):
            clip = data["clip_id"]
        if not isinstance(task, dict) or not isinstance(clip, str):
            what = (
                f"task key {quoted(key)} was not exported from this run"
                if isinstance(key, str)
                else "no task key (nor clip_id)"
            )
            problems.append(f"{where}: {what}; import tasks made by after label export of this run")
            continue
        if "annotations" in task:  # the full JSON export
            annotations = task["annotations"] or []
            if not isinstance(annotations, list):
                problems.append(f"{where}: 'annotations' is not a list")
                continue
            for a in annotations:
                if not isinstance(a, dict):
                    problems.append(f"{where}: an annotation is not an object")
                    continue
                who = a.get("completed_by")
                if isinstance(who, dict):
                    who = who.get("email") or who.get("id")
                name = _checked_name(f"label-studio:{who}", where, problems)
                try:
                    label = None if a.get("was_cancelled") else _choice(a.get("result"))
                except AfterError as e:
                    problems.append(f"{where}: {e}")
                    continue
                rows.append((where, clip, name, label))
        elif CHOICES in task:  # JSON-MIN: one flat object per annotation
            value = task[CHOICES]
            choices = value if isinstance(value, list) else [value]
            if len(choices) != 1 or not isinstance(choices[0], str):
                problems.append(f"{where}: {CHOICES} {quoted(value)} is not one label")
                continue
            name = _checked_name(f"label-studio:{task.get('annotator')}", where, problems)
            rows.append((where, clip, name, choices[0]))
    return rows, problems


def _choice(result: object) -> str:
    """The one label chosen in a Label Studio annotation's `result`; `AfterError` if there is
    not exactly one."""
    if not isinstance(result, list):
        raise AfterError("the annotation has no result list; choose a label or skip the task")
    chosen = []
    for r in result:
        if not isinstance(r, dict) or r.get("type") != "choices":
            continue
        value = r.get("value")
        choices = value.get("choices") if isinstance(value, dict) else None
        if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
            raise AfterError(f"malformed choices {quoted(choices)}; export the project again")
        chosen.extend(choices)
    if len(chosen) != 1:
        raise AfterError(
            f"{len(chosen)} choices in one annotation; choose one label, or skip the task to "
            "say that you cannot tell"
        )
    return chosen[0]
