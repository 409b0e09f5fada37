"""The active-learning loop on the demo corpus: rounds, honesty, stopping, kill -9 and resume."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import wilcoxon

from after.config import ALConfig, TrainConfig
from after.data.folds import Folds
from after.data.manifest import Manifest
from after.errors import AfterError
from after.loop.compare import compare
from after.loop.oracle import SimulatedOracle
from after.loop.runner import (
    Budget,
    Run,
    _Loop,
    check_run,
    parse_schedule,
    run_loop,
    start_run,
)
from after.loop.state import LoopState

FAST = TrainConfig(epochs=3, min_steps=0, batch_size=8, patience=0, lr=1e-3)


def _run(corpus: tuple[Manifest, Path, Path], out: Path, **al: object) -> Run:
    m, manifest, folds = corpus
    fold = Folds.from_json(folds, m).get(0)
    config = ALConfig(**{"schedule": ("4", "8", "12"), "cold_start": "random", **al})  # type: ignore[arg-type]
    return Run(m, str(manifest), str(folds), fold, "scratch:tiny", config, FAST, out, None)


def test_schedule_parsing() -> None:
    assert parse_schedule(["0.1", "0.25", "40"], 100) == [Budget(10), Budget(25), Budget(40)]
    assert parse_schedule(["2min", "5min"], 100)[1] == Budget(minutes=5.0)
    for bad in (["0.2", "0.1"], ["1.5"], ["x"], ["5", "2min"], ["200"]):
        with pytest.raises(AfterError):
            parse_schedule(bad, 100)


def test_schedule_takes_percent_shares() -> None:
    assert parse_schedule(["5%", "10%", "100%"], 200) == [Budget(10), Budget(20), Budget(200)]
    assert parse_schedule(["5%"], 200) == parse_schedule(["0.05"], 200)
    with pytest.raises(AfterError, match=r"share of the pool \(5% or 0.05\)"):
        parse_schedule(["5 %x"], 100)


def _refused(run: Run, match: str) -> None:
    """`start_run` refuses `run` with a message matching `match`, and writes nothing."""
    with pytest.raises(AfterError, match=match):
        start_run(run)
    assert not run.run_dir.exists()


def test_settings_that_cannot_work_are_refused_before_anything_starts(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path
) -> None:
    # ALPS needs a wav2vec 2.0 with its pre-training head; a feature backbone is not one.
    alps = dataclasses.replace(_run(corpus, tmp_path / "a", strategy="alps"), backbone="egemaps")
    _refused(alps, r"--strategy alps .* --surprisal-model DIR.*'egemaps' is a feature backbone")
    whisper = _run(corpus, tmp_path / "b", cold_start="alps", surprisal_model="whisper-tiny.en")
    _refused(whisper, r"--cold-start alps .*--surprisal-model 'whisper-tiny.en' is a whisper")
    _refused(_run(corpus, tmp_path / "d", min_votes=2), r"--min-votes 2.*--oracle human")
    _refused(_run(corpus, tmp_path / "e", target_ua=60.0), r"0.6, not 60")
    _refused(_run(corpus, tmp_path / "f", schedule=("8", "4")), "increasing")
    _refused(_run(corpus, tmp_path / "g", schedule=("4", "400")), "exceeds the pool")
    unknown = dataclasses.replace(_run(corpus, tmp_path / "h"), backbone="no/such-model")
    _refused(unknown, "no/such-model")
    _refused(_run(corpus, tmp_path / "i", strategy="nosuch"), "unknown query strategy")


def test_a_seed_set_smaller_than_the_classes_is_warned_about(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path
) -> None:
    (warning,) = check_run(_run(corpus, tmp_path / "r", schedule=("2", "8")))
    assert "2 clip(s) for 4 classes" in warning and "5%" in warning
    assert check_run(_run(corpus, tmp_path / "r", schedule=("4", "8"))) == []


def test_a_run_completes_its_rounds_and_stays_honest(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path
) -> None:
    run = _run(corpus, tmp_path / "run", strategy="entropy")
    state = run_loop(run, start_run(run))
    assert state.phase == "done" and state.stopped_because == "budget spent"
    assert [r["num_labeled"] for r in state.rounds] == [4, 8, 12]
    assert sorted(set(state.labeled.values())) == [0, 1, 2]
    fold = run.fold
    assert set(state.labeled) <= set(fold.train)
    assert not set(state.labeled) & (set(fold.dev) | set(fold.test))
    rows = (tmp_path / "run" / "rounds.csv").read_text().splitlines()
    assert len(rows) == 4 and "test_ua" in rows[0]
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    with pytest.raises(AfterError, match="--resume"):
        start_run(run)


def test_the_learner_sees_only_oracle_labels(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path
) -> None:
    run = _run(corpus, tmp_path / "run")
    state = start_run(run)
    state.labels = {run.fold.train[0]: "anger"}
    loop = _Loop(run, state, SimulatedOracle(run.manifest), progress=False)
    view = loop.view()
    assert view[run.fold.train[0]].label == "anger"
    assert all(view[i].label is None for i in run.fold.train[1:])
    assert all(view[i].label == run.manifest[i].label for i in [*run.fold.dev, *run.fold.test])


def test_stopping_criteria(corpus: tuple[Manifest, Path, Path], tmp_path: Path) -> None:
    run = _run(corpus, tmp_path / "target", target_ua=0.0)
    state = run_loop(run, start_run(run))
    assert len(state.rounds) == 1 and "reached the target" in state.stopped_because
    run = _run(corpus, tmp_path / "stable", stabilize_kappa=-1.0, schedule=("4", "6", "8", "10"))
    state = run_loop(run, start_run(run))
    assert len(state.rounds) == 2 and "stable" in state.stopped_because
    stop_set = set(_Loop(run, state, SimulatedOracle(run.manifest), False).stop_set)
    assert stop_set and not stop_set & set(state.labeled)  # held aside, never queried


def test_kill_9_mid_round_then_resume_gives_the_clean_result(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path
) -> None:
    _, manifest, folds = corpus
    args = ["--manifest", str(manifest), "--folds", str(folds), "--fold", "0"]
    args += ["--backbone", "scratch:tiny", "--strategy", "margin", "--schedule", "4,8,12,16"]
    args += ["--cold-start", "random", "--epochs", "3", "--lr", "0.001", "--patience", "0"]
    args += ["--min-steps", "0"]
    env = {**os.environ, "AFTER_CACHE_DIR": str(tmp_path / "cache")}
    clean = tmp_path / "clean"
    cmd = [sys.executable, "-m", "after", "run", *args]
    subprocess.run([*cmd, "--out", str(clean)], check=True, env=env, capture_output=True)

    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        [*cmd, "--out", str(cut)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill once round 1 is under way
        try:
            s = json.loads((cut / "state.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            s = {}
        if s.get("round") == 1 and s.get("phase") in ("label", "train"):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert LoopState.load(cut).phase != "done"
    done = subprocess.run(
        [sys.executable, "-m", "after", "run", "--resume", str(cut)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    a, b = LoopState.load(clean), LoopState.load(cut)
    assert b.phase == "done" and a.labeled == b.labeled and a.labels == b.labels
    assert [r["test_ua"] for r in a.rounds] == [r["test_ua"] for r in b.rounds]


def test_compare_writes_curves_and_resumes(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path
) -> None:
    m, manifest, folds_path = corpus
    folds = Folds.from_json(folds_path, m)
    al = ALConfig(schedule=("4", "8"), cold_start="random")
    args = (
        m,
        str(manifest),
        str(folds_path),
        [folds.get(0)],
        "egemaps",
        ["random", "margin"],
        [0, 1],
        al,
        FAST,
        tmp_path,
    )
    lines: list[str] = []
    summary = compare(*args, cache_dir=str(tmp_path / "cache"), log=lines.append)
    assert set(summary["strategies"]) == {"random", "margin"}
    curve = summary["strategies"]["margin"]
    assert [p["test_ua"]["n"] for p in curve["points"]] == [2, 2]
    assert curve["time_vs_full"] > 0
    assert (tmp_path / "curve.csv").read_text().count("\n") == 2 * 2 + 2
    assert "All labels" in (tmp_path / "summary.md").read_text()
    # Margin against random, paired by (fold, seed): the differences of the runs' own rounds.
    margin, rand = (
        [
            LoopState.load(tmp_path / "runs" / folds.get(0).name / f"{s}_seed{k}").rounds
            for k in (0, 1)
        ]
        for s in ("margin", "random")
    )
    expected = [
        [m_[r]["test_ua"] - r_[r]["test_ua"] for m_, r_ in zip(margin, rand, strict=True)]
        for r in (0, 1)
    ]
    # Two budgets: the area under a run's UA line over its span is the mean of its two UAs.
    aucs = [(run[0]["test_ua"] + run[1]["test_ua"]) / 2 for run in margin]
    assert curve["auc_ua"]["mean"] == pytest.approx(np.mean(aucs))
    vs = curve["vs_random"]
    assert [p["budget"] for p in vs] == ["4", "8"] and [p["n"] for p in vs] == [2, 2]
    assert [p["mean"] for p in vs] == pytest.approx([np.mean(e) for e in expected])
    p_values = [wilcoxon(e).pvalue if np.any(np.array(e) != 0) else 1.0 for e in expected]
    assert [p["wilcoxon_p"] for p in vs] == pytest.approx(p_values)
    assert "Wilcoxon" in (tmp_path / "summary.md").read_text()
    lines.clear()
    compare(*args, cache_dir=str(tmp_path / "cache"), log=lines.append)
    assert lines == []  # everything was already done


def test_unlabeled_clips_cannot_be_simulated(corpus: tuple[Manifest, Path, Path]) -> None:
    m = corpus[0]
    from dataclasses import replace

    clip = next(iter(m))
    blank = Manifest([replace(clip, label=None)])
    with pytest.raises(AfterError, match="no label"):
        SimulatedOracle(blank).label([clip.id])


def test_compare_command(corpus: tuple[Manifest, Path, Path], tmp_path: Path) -> None:
    from after.cli import main

    _, manifest, folds = corpus
    args = ["compare", "--manifest", str(manifest), "--folds", str(folds), "--fold", "0"]
    args += ["--backbone", "egemaps", "--strategies", "random,entropy", "--seeds", "0"]
    args += ["--schedule", "4,8", "--cold-start", "random", "--epochs", "3", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code in (0, None)
    assert "| entropy |" in (tmp_path / "summary.md").read_text()
    with pytest.raises(SystemExit) as e:
        main([*args[:-2], "--strategies", "nosuch", "--out", str(tmp_path / "x")])
    assert e.value.code == 2


@pytest.mark.parametrize(
    ("start", "strategy"), [("typiclust", "probcover"), ("probcover", "typiclust")]
)
def test_typical_cold_starts_and_strategies_run(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path, start: str, strategy: str
) -> None:
    m, manifest, folds = corpus
    fold = Folds.from_json(folds, m).get(0)
    al = ALConfig(strategy=strategy, schedule=("4", "8"), cold_start=start)
    run = Run(
        m, str(manifest), str(folds), fold, "egemaps", al, FAST, tmp_path, str(tmp_path / "c")
    )
    state = run_loop(run, start_run(run))
    assert [r["num_labeled"] for r in state.rounds] == [4, 8]
    # The seed set was chosen on the run's own features, standardised over the pool.
    assert state.cold_start["method"] == start and state.cold_start["embedding"] == "egemaps"


def test_no_round_picks_an_epoch_on_dev_labels(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path
) -> None:
    run = _run(corpus, tmp_path / "run", strategy="entropy")
    assert run.train.select_on_dev is False
    # Only a strategy that samples weights makes a frozen-features learner fit a posterior.
    assert not run.train.weight_posterior
    assert _run(corpus, tmp_path / "bald", strategy="bald").train.weight_posterior
    state = run_loop(run, start_run(run))
    assert all(r["best_epoch"] == FAST.epochs for r in state.rounds)  # the last epoch, always
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["select_on_dev"] is False


def test_a_spread_run_queries_more_voices_and_classes(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path
) -> None:
    m, manifest, folds_path = corpus
    fold = Folds.from_json(folds_path, m).get(0)
    picked = []
    for flag in (False, True):
        al = ALConfig(strategy="margin", schedule=("4", "12"), cold_start="random", spread=flag)
        out = tmp_path / str(flag)
        run = Run(m, str(manifest), str(folds_path), fold, "egemaps", al, FAST, out, None)
        state = run_loop(run, start_run(run))
        picked.append([i for i, r in state.labeled.items() if r == 1])
    plain, spread_ = ({(m[i].speaker, m[i].label) for i in ids} for ids in picked)
    assert len(spread_) >= len(plain) and len(picked[1]) == 8


def test_a_warm_started_round_costs_what_it_adds(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import after.train as train

    calls: list[tuple[bool, int | None]] = []
    real_fit = train.fit

    def spy(*args: object, **kwargs: object) -> train.FitResult:
        calls.append((kwargs.get("init") is not None, args[4].max_steps))  # type: ignore[attr-defined]
        return real_fit(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(train, "fit", spy)
    run = _run(corpus, tmp_path / "warm", strategy="entropy", warm_start=True, shrink=0.5)
    state = run_loop(run, start_run(run))
    assert [r["num_labeled"] for r in state.rounds] == [4, 8, 12]
    # Round 0 from the backbone, the full budget; rounds 1 and 2 from the last model, for
    # `epochs` passes over their 4 new clips (one batch of 8): 3 steps each.
    assert calls == [(False, None), (True, 3), (True, 3)]
    # With a floor of steps per fit, warm rounds take at least that many too.
    calls.clear()
    run = _run(corpus, tmp_path / "floor", strategy="entropy", warm_start=True, shrink=0.5)
    run = dataclasses.replace(run, train=dataclasses.replace(FAST, min_steps=5))
    run_loop(run, start_run(run))
    assert calls == [(False, None), (True, 5), (True, 5)]


def test_shrink_toward_a_fresh_start() -> None:
    import torch

    from after.train import shrink_toward

    trained, start = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    shrink_toward(trained, start, 0.25)
    for name, value in trained.state_dict().items():
        torch.testing.assert_close(value, 0.25 * before[name] + 0.75 * start.state_dict()[name])


def test_the_hybrid_recipe_selects_with_frozen_features_then_fine_tunes_once(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path
) -> None:
    from after.models.classifier import load_classifier

    def frozen(out: Path, **al: object) -> Run:
        return dataclasses.replace(_run(corpus, out, strategy="margin", **al), backbone="egemaps")

    plain = run_loop(r := frozen(tmp_path / "plain"), start_run(r))
    run = frozen(tmp_path / "hybrid", finetune="scratch:tiny")
    check_run(run)
    state = run_loop(run, start_run(run))
    assert state.phase == "done"
    # The frozen learner chose every query: the same labeled set as without the final fit.
    assert state.labeled == plain.labeled and state.rounds[-1]["model"] == "egemaps"
    final = state.final
    assert final["model"].startswith("scratch:tiny fine-tuned once")
    assert final["num_labeled"] == 12 and final["train_s"] > 0
    rows = (tmp_path / "hybrid" / "rounds.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[-1].startswith("final,scratch:tiny fine-tuned once")
    clf = load_classifier(tmp_path / "hybrid" / "model_finetuned")
    assert clf.kind == "transformers" and clf.labels == run.manifest.labels
    from after.report import read_report_inputs, report_protocol

    said = report_protocol(read_report_inputs([tmp_path / "hybrid"]))["final model"]
    assert (
        said.startswith("scratch:tiny fine-tuned once") and f"{100 * final['test_ua']:.1f}" in said
    )
    with pytest.raises(AfterError, match="hybrid recipe"):
        check_run(frozen(tmp_path / "bad", finetune="egemaps"))


def test_stopping_criteria_give_the_first_reason() -> None:
    from after.config import ALConfig
    from after.loop.stopping import RoundEnd, criteria, stop_reason

    found = criteria(ALConfig(target_ua=0.8, stabilize_kappa=0.9))
    going = RoundEnd(round=1, num_rounds=4, num_unlabeled=10, dev_ua=0.7, kappa=0.5)
    assert stop_reason(found, going) == ""
    assert stop_reason(found, dataclasses.replace(going, round=3)) == "budget spent"
    assert stop_reason(found, dataclasses.replace(going, num_unlabeled=0)) == "pool exhausted"
    assert "reached the target 0.8" in stop_reason(found, dataclasses.replace(going, dev_ua=0.8))
    assert "kappa 0.950" in stop_reason(found, dataclasses.replace(going, kappa=0.95))
    # Without the optional criteria, dev UA and agreement stop nothing.
    plain = criteria(ALConfig())
    assert stop_reason(plain, dataclasses.replace(going, dev_ua=1.0, kappa=1.0)) == ""
