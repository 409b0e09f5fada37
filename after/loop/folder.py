"""The run folder of `after run`: every file and folder in it, named once here.

    config.json         everything needed to resume (`after.loop.runner.Run.to_json`)
    state.json          where the run stands (`after.loop.state.LoopState`)
    rounds.csv          one row per round (and the hybrid recipe's final fit)
    model/              the latest round's classifier
    model_finetuned/    the hybrid recipe's final fine-tuned model
    queries/round_NNN.json  each round's queries in the strategy's order, with the model's
                        guesses when people label
    labels.sqlite       people's answers (`after.label.store`)
    label_studio_keys.json  the opaque key of each clip exported as a Label Studio task
    scores/             pool scores of the current round, chunk by chunk (resumable)
    surprisal.npz       ALPS embeddings of the pool, computed once
    run.lock            held by the one process working on the run
    serve.lock          held by the one labeling server of the run, with its address

The labeling app, exports, reports and comparisons find a run's files through `RunFolder`, never
by spelling a name of their own.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from after.errors import AfterError
from after.io import read_json


class RunFolder:
    """The paths of one run folder (nothing is read or created by making one)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.state = self.path / "state.json"
        self.rounds = self.path / "rounds.csv"
        self.model = self.path / "model"
        self.final_model = self.path / "model_finetuned"
        self.queries_dir = self.path / "queries"
        self.store = self.path / "labels.sqlite"
        self.task_keys = self.path / "label_studio_keys.json"
        self.scores = self.path / "scores"
        self.surprisal = self.path / "surprisal.npz"
        self.lock = self.path / "run.lock"
        self.serve_lock = self.path / "serve.lock"

    def is_run(self) -> bool:
        """Whether the folder holds a started run (its config and its state)."""
        return self.config.is_file() and self.state.is_file()

    def queries(self, round: int) -> Path:
        return self.queries_dir / f"round_{round:03d}.json"

    def read_queries(self, round: int) -> dict[str, Any]:
        """A round's queries file (ids in the strategy's order, labels, the model's guesses or
        null, the method); a damaged one, or one of another shape, is an `AfterError` naming
        it."""
        path = self.queries(round)
        fix = "restore it from a backup"
        q = read_json(path, fix)
        if not _is_queries(q):
            raise AfterError(f"{path}: not a queries file of after run (wrong shape); {fix}")
        return q


def _is_queries(q: Any) -> bool:
    if not isinstance(q, dict):
        return False
    ids, labels, probs = q.get("ids"), q.get("labels"), q.get("probs")
    return (
        isinstance(ids, list)
        and all(isinstance(i, str) for i in ids)
        and isinstance(labels, list)
        and all(isinstance(x, str) for x in labels)
        and isinstance(q.get("method", ""), str)
        and (
            probs is None
            or (
                isinstance(probs, list)
                and len(probs) == len(ids)
                and all(
                    isinstance(p, list)
                    and len(p) == len(labels)
                    and all(isinstance(v, int | float) for v in p)
                    for p in probs
                )
            )
        )
    )


def replace_folder(folder: Path, write: Any) -> None:
    """Replace `folder` atomically: `write(tmp)` fills a new folder, which then takes its place
    by renames, so that a kill leaves the old folder or the new one, never half of one."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
