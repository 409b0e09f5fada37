"""Several processes: TAPT, fine-tuning and pool scoring on 2 CPU processes (torchrun, gloo) give
what one process gives; a killed scoring pass resumes without redoing its finished chunks."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from transformers import AutoModel

import after.inference as inference
import after.train as train
from after.cli import main
from after.config import TaptConfig, TrainConfig
from after.data.folds import Fold, make_folds
from after.data.manifest import Manifest
from after.data.synth import synthesize
from after.errors import AfterError
from after.loop.state import LoopState
from after.models.classifier import Classifier, load_classifier, new_classifier
from after.scoring import score_pool, shard
from after.tapt import DONE_FILE, LOG_FILE, run_tapt
from after.testing.dummies import tone_corpus

FIELDS = ("probs", "embeddings", "mc_probs")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Path, Path, Fold]:
    """3 voices x 2 sentences x 4 emotions = 24 clips; fold 0: 8 train, 8 dev, 8 test clips."""
    root = tmp_path_factory.mktemp("dist")
    m = synthesize(root / "corpus", num_speakers=3, num_sentences=2)
    folds = make_folds(m, "loso", seed=0)
    return m, m.to_jsonl(root / "manifest.jsonl"), folds.to_json(root / "folds.json"), folds.get(0)


@pytest.fixture(scope="module")
def untrained(corpus: tuple[Manifest, Path, Path, Fold]) -> Classifier:
    torch.manual_seed(0)
    return new_classifier("scratch:tiny", corpus[0].labels)


def _chunks(folder: Path) -> list[dict[str, np.ndarray]]:
    chunks = []
    for path in sorted(folder.glob("chunk_*.npz")):
        with np.load(path) as data:
            chunks.append({name: data[name] for name in data.files})
    return chunks


# ---- sharing out ---------------------------------------------------------------------------------


@pytest.mark.parametrize("num_batches", [1, 2, 5, 8, 9])
@pytest.mark.parametrize("num_processes", [1, 2, 3, 4])
def test_every_process_takes_as_many_batches_and_together_all(
    num_batches: int, num_processes: int
) -> None:
    batches = [[b] for b in range(num_batches)]
    shares = [train.rank_batches(batches, r, num_processes) for r in range(num_processes)]
    assert len({len(s) for s in shares}) == 1  # DDP: every process steps as often
    assert len(shares[0]) == math.ceil(num_batches / num_processes)
    assert sorted({b[0] for s in shares for b in s}) == list(range(num_batches))
    assert train.rank_batches(batches, 0, 1) == batches


def test_gradient_accumulation_steps_once_per_group_and_at_the_end_of_an_epoch(
    tmp_path: Path,
) -> None:
    m = tone_corpus(tmp_path / "tones", num_speakers=2, clips_per_label=2)  # 16 clips
    steps: list[int] = []
    hook = register_optimizer_step_post_hook(lambda *_: steps.append(1))
    try:
        config = TrainConfig(epochs=2, min_steps=0, batch_size=4, grad_accum=3, patience=0)
        r = train.fit(
            m, m.ids, [], "scratch:tiny", config, cache_dir=tmp_path / "c", progress=False
        )
    finally:
        hook.remove()
    assert len(steps) == 2 * 2  # 4 batches an epoch: a step after the 3rd and after the 4th
    assert all(math.isfinite(h["train_loss"]) for h in r.history)


@pytest.mark.parametrize("num_chunks", [0, 1, 5, 8])
def test_chunks_are_shared_out_once_each(num_chunks: int) -> None:
    for n in (1, 2, 3):
        shares = [shard(num_chunks, r, n) for r in range(n)]
        assert sorted(k for s in shares for k in s) == list(range(num_chunks))


# ---- one process: the same code path, resumable --------------------------------------------------


def test_a_killed_scoring_pass_redoes_only_its_unfinished_chunks(
    corpus: tuple[Manifest, Path, Path, Fold],
    untrained: Classifier,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m, _, _, fold = corpus
    ids = [*fold.train, *fold.dev]  # 16 clips: chunks of 3, 3, 3, 3, 3, 1
    kw: dict[str, Any] = {
        "embeddings": True,
        "mc_passes": 2,
        "chunk_size": 3,
        "cache_dir": tmp_path / "cache",
    }
    out = tmp_path / "scores"
    first = score_pool(untrained, m, ids, out_dir=out, **kw)
    assert [f.name for f in sorted(out.glob("chunk_*"))] == [f"chunk_{k:05d}.npz" for k in range(6)]
    assert first["probs"].shape == (16, 4) and first["mc_probs"].shape == (16, 4, 2)

    # A pass killed midway: chunk 1 never written, chunk 4 damaged (chunks are not fsynced),
    # a temp file left behind.
    (out / "chunk_00001.npz").unlink()
    (out / "chunk_00004.npz").write_bytes((out / "chunk_00004.npz").read_bytes()[:100])
    (out / ".chunk_00001.npz.x.tmp").write_bytes(b"partial")
    computed: list[int] = []
    real = inference.infer_chunks

    def spy(
        clf: Classifier, manifest: Manifest, chunks: Iterable[tuple[int, list[str]]], **k: Any
    ) -> Iterator[dict[str, np.ndarray]]:
        chunks = list(chunks)
        computed.extend(n for n, _ in chunks)
        return real(clf, manifest, chunks, **k)

    monkeypatch.setattr(inference, "infer_chunks", spy)
    again = score_pool(untrained, m, ids, out_dir=out, **kw)
    assert computed == [1, 4]
    for name in FIELDS:
        np.testing.assert_allclose(again[name], first[name], atol=1e-6)
    assert not list(out.glob(".*.tmp"))

    # Another model's chunks are not reused.
    computed.clear()
    changed = new_classifier("scratch:tiny", m.labels)
    score_pool(changed, m, ids, out_dir=out, **kw)
    assert computed == list(range(6))

    # Without a folder, the same numbers; and the same as one pass over all ids.
    monkeypatch.setattr(inference, "infer_chunks", real)
    in_memory = score_pool(untrained, m, ids, **kw)
    for name in FIELDS:
        np.testing.assert_allclose(in_memory[name], first[name], atol=1e-6)
    whole = inference.infer(untrained, m, ids, embeddings=True, cache_dir=tmp_path / "cache")
    np.testing.assert_allclose(whole["probs"], first["probs"], atol=1e-5)
    np.testing.assert_allclose(whole["embeddings"], first["embeddings"], atol=1e-4)


def test_scoring_refuses_an_id_twice(
    corpus: tuple[Manifest, Path, Path, Fold], untrained: Classifier
) -> None:
    ids = list(corpus[3].train)
    with pytest.raises(AfterError, match="listed twice"):
        score_pool(untrained, corpus[0], [*ids, ids[0]])


def test_after_run_is_one_process_that_starts_its_workers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as e:
        main(["run", "--resume", "nowhere"])
    assert e.value.code == 2 and "--num-processes" in capsys.readouterr().err


# ---- two processes -------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_train_and_score_like_one(
    corpus: tuple[Manifest, Path, Path, Fold], tmp_path: Path
) -> None:
    m, manifest, folds, fold = corpus
    cache = tmp_path / "cache"

    # TAPT on 2 workers started by run_tapt, 2 batches per process accumulated into each step.
    tapt = tmp_path / "tapt"
    config = TaptConfig(
        steps=4,
        batch_size=2,
        max_seconds=1.0,
        warmup_steps=1,
        save_every=2,
        log_every=1,
        grad_accum=2,
        num_processes=2,
    )
    run_tapt(m, fold, "scratch:tiny", tapt, config, progress=False)
    log = [json.loads(line) for line in (tapt / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 for r in log[:-1])
    assert json.loads((tapt / DONE_FILE).read_text())["num_processes"] == 2
    AutoModel.from_pretrained(tapt)
    with pytest.raises(AfterError, match="num_processes"):  # its batches depend on the count
        run_tapt(
            m,
            fold,
            "scratch:tiny",
            tapt,
            TaptConfig(**{**config.to_dict(), "num_processes": 1}),
            resume=True,
        )

    # Fine-tuning from it, the README's recipe: the command under torchrun.
    ft = tmp_path / "ft"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "after", "train", "--manifest", str(manifest), "--folds", str(folds)]
    cmd += ["--fold", "0", "--backbone", str(tapt), "--out", str(ft), "--cache-dir", str(cache)]
    cmd += ["--epochs", "2", "--batch-size", "2", "--lr", "1e-3", "--patience", "0"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((ft / "result.json").read_text())
    assert result["config"]["num_processes"] == 2 and result["test"]["num_clips"] == 8
    clf = load_classifier(ft / "model")
    assert clf.info["num_processes"] == 2
    assert all(math.isfinite(h["train_loss"]) for h in clf.info["history"])

    # Pool scoring on 2 workers started by score_pool, against one process.
    ids = [*fold.train, *fold.dev, *fold.test]  # 24 clips in 5 chunks
    kw: dict[str, Any] = {
        "embeddings": True,
        "mc_passes": 3,
        "chunk_size": 5,
        "cache_dir": cache,
        "seed": 7,
    }
    one = score_pool(clf, m, ids, out_dir=tmp_path / "one", **kw)
    two = score_pool(
        clf,
        m,
        ids,
        config=TrainConfig(num_processes=2),
        out_dir=tmp_path / "two",
        **kw,
    )
    for name in FIELDS:
        assert one[name].shape == two[name].shape and len(two[name]) == len(ids)
        np.testing.assert_allclose(two[name], one[name], atol=1e-5)
    chunks = _chunks(tmp_path / "two")
    assert [i for c in chunks for i in c["ids"].tolist()] == ids  # same order, no gap, no twice
    assert [int(c["process"]) for c in chunks] == [0, 1, 0, 1, 0]  # both processes scored


@pytest.mark.slow
def test_after_run_trains_and_scores_every_round_on_two_processes(
    corpus: tuple[Manifest, Path, Path, Fold], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, manifest, folds, fold = corpus
    out = tmp_path / "run"
    args = ["run", "--manifest", str(manifest), "--folds", str(folds), "--fold", "0"]
    args += ["--backbone", "scratch:tiny", "--strategy", "margin", "--schedule", "3,6"]
    args += ["--cold-start", "random", "--epochs", "1", "--batch-size", "2", "--out", str(out)]
    with pytest.raises(SystemExit) as done:
        main([*args, "--num-processes", "2"])
    assert done.value.code == 0
    state = LoopState.load(out)
    assert state.phase == "done" and [r["num_labeled"] for r in state.rounds] == [3, 6]
    assert json.loads((out / "config.json").read_text())["train"]["num_processes"] == 2
    # Round 1 scored the pool left after round 0, on the workers, into the run folder.
    first = {i for i, r in state.labeled.items() if r == 0}
    (scores,) = (out / "scores" / "round_001").iterdir()
    scored = [i for c in _chunks(scores) for i in c["ids"].tolist()]
    assert sorted(scored) == sorted(set(fold.train) - first)
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:  # the count is one of the run's settings
        main(["run", "--resume", str(out), "--num-processes", "3"])
    assert refused.value.code == 2 and "--num-processes 2" in capsys.readouterr().err
