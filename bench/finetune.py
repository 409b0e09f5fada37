"""Fine-tuning on EmoDB, leave-one-speaker-out: accuracy per backbone, and what the cache saves.

    .venv/bin/python bench/finetune.py [--backbones resemblyzer,egemaps,scratch:small]
        [--folds 10] [--seeds 0] [--epochs 15]

For each backbone, every fold (x seed) trains on the fold's training speakers, keeps the epoch
with the best dev UA (one dev speaker), and is tested once on the held-out speaker; UA / WA are
reported as mean ± sample std. Then, on fold 0, seconds per epoch with and without the cache:
for a wav2vec 2.0 backbone the frozen-CNN cache, for a feature backbone the vector cache (without
it every epoch would extract the features again). Prints one JSON object.

EmoDB is read from ../shared/data/emodb (beside the repository); 409 of its 535 clips are cut at
2.0 s in that copy. `scratch:small` is a random-init model: it measures the pipeline, not what a
pretrained wav2vec 2.0 would reach.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

EMODB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emodb"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbones", default="resemblyzer,egemaps,scratch:small")
    p.add_argument("--folds", type=int, default=10, help="first N of the 10 LOSO folds")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--timing-epochs", type=int, default=2)
    p.add_argument("--data", type=Path, default=EMODB)
    args = p.parse_args()

    from after.config import TrainConfig
    from after.data.corpora import prepare
    from after.data.folds import make_folds
    from after.metrics import format_mean_std, summarize
    from after.models.features import embed_manifest, is_feature_backbone, load_feature_backbone
    from after.train import evaluate, fit

    manifest = prepare("emodb", args.data)
    folds = make_folds(manifest, "loso", seed=0).folds[: args.folds]
    seeds = [int(s) for s in args.seeds.split(",")]
    report: dict = {
        "benchmark": "finetune",
        "corpus": f"EmoDB ({len(manifest)} clips, {len(manifest.speakers)} speakers, "
        f"{len(manifest.labels)} labels)",
        "protocol": f"LOSO, {len(folds)} folds, 1 dev speaker per fold, seeds {seeds}",
        "epochs_max": args.epochs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "accuracy": {},
        "epoch_seconds": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for backbone in args.backbones.split(","):
            config = TrainConfig(epochs=args.epochs, batch_size=16, patience=5)
            runs, t0 = [], time.perf_counter()
            for fold in folds:
                for seed in seeds:
                    c = TrainConfig(**{**config.to_dict(), "seed": seed})
                    r = fit(
                        manifest, fold.train, fold.dev, backbone, c, cache_dir=cache, progress=False
                    )
                    runs.append(evaluate(r.classifier, manifest, fold.test, cache_dir=cache))
            s = summarize(runs)
            report["accuracy"][backbone] = {
                "ua": format_mean_std(s["ua"]),
                "wa": format_mean_std(s["wa"]),
                "macro_f1": format_mean_std(s["macro_f1"]),
                "seconds": round(time.perf_counter() - t0, 1),
            }

            # Seconds per epoch on fold 0, with the cache warm vs without it.
            fold = folds[0]
            timing = TrainConfig(epochs=args.timing_epochs, batch_size=16, patience=0)
            cached = fit(
                manifest, fold.train, fold.dev, backbone, timing, cache_dir=cache, progress=False
            )
            with_cache = sum(h["seconds"] for h in cached.history) / len(cached.history)
            if is_feature_backbone(backbone):
                t = time.perf_counter()
                embed_manifest(load_feature_backbone(backbone), manifest.subset(fold.train))
                without = with_cache + time.perf_counter() - t  # extraction again every epoch
                what = "feature vectors (no cache: extract every epoch)"
            else:
                plain = TrainConfig(**{**timing.to_dict(), "cache_cnn": False})
                uncached = fit(manifest, fold.train, fold.dev, backbone, plain, progress=False)
                without = sum(h["seconds"] for h in uncached.history) / len(uncached.history)
                what = "frozen CNN outputs (no cache: run the CNN every batch)"
            report["epoch_seconds"][backbone] = {
                "cache": what,
                "with_cache": round(with_cache, 3),
                "without_cache": round(without, 3),
                "speedup": round(without / with_cache, 2),
            }
            print(
                json.dumps({backbone: report["accuracy"][backbone]}, ensure_ascii=False), flush=True
            )
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
