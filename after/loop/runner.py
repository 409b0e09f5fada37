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
import fcntl
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
from typing import Any

import numpy as np

from after.config import CLUSTERING_COLD_STARTS, ALConfig, TrainConfig, config_hash
from after.data.audio import clip_duration
from after.data.folds import Fold, Folds, manifest_digest
from after.data.manifest import Manifest
from after.errors import AfterError, cut
from after.faults import fault_point
from after.io import (
    atomic_write_json,
    atomic_write_text,
    os_error_message,
    read_json,
    remove_stale_temps,
)
from after.loop.folder import RunFolder, replace_folder
from after.loop.oracle import Answers, HumanOracle, Oracle, SimulatedOracle
from after.loop.state import LoopState
from after.loop.stopping import RoundEnd, criteria, stop_reason
from after.metrics import cohen_kappa
from after.models.classifier import Classifier, load_classifier
from after.rng import derived_rng
from after.strategies.base import spread
from after.strategies.cold_start import cold_start_features
from after.strategies.diversity import grad_embeddings

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
    folds_path: str
    fold: Fold
    backbone: str
    al: ALConfig
    train: TrainConfig
    run_dir: Path
    cache_dir: str | None

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
        }

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
        return cls(
            manifest=manifest,
            manifest_path=c["manifest"],
            folds_path=c["folds"],
            fold=Folds.from_json(c["folds"], manifest).get(c["fold"]),
            backbone=c["backbone"],
            al=ALConfig(**al),
            train=TrainConfig.from_record(c["train"]),
            run_dir=folder,
            cache_dir=c["cache_dir"],
        )


# What makes a run folder the one asked for (paths may move).
RUN_SETTINGS = ("manifest_digest", "fold", "backbone", "al", "train")


def check_same_settings(where: Path, found: dict[str, Any], wanted: dict[str, Any]) -> None:
    """`AfterError` if a result about to be reused or continued was made with other settings
    (else a changed option would silently reuse stale runs). Options a result predates are not
    checked, so results of earlier versions stay reusable."""
    wanted = json.loads(json.dumps(wanted))  # tuples as lists, as written
    if not isinstance(found, dict):
        raise AfterError(f"{where}: not a record of after (wrong shape); delete it to run it again")
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
    if differ:
        raise AfterError(
            f"{where}: made with other settings ({', '.join(differ)}); delete it (or the whole "
            "output folder) to run it again with these, or choose another output folder"
        )


def start_run(run: Run) -> LoopState:
    """Create the run folder and its first state; refuses a folder that holds a run (unless
    its start was cut off before the first state: then it finishes that start), and settings
    `check_run` refuses, before writing anything."""
    check_run(run)
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
    state.save(run.run_dir)
    return state


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
    # The file as written, not as re-serialised: options added since keep old runs resumable.
    written = read_json(run.folder.config, "restore it from a backup")
    if state.config_hash != config_hash(written):
        raise AfterError(f"{run.run_dir}: config.json does not match state.json; was it edited?")
    if oracle is None:
        human = run.al.oracle == "human"
        oracle = (
            HumanOracle(run.run_dir, run.al.min_votes) if human else SimulatedOracle(run.manifest)
        )
    with run_lock(run.run_dir):
        remove_stale_temps(run.run_dir)
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


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the run folder's lock: a second process working on the same run would interleave
    its state writes with ours. The lock goes with the process, even on kill -9."""
    path = RunFolder(run_dir).lock
    try:
        f = open(path, "a+")  # noqa: SIM115 (held for the block)
    except OSError as e:
        raise AfterError(os_error_message(e)) from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise AfterError(
                f"{run_dir}: another after process (pid {f.read().strip() or '?'}) is working "
                "on this run; wait for it to finish"
            ) from None
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def check_run(run: Run) -> list[str]:
    """Refuse, before anything is written or computed, settings this run cannot work with (an
    unknown backbone, a strategy the learner cannot serve, a schedule that does not fit the
    pool, ...); return warnings about settings that work but are likely not what was meant."""
    from after.checks import check_active_learning, check_backbone

    check_backbone(run.backbone)
    check_active_learning(run.al, run.backbone)
    pool_ids, _ = split_pool(run, simulated=run.al.oracle == "simulated")
    if not pool_ids:
        raise AfterError(
            f"fold {run.fold.name}: no labeled training clip for the simulated oracle to reveal; "
            "label the manifest, or let people label it (--oracle human)"
        )
    budgets = parse_schedule(run.al.schedule, len(pool_ids))
    num_classes = len(run.manifest.labels)
    seed = budgets[0].count
    if seed is not None and seed < num_classes:
        return [
            f"the seed set (round 0, schedule {run.al.schedule[0]!r}) has {seed} clip(s) for "
            f"{num_classes} classes, so round 0 trains on at most {seed} of them; a whole number "
            "is a count of clips, a share of the pool is written 5% (or 0.05)"
        ]
    return []


def split_pool(run: Run, *, simulated: bool) -> tuple[list[str], list[str]]:
    """The pool (the fold's training clips the oracle may label: with a simulated oracle, those
    with a label) and the stop set held aside from it for `--stabilize`."""
    m = run.manifest
    candidates = [i for i in run.fold.train if not simulated or m[i].label is not None]
    stop_set: list[str] = []
    if run.al.stabilize_kappa is not None:
        rng = derived_rng(run.al.seed, "stop-set")
        size = min(run.al.stop_set_size, len(candidates) // 4)
        picked = set(rng.choice(len(candidates), size, replace=False).tolist())
        stop_set = [c for k, c in enumerate(candidates) if k in picked]
    held = set(stop_set)
    return [c for c in candidates if c not in held], stop_set


class _Loop:
    def __init__(self, run: Run, state: LoopState, oracle: Oracle, progress: bool) -> None:
        self.run, self.state, self.oracle, self.progress = run, state, oracle, progress
        self.pool_ids, self.stop_set = split_pool(run, simulated=oracle.reveals_manifest_labels)
        self.budgets = parse_schedule(run.al.schedule, len(self.pool_ids))
        self.durations = {i: clip_duration(run.manifest[i]) for i in self.pool_ids}
        self.classifier: Classifier | None = None
        self.timings: dict[str, float] = {}

    # -- views

    def view(self) -> Manifest:
        """The manifest as the learner may see it: pool clips carry only oracle labels."""
        pool = set(self.pool_ids) | set(self.stop_set)
        items = []
        for u in self.run.manifest:
            if u.id in pool:
                label = self.state.labels.get(u.id)
                votes = self.state.votes.get(u.id) if label else None
                u = dataclasses.replace(u, label=label, votes=votes)
            items.append(u)
        return Manifest(items, source="active-learning view")

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
        self._write_queries(queries)
        self.state.pending = queries
        self.state.phase = "label"
        self.state.save(self.run.run_dir)

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
        for i in state.pending:
            if i in answers.labels:
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
        from after.inference import evaluate, predict
        from after.train import fit

        run, state = self.run, self.state
        view = self.view()
        labeled = state.labeled_ids()
        if not labeled:
            raise AfterError(
                f"{run.run_dir}: round {state.round} ended with no labeled clip (every query was "
                "skipped); label some of them, or start the run with a larger seed set"
            )
        t0 = time.perf_counter()
        init, config = self._warm_start(labeled)
        result = fit(
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
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        test = evaluate(
            result.classifier, view, run.fold.test, config=run.train, cache_dir=run.cache_dir
        )
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
            "dev_ua": result.dev["ua"] if result.dev else None,
            "dev_wa": result.dev["wa"] if result.dev else None,
            "dev_macro_f1": result.dev["macro_f1"] if result.dev else None,
            "test_ua": test["ua"],
            "test_wa": test["wa"],
            "test_macro_f1": test["macro_f1"],
            "test_confusion": test["confusion"],
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
        kappa = None
        if self.stop_set:
            preds = predict(result.classifier, view, self.stop_set, config=run.train).argmax(1)
            if state.stop_predictions:
                kappa = cohen_kappa(
                    state.stop_predictions, preds.tolist(), len(run.manifest.labels)
                )
                record["stop_set_kappa"] = kappa
            state.stop_predictions = preds.tolist()
        end = RoundEnd(
            state.round,
            len(self.budgets),
            len(self.unlabeled()),
            result.dev["ua"] if result.dev else None,
            kappa,
        )
        stop = stop_reason(criteria(run.al), end)
        state.rounds.append(record)
        fault_point("train")
        if stop:
            state.phase = "final" if run.al.finetune else "done"
            state.stopped_because = stop
        else:
            state.round += 1
            state.phase = "select"
        state.save(run.run_dir)
        atomic_write_text(run.folder.rounds, _csv(state.rounds))
        return record

    def finetune(self) -> dict[str, Any]:
        """The hybrid recipe's last step: `ALConfig.finetune` fine-tuned once on the final
        labeled set (the selection learner chose every query), then tested; its record is
        `state.final` and the last row of rounds.csv (model: the fine-tuned backbone)."""
        from after.inference import evaluate
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
        test = evaluate(
            result.classifier, view, run.fold.test, config=run.train, cache_dir=run.cache_dir
        )
        eval_s = time.perf_counter() - t0
        save_model(result.classifier, run.folder.final_model, round="final")
        last = state.rounds[-1]
        state.final = {
            "round": "final",
            "model": f"{run.al.finetune} fine-tuned once on the final labeled set",
            "training": describe_training(run.al.finetune, run.train.to_dict()),
            **{k: last[k] for k in ("num_labeled", "fraction", "minutes", "budget")},
            "dev_ua": result.dev["ua"] if result.dev else None,
            "test_ua": test["ua"],
            "test_wa": test["wa"],
            "test_macro_f1": test["macro_f1"],
            "test_confusion": test["confusion"],
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
