"""Runs for a practitioner's own audio: no folds (the whole manifest is the pool, no test split),
an audit set labeled like queries and kept apart, runs that grow, and runs that start from
another run's labels."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from after.config import ALConfig, TrainConfig
from after.data.folds import Fold, Folds
from after.data.manifest import Manifest
from after.data.synth import synthesize
from after.errors import AfterError
from after.label.store import LabelStore
from after.loop.folder import RunFolder
from after.loop.runner import (
    GROWN,
    Run,
    check_run,
    draw_audit,
    grow_schedule,
    read_carried,
    run_loop,
    start_run,
    whole_pool,
)
from after.loop.state import LoopState
from after.loop.stopping import RoundEnd, TargetUA

FAST = TrainConfig(epochs=3, min_steps=0, batch_size=8, patience=0, lr=1e-3)


def _cache() -> str:
    """The session's feature cache (conftest points AFTER_CACHE_DIR at it): egemaps features
    are extracted once for every test here."""
    from after.cache import default_cache_dir

    return str(default_cache_dir())


def _pool_run(
    corpus: tuple[Manifest, Path, Path], out: Path, *, labels: bool = False, **al: Any
) -> Run:
    """A run without folds, people labeling (the manifest's labels hidden unless `labels`)."""
    m, manifest, _ = corpus
    if not labels:  # the corpus as people would bring it: audio and a label set
        m = Manifest((dataclasses.replace(u, label=None) for u in m), labels=m.labels)
        manifest = m.to_jsonl(out.parent / "unlabeled.jsonl")
    config = ALConfig(**{"schedule": ("6", "10"), "cold_start": "random", "oracle": "human", **al})
    return Run(m, str(manifest), None, whole_pool(m), "egemaps", config, FAST, out, _cache())


def _fold_run(corpus: tuple[Manifest, Path, Path], out: Path, **al: Any) -> Run:
    """A run on fold 0 of the corpus (its dev and test held out), the manifest's labels known."""
    m, manifest, folds = corpus
    fold = Folds.from_json(folds, m).get(0)
    return Run(m, str(manifest), str(folds), fold, "egemaps", ALConfig(**al), FAST, out, _cache())


def _answer(run: Run, state: LoopState, truth: Manifest, who: str = "ann") -> None:
    """People answer every pending clip with its true label (as the app would store it)."""
    rows = [(i, who, truth[i].label) for i in state.pending]
    LabelStore(run.run_dir).put_many(rows, state.round, "web")


def test_a_pool_without_folds_labeled_by_people_with_an_audit_set(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path
) -> None:
    truth = corpus[0]
    run = _pool_run(corpus, tmp_path / "run", audit="12")
    state = run_loop(run, start_run(run))
    assert run.fold.test == () and run.fold.dev == () and len(run.fold.train) == len(truth)
    audit = set(state.audit)
    assert len(audit) == 12 and state.phase == "label" and len(state.pending) == 6 + 12
    # The audit clips are mixed into round 0's queue, not appended as a block.
    positions = [k for k, i in enumerate(state.pending) if i in audit]
    assert positions != list(range(6, 18)) and positions != list(range(12))
    assert RunFolder(run.run_dir).read_queries(0)["ids"] == state.pending
    _answer(run, state, truth)
    state = run_loop(run, state)
    assert set(state.audit_labels) == audit and not audit & set(state.labels)
    assert state.rounds[0]["num_labeled"] == 6 and state.rounds[0]["audit_n"] == 12
    record = state.rounds[0]
    assert record["audit_acc_lo"] <= record["audit_acc"] <= record["audit_acc_hi"]
    assert record["audit_ua_lo"] <= record["audit_ua"] <= record["audit_ua_hi"]
    assert not any(k.startswith(("test_", "dev_")) for k in record)  # no split, no empty figure
    header = (run.run_dir / "rounds.csv").read_text().splitlines()[0].split(",")
    assert "audit_ua_lo" in header and "test_ua" not in header
    # Round 1 queries the pool alone: never an audit clip.
    assert state.round == 1 and len(state.pending) == 4 and not audit & set(state.pending)
    _answer(run, state, truth)
    state = run_loop(run, state)
    assert state.phase == "done" and [r["audit_n"] for r in state.rounds] == [12, 12]
    assert not audit & set(state.labeled)


def test_audit_labels_never_reach_training_selection_or_the_cold_start(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import after.train
    from after.strategies import get_strategy

    seen: dict[str, list[set[str]]] = {"trained": [], "labeled_in_view": [], "pool": []}
    real_fit = after.train.fit

    def fit(view: Manifest, ids: Any, *args: Any, **kw: Any) -> Any:
        seen["trained"].append(set(ids))
        seen["labeled_in_view"].append({u.id for u in view if u.label is not None})
        return real_fit(view, ids, *args, **kw)

    strategy = type(get_strategy(ALConfig.strategy))  # the run's strategy: the default
    real_select = strategy.select

    def select(self: Any, pool: Any, n: int, **kw: Any) -> Any:
        seen["pool"].append(set(pool.ids))
        return real_select(self, pool, n, **kw)

    monkeypatch.setattr(after.train, "fit", fit)
    monkeypatch.setattr(strategy, "select", select)
    truth = corpus[0]
    run = _pool_run(corpus, tmp_path / "run", labels=True, audit="25%", oracle="simulated")
    state = run_loop(run, start_run(run))
    audit = set(state.audit)
    assert state.phase == "done" and len(audit) == 16
    assert seen["pool"] and not any(p & audit for p in seen["pool"])
    assert not any(t & audit for t in seen["trained"])
    assert not any(v & audit for v in seen["labeled_in_view"])  # hidden in what fit reads
    assert state.audit_labels == {i: truth[i].label for i in audit}


def test_the_audit_draw_is_stratified_by_speaker_where_speakers_are_known(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path
) -> None:
    run = _pool_run(corpus, tmp_path / "a", audit="16")
    drawn = draw_audit(run)
    by_speaker = {
        s: sum(run.manifest[i].speaker == s for i in drawn) for s in run.manifest.speakers
    }
    assert len(drawn) == 16 and set(by_speaker.values()) == {4}  # 4 voices of 16 clips each
    assert draw_audit(run) == drawn  # seeded
    again = dataclasses.replace(run, al=dataclasses.replace(run.al, seed=1))
    assert draw_audit(again) != drawn


def test_settings_an_audit_needs_are_checked_first(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path
) -> None:
    with pytest.raises(AfterError, match=r"--target-ua 0.7: this run has no dev split.*--audit"):
        check_run(_pool_run(corpus, tmp_path / "a", target_ua=0.7))
    with pytest.raises(AfterError, match="audit set takes the whole pool"):
        check_run(_pool_run(corpus, tmp_path / "b", audit="64"))
    with pytest.raises(AfterError, match=r"count of clips.*or a share"):
        ALConfig(audit="lots")
    (warning,) = check_run(_pool_run(corpus, tmp_path / "c", audit="12"))
    assert "wide confidence intervals" in warning


def test_target_ua_reads_the_audit_estimate_without_a_dev_split() -> None:
    audit = {"audit_n": 40, "audit_ua": 0.74, "audit_ua_lo": 0.6, "audit_ua_hi": 0.85}
    rule = TargetUA(0.7)
    reason = rule.reason(RoundEnd(1, 5, 10, None, None, audit=audit))
    assert reason.startswith("audit UA 0.740 (95% CI 0.600-0.850, 40 audit labels; no dev split)")
    assert rule.reason(RoundEnd(1, 5, 10, 0.5, None, audit=audit)) == ""  # dev comes first
    assert rule.reason(RoundEnd(1, 5, 10, None, None)) == ""


@pytest.mark.slow
def test_the_audit_interval_covers_the_test_ua_in_most_seeds(tmp_path: Path) -> None:
    """The audit estimate is honest: where audit and test clips come from the same clips (a
    random split of a synthetic corpus), its 95% intervals hold the test figures in most seeds
    (about 85% expected: the test figure is a sample too), and it is not biased."""
    m = synthesize(tmp_path / "corpus", num_speakers=6, num_sentences=10, seed=0)
    path = m.to_jsonl(tmp_path / "m.jsonl")
    covered = {"ua": 0, "acc": 0}
    gaps = []
    seeds = range(12)
    for seed in seeds:
        order = np.random.default_rng(seed).permutation(len(m))
        test, train = [m.ids[k] for k in order[:80]], [m.ids[k] for k in order[80:]]
        fold = Fold("random-split", tuple(train), (), tuple(test), (), ())
        al = ALConfig(
            schedule=("30", "60"), cold_start="random", strategy="random", audit="60", seed=seed
        )
        out = tmp_path / f"run{seed}"
        run = Run(m, str(path), None, fold, "egemaps", al, TrainConfig(seed=seed), out, _cache())
        last = run_loop(run, start_run(run)).rounds[-1]
        covered["ua"] += last["audit_ua_lo"] <= last["test_ua"] <= last["audit_ua_hi"]
        covered["acc"] += last["audit_acc_lo"] <= last["test_wa"] <= last["audit_acc_hi"]
        gaps.append(last["audit_ua"] - last["test_ua"])
    assert covered["ua"] >= 8 and covered["acc"] >= 8, covered
    assert abs(float(np.mean(gaps))) < 0.06, gaps


def test_a_finished_run_grows_into_the_longer_run(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path
) -> None:
    """More rounds for a finished run: with a longer schedule it ends as a run started with
    that schedule would, keeping everything it had."""

    def make(out: Path, schedule: tuple[str, ...]) -> Run:
        return _fold_run(
            corpus, out, schedule=schedule, cold_start="random", strategy="entropy", audit="4"
        )

    longer = make(tmp_path / "whole", ("4", "8", "12"))
    whole = run_loop(longer, start_run(longer))
    short = make(tmp_path / "grown", ("4", "8"))
    state = run_loop(short, start_run(short))
    assert state.phase == "done" and state.stopped_because == "budget spent"
    model = (short.run_dir / "model" / "model.safetensors").read_bytes()
    with pytest.raises(AfterError, match=r"grows by budgets added at its end.*4,8,16") as e:
        grow_schedule(short, ("4", "10", "12"))
    assert "delete" not in str(e.value)
    grown = grow_schedule(short, ("4", "8", "12"))
    config = json.loads(RunFolder(short.run_dir).config.read_text())
    assert config["al"]["schedule"] == ["4", "8", "12"] and config[GROWN][0]["schedule"] == [
        "4",
        "8",
    ]
    state = LoopState.load(short.run_dir)
    assert (state.round, state.phase, state.stopped_because) == (2, "select", "")
    assert (short.run_dir / "model" / "model.safetensors").read_bytes() == model  # kept
    state = run_loop(grown, state)
    assert state.labeled == whole.labeled and state.audit_labels == whole.audit_labels
    assert [r["test_ua"] for r in state.rounds] == [r["test_ua"] for r in whole.rounds]
    assert [r["audit_ua"] for r in state.rounds] == [r["audit_ua"] for r in whole.rounds]


def test_growth_cut_off_between_config_and_state_is_finished_on_resume(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path
) -> None:
    run = _fold_run(corpus, tmp_path / "r", schedule=("4", "8"), cold_start="random")
    state = run_loop(run, start_run(run))
    folder = RunFolder(run.run_dir)
    config = json.loads(folder.config.read_text())
    grown = {**config, "al": {**config["al"], "schedule": ["4", "8", "12"]}}
    grown[GROWN] = [{"schedule": ["4", "8"], "hash": state.config_hash}]
    folder.config.write_text(json.dumps(grown))  # as if killed before state.json was written
    again = Run.from_dir(run.run_dir)
    state = run_loop(again, LoopState.load(run.run_dir))
    assert state.phase == "done" and [r["num_labeled"] for r in state.rounds] == [4, 8, 12]
    folder.config.write_text(json.dumps({**grown, "backbone": "scratch:tiny"}))
    with pytest.raises(AfterError, match=r"does not match state\.json"):
        run_loop(Run.from_dir(run.run_dir), LoopState.load(run.run_dir))


def test_a_new_run_starts_from_another_runs_labels(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path
) -> None:
    truth = corpus[0]
    old = _pool_run(corpus, tmp_path / "old", audit="8")
    state = run_loop(old, start_run(old))
    _answer(old, state, truth)
    old_state = run_loop(old, state)
    assert len(old_state.labels) == 6 and len(old_state.audit_labels) == 8

    # With an audit set: the old audit labels stay audit labels, topped up by new draws.
    new = _pool_run(corpus, tmp_path / "new", audit="10", schedule=("10", "14"))
    carried, notes = read_carried(old.run_dir, new)
    assert notes == []
    new = dataclasses.replace(new, labels_from=carried.source)
    state = start_run(new, carried)
    assert set(old_state.audit_labels) < set(state.audit) and len(state.audit) == 10
    assert state.audit_labels == old_state.audit_labels
    assert state.labels == old_state.labels and set(state.labeled.values()) == {-1}
    assert state.carried["labels"] == 6 and state.carried["audit_labels"] == 8
    state = run_loop(new, state)
    # Round 0 asks for 4 more queries and the 2 audit clips nobody labeled yet.
    assert len(state.pending) == 4 + 2
    assert json.loads(RunFolder(new.run_dir).config.read_text())["labels_from"] == carried.source

    # Without one: the audit labels train too.
    plain = _pool_run(corpus, tmp_path / "plain", schedule=("14", "20"))
    carried, _ = read_carried(old.run_dir, plain)
    state = start_run(plain, carried)
    assert state.audit == [] and len(state.labels) == 6 + 8

    # A folds run takes none of its dev or test clips' labels, and says so.
    folded = _fold_run(
        corpus, tmp_path / "f", schedule=("20", "24"), cold_start="random", oracle="human"
    )
    carried, notes = read_carried(old.run_dir, folded)
    held = set(folded.fold.dev) | set(folded.fold.test)
    assert not held & (set(carried.labels) | set(carried.audit_labels))
    assert any("dev or test split left out" in n for n in notes)


def test_a_schedule_grows_by_its_budgets_not_by_their_spelling(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path
) -> None:
    from after.loop.runner import schedule_relation

    run = _fold_run(corpus, tmp_path / "r", schedule=("0.25", "0.5"), cold_start="random")
    assert schedule_relation(run, ("25%", "50%")) == "same"
    assert schedule_relation(run, ("8",)) == "prefix"  # 25% of the 32-clip pool
    assert schedule_relation(run, ("25%", "0.5", "75%")) == "grows"
    assert schedule_relation(run, ("0.25", "0.6")) == "other"
    assert schedule_relation(run, ("nonsense",)) == "other"
