"""Fine-tuned Whisper tiny.en against its frozen features on EmoDB, leave-one-speaker-out, and what
the frozen-bottom cache saves in pool scoring.

    .venv/bin/python bench/whisper_finetune.py [--folds 0,1,6] [--seeds 0,1,2]
        [--freeze-layers 0]

1. For each fold x seed: `after.experiments.fit_and_test` (what `after train` and `after cv`
   run) with `whisper-tiny.en` and the default training settings (the conv stem frozen and
   cached, every layer trained; `--freeze-layers N` also freezes and caches the bottom N), and
   the frozen features (`frozen:whisper-tiny.en`, deterministic: one run per fold) on the same
   fold. Paired per-(fold, seed) differences with a Wilcoxon signed-rank test.
2. Scoring the 535 clips with the last fine-tuned classifier, its bottom two layers read from the
   cache: clips per second with the cache empty and filled, side by side.

The three default folds hold out speakers 03 (male), 08 and 13 (female). Prints one
JSON object. EmoDB is read from ../shared/data/emodb.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

EMODB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emodb"


def paired(a: list[float], b: list[float]) -> dict[str, Any]:
    """Mean ± std of a - b (points of UA) and the two-sided Wilcoxon signed-rank p-value."""
    from scipy.stats import wilcoxon

    d = 100 * (np.array(a) - np.array(b))
    p = float(wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    return {
        "difference": f"{d.mean():+.1f} ± {d.std(ddof=1):.1f}",
        "per_pair": [round(float(x), 1) for x in d],
        "wilcoxon_p": round(p, 4),
    }


def ua(values: list[float]) -> str:
    a = 100 * np.array(values)
    return f"{a.mean():.1f} ± {a.std(ddof=1):.1f} (n={len(a)})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--folds", default="0,1,6")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--freeze-layers", type=int, default=0)
    p.add_argument("--data", type=Path, default=EMODB)
    args = p.parse_args()

    from after.config import TrainConfig
    from after.data.corpora import prepare
    from after.data.folds import make_folds
    from after.experiments import fit_and_test
    from after.train import describe_training, predict

    manifest = prepare("emodb", args.data)
    all_folds = make_folds(manifest, "loso", seed=0).folds
    folds = [all_folds[int(k)] for k in args.folds.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    layers = args.freeze_layers
    variant = "every layer trained" if layers == 0 else f"bottom {layers} layers frozen, cached"
    variants = {variant: layers}
    report: dict[str, Any] = {
        "benchmark": "whisper_finetune",
        "corpus": f"EmoDB ({len(manifest)} clips, {len(manifest.speakers)} speakers, "
        f"{len(manifest.labels)} labels; 409 clips cut at 2.0 s in this copy)",
        "protocol": f"LOSO folds {', '.join(f.name for f in folds)} (held-out speaker), one dev "
        f"speaker per fold (best dev UA epoch kept), seeds {seeds}",
        "training": describe_training("whisper-tiny.en", TrainConfig().to_dict()),
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        frozen = {
            f.name: fit_and_test(
                manifest,
                f,
                "frozen:whisper-tiny.en",
                TrainConfig(),
                cache_dir=cache,
                progress=False,
            )[1]["test"]["ua"]
            for f in folds
        }
        results: dict[str, list[float]] = {v: [] for v in variants}
        seconds: dict[str, list[float]] = {v: [] for v in variants}
        kept = None
        for f in folds:
            for seed in seeds:
                for name, frozen_layers in variants.items():
                    config = TrainConfig(seed=seed, freeze_layers=frozen_layers)
                    result, run = fit_and_test(
                        manifest, f, "whisper-tiny.en", config, cache_dir=cache, progress=False
                    )
                    results[name].append(run["test"]["ua"])
                    seconds[name].append(run["seconds"])
                    record = {
                        "fold": f.name,
                        "seed": seed,
                        "variant": name,
                        "test_ua": round(run["test"]["ua"], 4),
                        "frozen_test_ua": round(frozen[f.name], 4),
                        "best_epoch": run["best_epoch"],
                        "epochs_run": len(result.history),
                        "seconds": round(run["seconds"], 1),
                    }
                    report["runs"].append(record)
                    print(json.dumps(record), flush=True)
                    kept = result.classifier
        frozen_paired = [frozen[f.name] for f in folds for _ in seeds]
        report["summary"] = {
            "frozen:whisper-tiny.en": {"ua": ua(list(frozen.values())), "note": "one per fold"},
            **{
                name: {
                    "ua": ua(results[name]),
                    "minus_frozen": paired(results[name], frozen_paired),
                    "train_seconds": f"{np.mean(seconds[name]):.0f}",
                }
                for name in variants
            },
        }

        # Scoring throughput: the same fine-tuned model, cache empty then filled.
        assert kept is not None
        score_config = dataclasses.replace(TrainConfig(), freeze_layers=2)
        speed = {}
        for label in ("cache empty", "cache filled"):
            t = time.perf_counter()
            predict(kept, manifest, manifest.ids, config=score_config, cache_dir=Path(tmp) / "s")
            speed[label] = round(len(manifest) / (time.perf_counter() - t), 1)
        speed["speed_up"] = round(speed["cache filled"] / speed["cache empty"], 2)
        report["scoring_clips_per_second"] = speed
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
