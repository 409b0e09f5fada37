"""Does task-adaptive pre-training help Whisper on emotion? EmoDB, leave-one-speaker-out.

    .venv/bin/python bench/tapt_whisper.py [--folds 0,2,4,6,8] [--seeds 0,1,2] [--steps 300]
        [--lr 1e-4] [--mask-prob 0.65] [--mask-length 10] [--out runs/bench/tapt_whisper]

For every chosen fold: `after tapt` of whisper-tiny.en on that fold's training audio only (the
conv stem frozen; HuBERT-style masked prediction of k-means ids of its middle layer), then, with
and without it, on the same fold and seeds:

1. frozen features (`frozen:MODEL`, its middle layer) and the logistic-regression learner
   (deterministic: one run per fold);
2. fine-tuning on all labels (`after train`'s path; the bottom two layers frozen and cached and
   `--finetune-epochs` epochs to fit a CPU, the best dev-UA epoch kept), per seed;
3. active learning to 20% of the pool on the frozen features (entropy and random from a 2%
   k-means seed set), per seed: test UA at the last budget.

Every comparison is paired by fold (and seed) with a Wilcoxon signed-rank test. The TAPT loss
curve of every fold is kept. The TAPT models stay in `--out` and are reused when the script runs
again with the same settings. Prints one JSON object. EmoDB is read from ../shared/data/emodb.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from md import table

EMODB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "emodb"
BACKBONE = "whisper-tiny.en"


def tapt_config(
    steps: int = 300, lr: float = 1e-4, mask_prob: float = 0.65, mask_length: int = 10
) -> Any:
    """The TAPT settings of this benchmark (and of `bench/tapt_levers.py`, which varies them):
    the conv stem frozen, crops of 3 s, batch 8, a tenth of the steps for warm-up, one save at
    the end."""
    from after.config import TaptConfig

    return TaptConfig(
        steps=steps,
        batch_size=8,
        max_seconds=3.0,
        lr=lr,
        warmup_steps=max(1, steps // 10),
        mask_prob=mask_prob,
        mask_length=mask_length,
        freeze_cnn=True,
        save_every=steps,
        log_every=5,
    )


def paired(a: list[float], b: list[float]) -> dict[str, Any]:
    from after.metrics import paired_difference

    d = paired_difference(a, b)
    return {
        "tapt": f"{100 * np.mean(a):.1f} ± {100 * np.std(a, ddof=1):.1f}",
        "plain": f"{100 * np.mean(b):.1f} ± {100 * np.std(b, ddof=1):.1f}",
        "difference": f"{100 * d['mean']:+.2f} ± {100 * d['std']:.2f}",
        "n": d["n"],
        "wilcoxon_p": round(d["wilcoxon_p"], 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--folds", default="0,2,4,6,8")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--mask-prob", type=float, default=0.65)
    p.add_argument("--mask-length", type=int, default=10)
    p.add_argument("--finetune-epochs", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("runs/bench/tapt_whisper"))
    p.add_argument("--data", type=Path, default=EMODB)
    args = p.parse_args()

    from after.config import ALConfig, TrainConfig
    from after.data.corpora import prepare
    from after.data.folds import make_folds
    from after.experiments import fit_and_test
    from after.loop.compare import compare
    from after.loop.state import LoopState
    from after.tapt import DONE_FILE, LOG_FILE, run_tapt

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    manifest = prepare("emodb", args.data)
    manifest_path = manifest.to_jsonl(out / "manifest.jsonl")
    all_folds = make_folds(manifest, "loso", seed=0)
    folds_path = all_folds.to_json(out / "folds.json")
    folds = [all_folds.folds[int(k)] for k in args.folds.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    cache = str(out / "cache")
    config = tapt_config(args.steps, args.lr, args.mask_prob, args.mask_length)
    finetune = TrainConfig(epochs=args.finetune_epochs, freeze_layers=2, patience=0)
    report: dict[str, Any] = {
        "benchmark": "tapt_whisper",
        "corpus": f"EmoDB ({len(manifest)} clips, {len(manifest.speakers)} speakers)",
        "protocol": f"LOSO folds {', '.join(f.name for f in folds)}, one dev speaker per fold, "
        f"seeds {seeds}",
        "tapt": {
            "objective": "masked prediction of k-means ids (middle layer, 100 clusters)",
            "steps": args.steps,
            "lr": args.lr,
            "batch": 8,
            "crop_seconds": 3.0,
            "mask_prob": args.mask_prob,
            "mask_length": args.mask_length,
        },
        "finetune": f"{args.finetune_epochs} epochs, bottom 2 of 4 layers frozen, best dev epoch",
        "per_fold": {},
    }
    results: dict[str, dict[str, list[float]]] = {
        k: {"tapt": [], "plain": []} for k in ("frozen", "finetuned", "al_entropy", "al_random")
    }
    for fold in folds:
        tapt_dir = out / "tapt" / fold.name
        if not (tapt_dir / DONE_FILE).is_file():
            print(f"{fold.name}: TAPT", flush=True)
            run_tapt(manifest, fold, BACKBONE, tapt_dir, config, progress=False)
        log = [json.loads(line) for line in (tapt_dir / LOG_FILE).read_text().splitlines()]
        models = {"plain": BACKBONE, "tapt": str(tapt_dir)}
        record: dict[str, Any] = {
            "tapt_seconds": round(
                json.loads((tapt_dir / DONE_FILE).read_text())["final"]["seconds"]
            ),
            "loss_curve": [(r["step"], round(r["loss"], 4)) for r in log],
            "masked_accuracy": [
                round(log[0]["masked_accuracy"], 3),
                round(log[-1]["masked_accuracy"], 3),
            ],
        }
        for variant, model in models.items():
            frozen = fit_and_test(
                manifest, fold, f"frozen:{model}", TrainConfig(), cache_dir=cache, progress=False
            )[1]["test"]["ua"]
            results["frozen"][variant].append(frozen)
            record[f"frozen_{variant}"] = round(frozen, 4)
            for seed in seeds:
                cfg = TrainConfig(**{**finetune.to_dict(), "seed": seed})
                ua = fit_and_test(manifest, fold, model, cfg, cache_dir=cache, progress=False)[1]
                results["finetuned"][variant].append(ua["test"]["ua"])
            compare(
                manifest,
                str(manifest_path),
                str(folds_path),
                [fold],
                f"frozen:{model}",
                ["entropy", "random"],
                seeds,
                ALConfig(schedule=("0.02", "0.05", "0.1", "0.15", "0.2"), cold_start="kmeans"),
                TrainConfig(),
                out / "compare" / variant / fold.name,
                cache_dir=cache,
                log=lambda _: None,
            )
            for strategy in ("entropy", "random"):
                for seed in seeds:
                    run_dir = out / "compare" / variant / fold.name / "runs" / fold.name
                    state = LoopState.load(run_dir / f"{strategy}_seed{seed}")
                    results[f"al_{strategy}"][variant].append(state.rounds[-1]["test_ua"])
        report["per_fold"][fold.name] = record
        print(
            json.dumps({fold.name: {k: v for k, v in record.items() if k != "loss_curve"}}),
            flush=True,
        )
    names = {
        "frozen": "frozen features (one run per fold)",
        "finetuned": "fine-tuned, all labels (fold x seed)",
        "al_entropy": "active learning at 20%, entropy (fold x seed)",
        "al_random": "active learning at 20%, random (fold x seed)",
    }
    report["comparisons"] = {
        names[k]: paired(results[k]["tapt"], results[k]["plain"]) for k in names
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))


def render(r: dict[str, Any]) -> list[str]:
    """BENCHMARKS.md's section on a printed result: with against without TAPT, and the TAPT of
    each fold."""
    t = r["tapt"]
    rows = [
        [name, c["plain"], c["tapt"], c["difference"], c["n"], c["wilcoxon_p"]]
        for name, c in r["comparisons"].items()
    ]
    folds = [
        [
            fold,
            f["tapt_seconds"],
            f"{f['loss_curve'][0][1]:.3f} -> {f['loss_curve'][-1][1]:.3f}",
            f"{f['masked_accuracy'][0]:.3f} -> {f['masked_accuracy'][1]:.3f}",
        ]
        for fold, f in r["per_fold"].items()
    ]
    return [
        f"{r['corpus']}; {r['protocol']}. TAPT: {t['objective']}, {t['steps']} steps, lr "
        f"{t['lr']}, batch {t['batch']}, crops of {t['crop_seconds']} s, masks "
        f"{t['mask_prob']} x {t['mask_length']} frames. Fine-tuning: {r['finetune']}.",
        "",
        *table(
            [
                "test UA %",
                "without TAPT",
                "with TAPT",
                "with - without (points)",
                "n",
                "Wilcoxon p",
            ],
            rows,
        ),
        "",
        "TAPT per fold (loss and masked-frame accuracy, first logged step -> last; the whole "
        "curves are in `bench/results/tapt_whisper.json`):",
        "",
        *table(["fold", "seconds", "loss", "masked accuracy"], folds),
    ]


def headline(r: dict[str, Any]) -> str:
    """README's line: with minus without TAPT, for every comparison."""
    return (
        f"- **TAPT of `whisper-tiny.en`** ({r['tapt']['steps']} steps per fold on its "
        f"training audio; {r['protocol']}): with minus without, "
        + "; ".join(
            f"{name} {x['difference']} points (p = {x['wilcoxon_p']:.2g})"
            for name, x in r["comparisons"].items()
        )
        + "."
    )


if __name__ == "__main__":
    main()
