"""Scoring the unlabeled pool (or any clips) with a classifier, shared out over processes and
resumable after a kill.

The ids are cut into chunks of `chunk_size` consecutive ids (chunk k holds ids[k*size:(k+1)*size]),
and process r of N scores chunks r, r+N, r+2N, ... The chunks do not depend on N, and the
MC-dropout masks of a chunk are seeded by its number, so the outputs are the same on any number
of processes (up to float rounding). No process gets padding: a process with fewer chunks simply
finishes first, and nothing is computed twice.

With `out_dir`, every finished chunk is written at once, atomically, as `chunk_KKKKK.npz` (its
ids, its outputs, and the key of the pass: a fingerprint of the model's weights and the scoring
settings). A pass killed midway picks up where it stopped: a chunk whose file holds the same ids
and key is read, not recomputed; a missing, damaged or stale file is recomputed. The chunks are
then read back in order (by every process of a launched group, or by the process that started
the workers), checking that together they hold each id exactly once.

Memory stays flat: a process holds one chunk's activations at a time (`infer_chunks`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from after.config import TrainConfig
from after.data.manifest import Manifest
from after.dist import job_folder, launch, must_launch, state
from after.errors import AfterError
from after.faults import fault_point
from after.io import open_regular, temp_file_for
from after.models.classifier import Classifier
from after.progress import progress_bar

CHUNK_SIZE = 256
_FIELDS = ("probs", "embeddings", "mc_probs")


def score_pool(
    clf: Classifier,
    manifest: Manifest,
    ids: Sequence[str],
    *,
    embeddings: bool = False,
    mc_passes: int = 0,
    seed: int = 0,
    config: TrainConfig | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> dict[str, np.ndarray]:
    """`after.inference.infer` of `ids` on every process: `probs` (N, C), and with `embeddings` the
    output layer's input (N, D), with `mc_passes` S > 0 `mc_probs` (N, C, S), in the order of
    `ids`, on every process.

    Called in one plain process with `config.num_processes` > 1, it starts that many workers
    (`after.dist.launch`) and reads what they wrote; under a launcher, every process must call
    it. `out_dir` keeps the finished chunks so that a killed pass resumes (see the module
    docstring); without it they pass through memory (or a temporary folder for workers).
    """
    config = config or TrainConfig()
    ids = list(ids)
    twice = [i for i, n in Counter(ids).items() if n > 1]
    if twice:
        raise AfterError(f"score_pool: utterance {twice[0]!r} is listed twice; give each id once")
    if chunk_size < 1:
        raise AfterError(f"chunk_size={chunk_size}: a chunk needs at least one clip")
    chunks = [ids[k : k + chunk_size] for k in range(0, len(ids), chunk_size)]
    key = pass_key(clf, embeddings=embeddings, mc_passes=mc_passes, seed=seed, config=config)
    options = {"embeddings": embeddings, "mc_passes": mc_passes, "seed": seed}

    if must_launch(config.num_processes, "pool scoring"):
        with contextlib.ExitStack() as stack:
            if out_dir is None:
                folder = stack.enter_context(job_folder(None)) / "scores"
            else:
                folder = Path(out_dir)
            if any(not _is_done(folder, k, c, key) for k, c in enumerate(chunks)):
                job = stack.enter_context(job_folder(folder))
                manifest.to_jsonl(job / "manifest.jsonl")
                clf.save(job / "model")
                payload = {
                    **options,
                    "ids": ids,
                    "config": config.to_dict(),
                    "cache_dir": None if cache_dir is None else str(cache_dir),
                    "out_dir": str(folder),
                    "chunk_size": chunk_size,
                    "key": key,
                }
                launch("after.scoring:score_worker", payload, config.num_processes, job)
            return _gather(folder, chunks, key, clf, embeddings, mc_passes)
    return _score_here(clf, manifest, chunks, key, options, config, cache_dir, out_dir)


def score_worker(payload: dict[str, Any], job: Path) -> None:
    """One of the processes `score_pool` starts: writes its chunks to `out_dir` (the caller
    reads them all)."""
    from after.models.classifier import load_classifier

    ids, size = payload["ids"], payload["chunk_size"]
    _write_share(
        load_classifier(job / "model"),
        Manifest.from_jsonl(job / "manifest.jsonl"),
        [ids[k : k + size] for k in range(0, len(ids), size)],
        payload["key"],  # the weights are the caller's, saved: its key holds
        {k: payload[k] for k in ("embeddings", "mc_passes", "seed")},
        TrainConfig(**payload["config"]),
        payload["cache_dir"],
        Path(payload["out_dir"]),
    )


def shard(num_chunks: int, rank: int, num_processes: int) -> list[int]:
    """The chunk numbers process `rank` of `num_processes` scores."""
    return list(range(rank, num_chunks, num_processes))


def _score_here(
    clf: Classifier,
    manifest: Manifest,
    chunks: list[list[str]],
    key: str,
    options: dict[str, Any],
    config: TrainConfig,
    cache_dir: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str] | None,
) -> dict[str, np.ndarray]:
    """This process's share of the chunks (all of them when it is alone), then all of them."""
    embeddings, mc_passes = options["embeddings"], options["mc_passes"]
    if out_dir is not None:
        folder = Path(out_dir)
        _write_share(clf, manifest, chunks, key, options, config, cache_dir, folder)
        return _gather(folder, chunks, key, clf, embeddings, mc_passes)
    from after.inference import infer_chunks

    st = state()
    mine = shard(len(chunks), st.process_index, st.num_processes)
    work = [(k, chunks[k]) for k in mine]
    run = {"config": config, "cache_dir": cache_dir, **options}
    done = {}
    with _progress(work, st) as advance:
        for k, out in zip(mine, infer_chunks(clf, manifest, work, **run), strict=True):
            done[k] = out
            advance(len(chunks[k]))
    if st.num_processes > 1:
        from accelerate.utils import gather_object

        done = {k: out for part in gather_object([done]) for k, out in part.items()}
    return _assemble(chunks, done, clf, embeddings, mc_passes)


def _write_share(
    clf: Classifier,
    manifest: Manifest,
    chunks: list[list[str]],
    key: str,
    options: dict[str, Any],
    config: TrainConfig,
    cache_dir: str | os.PathLike[str] | None,
    folder: Path,
) -> None:
    """Score this process's chunks that `folder` does not hold yet, writing each when it is
    done; return when every process is done."""
    from after.inference import infer_chunks

    st = state()
    folder.mkdir(parents=True, exist_ok=True)
    mine = shard(len(chunks), st.process_index, st.num_processes)
    todo = [k for k in mine if not _is_done(folder, k, chunks[k], key)]
    work = [(k, chunks[k]) for k in todo]
    run = {"config": config, "cache_dir": cache_dir, **options}
    with _progress(work, st) as advance:
        for k, out in zip(todo, infer_chunks(clf, manifest, work, **run), strict=True):
            _write_chunk(folder, k, chunks[k], key, out, st.process_index)
            fault_point("score-chunk")
            advance(len(chunks[k]))
    st.wait_for_everyone()


@contextlib.contextmanager
def _progress(work: list[tuple[int, list[str]]], st: Any) -> Iterator[Callable[[int], None]]:
    """A progress display of the main process's share of the clips, advanced chunk by chunk."""
    with progress_bar(st.is_main_process, transient=True) as bar:
        task = bar.add_task("scoring", total=sum(len(ids) for _, ids in work))
        yield lambda n: bar.advance(task, n)


# ---- the pass key and chunk files ---------------------------------------------------------------


def pass_key(
    clf: Classifier, *, embeddings: bool, mc_passes: int, seed: int, config: TrainConfig
) -> str:
    """What a chunk file must match to be reused: the model's weights (a SHA-256 of every tensor)
    and the settings that change the outputs."""
    h = hashlib.sha256()
    for name, tensor in sorted(clf.module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    if clf.features is not None:
        h.update(clf.features.version.encode())
    key = {
        "model": h.hexdigest()[:32],
        "kind": clf.kind,
        "labels": clf.labels,
        "embeddings": embeddings,
        "mc_passes": mc_passes,
        "seed": seed,
        "max_eval_seconds": config.max_eval_seconds,
        "eval_batch_size": config.eval_batch_size,
    }
    return json.dumps(key, sort_keys=True)


def _chunk_path(folder: Path, k: int) -> Path:
    return folder / f"chunk_{k:05d}.npz"


def _read_chunk(path: Path, ids: list[str], key: str) -> dict[str, np.ndarray] | None:
    """The chunk's outputs when the file holds exactly `ids` under `key`; else None."""
    try:  # a chunk that is not a regular file (a FIFO, a link to /dev/zero) is not read
        with open_regular(path, "") as f, np.load(f, allow_pickle=False) as data:
            if str(data["key"]) != key or data["ids"].tolist() != ids:
                return None
            out = {f: data[f] for f in _FIELDS if f in data.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, AfterError):
        return None
    if "probs" not in out or any(len(v) != len(ids) for v in out.values()):
        return None
    return out


def _is_done(folder: Path, k: int, ids: list[str], key: str) -> bool:
    return _read_chunk(_chunk_path(folder, k), ids, key) is not None


def _write_chunk(
    folder: Path, k: int, ids: list[str], key: str, out: dict[str, np.ndarray], process: int
) -> None:
    """Write chunk k atomically (a temporary file, then a rename): a reader sees all of it or
    nothing. Not fsynced: a chunk lost to a power cut is recomputed. `process` (who computed
    it) is kept for the record."""
    path = _chunk_path(folder, k)
    fd, tmp = temp_file_for(path)
    try:
        arrays: dict[str, Any] = {
            "ids": np.array(ids),
            "key": np.array(key),
            "process": np.array(process),
            **out,
        }
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise AfterError(f"{path}: cannot write pool scores here ({e.strerror})") from e


def _gather(
    folder: Path,
    chunks: list[list[str]],
    key: str,
    clf: Classifier,
    embeddings: bool,
    mc_passes: int,
) -> dict[str, np.ndarray]:
    """Read every chunk, in order; each must hold exactly its ids under this pass's key."""
    done = {}
    for k, ids in enumerate(chunks):
        out = _read_chunk(_chunk_path(folder, k), ids, key)
        if out is None:
            raise AfterError(
                f"{_chunk_path(folder, k)}: missing or not from this pass after scoring; was "
                f"{folder} changed meanwhile? Delete that folder (scores only, no label is in it) "
                "and score again"
            )
        done[k] = out
    if state().is_main_process:
        for stale in folder.glob(".chunk_*.tmp"):  # left by a killed pass
            stale.unlink(missing_ok=True)
    return _assemble(chunks, done, clf, embeddings, mc_passes)


def _assemble(
    chunks: list[list[str]],
    done: dict[int, dict[str, np.ndarray]],
    clf: Classifier,
    embeddings: bool,
    mc_passes: int,
) -> dict[str, np.ndarray]:
    """The chunks' outputs, concatenated in chunk order (which is the order of the ids)."""
    if sorted(done) != list(range(len(chunks))):
        raise AfterError(f"pool scoring: chunks {sorted(set(range(len(chunks))) - set(done))} lost")
    num_classes = len(clf.labels)
    empty = {"probs": np.zeros((0, num_classes))}
    if embeddings:
        empty["embeddings"] = np.zeros((0, clf.output_layer().in_features), dtype=np.float32)
    if mc_passes:
        empty["mc_probs"] = np.zeros((0, num_classes, mc_passes))
    return {
        name: np.concatenate([zero, *(done[k][name] for k in range(len(chunks)))])
        for name, zero in empty.items()
    }
