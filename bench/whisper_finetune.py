"""Fine-tuned Whisper tiny.en against its frozen features on EmoDB, leave-one-speaker-out: the
default recipe and variants of it, each paired with the frozen-features learner and with the
first variant on the same folds and seeds.

    .venv/bin/python bench/whisper_finetune.py [--folds all] [--seeds 0,1,2]
        [--variants 'default;head_init=random'] [--out runs/bench/whisper_finetune]

1. The frozen features (`frozen:whisper-tiny.en`, clip view: the representation fine-tuning starts
   from, without speaker standardisation; deterministic: one run per fold) and, for each
   variant (`TrainConfig` settings changed from the defaults, `;` between variants, `,` between
   settings of one: `head_init=random,lr=3e-5`), fine-tuning of `whisper-tiny.en` on every
   fold x seed through `after.experiments.fit_and_test_folds` (what `after cv` runs): every run
   is kept in OUT/VARIANT/ and reused when the command is run again, so a stopped benchmark
   continues where it stopped.
2. Per variant: test UA, its paired difference from the frozen features (per fold and seed) and
   from the first variant, with the Wilcoxon signed-rank p and the smallest p that n allows;
   the epoch each run kept (0: the probe head before fine-tuning) and its seconds.
3. Scoring the 535 clips with one fine-tuned classifier, the conv stem read from the cache: clips
   per second with the cache empty and filled, side by side.

Prints one JSON object. EmoDB is read from ../shared/data/emodb.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from md import difference, table

EMODB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emodb"
BACKBONE = "whisper-tiny.en"


def parse_variants(text: str) -> dict[str, dict[str, Any]]:
    """'default;head_init=random,lr=3e-5' -> {name: TrainConfig changes}, values as JSON."""
    variants: dict[str, dict[str, Any]] = {}
    for part in (p.strip() for p in text.split(";") if p.strip()):
        changes: dict[str, Any] = {}
        if part != "default":
            for item in part.split(","):
                key, _, value = item.partition("=")
                try:
                    changes[key.strip()] = json.loads(value)
                except json.JSONDecodeError:
                    changes[key.strip()] = value.strip()
        variants[part] = changes
    return variants


def summary(values: list[float]) -> str:
    a = [100 * v for v in values]
    spread = statistics.stdev(a) if len(a) > 1 else 0.0
    return f"{statistics.mean(a):.1f} ± {spread:.1f} (n={len(a)})"


def paired(ours: list[float], theirs: list[float]) -> dict[str, Any]:
    from after.metrics import paired_difference

    d = paired_difference(ours, theirs)
    return {
        "points": round(100 * d["mean"], 2),
        "std": round(100 * d["std"], 2),
        "wilcoxon_p": round(d["wilcoxon_p"], 4),
        "n": d["n"],
        "min_p": round(d["min_p"], 4),
        "wins": sum(a > b for a, b in zip(ours, theirs, strict=True)),
        "losses": sum(a < b for a, b in zip(ours, theirs, strict=True)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--folds", default="all", help="LOSO fold indices, comma-separated, or all")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="default")
    p.add_argument("--data", type=Path, default=EMODB)
    p.add_argument("--backbone", default=BACKBONE, help="a Whisper encoder (name or folder)")
    p.add_argument("--out", type=Path, default=Path("runs/bench/whisper_finetune"))
    p.add_argument(
        "--dev-speakers",
        type=int,
        default=1,
        help="speakers per fold in dev, which picks the best epoch (other than 1: runs in "
        "OUT/devN, since the folds differ)",
    )
    args = p.parse_args()
    if args.dev_speakers != 1:
        args.out = args.out / f"dev{args.dev_speakers}"

    from after.config import TrainConfig
    from after.data.corpora import prepare
    from after.data.folds import make_folds
    from after.experiments import fit_and_test_folds
    from after.inference import predict
    from after.train import describe_training

    manifest = prepare("emodb", args.data)
    all_folds = make_folds(manifest, "loso", num_dev_groups=args.dev_speakers, seed=0).folds
    picked = range(len(all_folds)) if args.folds == "all" else map(int, args.folds.split(","))
    folds = [all_folds[k] for k in picked]
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = parse_variants(args.variants)
    cache = args.out / "cache"
    log = lambda text: print(text, flush=True)  # noqa: E731

    frozen_records = fit_and_test_folds(
        manifest,
        folds,
        [0],
        f"frozen:{args.backbone}",
        TrainConfig(feature_view="clip"),  # the representation alone, as fine-tuning sees it
        args.out / "frozen",
        cache_dir=cache,
    )
    frozen = {r["fold"]: r["test"]["ua"] for r in frozen_records}
    results: dict[str, Any] = {}
    kept: list[Any] = []
    records: dict[str, list[dict[str, Any]]] = {}
    for name, changes in variants.items():
        config = TrainConfig(**changes)
        records[name] = fit_and_test_folds(
            manifest,
            folds,
            seeds,
            args.backbone,
            config,
            args.out / name.replace("/", "_"),
            cache_dir=cache,
            log=lambda text, name=name: log(f"{name}: {text}"),
            on_fit=lambda result, _record: kept.append(result.classifier) if not kept else None,
        )
    first = next(iter(records))
    for name, rs in records.items():
        ua = [r["test"]["ua"] for r in rs]
        results[name] = {
            "training": describe_training(args.backbone, rs[0]["config"]),
            "test_ua": summary(ua),
            "minus_frozen": paired(ua, [frozen[r["fold"]] for r in rs]),
            **(
                {"minus_first": paired(ua, [r["test"]["ua"] for r in records[first]])}
                if name != first
                else {}
            ),
            "best_epochs": [r["best_epoch"] for r in rs],
            "train_seconds": round(statistics.mean(r["seconds"] for r in rs), 1),
            "runs": [
                {
                    "fold": r["fold"],
                    "seed": r["seed"],
                    "test_ua": round(r["test"]["ua"], 4),
                    "frozen_test_ua": round(frozen[r["fold"]], 4),
                    "best_epoch": r["best_epoch"],
                    "seconds": round(r["seconds"], 1),
                }
                for r in rs
            ],
        }

    speed: dict[str, float] = {}
    if kept:  # scoring throughput: one fine-tuned model, the conv-stem cache empty then filled
        config = dataclasses.replace(TrainConfig(**variants[first]))
        with tempfile.TemporaryDirectory() as tmp:
            for label in ("cache empty", "cache filled"):
                t = time.perf_counter()
                predict(kept[0], manifest, manifest.ids, config=config, cache_dir=tmp)
                speed[label] = round(len(manifest) / (time.perf_counter() - t), 1)
        speed["speed_up"] = round(speed["cache filled"] / speed["cache empty"], 2)
    report = {
        "benchmark": "whisper_finetune",
        "backbone": args.backbone,
        "corpus": f"EmoDB ({len(manifest)} clips, {len(manifest.speakers)} speakers, "
        f"{len(manifest.labels)} labels; 409 clips cut at 2.0 s in this copy)",
        "protocol": f"LOSO, {len(folds)} folds (held-out speaker), "
        f"{'one dev speaker' if args.dev_speakers == 1 else f'{args.dev_speakers} dev speakers'} "
        f"per fold (the best dev-UA epoch kept), seeds {seeds}; the frozen features train on "
        "the same clips (C by the inner grouped CV; dev unused)",
        "frozen": {
            "ua": summary(list(frozen.values())),
            "per_fold": {k: round(v, 4) for k, v in frozen.items()},
        },
        "variants": results,
        "scoring_clips_per_second": speed,
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))


def render(r: dict[str, Any]) -> list[str]:
    """BENCHMARKS.md's section on a printed result: each variant against the frozen features and
    the first variant, its training and the scoring speed. A result of the shape before variants
    (one fine-tuning, its `summary`) is read too."""
    if "summary" in r:
        return _render_one_fine_tuning(r)
    variants = r["variants"]
    backbone = r.get("backbone", BACKBONE)
    first = next(iter(variants))
    rows = [
        [
            f"`frozen:{backbone}` (learner on frozen features)",
            r["frozen"]["ua"],
            *("-" for _ in range(5)),
        ]
    ]
    for name, v in variants.items():
        d = v["minus_frozen"]
        rows.append(
            [
                f"`{backbone}` fine-tuned, `{name}`",
                v["test_ua"],
                difference(d),
                f"{d['wins']} / {d['losses']}",
                difference(v["minus_first"]) if "minus_first" in v else "-",
                ", ".join(str(e) for e in v["best_epochs"]),
                v["train_seconds"],
            ]
        )
    speed = r["scoring_clips_per_second"]
    if speed:
        scoring = (
            "Scoring every clip with one fine-tuned model, its conv stem read from the cache: "
            + _speed(speed)
        )
    else:  # every run was reused, so no fine-tuned model was at hand
        scoring = "Scoring speed: not measured (every fine-tuning was reused from an earlier run)."
    return [
        f"{r['corpus']}; {r['protocol']}. Each variant changes `TrainConfig`'s defaults as its "
        "name says. Test UA % as mean ± sample std; differences in UA points paired by fold and "
        "seed (mean ± sample std, two-sided Wilcoxon p; n*: too few pairs to ever reach "
        "p < 0.05); wins / losses: pairs above / below the frozen features; best epochs: the "
        "epoch each run kept (0: the probe head before fine-tuning).",
        "",
        *table(
            [
                "model",
                "test UA %",
                "minus frozen (points)",
                "wins / losses",
                f"minus `{first}` (points)",
                "best epochs",
                "train s/run",
            ],
            rows,
        ),
        "",
        "Fine-tuning:",
        "",
        *(f"- `{name}`: {v['training']}." for name, v in variants.items()),
        "",
        "Every run's test UA is in `bench/results/whisper_finetune.json`.",
        "",
        scoring,
    ]


def _render_one_fine_tuning(r: dict[str, Any]) -> list[str]:
    s = r["summary"]
    variants = [k for k in s if k != f"frozen:{BACKBONE}"]
    rows = [
        [
            f"`frozen:{BACKBONE}` (learner on frozen features)",
            s[f"frozen:{BACKBONE}"]["ua"],
            "-",
            "-",
            "-",
        ]
    ]
    rows += [
        [
            f"`{BACKBONE}` fine-tuned, {v}",
            s[v]["ua"],
            s[v]["minus_frozen"]["difference"],
            s[v]["minus_frozen"]["wilcoxon_p"],
            s[v]["train_seconds"],
        ]
        for v in variants
    ]
    return [
        f"{r['corpus']}; {r['protocol']}. Fine-tuning: {r['training']}.",
        "",
        *table(["model", "test UA %", "minus frozen (points)", "Wilcoxon p", "train s/run"], rows),
        "",
        "Per-pair differences are in `bench/results/whisper_finetune.json`.",
        "",
        "Scoring 535 clips with a fine-tuned model, its bottom two layers read from the cache: "
        + _speed(r["scoring_clips_per_second"]),
    ]


def _speed(speed: dict[str, float]) -> str:
    return (
        f"{speed['cache empty']} clips/s with the cache empty, {speed['cache filled']} filled "
        f"({speed['speed_up']}x)."
    )


def headline(r: dict[str, Any]) -> str:
    """README's line: each fine-tuning's UA and its difference from the frozen features."""
    if "summary" in r:
        every = r["summary"]["every layer trained"]
        return (
            f"- **Fine-tuned `{BACKBONE}`** ({r['protocol']}): {every['ua']} UA, "
            f"{every['minus_frozen']['difference']} points against its frozen features "
            f"(Wilcoxon p = {every['minus_frozen']['wilcoxon_p']:.2g})."
        )
    return (
        f"- **Fine-tuned `{r.get('backbone', BACKBONE)}`** ({r['protocol']}): frozen features "
        f"{r['frozen']['ua']} UA; "
        + "; ".join(
            f"`{name}` {v['test_ua']} UA, {v['minus_frozen']['points']:+.1f} ± "
            f"{v['minus_frozen']['std']:.1f} points against them "
            f"(Wilcoxon p = {v['minus_frozen']['wilcoxon_p']:.2g})"
            for name, v in r["variants"].items()
        )
        + "."
    )


if __name__ == "__main__":
    main()
