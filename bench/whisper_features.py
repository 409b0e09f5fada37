"""Frozen Whisper features on EmoDB, leave-one-speaker-out: which layer, pooling and input window,
how fast, and whether the project's learner matches a tuned scikit-learn logistic regression.

    .venv/bin/python bench/whisper_features.py [--models whisper-tiny.en,whisper-base]
        [--windows cut,30] [--folds 10]

1. Choice. For each Whisper model and input window, every clip goes once through the encoder and
   every layer's frames are pooled over the clip's own frames: the mean, and the mean with the
   standard deviation. Windows: `cut` (the log-mel input cut to the clip; what `frozen:` uses),
   `8` (padded to 8 s, the sinusoidal position table read for 8 s), `30` (Whisper's own 30 s
   window). Each (layer, pooling) is scored by the project's learner (`after.models.linear`:
   logistic regression, C by inner CV over the training speakers) on all 10 folds; clips per
   second of the extraction are timed on the same run. The padded windows are scored at the
   middle and last layers only, and the 30 s window of whisper-base is left out by default: it
   takes about 25 minutes on two CPU cores.
2. The learner against scikit-learn, side by side on the same features and folds: a standardised
   multinomial `LogisticRegression` (class-balanced) whose C is chosen by 5-fold cross-validation
   grouped by speaker over the training speakers (balanced accuracy), on the default features of
   `frozen:whisper-tiny.en`, `resemblyzer` and `egemaps`.
3. Through the real path: `after.experiments.fit_and_test` (what `after cv` runs) with the default
   features, 10 folds x seeds 0,1,2 (the learner has no randomness: the seeds agree exactly).

Prints one JSON object. EmoDB is read from ../shared/data/emodb.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from md import table

EMODB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emodb"
C_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0)


def hidden_states(name: str, window: str, manifest: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """(mean (N, L+1, D), std (N, L+1, D), clips per second) of every layer over each clip's
    frames, for input window `window` ("cut" or seconds)."""
    import torch

    from after.data.audio import load_audio
    from after.models.backbones import family_of
    from after.models.classifier import new_classifier

    clf = new_classifier(name, ["a", "b"])
    model, fe = clf.module.eval(), clf.feature_extractor
    family = family_of(model.config)
    num_layers = len(model.encoder.layers)
    means, stds = [], []
    t0 = time.perf_counter()
    for u in manifest:
        inputs = family.inputs([load_audio(u.path)], fe)
        if window != "cut":
            # A fixed window: the clip padded to it (the mask covers all of it, as Whisper's own
            # encoder sees it); pooling below still reads the clip's own frames.
            frames = int(float(window) * 100)
            inputs["input_features"] = inputs["input_features"][..., :frames]
            clip = int(inputs["attention_mask"].sum())
            inputs["attention_mask"] = torch.ones_like(inputs["attention_mask"][..., :frames])
        else:
            clip = int(inputs["attention_mask"].sum())
        with torch.no_grad():
            h, mask = model.embed(inputs["input_features"], inputs["attention_mask"])
            states = [h]
            for k in range(num_layers):
                h = model.encode(h, mask, start=k, end=k + 1)  # the last one: layer-normed
                states.append(h)
        own = max(1, (clip + 1) // 2)
        stacked = torch.stack([s[0, :own] for s in states])  # (L+1, T, D)
        means.append(stacked.mean(dim=1).numpy())
        stds.append(stacked.std(dim=1, correction=0).numpy())
    rate = len(manifest) / (time.perf_counter() - t0)
    return np.stack(means), np.stack(stds), rate


def loso_ours(x: np.ndarray, y: np.ndarray, speakers: np.ndarray, folds: list[Any]) -> list[float]:
    """Per-fold test UA of the project's learner (C by inner CV over training speakers)."""
    from after.models.linear import fit_head
    from after.train import class_weights

    uas = []
    k = int(y.max()) + 1
    for fold in folds:
        train, test = np.array(fold.train_idx), np.array(fold.test_idx)
        q = np.eye(k)[y[train]]
        fit = fit_head(x[train], q, q @ class_weights(q), list(speakers[train]))
        predicted = (((x[test] - fit.mean) / fit.scale) @ fit.weight.T + fit.bias).argmax(axis=1)
        uas.append(_ua(y[test], predicted))
    return uas


def loso_sklearn(
    x: np.ndarray, y: np.ndarray, speakers: np.ndarray, folds: list[Any]
) -> list[float]:
    """Per-fold test UA of scikit-learn's LogisticRegression, C by GroupKFold over training
    speakers."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def model(c: float) -> Any:
        lr = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
        return make_pipeline(StandardScaler(), lr)

    uas = []
    for fold in folds:
        train, test = np.array(fold.train_idx), np.array(fold.test_idx)
        best = (-1.0, 0.0)
        for c in C_GRID:
            scores = [
                _ua(y[train][b], model(c).fit(x[train][a], y[train][a]).predict(x[train][b]))
                for a, b in GroupKFold(5).split(x[train], y[train], speakers[train])
            ]
            if np.mean(scores) > best[0]:
                best = (float(np.mean(scores)), c)
        uas.append(_ua(y[test], model(best[1]).fit(x[train], y[train]).predict(x[test])))
    return uas


def _progress(report: dict[str, Any]) -> None:
    """What is done so far, on stderr: a run that fails late still leaves its figures."""
    print(json.dumps(report, ensure_ascii=False), file=sys.stderr, flush=True)


def _ua(truth: np.ndarray, predicted: np.ndarray) -> float:
    from after.metrics import classification_scores

    classes = [str(c) for c in range(int(max(truth.max(), predicted.max())) + 1)]
    return float(classification_scores(truth.tolist(), predicted.tolist(), classes)["ua"])


def _summary(uas: list[float]) -> dict[str, Any]:
    a = 100 * np.array(uas)
    return {"ua": f"{a.mean():.1f} ± {a.std(ddof=1):.1f}", "mean": round(float(a.mean()), 2)}


class _Fold:
    def __init__(self, train_idx: list[int], test_idx: list[int]) -> None:
        self.train_idx, self.test_idx = train_idx, test_idx


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="whisper-tiny.en,whisper-base")
    p.add_argument("--windows", default="cut,30")
    p.add_argument("--skip", default="whisper-base:30", help="model:window pairs to leave out")
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--data", type=Path, default=EMODB)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")  # small matrices: BLAS threads only wait on each other

    from after.cache import default_cache_dir
    from after.config import TrainConfig
    from after.data.corpora import prepare
    from after.data.folds import make_folds
    from after.experiments import fit_and_test
    from after.models.features import embed_manifest, load_feature_backbone

    manifest = prepare("emodb", args.data)
    all_folds = make_folds(manifest, "loso", seed=0).folds[: args.folds]
    position = {u.id: i for i, u in enumerate(manifest)}
    # Train on every speaker but the test one (the learner needs no dev speaker).
    folds = [
        _Fold(
            [position[i] for i in (*f.train, *f.dev)],
            [position[i] for i in f.test],
        )
        for f in all_folds
    ]
    labels = manifest.labels
    y = np.array([labels.index(u.label) for u in manifest])
    speakers = np.array([u.speaker for u in manifest])
    report: dict[str, Any] = {
        "benchmark": "whisper_features",
        "corpus": f"EmoDB ({len(manifest)} clips, {len(manifest.speakers)} speakers, "
        f"{len(labels)} labels; 409 clips cut at 2.0 s in this copy)",
        "protocol": f"LOSO, {len(folds)} folds, the 9 other speakers train (no dev speaker); UA "
        "mean ± sample std over folds",
        "choice": {},
        "clips_per_second": {},
        "learner_vs_sklearn": {},
        "through_cv": {},
    }
    skip = set(args.skip.split(",")) if args.skip else set()
    for name in args.models.split(","):
        for window in args.windows.split(","):
            if f"{name}:{window}" in skip:
                continue
            means, stds, rate = hidden_states(name, window, manifest)
            report["clips_per_second"][f"{name}, window {window}"] = round(rate, 2)
            rows = {}
            last = means.shape[1] - 1
            middle = last // 2
            # Every layer on the clip's own frames; for a padded window, the middle and last.
            for layer in range(last + 1) if window == "cut" else (middle, last):
                rows[f"layer {layer}, mean"] = _summary(
                    loso_ours(means[:, layer], y, speakers, folds)
                )
            if window == "cut":
                both = np.concatenate([means[:, middle], stds[:, middle]], axis=1)
                rows[f"layer {middle}, mean+std"] = _summary(loso_ours(both, y, speakers, folds))
                rows["mean over layers, mean"] = _summary(
                    loso_ours(means.mean(axis=1), y, speakers, folds)
                )
            report["choice"][f"{name}, window {window}"] = rows
            _progress(report)

    cache = default_cache_dir()
    for backbone in ("frozen:whisper-tiny.en", "resemblyzer", "egemaps"):
        x = embed_manifest(load_feature_backbone(backbone), manifest, cache_dir=cache)
        ours = loso_ours(x, y, speakers, folds)
        ref = loso_sklearn(x, y, speakers, folds)
        diff = 100 * (np.array(ours) - np.array(ref))
        report["learner_vs_sklearn"][backbone] = {
            "after": _summary(ours),
            "sklearn": _summary(ref),
            "difference": f"{diff.mean():+.2f} (per fold: {', '.join(f'{d:+.1f}' for d in diff)})",
        }
        _progress(report)
        print(json.dumps({backbone: report["learner_vs_sklearn"][backbone]}), flush=True)

    for backbone in ("frozen:whisper-tiny.en", "frozen:whisper-base"):
        per_seed = []
        for seed in (0, 1, 2):
            runs = [
                fit_and_test(
                    manifest,
                    f,
                    backbone,
                    TrainConfig(seed=seed, feature_view="clip"),
                    cache_dir=cache,
                    progress=False,
                )[1]["test"]["ua"]
                for f in all_folds
            ]
            per_seed.append(runs)
        report["through_cv"][backbone] = {
            **_summary(per_seed[0]),
            "folds_x_seeds": f"{len(all_folds)} x 3",
            "seeds_agree_exactly": per_seed[0] == per_seed[1] == per_seed[2],
            "note": "fit_and_test trains on the fold's training speakers (one speaker is dev)",
        }
    print(json.dumps(report, indent=2, ensure_ascii=False))


def render(r: dict[str, Any]) -> list[str]:
    """BENCHMARKS.md's section on a printed result: the choice of features, and the learner
    against scikit-learn."""
    lines = [f"{r['corpus']}; {r['protocol']}.", "", "**Choice** (test UA %):", ""]
    choice = r["choice"]
    configs = list(choice)
    rows_names = list(dict.fromkeys(name for rows in choice.values() for name in rows))
    rows = [
        [name, *(choice[c].get(name, {}).get("ua", "-") for c in configs)] for name in rows_names
    ]
    lines += [*table(["features", *configs], rows), ""]
    speed = r["clips_per_second"]
    lines += [
        "Extraction, clips per second (all layers, one clip at a time): "
        + "; ".join(f"{k}: {v}" for k, v in speed.items())
        + ".",
        "",
        "**The learner against scikit-learn** (test UA %, same features and folds):",
        "",
        *table(
            ["features", "after (L-BFGS, C by CV)", "scikit-learn (C by CV)", "after - sklearn"],
            [
                [f"`{b}`", x["after"]["ua"], x["sklearn"]["ua"], x["difference"]]
                for b, x in r["learner_vs_sklearn"].items()
            ],
        ),
        "",
        "**Through `after cv`'s path** (`fit_and_test`, one dev speaker left out of training):",
        "",
        *table(
            ["features", "UA %", "folds x seeds", "seeds agree exactly"],
            [
                [f"`{b}`", x["ua"], x["folds_x_seeds"], x["seeds_agree_exactly"]]
                for b, x in r["through_cv"].items()
            ],
        ),
    ]
    return lines


def headline(r: dict[str, Any]) -> str:
    """README's line: the middle and last layers of tiny.en and base, the learner vs sklearn."""
    tiny = r["choice"]["whisper-tiny.en, window cut"]
    base = r["choice"]["whisper-base, window cut"]
    return (
        "- **Frozen Whisper features, the project's learner, 10 folds:** tiny.en's middle "
        f"layer {tiny['layer 2, mean']['ua']} (its last layer {tiny['layer 4, mean']['ua']}); "
        f"base's middle layer {base['layer 3, mean']['ua']} "
        f"(last {base['layer 6, mean']['ua']}). Against a tuned scikit-learn logistic "
        "regression on the same features: "
        + ", ".join(
            f"`{b}` {x['difference'].split(' ')[0]} points"
            for b, x in r["learner_vs_sklearn"].items()
        )
        + "."
    )


if __name__ == "__main__":
    main()
