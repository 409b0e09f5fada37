"""TAPT's levers on Whisper tiny.en, judged on frozen features: EmoDB, leave-one-speaker-out.

    .venv/bin/python bench/tapt_levers.py [--folds 0,2,4,6,8] [--levers lr=3e-5;mask=0.3x5;target=4]
        [--out runs/bench/tapt_levers]

`bench/tapt_whisper.py` finds that TAPT with the default settings (300 steps, lr 1e-4, masks
0.65 x 10 frames, k-means targets of the middle layer) does not help. This varies one lever at a
time from those settings and measures what each does to the frozen features of the TAPT model (its
middle layer under the project's learner, `fit_and_test` as `after cv` runs it: deterministic, one
run per fold), paired by fold against the frozen features of the model without TAPT, with a
Wilcoxon signed-rank test. Frozen features are the cheapest faithful probe: fine-tuning and active
learning read the same encoder. Levers: `lr=X`, `steps=N`, `mask=PxL` (mask probability x span
length), `target=K` (k-means ids from layer K). Each TAPT runs on its fold's training audio only and
is kept in `--out`, reused when the script runs again. Prints one JSON object; progress on stderr.
EmoDB is read from ../shared/data/emodb.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from md import table
from tapt_whisper import BACKBONE, EMODB, tapt_config


def lever_config(base: Any, lever: str) -> Any:
    """`base` (a TaptConfig) with one lever changed, e.g. "lr=3e-5", "mask=0.3x5", "target=4"."""
    name, _, value = lever.partition("=")
    if name == "lr":
        return dataclasses.replace(base, lr=float(value))
    if name == "steps":
        return tapt_config(steps=int(value))
    if name == "mask":
        prob, _, length = value.partition("x")
        return dataclasses.replace(base, mask_prob=float(prob), mask_length=int(length))
    if name == "target":
        return dataclasses.replace(base, kmeans_layer=int(value))
    raise SystemExit(f"unknown lever {lever!r}: use lr=X, steps=N, mask=PxL or target=K")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--folds", default="0,2,4,6,8")
    p.add_argument("--levers", default="lr=3e-5;mask=0.3x5;target=4")
    p.add_argument("--out", type=Path, default=Path("runs/bench/tapt_levers"))
    p.add_argument("--data", type=Path, default=EMODB)
    args = p.parse_args()

    from after.config import TrainConfig
    from after.data.corpora import prepare
    from after.data.folds import make_folds
    from after.experiments import fit_and_test
    from after.metrics import paired_difference
    from after.tapt import DONE_FILE, LOG_FILE, run_tapt

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    manifest = prepare("emodb", args.data)
    folds = [make_folds(manifest, "loso", seed=0).folds[int(k)] for k in args.folds.split(",")]
    cache = str(out / "cache")
    base = tapt_config()  # bench/tapt_whisper.py's settings

    def frozen_ua(model: str, fold: Any) -> float:
        result = fit_and_test(
            manifest, fold, f"frozen:{model}", TrainConfig(), cache_dir=cache, progress=False
        )
        return float(result[1]["test"]["ua"])

    plain = [frozen_ua(BACKBONE, fold) for fold in folds]
    report: dict[str, Any] = {
        "benchmark": "tapt_levers",
        "corpus": f"EmoDB ({len(manifest)} clips, {len(manifest.speakers)} speakers)",
        "protocol": f"LOSO folds {', '.join(f.name for f in folds)}, one dev speaker per fold; "
        "frozen features of the middle layer, one run per fold",
        "base": "300 steps, lr 1e-4, batch 8, crops of 3 s, masks 0.65 x 10 frames, k-means ids "
        "(100 clusters) of the middle layer (2)",
        "plain_ua": f"{100 * np.mean(plain):.1f} ± {100 * np.std(plain, ddof=1):.1f}",
        "levers": {},
    }
    for lever in args.levers.split(";"):
        config = lever_config(base, lever)
        uas, losses = [], []
        for fold in folds:
            tapt_dir = out / lever.replace("=", "_") / fold.name
            if not (tapt_dir / DONE_FILE).is_file():
                print(f"{lever} {fold.name}: TAPT", file=sys.stderr, flush=True)
                run_tapt(manifest, fold, BACKBONE, tapt_dir, config, progress=False)
            log = [json.loads(line) for line in (tapt_dir / LOG_FILE).read_text().splitlines()]
            losses.append(f"{log[0]['loss']:.2f} -> {log[-1]['loss']:.2f}")
            uas.append(frozen_ua(str(tapt_dir), fold))
        d = paired_difference(uas, plain)
        report["levers"][lever] = {
            "tapt_ua": f"{100 * np.mean(uas):.1f} ± {100 * np.std(uas, ddof=1):.1f}",
            "difference": f"{100 * d['mean']:+.2f} ± {100 * d['std']:.2f}",
            "per_fold": [round(100 * (a - b), 1) for a, b in zip(uas, plain, strict=True)],
            "wilcoxon_p": round(d["wilcoxon_p"], 4),
            "loss": losses,
        }
        print(json.dumps(report, ensure_ascii=False), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2, ensure_ascii=False))


def render(r: dict[str, Any]) -> list[str]:
    """BENCHMARKS.md's section on a printed result: each lever against no TAPT."""
    return [
        f"{r['corpus']}; {r['protocol']}. TAPT as in the section above ({r['base']}), one lever "
        f"changed at a time. Without TAPT: {r['plain_ua']} UA.",
        "",
        *table(
            ["lever", "UA % after TAPT", "minus without", "per fold", "Wilcoxon p", "loss"],
            [
                [
                    f"`{name}`",
                    x["tapt_ua"],
                    x["difference"],
                    ", ".join(f"{v:+.1f}" for v in x["per_fold"]),
                    x["wilcoxon_p"],
                    "; ".join(x["loss"]),
                ]
                for name, x in r["levers"].items()
            ],
        ),
    ]


if __name__ == "__main__":
    main()
