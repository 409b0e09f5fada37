"""The durable state of an active-learning run: what is labeled, since when, and what comes next.

`state.json` is rewritten atomically (temp file, fsync, rename) after every step, so a run killed
at any moment resumes from the last finished step. Randomness is not carried as generator state:
every random choice draws from a generator seeded by (run seed, round, purpose), so a resumed run
draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from after.errors import AfterError, quoted
from after.io import atomic_write_json, read_json
from after.loop.folder import RunFolder

SCHEMA_VERSION = 1
Phase = Literal["select", "label", "train", "final", "done"]


@dataclass
class LoopState:
    """Where a run stands. Phases cycle select -> label -> train -> select ... -> done.

    - select: choose the queries of `round` (round 0: the cold start);
    - label: `pending` ids wait for the oracle (their order is the strategy's);
    - train: fine-tune on everything labeled, evaluate, decide whether to stop;
    - final: with the hybrid recipe (`ALConfig.finetune`), fine-tune that backbone once on the
      final labeled set (its record goes to `final`, not `rounds`).
    """

    config_hash: str
    seed: int
    round: int = 0
    phase: Phase = "select"
    # id -> round it was labeled in (-1: carried from another run's labels, before round 0)
    labeled: dict[str, int] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # id -> the oracle's label
    votes: dict[str, dict[str, int]] = field(default_factory=dict)  # id -> label counts
    dropped: list[str] = field(default_factory=list)  # nobody could label: out of the pool
    pending: list[str] = field(default_factory=list)  # queried, not yet labeled
    memo: dict[str, Any] = field(default_factory=dict)  # the strategy's own, across rounds
    cold_start: dict[str, Any] = field(default_factory=dict)  # how the seed set was chosen
    rounds: list[dict[str, Any]] = field(default_factory=list)  # metrics and timings per round
    stop_predictions: list[int] = field(default_factory=list)  # last round's, on the stop set
    stopped_because: str = ""
    final: dict[str, Any] = field(default_factory=dict)  # the hybrid recipe's final fit
    # The audit set: clips drawn from the pool at the start, labeled like queries (in round 0's
    # queue) and kept apart: never trained on, selected or used for the cold start. Their labels
    # live here, not in `labels`, which is what the learner sees.
    audit: list[str] = field(default_factory=list)
    audit_labels: dict[str, str] = field(default_factory=dict)
    audit_votes: dict[str, dict[str, int]] = field(default_factory=dict)
    # Where labels carried from another run came from (`after run --labels-from`), and how many.
    carried: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def save(self, run_dir: str | os.PathLike[str]) -> Path:
        return atomic_write_json(RunFolder(run_dir).state, asdict(self))

    @classmethod
    def load(cls, run_dir: str | os.PathLike[str]) -> LoopState:
        path = RunFolder(run_dir).state
        if not path.exists():
            raise AfterError(f"{path}: not found; is {run_dir} a run folder of after run?")
        fix = "restore it from a backup, or start the run again"
        data = read_json(path, fix)
        version = data.get("schema_version") if isinstance(data, dict) else None
        if isinstance(data, dict) and version != SCHEMA_VERSION:
            raise AfterError(
                f"{path}: state schema {version}, this version of after reads {SCHEMA_VERSION}"
            )
        problem = _shape_problem(data)
        if problem is not None:
            raise AfterError(f"{path}: not the state of a run ({problem}); {fix}")
        return cls(**data)

    def labeled_ids(self) -> list[str]:
        """Labeled ids in the order they were labeled (round, then query order)."""
        return list(self.labeled)

    def audit_open(self) -> list[str]:
        """Audit clips that nobody has labeled (nor skipped) yet."""
        done = set(self.audit_labels) | set(self.dropped)
        return [i for i in self.audit if i not in done]


def _json_type(hint: Any) -> type:
    """The JSON type `LoopState.save` writes for a field annotated `hint`."""
    if get_origin(hint) is Literal:
        return type(get_args(hint)[0])
    return get_origin(hint) or hint


# The JSON type of each field of state.json, derived from the dataclass so that a new field is
# checked (and not refused as unknown) without a second list to keep in step.
_JSON_TYPES: dict[str, type] = {
    name: _json_type(hint) for name, hint in get_type_hints(LoopState).items()
}
PHASES: tuple[str, ...] = get_args(Phase)


def _shape_problem(data: Any) -> str | None:
    """What in a parsed state.json is not as `LoopState.save` writes it (None: all is): valid
    JSON of another shape must be refused here, not end in a traceback later."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    for name, kind in _JSON_TYPES.items():
        if name not in data:
            if name in ("config_hash", "seed"):
                return f"no {name!r}"
            continue
        value = data[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"{name!r} is {quoted(value, 40)}, not a JSON {kind.__name__}"
    if unknown := sorted(set(data) - set(_JSON_TYPES)):
        return f"unknown field {quoted(unknown[0])}"
    if data.get("phase", "select") not in PHASES:
        return f"phase {quoted(data['phase'])} is not one of {', '.join(PHASES)}"
    ids = [
        *data.get("pending", []),
        *data.get("dropped", []),
        *data.get("labeled", {}),
        *data.get("audit", []),
        *data.get("audit_labels", {}),
    ]
    if not all(isinstance(i, str) for i in ids):
        return "a clip id that is not a string"
    inner: list[tuple[str, Any, type]] = [
        ("labeled", data.get("labeled", {}).values(), int),
        ("labels", data.get("labels", {}).values(), str),
        ("votes", data.get("votes", {}).values(), dict),
        ("audit_labels", data.get("audit_labels", {}).values(), str),
        ("audit_votes", data.get("audit_votes", {}).values(), dict),
        ("rounds", data.get("rounds", []), dict),
        ("stop_predictions", data.get("stop_predictions", []), int),
    ]
    for name, values, kind in inner:
        if not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
            return f"{name!r} holds a value that is not a JSON {kind.__name__}"
    return None
