"""The active-learning loop: cold start, then rounds of fine-tune -> evaluate -> score the pool ->
select -> label, until the schedule is spent or a stopping criterion fires.

Honest by construction: the pool is the fold's training clips only; the classifier sees a view of
the manifest in which pool clips carry only the labels the oracle gave; dev and test clips are
never scored, selected or used for the cold start. Dev labels are not part of the budget, so no
round uses them to pick an epoch (`TrainConfig.select_on_dev` is off): dev UA is recorded, and
read only by the `--target-ua` stopping rule, which a user turns on knowingly. Every step ends
with `state.json` written atomically, and every random draw is seeded by (seed, round, purpose),
so `resume` continues a killed run with the same result as an uninterrupted one.

The run folder's files are named in `after.loop.folder`; rounds.csv has one row per round:
labeled count, fraction and minutes; dev and test UA / WA / macro-F1; seconds spent training,
evaluating, scoring the pool and selecting, which add up to round_s. One process at a time works
on a run folder (its lock). When a run stops is up to `after.loop.stopping`.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import io
import itertools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from after.config import (
    CLUSTERING_COLD_STARTS,
    ALConfig,
    TrainConfig,
    audit_share,
    config_hash,
)
from after.data.audio import clip_duration
from after.data.folds import Fold, Folds, manifest_digest
from after.data.manifest import Manifest
from after.errors import AfterError, cut
from after.faults import fault_point
from after.io import (
    atomic_write_json,
    atomic_write_text,
    held_lock,
    read_json,
    remove_stale_temps,
)
from after.label.store import HumanOracle
from after.loop.folder import RunFolder, replace_folder
from after.loop.oracle import Answers, Oracle, SimulatedOracle
from after.loop.state import LoopState
from after.loop.stopping import RoundEnd, criteria, stop_reason
from after.metrics import audit_estimate, cohen_kappa
from after.models.classifier import Classifier, load_classifier
from after.rng import derived_rng
from after.strategies.base import spread
from after.strategies.cold_start import cold_start_features
from after.strategies.diversity import grad_embeddings

if TYPE_CHECKING:
    from after.train import FitResult

logger = logging.getLogger(__name__)

ROUND_STAGES = ("train_s", "eval_s", "score_s", "select_s")  # a round's seconds, in order


# ---- schedule ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Budget:
    """The labeled-set size to reach by the end of a round selection: clips, or audio minutes."""

    count: int | None = None
    minutes: float | None = None

    def describe(self) -> str:
        return f"{self.minutes:g} min" if self.minutes is not None else f"{self.count} clips"


def parse_schedule(schedule: Sequence[str], pool_size: int) -> list[Budget]:
    """ "10%" or "0.1" -> 10% of the pool, "40" -> 40 clips, "5min" -> 5 minutes of audio. Budgets
    must grow from round to round and fit in the pool."""
    budgets = []
    for item in schedule:
        text = item.strip()
        try:
            if text.endswith("min"):
                budgets.append(Budget(minutes=float(text.removesuffix("min"))))
            elif text.endswith("%") or "." in text:
                fraction = float(text.removesuffix("%")) / (100 if text.endswith("%") else 1)
                if not 0 < fraction <= 1:
                    raise ValueError
                budgets.append(Budget(count=max(1, round(fraction * pool_size))))
            else:
                budgets.append(Budget(count=int(text)))
        except ValueError:
            raise AfterError(
                f"schedule entry {item!r}: use a share of the pool (5% or 0.05), a count of clips "
                "(40) or minutes of audio (5min)"
            ) from None
    if len({b.minutes is None for b in budgets}) > 1:
        raise AfterError("schedule: do not mix minutes with fractions or counts")
    values = [b.minutes if b.minutes is not None else float(b.count or 0) for b in budgets]
    if values[0] <= 0 or any(a >= b for a, b in itertools.pairwise(values)):
        raise AfterError(f"schedule {list(schedule)}: budgets must be positive and increasing")
    if any(b.count is not None and b.count > pool_size for b in budgets):
        raise AfterError(
            f"schedule {list(schedule)}: a budget exceeds the pool ({pool_size} clips)"
        )
    return budgets


# ---- the run -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """Everything a run needs; `config.json` holds it so that `resume` can rebuild it."""

    manifest: Manifest
    manifest_path: str
    folds_path: str | None  # None: no folds, the whole manifest is the pool (`whole_pool`)
    fold: Fold
    backbone: str
    al: ALConfig
    train: TrainConfig
    run_dir: Path
    cache_dir: str | None
    labels_from: str | None = None  # the run whose labels this one started from

    def __post_init__(self) -> None:
        from after.strategies import STRATEGIES

        # Dev labels are not part of the budget, so they pick nothing: every round keeps its
        # last epoch (a frozen-features learner has no epochs to pick anyway). A strategy that
        # samples weights gets a frozen-features learner with a posterior to sample.
        strategy = STRATEGIES.get(self.al.strategy)  # an unknown one is refused by check_run
        sampled = strategy is not None and "mc_probs" in strategy.requires
        self.train = dataclasses.replace(self.train, select_on_dev=False, weight_posterior=sampled)

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.run_dir)

    def to_json(self) -> dict[str, Any]:
        return {
            "manifest": self.manifest_path,
            "manifest_digest": manifest_digest(self.manifest),
            "folds": self.folds_path,
            "fold": self.fold.name,
            "backbone": self.backbone,
            "al": self.al.to_dict(),
            "train": self.train.to_dict(),
            "cache_dir": self.cache_dir,
            **({"labels_from": self.labels_from} if self.labels_from else {}),
        }

    def settings(self) -> dict[str, Any]:
        """What makes a run folder this run (`RUN_SETTINGS`), the training options cut to those
        its learners read (the selection learner's, and the final fine-tuning's if any)."""
        from after.train import kind_of

        kinds = {kind_of(self.backbone), *([kind_of(self.al.finetune)] if self.al.finetune else [])}
        written = self.to_json()
        return {**{k: written[k] for k in RUN_SETTINGS}, "train": self.train.read_by(kinds)}

    @property
    def has_folds(self) -> bool:
        return self.folds_path is not None

    @classmethod
    def from_dir(cls, run_dir: str | os.PathLike[str]) -> Run:
        folder = Path(run_dir)
        path = RunFolder(folder).config
        if not path.is_file():
            raise AfterError(f"{path}: not found; is {folder} a run folder of after run?")
        fix = "restore it from a backup, or start a new run"
        c = read_json(path, fix)
        try:
            return cls._from_config(c, folder)
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # valid JSON, wrong shape
            reason = cut(str(e) or type(e).__name__, 80)
            raise AfterError(f"{path}: not the config of a run ({reason}); {fix}") from None

    @classmethod
    def _from_config(cls, c: dict[str, Any], folder: Path) -> Run:
        manifest = Manifest.from_jsonl(c["manifest"])
        if manifest_digest(manifest) != c["manifest_digest"]:
            raise AfterError(
                f"{c['manifest']} changed since the run started; resume needs the same manifest"
            )
        al = c["al"]
        al["schedule"] = tuple(al["schedule"])
        # from_record leaves out what is no setting; in a run's own config that is damage.
        if unknown := sorted(set(c["train"]) - set(TrainConfig.__dataclass_fields__)):
            raise ValueError(f"unknown training option {unknown[0]!r}")
        folds = c["folds"]
        return cls(
            manifest=manifest,
            manifest_path=c["manifest"],
            folds_path=folds,
            fold=whole_pool(manifest)
            if folds is None
            else Folds.from_json(folds, manifest).get(c["fold"]),
            backbone=c["backbone"],
            al=ALConfig(**al),
            train=TrainConfig.from_record(c["train"]),
            run_dir=folder,
            cache_dir=c["cache_dir"],
            labels_from=c.get("labels_from"),
        )


WHOLE_POOL = "all"  # the fold name of a run without folds


def whole_pool(manifest: Manifest) -> Fold:
    """The "fold" of a run without folds: every clip is in the pool; no dev, no test split (an
    audit set, `--audit`, then gives the accuracy estimate)."""
    return Fold(WHOLE_POOL, tuple(manifest.ids), (), (), (), ())


# What makes a run folder the one asked for (paths may move).
RUN_SETTINGS = ("manifest_digest", "fold", "backbone", "al", "train")


# How to get past a result made with other settings, where nobody's labels are at stake (the
# simulated runs and all-labels fits of a comparison).
RERUN_FIX = (
    "delete it (or the whole output folder) to run it again with these, or choose another "
    "output folder"
)


def check_same_settings(
    where: Path, found: dict[str, Any], wanted: dict[str, Any], *, fix: str = RERUN_FIX
) -> None:
    """`AfterError` if a result about to be reused or continued was made with other settings
    (else a changed option would silently reuse stale runs), ending with `fix`. Options a result
    predates are not checked, so results of earlier versions stay reusable."""
    wanted = json.loads(json.dumps(wanted))  # tuples as lists, as written
    if not isinstance(found, dict):
        raise AfterError(f"{where}: not a record of after (wrong shape); {fix}")
    differ = settings_differ(found, wanted)
    if differ:
        raise AfterError(f"{where}: made with other settings ({', '.join(differ)}); {fix}")


def settings_differ(found: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The settings (`key` or `key.field`) of `wanted` that `found` has with another value."""
    wanted = json.loads(json.dumps(wanted))
    differ = []
    for key, value in wanted.items():
        if key not in found:
            continue
        if isinstance(value, dict):
            differ += [
                f"{key}.{k}" for k, v in value.items() if k in found[key] and found[key][k] != v
            ]
        elif found[key] != value:
            differ.append(key)
    return differ


@dataclasses.dataclass(frozen=True)
class Carried:
    """Labels another run made, to start a new run with (`after run --labels-from OLD`): they
    count as labeled before round 0. `audit_labels` are the old run's audit labels: they stay
    audit labels if the new run has an audit set, else they join the training labels."""

    source: str
    labels: dict[str, str]
    votes: dict[str, dict[str, int]]
    dropped: list[str]
    audit_labels: dict[str, str]
    audit_votes: dict[str, dict[str, int]]


def read_carried(old_dir: str | os.PathLike[str], run: Run) -> tuple[Carried, list[str]]:
    """The labels of run folder `old_dir` that `run` may start from, and lines saying what was
    left out: clips `run`'s manifest lacks, and clips of its dev or test split (their labels must
    not train a model tested on them). `AfterError` if the two runs label different classes."""
    old = Run.from_dir(old_dir)
    state = LoopState.load(old_dir)
    if old.manifest.labels != run.manifest.labels:
        raise AfterError(
            f"--labels-from {old_dir}: its labels ({', '.join(old.manifest.labels)}) are not this "
            f"run's ({', '.join(run.manifest.labels)}); start from a run of the same label set"
        )
    held_out = set(run.fold.dev) | set(run.fold.test)
    notes = []

    def keep(ids: Sequence[str], what: str) -> list[str]:
        outside = [i for i in ids if i not in run.manifest]
        tested = [i for i in ids if i in held_out]
        if outside:
            notes.append(f"{len(outside)} {what} of clips this manifest lacks left out")
        if tested:
            notes.append(
                f"{len(tested)} {what} of clips in this run's dev or test split left out (they "
                "would train a model tested on them)"
            )
        return [i for i in ids if i in run.manifest and i not in held_out]

    labeled = keep(list(state.labels), "label(s)")
    audit = keep(list(state.audit_labels), "audit label(s)")
    carried = Carried(
        source=str(Path(old_dir).resolve()),
        labels={i: state.labels[i] for i in labeled},
        votes={i: state.votes[i] for i in labeled if i in state.votes},
        dropped=keep(state.dropped, "skipped clip(s)"),
        audit_labels={i: state.audit_labels[i] for i in audit},
        audit_votes={i: state.audit_votes[i] for i in audit if i in state.audit_votes},
    )
    return carried, notes


def start_run(run: Run, carried: Carried | None = None) -> LoopState:
    """Create the run folder and its first state (with the audit set drawn, and `carried`
    labels counted as labeled before round 0); refuses a folder that holds a run (unless its
    start was cut off before the first state: then it finishes that start), and settings
    `check_run` refuses, before writing anything."""
    check_run(run, carried=carried)
    config = run.folder.config
    cut_off = (
        config.exists()
        and not run.folder.state.exists()
        and config_hash(read_json(config, "choose another --out")) == config_hash(run.to_json())
    )
    if config.exists() and not cut_off:
        raise AfterError(
            f"{run.run_dir}: holds a run already; continue it with --resume {run.run_dir}, or "
            "choose another --out"
        )
    run.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(config, run.to_json())
    state = LoopState(config_hash=config_hash(run.to_json()), seed=run.al.seed)
    state.audit = draw_audit(run, carried)
    if carried is not None:
        _carry(state, carried)
    state.save(run.run_dir)
    return state


def _carry(state: LoopState, carried: Carried) -> None:
    """Count `carried` labels as labeled before round 0 (round -1); audit labels of clips in
    this run's audit set stay audit labels, the others train."""
    audit = set(state.audit)
    labels = dict(carried.labels)
    votes = dict(carried.votes)
    for i, label in carried.audit_labels.items():
        if i in audit:
            state.audit_labels[i] = label
            if i in carried.audit_votes:
                state.audit_votes[i] = carried.audit_votes[i]
        else:
            labels[i] = label
            if i in carried.audit_votes:
                votes[i] = carried.audit_votes[i]
    for i, label in labels.items():
        if i not in audit:
            state.labels[i] = label
            state.labeled[i] = -1
            if i in votes:
                state.votes[i] = votes[i]
    state.dropped = [i for i in carried.dropped if i not in state.labels]
    state.carried = {
        "from": carried.source,
        "labels": len(state.labeled),
        "audit_labels": len(state.audit_labels),
        "dropped": len(state.dropped),
    }


def load_state(run: Run) -> LoopState:
    """The run's state; a run killed between its config and its first state starts over."""
    if not run.folder.state.exists():
        return start_run(run)
    return LoopState.load(run.run_dir)


def run_loop(
    run: Run,
    state: LoopState,
    *,
    oracle: Oracle | None = None,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
) -> LoopState:
    """Advance `state` until the run is done (or the oracle leaves queries unanswered). The
    oracle defaults to the run's own: the manifest's labels, or people's (`after label`)."""
    if oracle is None:
        human = run.al.oracle == "human"
        oracle = (
            HumanOracle(run.run_dir, run.al.min_votes) if human else SimulatedOracle(run.manifest)
        )
    with run_lock(run.run_dir):
        remove_stale_temps(run.run_dir)
        state = _settle_growth(run.run_dir, state)
        loop = _Loop(run, state, oracle, progress)
        while state.phase != "done":
            if state.phase == "select":
                loop.select()
            elif state.phase == "label":
                if not loop.label():
                    logger.info("waiting for %d label(s)", len(state.pending))
                    return state
            elif state.phase == "train":
                record = loop.train()
                if on_round is not None:
                    on_round(record)
            elif state.phase == "final":
                record = loop.finetune()
                if on_round is not None:
                    on_round(record)
    return state


# config.json's record of the schedules a run had before it grew, oldest first, each with the
# config hash its state carried then.
GROWN = "grown"


def schedule_relation(run: Run, schedule: Sequence[str]) -> str:
    """How `schedule` stands to the run's own, budget by budget (so `5%` equals `0.05`): "same",
    "prefix" (it is the start of the run's: the command the run began with), "grows" (the run's
    followed by more budgets) or "other"."""
    state = LoopState.load(run.run_dir) if run.folder.state.is_file() else None
    audit = state.audit if state is not None else draw_audit(run)
    pool, _ = split_pool(run, simulated=run.al.oracle == "simulated", audit=audit)
    own = parse_schedule(run.al.schedule, len(pool))
    try:
        given = parse_schedule(schedule, len(pool))
    except AfterError:
        return "other"
    if given == own:
        return "same"
    if given == own[: len(given)]:
        return "prefix"
    if given[: len(own)] == own:
        return "grows"
    return "other"


def grow_schedule(run: Run, schedule: Sequence[str]) -> Run:
    """`run` with the longer `schedule` (its own budgets, followed by more): a finished run goes
    on to the next round, with every label, round and model it has kept. config.json is
    rewritten first (recording the old schedule in `GROWN`), then state.json; a kill between the
    two is finished by the next `run_loop` (`_settle_growth`). Returns the grown run."""
    old, new = tuple(run.al.schedule), tuple(schedule)
    relation = schedule_relation(run, new)
    if relation in ("same", "prefix"):
        return run
    if relation != "grows":
        raise AfterError(
            f"--schedule {','.join(new)}: {run.run_dir} has the schedule {','.join(old)}, and a "
            f"run grows by budgets added at its end: give --schedule {','.join(old)},MORE (e.g. "
            f"{','.join(old)},{_next_budget(old)}), or start a new run from its labels (after "
            f"run --labels-from {run.run_dir} ... --out NEW)"
        )
    state = LoopState.load(run.run_dir)
    if state.stopped_because == "pool exhausted":
        raise AfterError(f"{run.run_dir}: every clip of its pool is labeled; it cannot grow")
    grown = dataclasses.replace(run, al=dataclasses.replace(run.al, schedule=new))
    check_run(grown, audit=state.audit)  # the budgets must fit the pool
    with run_lock(run.run_dir):
        config = read_json(run.folder.config, "restore it from a backup")
        history = [*config.get(GROWN, []), {"schedule": list(old), "hash": state.config_hash}]
        atomic_write_json(
            run.folder.config,
            {**config, "al": {**config["al"], "schedule": list(new)}, GROWN: history},
        )
        _settle_growth(run.run_dir, state)
    return Run.from_dir(run.run_dir)


def _next_budget(schedule: Sequence[str]) -> str:
    """An example of a budget after the last of `schedule`, in its own kind."""
    last = schedule[-1].strip()
    if last.endswith("min"):
        return f"{2 * float(last.removesuffix('min')):g}min"
    if last.endswith("%"):
        return f"{min(100.0, 1.5 * float(last.removesuffix('%'))):g}%"
    if "." in last:
        return f"{min(1.0, 1.5 * float(last)):g}"
    return str(2 * int(last))


def _settle_growth(run_dir: Path, state: LoopState) -> LoopState:
    """`state` matched to config.json: as it is if their hashes agree; moved on to the grown
    schedule if config.json grew from the state's (`grow_schedule`; a finished run goes on to
    its next round); else `AfterError` (one of them was edited)."""
    written = read_json(RunFolder(run_dir).config, "restore it from a backup")
    wanted = config_hash(written)
    if state.config_hash == wanted:
        return state
    if not any(g.get("hash") == state.config_hash for g in written.get(GROWN, [])):
        raise AfterError(f"{run_dir}: config.json does not match state.json; was it edited?")
    state.config_hash = wanted
    if state.phase in ("final", "done"):
        state.round += 1
        state.phase = "select"
        state.stopped_because = ""
        state.final = {}
    state.save(run_dir)
    return state


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the run folder's lock: a second process working on the same run would interleave
    its state writes with ours. The lock goes with the process, even on kill -9."""
    with held_lock(
        RunFolder(run_dir).lock,
        str(os.getpid()),
        lambda holder: (
            f"{run_dir}: another after process (pid {holder or '?'}) is working "
            "on this run; wait for it to finish"
        ),
    ):
        yield


def check_run(
    run: Run, *, audit: Sequence[str] | None = None, carried: Carried | None = None
) -> list[str]:
    """Refuse, before anything is written or computed, settings this run cannot work with (an
    unknown backbone, a strategy the learner cannot serve, a schedule that does not fit the
    pool, ...); return warnings about settings that work but are likely not what was meant.
    `audit`: the run's audit set, once drawn (else it is drawn here as `start_run` would)."""
    from after.checks import check_active_learning, check_backbone

    check_backbone(run.backbone)
    check_active_learning(run.al, run.backbone)
    simulated = run.al.oracle == "simulated"
    if not candidates_of(run, simulated=simulated):
        raise AfterError(
            f"fold {run.fold.name}: no labeled training clip for the simulated oracle to reveal; "
            "label the manifest, or let people label it (--oracle human)"
        )
    if len(run.manifest.labels) < 2:
        raise AfterError(
            f"{run.manifest_path}: {len(run.manifest.labels)} label(s); a run needs the label "
            "set: prepare the manifest with --labels a,b,c (after prepare folder DIR --labels ...)"
        )
    if audit is None:
        audit = draw_audit(run, carried)
    if run.al.target_ua is not None and not run.fold.dev and not run.al.audit:
        raise AfterError(
            f"--target-ua {run.al.target_ua}: this run has no dev split to read it on; add an "
            "audit set (--audit 40: people label 40 clips kept apart, and the rule reads their "
            "estimate), or use folds with dev speakers"
        )
    _check_tapt(run, audit)
    pool_ids, _ = split_pool(run, simulated=simulated, audit=audit)
    if not pool_ids:
        raise AfterError(
            f"--audit {run.al.audit}: the audit set takes the whole pool; give fewer clips"
        )
    budgets = parse_schedule(run.al.schedule, len(pool_ids))
    num_classes = len(run.manifest.labels)
    warnings = []
    seed = budgets[0].count
    if seed is not None and seed < num_classes:
        warnings.append(
            f"the seed set (round 0, schedule {run.al.schedule[0]!r}) has {seed} clip(s) for "
            f"{num_classes} classes, so round 0 trains on at most {seed} of them; a whole number "
            "is a count of clips, a share of the pool is written 5% (or 0.05)"
        )
    if audit and len(audit) < 30:
        warnings.append(
            f"the audit set has {len(audit)} clip(s): its estimates will have wide confidence "
            "intervals (about ±15 points at 40 clips); 50-100 give a usable estimate"
        )
    return warnings


def _check_tapt(run: Run, audit: Sequence[str]) -> None:
    """Refuse a model that `after tapt` pre-trained on audio of this run's audit, dev or test
    clips (its tapt.json lists the clips it read): their figures would come from audio the model
    has seen. Models of earlier versions do not list them and are not checked."""
    from after.models.features import FROZEN_PREFIX
    from after.tapt import DONE_FILE

    held = {"audit": set(audit), "dev": set(run.fold.dev), "test": set(run.fold.test)}
    for spec in (run.backbone, run.al.finetune, run.al.surprisal_model):
        if not spec:
            continue
        folder = Path(spec.removeprefix(FROZEN_PREFIX).partition("@")[0])
        record = folder / DONE_FILE
        if not record.is_file():
            continue
        read = read_json(record, "run after tapt again")
        seen = set(read.get("ids", [])) if isinstance(read, dict) else set()
        for split, ids in held.items():
            if seen & ids:
                raise AfterError(
                    f"{spec}: after tapt pre-trained it on the audio of {len(seen & ids)} of this "
                    f"run's {split} clips ({record}), so its {split} figures would come from "
                    "audio the model has heard. Pre-train on audio that leaves them out (another "
                    "fold's training split), or use a backbone without TAPT"
                    + (", or a run without --audit" if split == "audit" else "")
                )


def candidates_of(run: Run, *, simulated: bool) -> list[str]:
    """The fold's training clips the oracle may label (with a simulated oracle: those with a
    label): the pool, the stop set and the audit set are drawn from these."""
    m = run.manifest
    return [i for i in run.fold.train if not simulated or m[i].label is not None]


def audit_size(run: Run, num_candidates: int) -> int:
    """How many clips `--audit` asks for, out of `num_candidates` (0 without an audit set)."""
    if run.al.audit is None:
        return 0
    parsed = audit_share(run.al.audit)
    assert parsed is not None  # ALConfig checked it
    count, share = parsed
    wanted = count if count is not None else max(1, round((share or 0.0) * num_candidates))
    return min(wanted, num_candidates)


def draw_audit(run: Run, carried: Carried | None = None) -> list[str]:
    """The audit set: `--audit` clips of the pool drawn at random, stratified by speaker where
    speakers are known (each speaker's share of the sample is its share of the candidates;
    where every clip is its own speaker, a simple random sample). Audit clips carried from
    another run (`carried`) are kept first; clips carried with training labels are not drawn
    (their labels came from queries, not from a random sample)."""
    candidates = candidates_of(run, simulated=run.al.oracle == "simulated")
    size = audit_size(run, len(candidates))
    if size == 0:
        return []
    known = set(candidates)
    kept = [i for i in (carried.audit_labels if carried else {}) if i in known]
    taken = set(carried.labels) | set(kept) if carried else set()
    rest = [i for i in candidates if i not in taken]
    need = min(max(0, size - len(kept)), len(rest))
    rng = derived_rng(run.al.seed, "audit")
    by_speaker: dict[str, list[str]] = {}
    for i in rest:
        by_speaker.setdefault(run.manifest[i].speaker, []).append(i)
    if len(by_speaker) == len(rest):  # speakers unknown: one per clip
        picked = set(rng.choice(len(rest), need, replace=False).tolist())
        return kept + [i for k, i in enumerate(rest) if k in picked]
    # Proportional allocation, the remainders going to the largest fractions (ties at random).
    speakers = sorted(by_speaker)
    exact = np.array([need * len(by_speaker[sp]) / len(rest) for sp in speakers])
    quota = np.floor(exact).astype(int)
    order = np.lexsort((rng.random(len(speakers)), -(exact - quota)))
    quota[order[: need - int(quota.sum())]] += 1
    chosen: set[str] = set()
    for sp, q in zip(speakers, quota, strict=True):
        clips = by_speaker[sp]
        chosen |= {clips[k] for k in rng.choice(len(clips), int(q), replace=False)}
    return kept + [i for i in rest if i in chosen]


def split_pool(
    run: Run, *, simulated: bool, audit: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """The pool (the candidates, `candidates_of`, less the audit set) and the stop set held
    aside from it for `--stabilize`."""
    held = set(audit)
    candidates = [i for i in candidates_of(run, simulated=simulated) if i not in held]
    stop_set: list[str] = []
    if run.al.stabilize_kappa is not None:
        rng = derived_rng(run.al.seed, "stop-set")
        size = min(run.al.stop_set_size, len(candidates) // 4)
        picked = set(rng.choice(len(candidates), size, replace=False).tolist())
        stop_set = [c for k, c in enumerate(candidates) if k in picked]
    aside = set(stop_set)
    return [c for c in candidates if c not in aside], stop_set


class _Loop:
    def __init__(self, run: Run, state: LoopState, oracle: Oracle, progress: bool) -> None:
        self.run, self.state, self.oracle, self.progress = run, state, oracle, progress
        self.pool_ids, self.stop_set = split_pool(
            run, simulated=oracle.reveals_manifest_labels, audit=state.audit
        )
        self.budgets = parse_schedule(run.al.schedule, len(self.pool_ids))
        self.durations = {i: clip_duration(run.manifest[i]) for i in self.pool_ids}
        self.classifier: Classifier | None = None
        self.timings: dict[str, float] = {}

    # -- views

    def view(self) -> Manifest:
        """The manifest as the learner may see it: pool clips carry only oracle labels, audit
        clips none (their labels are only ever compared with predictions)."""
        pool = set(self.pool_ids) | set(self.stop_set) | set(self.state.audit)
        items = []
        for u in self.run.manifest:
            if u.id in pool:
                label = self.state.labels.get(u.id)
                votes = self.state.votes.get(u.id) if label else None
                u = dataclasses.replace(u, label=label, votes=votes)
            items.append(u)
        return Manifest(items, source="active-learning view", labels=self.run.manifest.label_set)

    def unlabeled(self) -> list[str]:
        done = set(self.state.labeled) | set(self.state.pending) | set(self.state.dropped)
        return [i for i in self.pool_ids if i not in done]

    # -- phases

    def select(self) -> None:
        r = self.state.round
        budget = self.budgets[r]
        unlabeled = self.unlabeled()
        t0 = time.perf_counter()
        if budget.minutes is not None:
            have = sum(self.durations[i] for i in self.state.labeled) / 60
            need_s = max(0.0, (budget.minutes - have) * 60)
            mean = float(np.mean([self.durations[i] for i in unlabeled])) if unlabeled else 1.0
            n = min(len(unlabeled), math.ceil(1.5 * need_s / max(mean, 1e-3)) + 1)
        else:
            n = budget.count - len(self.state.labeled)  # type: ignore[operator]
        if n <= 0 or not unlabeled:
            queries: list[str] = []
        elif r == 0:
            queries = self._cold_start(unlabeled, min(n, len(unlabeled)))
        else:
            queries = self._query(unlabeled, min(n, len(unlabeled)))
        if budget.minutes is not None:  # keep the ranked prefix that fills the minutes
            need_s = max(
                0.0, budget.minutes * 60 - sum(self.durations[i] for i in self.state.labeled)
            )
            kept, total = [], 0.0
            for q in queries:
                if total >= need_s:
                    break
                kept.append(q)
                total += self.durations[q]
            queries = kept
        # Selection alone: scoring the pool, timed inside it, is score_s.
        self.timings["select_s"] = time.perf_counter() - t0 - self.timings.get("score_s", 0.0)
        fault_point("select")
        queries = self._with_audit(queries)
        self._write_queries(queries)
        self.state.pending = queries
        self.state.phase = "label"
        self.state.save(self.run.run_dir)

    def _with_audit(self, queries: list[str]) -> list[str]:
        """Round 0's queue: the queries with the audit clips nobody labeled yet put among them at
        seeded random places, so that nobody labeling can tell the two apart (the queue shows no
        id, the audit clips come in no block). Later rounds' queues are the queries alone."""
        audit = self.state.audit_open() if self.state.round == 0 else []
        if not audit:
            return queries
        rng = derived_rng(self.run.al.seed, "audit-queue")
        merged = [*queries, *audit]
        return [merged[k] for k in rng.permutation(len(merged))]

    def _write_queries(self, queries: list[str]) -> None:
        """Keep the round's queries, in order, for the labeling app and exports; when people
        label, with the current model's guesses (shown only if the app is asked to)."""
        r = self.state.round
        record: dict[str, Any] = {
            "round": r,
            "method": self.run.al.strategy if r else f"cold start ({self.run.al.cold_start})",
            "ids": queries,
            "labels": list(self.run.manifest.labels),
            "probs": None,
        }
        if self.run.al.oracle == "human" and r > 0 and queries:
            from after.inference import predict

            probs = predict(
                self._previous(),
                self.view(),
                queries,
                config=self.run.train,
                cache_dir=self.run.cache_dir,
            )
            record["probs"] = np.round(probs, 4).tolist()
        atomic_write_json(self.run.folder.queries(r), record)

    def label(self) -> bool:
        """Ask the oracle; True when every pending query is labeled (or dropped)."""
        state = self.state
        answers = self.oracle.label(state.pending) if state.pending else Answers()
        audit = set(state.audit)
        for i in state.pending:
            if i in answers.labels and i in audit:  # kept apart from what the learner sees
                state.audit_labels[i] = answers.labels[i]
                if i in answers.votes:
                    state.audit_votes[i] = answers.votes[i]
            elif i in answers.labels:
                state.labels[i] = answers.labels[i]
                state.labeled[i] = state.round
                if i in answers.votes:
                    state.votes[i] = answers.votes[i]
            elif i in answers.dropped:
                state.dropped.append(i)
        settled = set(answers.labels) | set(answers.dropped)
        state.pending = [i for i in state.pending if i not in settled]
        if self.state.pending:
            self.state.save(self.run.run_dir)
            return False
        self.state.phase = "train"
        self.state.save(self.run.run_dir)
        return True

    def train(self) -> dict[str, Any]:
        """Fit the round's model on every labeled clip, score it (dev, test, audit), save it,
        and end the round: its record in state.json and rounds.csv, and the next phase."""
        run, state = self.run, self.state
        view = self.view()
        labeled = state.labeled_ids()
        if not labeled:
            raise AfterError(
                f"{run.run_dir}: round {state.round} ended with no labeled clip (every query was "
                "skipped); label some of them, or start the run with a larger seed set"
            )
        t0 = time.perf_counter()
        result = self._fit(view, labeled)
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        test = self._test(result.classifier, view)
        audit = self._audit(result.classifier, view)
        eval_s = time.perf_counter() - t0
        self.classifier = result.classifier
        save_model(result.classifier, run.folder.model, round=state.round)

        minutes = sum(self.durations[i] for i in labeled) / 60
        record: dict[str, Any] = {
            "round": state.round,
            "model": run.backbone,
            "num_labeled": len(labeled),
            "fraction": len(labeled) / len(self.pool_ids),
            "minutes": round(minutes, 3),
            "budget": self.budgets[state.round].describe(),
            "best_epoch": result.best_epoch,
            **self._scores("dev", result.dev),
            **test,
            **audit,
            "train_s": round(train_s, 3),
            "eval_s": round(eval_s, 3),
            "score_s": round(self.timings.pop("score_s", 0.0), 3),
            "select_s": round(self.timings.pop("select_s", 0.0), 3),
        }
        # Frozen features: which view the inner CV chose, and how many pool clips self-training
        # added with their predicted class (none of them counts as labeled).
        learner = result.history[-1]
        record.update({k: learner[k] for k in ("view", "pseudo_labels") if k in learner})
        # The round's whole time; its presence also marks records whose select_s excludes
        # score_s (earlier records counted scoring in both).
        record["round_s"] = round(sum(record[k] for k in ROUND_STAGES), 3)
        kappa = self._stability(result.classifier, view)
        if kappa is not None:
            record["stop_set_kappa"] = kappa
        end = RoundEnd(
            state.round,
            len(self.budgets),
            len(self.unlabeled()),
            result.dev["ua"] if result.dev else None,
            kappa,
            audit=audit if audit.get("audit_n") else None,
        )
        self._end_round(record, stop_reason(criteria(run.al), end))
        return record

    def _fit(self, view: Manifest, labeled: list[str]) -> FitResult:
        """The round's model: warm-started from the last round's where the run says so, with
        the pool as unlabeled data where self-training is on."""
        from after.train import fit

        run = self.run
        init, config = self._warm_start(labeled)
        return fit(
            view,
            labeled,
            run.fold.dev,
            run.backbone,
            config,
            labels=run.manifest.labels,
            cache_dir=run.cache_dir,
            init=init,
            progress=self.progress,
            unlabeled_ids=self.unlabeled() if config.self_training else (),
        )

    def _stability(self, clf: Classifier, view: Manifest) -> float | None:
        """Cohen's kappa between this round's and the last round's predictions on the stop set
        (the stable-predictions rule); None without a stop set or before a second round."""
        if not self.stop_set:
            return None
        from after.inference import predict

        state = self.state
        preds = predict(clf, view, self.stop_set, config=self.run.train).argmax(1).tolist()
        last, state.stop_predictions = state.stop_predictions, preds
        if not last:
            return None
        return cohen_kappa(last, preds, len(self.run.manifest.labels))

    def _end_round(self, record: dict[str, Any], stop: str | None) -> None:
        """The round's record made durable, with the next phase: the next round's selection, or
        the end (a final fine-tuning first where the run asks for one)."""
        state = self.state
        state.rounds.append(record)
        fault_point("train")
        if stop:
            state.phase = "final" if self.run.al.finetune else "done"
            state.stopped_because = stop
        else:
            state.round += 1
            state.phase = "select"
        state.save(self.run.run_dir)
        atomic_write_text(self.run.folder.rounds, _csv(state.rounds))

    def _scores(self, split: str, scores: dict[str, Any] | None) -> dict[str, Any]:
        """A split's UA, WA and macro-F1 for a round's record; nothing for a split the run does
        not have (a run without folds has neither dev nor test), None where it has one."""
        ids = self.run.fold.dev if split == "dev" else self.run.fold.test
        if not ids:
            return {}
        keys = ("ua", "wa", "macro_f1") + (("confusion",) if split == "test" else ())
        return {f"{split}_{k}": scores[k] if scores else None for k in keys}

    def _test(self, clf: Classifier, view: Manifest) -> dict[str, Any]:
        from after.inference import evaluate

        test = self.run.fold.test
        if not test:
            return {}
        scores = evaluate(clf, view, test, config=self.run.train, cache_dir=self.run.cache_dir)
        return self._scores("test", scores)

    def _audit(self, clf: Classifier, view: Manifest) -> dict[str, Any]:
        """The model's accuracy and UA on the labeled audit clips, with 95% intervals and how
        many labels back them (`after.metrics.audit_estimate`); nothing without an audit set."""
        from after.inference import predict

        if not self.state.audit:
            return {}
        ids = [i for i in self.state.audit if i in self.state.audit_labels]
        if not ids:
            return {"audit_n": 0}
        labels = self.run.manifest.labels
        probs = predict(clf, view, ids, config=self.run.train, cache_dir=self.run.cache_dir)
        truth = [labels.index(self.state.audit_labels[i]) for i in ids]
        rng = derived_rng(self.run.al.seed, "audit-bootstrap", self.state.round)
        return audit_estimate(truth, probs.argmax(axis=1).tolist(), len(labels), rng)

    def finetune(self) -> dict[str, Any]:
        """The hybrid recipe's last step: `ALConfig.finetune` fine-tuned once on the final
        labeled set (the selection learner chose every query), then tested; its record is
        `state.final` and the last row of rounds.csv (model: the fine-tuned backbone)."""
        from after.train import describe_training, fit

        run, state = self.run, self.state
        assert run.al.finetune is not None
        view, labeled = self.view(), state.labeled_ids()
        t0 = time.perf_counter()
        result = fit(
            view,
            labeled,
            run.fold.dev,
            run.al.finetune,
            run.train,
            labels=run.manifest.labels,
            cache_dir=run.cache_dir,
            progress=self.progress,
        )
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        test = self._test(result.classifier, view)
        audit = self._audit(result.classifier, view)
        eval_s = time.perf_counter() - t0
        save_model(result.classifier, run.folder.final_model, round="final")
        last = state.rounds[-1]
        state.final = {
            "round": "final",
            "model": f"{run.al.finetune} fine-tuned once on the final labeled set",
            "training": describe_training(run.al.finetune, run.train.to_dict()),
            **{k: last[k] for k in ("num_labeled", "fraction", "minutes", "budget")},
            **({"dev_ua": result.dev["ua"] if result.dev else None} if run.fold.dev else {}),
            **test,
            **audit,
            "train_s": round(train_s, 3),
            "eval_s": round(eval_s, 3),
        }
        state.phase = "done"
        state.save(run.run_dir)
        atomic_write_text(run.folder.rounds, _csv([*state.rounds, state.final]))
        return state.final

    # -- selection

    def _previous(self) -> Classifier:
        if self.classifier is None:
            self.classifier = load_classifier(self.run.folder.model)
        return self.classifier

    def _warm_start(self, labeled: list[str]) -> tuple[Classifier | None, TrainConfig]:
        """With `--warm-start`, a fine-tuned round after the first starts from the last round's
        model, shrunk toward a fresh start (`after.train.shrink_toward`), and trains for as many
        steps as `epochs` passes over the clips labeled since (its batches drawn from all of
        them), at least `min_steps`: it costs what it adds. Otherwise (AFTER's way, and always
        for frozen features, whose learner is convex) a round starts afresh with the full
        budget."""
        from after.train import fresh_classifier, kind_of, shrink_toward

        run, state = self.run, self.state
        if not run.al.warm_start or state.round == 0 or kind_of(run.backbone) == "features":
            return None, run.train
        import torch

        init = copy.deepcopy(self._previous())
        if run.al.shrink < 1:
            # Seeded by (seed, round): a resumed run draws the same fresh head.
            with torch.random.fork_rng():
                seed = derived_rng(run.train.seed, "warm-start", state.round).integers(2**62)
                torch.manual_seed(int(seed))
                start = fresh_classifier(run.backbone, init.labels, run.train)
            shrink_toward(init.module, start.module, run.al.shrink)
        new = len(labeled) - state.rounds[-1]["num_labeled"]
        batches = math.ceil(max(1, new) / run.train.batch_size)
        steps = max(run.train.min_steps, run.train.epochs * batches)
        return init, dataclasses.replace(run.train, max_steps=steps)

    def _cold_start(self, unlabeled: list[str], n: int) -> list[str]:
        from after.strategies import cold_start

        al = self.run.al
        rng = derived_rng(al.seed, "cold-start")
        if al.cold_start == "alps":
            queries = self._strategy_select("alps", unlabeled, n, rng)
            self.state.cold_start = {"method": "alps"}
            return queries
        embeddings, source = None, None
        if al.cold_start in CLUSTERING_COLD_STARTS:
            from after.models.features import embed_manifest, load_feature_backbone
            from after.progress import progress_bar

            source = cold_start_features(self.run.backbone)
            with progress_bar(self.progress, transient=True) as bar:
                task = bar.add_task(f"cold start: features ({source})", total=len(unlabeled))
                raw = embed_manifest(
                    load_feature_backbone(source),
                    self.run.manifest.subset(unlabeled),
                    cache_dir=self.run.cache_dir,
                    num_workers=min(4, os.cpu_count() or 1),
                    on_item=lambda: bar.advance(task),
                )
            # Standardised over the pool (no labels involved), so that no dimension's scale
            # (eGeMAPS mixes Hz, dB and ratios) decides the clusters.
            std = raw.std(axis=0)
            embeddings = (raw - raw.mean(axis=0)) / np.where(std > 0, std, 1.0)
        queries, info = cold_start(
            unlabeled,
            embeddings,
            n,
            method=al.cold_start,
            rng=rng,
            num_classes=len(self.run.manifest.labels),
        )
        self.state.cold_start = {**info, "embedding": source}
        return queries

    def _query(self, unlabeled: list[str], n: int) -> list[str]:
        al = self.run.al
        rng = derived_rng(al.seed, "select", self.state.round)
        if not al.spread:
            return self._strategy_select(al.strategy, unlabeled, n, rng)
        wanted = self._strategy_select(al.strategy, unlabeled, min(len(unlabeled), 4 * n), rng)
        probs = self._outputs(wanted, frozenset({"probs"})).probs
        predicted = [self.run.manifest.labels[k] for k in probs.argmax(axis=1)]
        groups = [(self.run.manifest[i].speaker, c) for i, c in zip(wanted, predicted, strict=True)]
        return spread(wanted, groups, n)

    def _strategy_select(
        self, name: str, unlabeled: list[str], n: int, rng: np.random.Generator
    ) -> list[str]:
        from after.strategies import PoolOutputs, get_strategy

        strategy = get_strategy(name)
        t0 = time.perf_counter()
        pool = self._outputs(unlabeled, strategy.requires)
        labeled = self._outputs(
            self.state.labeled_ids(), strategy.requires & {"embeddings", "surprisal"}
        )
        self.timings["score_s"] = time.perf_counter() - t0
        fault_point("score")
        assert isinstance(pool, PoolOutputs)
        return strategy.select(pool, n, labeled=labeled, rng=rng, memo=self.state.memo)

    def _outputs(self, ids: list[str], requires: frozenset[str]) -> Any:
        from after.scoring import score_pool
        from after.strategies import PoolOutputs

        fields: dict[str, Any] = {}
        if "surprisal" in requires:
            fields["surprisal"] = self._surprisal(ids)
        model_needs = requires & {"probs", "mc_probs", "embeddings", "grad_embeddings"}
        if model_needs and ids:
            clf = self._previous()
            mc_rng = derived_rng(self.run.al.seed, "mc-dropout", self.state.round)
            # On `train.num_processes` workers when more than one; each finished chunk is kept
            # in the run folder, so a run killed while scoring resumes without redoing them.
            out = score_pool(
                clf,
                self.view(),
                ids,
                embeddings=bool(requires & {"embeddings", "grad_embeddings"}),
                mc_passes=self.run.al.mc_passes if "mc_probs" in requires else 0,
                seed=int(mc_rng.integers(2**31)),
                config=self.run.train,
                cache_dir=self.run.cache_dir,
                out_dir=self._scores_dir(ids),
            )
            if "probs" in requires:
                fields["probs"] = out["probs"]
            if "mc_probs" in requires:
                fields["mc_probs"] = out["mc_probs"]
            if "embeddings" in requires:
                fields["embeddings"] = out["embeddings"]
            if "grad_embeddings" in requires:
                fields["grad_embeddings"] = grad_embeddings(out["probs"], out["embeddings"])
        elif model_needs:  # no ids: empty arrays of the right rank
            fields.update({k: np.zeros((0, 1)) for k in model_needs if k != "mc_probs"})
        return PoolOutputs(ids=list(ids), **fields)

    def _scores_dir(self, ids: list[str]) -> Path:
        """`scores/round_NNN/<digest of ids>/`: this round's chunks of scores of `ids` (the pool,
        or the labeled set). Earlier rounds' chunks are no longer needed and are deleted."""
        root = self.run.folder.scores
        current = f"round_{self.state.round:03d}"
        for old in root.glob("round_*"):
            if old.name < current:
                shutil.rmtree(old, ignore_errors=True)
        return root / current / config_hash(ids)

    def _surprisal(self, ids: list[str]) -> np.ndarray:
        """ALPS embeddings of `ids`, computed once per run for the whole pool and kept."""
        from after.tapt import surprisal_embeddings

        path = self.run.folder.surprisal
        if path.is_file():
            with np.load(path) as data:
                known = dict(zip([str(i) for i in data["ids"]], data["values"], strict=True))
        else:
            model = self.run.al.surprisal_model or self.run.backbone
            values = surprisal_embeddings(
                model, self.run.manifest, self.pool_ids, seed=self.run.al.seed
            )
            known = dict(zip(self.pool_ids, values, strict=True))
            tmp = path.with_name(path.name + ".tmp.npz")
            np.savez(tmp, ids=np.array(self.pool_ids), values=values)
            tmp.replace(path)
        if not ids:
            return np.zeros((0, 16), dtype=np.float32)
        return np.stack([known[i] for i in ids])


def _csv(rounds: list[dict[str, Any]]) -> str:
    """rounds.csv: the scalar columns of each round's record (the confusion matrix stays in
    state.json)."""
    keys = [
        k
        for k in dict.fromkeys(k for r in rounds for k in r)
        if not any(isinstance(r.get(k), list | dict) for r in rounds)
    ]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rounds)
    return out.getvalue()


def save_model(clf: Classifier, folder: Path, **extra: Any) -> None:
    """Replace a run's model folder atomically (`after.loop.folder.replace_folder`)."""
    replace_folder(folder, lambda tmp: clf.save(tmp, **extra))
