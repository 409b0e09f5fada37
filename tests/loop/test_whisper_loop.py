"""Whisper through every stage: active learning that fine-tunes it (MC dropout for BALD, gradient
embeddings for BADGE), active learning on its frozen features, and prediction from a run's model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from after.config import ALConfig, TrainConfig
from after.data.folds import Folds
from after.data.manifest import Manifest
from after.loop.runner import Run, run_loop, start_run
from after.models.classifier import load_classifier
from after.scoring import score_pool

# One of tiny.en's four layers trains; the conv stem and three layers are frozen and cached.
FINE_TUNE = TrainConfig(epochs=2, min_steps=0, batch_size=4, lr=1e-4, patience=0, freeze_layers=3)


def _run(
    corpus: tuple[Manifest, Path, Path], out: Path, backbone: str, strategy: str, train: TrainConfig
) -> Run:
    m, manifest, folds = corpus
    fold = Folds.from_json(folds, m).get(0)
    al = ALConfig(strategy=strategy, schedule=("4", "8"), cold_start="random", mc_passes=4)
    return Run(m, str(manifest), str(folds), fold, backbone, al, train, out, str(out / "cache"))


@pytest.mark.slow
def test_active_learning_fine_tunes_whisper_with_mc_dropout(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path
) -> None:
    run = _run(corpus, tmp_path / "bald", "whisper-tiny.en", "bald", FINE_TUNE)
    state = run_loop(run, start_run(run))
    assert state.phase == "done" and [r["num_labeled"] for r in state.rounds] == [4, 8]
    assert not set(state.labeled) & (set(run.fold.dev) | set(run.fold.test))
    assert list((tmp_path / "bald" / "cache").glob("frozen-*/*/*.feat"))  # the frozen bottom

    clf = load_classifier(tmp_path / "bald" / "model")
    m = corpus[0]
    pool = [i for i in run.fold.train if i not in state.labeled]
    out = score_pool(clf, m, pool, embeddings=True, mc_passes=4, config=FINE_TUNE)
    assert out["embeddings"].shape == (len(pool), clf.output_layer().in_features)
    mc = out["mc_probs"]
    # The passes differ (dropout before the classifier is sampled), so BALD's mutual
    # information is positive, not zero.
    mean = mc.mean(axis=2)
    entropy = -(mean * np.log(mean)).sum(axis=1)
    expected = -(mc * np.log(mc)).sum(axis=1).mean(axis=1)
    assert np.all(entropy - expected > -1e-9) and (entropy - expected).max() > 1e-6


def test_active_learning_on_frozen_whisper_features_and_predict(
    corpus: tuple[Manifest, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from after.cli import main

    run = _run(corpus, tmp_path / "badge", "frozen:whisper-tiny.en", "badge", TrainConfig())
    state = run_loop(run, start_run(run))
    assert [r["num_labeled"] for r in state.rounds] == [4, 8]
    clip = corpus[0][run.fold.test[0]]
    with pytest.raises(SystemExit) as e:
        main(["predict", clip.path, "--model", str(tmp_path / "badge" / "model")])
    assert e.value.code in (0, None)
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["label"] in corpus[0].labels and sum(line["scores"].values()) == pytest.approx(1)
