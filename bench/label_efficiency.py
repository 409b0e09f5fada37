"""Label efficiency on EmoDB: test UA at each label budget for every strategy, random sampling,
and all labels; leave-one-speaker-out, several seeds, a frozen feature backbone.

    .venv/bin/python bench/label_efficiency.py [--backbone egemaps] [--seeds 0,1,2]
        [--strategies all] [--schedule 0.05,0.1,0.15,0.2] [--folds 10] [--out runs/bench-le]

Every fold x seed x strategy is a real `after run` (k-means cold start on resemblyzer speaker
embeddings, the same seed set for every strategy of a seed), through `after.loop.compare`, so the
output folder also holds every run and resumes if stopped. Prints one JSON object: per strategy
the mean ± std test UA at each budget and the area under the UA curve, whether it beats random
at the last budget, and the time of an active-learning run relative to fine-tuning on all labels.

`alps` is left out by default: its surprisal embeddings need a wav2vec 2.0 pre-training model
(a TAPT output), which a feature-backbone benchmark does not have.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

EMODB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emodb"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbone", default="egemaps")
    p.add_argument("--strategies", default="all")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--schedule", default="0.05,0.1,0.15,0.2")
    p.add_argument("--folds", type=int, default=10, help="first N of the 10 LOSO folds")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--out", type=Path, default=Path("runs/bench-label-efficiency"))
    p.add_argument("--data", type=Path, default=EMODB)
    args = p.parse_args()

    from after.config import ALConfig, TrainConfig
    from after.data.audio import validate_manifest
    from after.data.corpora import prepare
    from after.data.folds import make_folds
    from after.loop.compare import compare
    from after.strategies import STRATEGIES

    names = (
        [s for s in STRATEGIES if s != "alps"]
        if args.strategies == "all"
        else args.strategies.split(",")
    )
    if "random" not in names:
        names.insert(0, "random")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    manifest = validate_manifest(prepare("emodb", args.data), num_workers=2).usable
    manifest_path = manifest.to_jsonl(out / "manifest.jsonl")
    folds = make_folds(manifest, "loso", seed=0)
    folds_path = folds.to_json(out / "folds.json")
    schedule = tuple(args.schedule.split(","))
    summary = compare(
        manifest,
        str(manifest_path),
        str(folds_path),
        folds.folds[: args.folds],
        args.backbone,
        names,
        [int(s) for s in args.seeds.split(",")],
        ALConfig(schedule=schedule, cold_start="kmeans"),
        TrainConfig(epochs=args.epochs, batch_size=8, patience=0),
        out,
        cache_dir=str(out / "cache"),
        log=lambda line: print(line, flush=True),
    )
    random_last = summary["strategies"]["random"]["points"][-1]["test_ua"]["mean"]
    result = {
        "benchmark": "label_efficiency",
        "corpus": f"EmoDB ({len(manifest)} clips, {len(manifest.speakers)} speakers)",
        "protocol": f"LOSO, {min(args.folds, len(folds))} folds x seeds {args.seeds}, "
        "1 dev speaker per fold, k-means cold start",
        "backbone": args.backbone,
        "schedule": list(schedule),
        "all_labels_test_ua": summary["full"]["test_ua"],
        "strategies": {
            name: {
                "test_ua_by_budget": {
                    pt[
                        "budget"
                    ]: f"{100 * pt['test_ua']['mean']:.2f} ± {100 * pt['test_ua']['std']:.2f}"
                    for pt in c["points"]
                },
                "auc_ua": round(100 * c["auc_ua"]["mean"], 2),
                "beats_random_at_last_budget": c["points"][-1]["test_ua"]["mean"] > random_last,
                "time_vs_all_labels": round(c["time_vs_full"], 3),
            }
            for name, c in summary["strategies"].items()
        },
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
