"""Experiments: fine-tuning on all labels of a fold (AFTER's V-FT baseline), tested once, and a
resumable runner of it over every fold x seed.

Every result is one record: the settings it was made with (`_SETTINGS`: backbone, the
`TrainConfig`, fold, seed, class labels, digests of the manifest and of the fold's clips), then
its scores. The runner keeps each record in its own JSON file and reuses it only if it was made
with the settings asked for (of the `TrainConfig`, the options its learner reads:
`TrainConfig.read_by`); any other is refused, never reported under settings it was not made with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from after.config import TrainConfig
from after.data.folds import Fold, manifest_digest
from after.data.manifest import Manifest
from after.errors import AfterError
from after.inference import scores_of
from after.io import atomic_write_json, read_json
from after.scoring import score_pool
from after.train import FitResult, fit

# What makes a record the one asked for; `fit_and_test` adds num_train, best_epoch, dev, test
# and seconds.
_SETTINGS = ("backbone", "config", "fold", "seed", "labels", "manifest_digest", "fold_digest")


def _settings(manifest: Manifest, fold: Fold, backbone: str, config: TrainConfig) -> dict[str, Any]:
    """The settings a record of `fit_and_test` carries, as JSON values."""
    clips = "\n".join(",".join(ids) for ids in (fold.train, fold.dev, fold.test))
    return {
        "backbone": backbone,
        "config": config.to_dict(),
        "fold": fold.name,
        "seed": config.seed,
        "labels": manifest.labels,
        "manifest_digest": manifest_digest(manifest),  # ids, speakers and labels
        "fold_digest": hashlib.sha256(clips.encode()).hexdigest()[:16],  # its train, dev, test
    }


def fit_and_test(
    manifest: Manifest,
    fold: Fold,
    backbone: str,
    config: TrainConfig,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> tuple[FitResult, dict[str, Any]]:
    """Fine-tuning on all labels of a fold (AFTER's V-FT baseline): fit on every labeled training
    clip, keep the best dev epoch, test once. Returns the fit and its record: its settings
    (`_SETTINGS`), the number of training clips, best epoch, dev and test scores, training
    seconds and the fit's per-epoch history."""
    labeled = [i for i in fold.train if manifest[i].label is not None]
    result = fit(
        manifest, labeled, fold.dev, backbone, config, cache_dir=cache_dir, progress=progress
    )
    # Tested like the pool is scored: shared out over the processes, gathered in order.
    clf = result.classifier
    probs = score_pool(clf, manifest, fold.test, config=config, cache_dir=cache_dir)["probs"]
    record = {
        **_settings(manifest, fold, backbone, config),
        "num_train": len(labeled),
        "best_epoch": result.best_epoch,
        "dev": result.dev,
        "test": scores_of(clf, manifest, fold.test, probs),
        "seconds": result.seconds,
        "history": result.history,  # per epoch: steps, training loss, dev UA (0: a probe head)
    }
    return result, record


def fit_and_test_folds(
    manifest: Manifest,
    folds: Sequence[Fold],
    seeds: Sequence[int],
    backbone: str,
    config: TrainConfig,
    runs_dir: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    log: Callable[[str], None] = lambda _: None,
    on_fit: Callable[[FitResult, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """`fit_and_test` on every fold x seed (`config` with each seed), each record kept in
    `runs_dir`/{fold}_seed{seed}.json; returns the records, fold by fold. A record already there
    is reused if it was made with these settings, else `AfterError` naming the file and the
    settings that differ; all are checked before anything is fitted. `on_fit` gets each new fit
    and its record before the record is written (so that what it saves is there whenever the
    record is)."""
    from after.train import kind_of

    runs = Path(runs_dir)
    kind = kind_of(backbone)
    jobs = [(fold, dataclasses.replace(config, seed=seed)) for fold in folds for seed in seeds]
    paths = [runs / f"{fold.name}_seed{c.seed}.json" for fold, c in jobs]
    kept: dict[Path, dict[str, Any]] = {}
    for (fold, c), path in zip(jobs, paths, strict=True):
        if path.is_file():
            kept[path] = read_json(path, "choose another output folder (--out)")
            # Of the training options, those its learner reads (`TrainConfig.read_by`).
            wanted = {**_settings(manifest, fold, backbone, c), "config": c.read_by([kind])}
            _check(path, kept[path], wanted)
    for (fold, c), path in zip(jobs, paths, strict=True):
        if path not in kept:
            log(f"fold {fold.name}, seed {c.seed}")
            result, kept[path] = fit_and_test(manifest, fold, backbone, c, cache_dir=cache_dir)
            if on_fit is not None:
                on_fit(result, kept[path])
            atomic_write_json(path, kept[path])
    return [kept[path] for path in paths]


def _check(path: Path, found: dict[str, Any], wanted: dict[str, Any]) -> None:
    """`AfterError` unless the record `found` in `path` was made with the settings `wanted`.
    Training options a record predates are not checked: their defaults are what it was made
    with."""
    if not all(key in found for key in _SETTINGS):
        raise AfterError(
            f"{path}: made by an earlier version of after that did not record its settings, so "
            "it cannot be reused; choose another output folder (--out)"
        )
    differ = []
    for key in _SETTINGS:
        if key == "config":  # option by option
            there = found[key]
            differ += [
                _difference(f"config.{k}", there[k], v)
                for k, v in wanted[key].items()
                if k in there and there[k] != v
            ]
        elif found[key] != wanted[key]:
            differ.append(_difference(key, found[key], wanted[key]))
    if differ:
        raise AfterError(
            f"{path}: made with other settings ({'; '.join(differ)}); run with the settings it "
            "was made with, or choose another output folder (--out) for these"
        )


def _difference(key: str, there: Any, here: Any) -> str:
    if key == "manifest_digest":
        return "the manifest's clips, speakers or labels differ"
    if key == "fold_digest":
        return "the fold's training, dev or test clips differ"
    return f"{key} {there!r} there, {here!r} here"


def save_result(out_dir: str | os.PathLike[str], result: FitResult, **extra: Any) -> Path:
    """Save the model to `out_dir/model` with its training provenance."""
    return result.classifier.save(
        Path(out_dir) / "model",
        best_epoch=result.best_epoch,
        history=result.history,
        num_processes=result.num_processes,
        **extra,
    )
