"""Mixed precision on one device: fp32 vs bf16 (fp16 if asked) for TAPT, fine-tuning, scoring.

On a GPU machine:

    .venv/bin/python bench/gpu.py --backbone scratch:base --precisions fp32,bf16
        [--steps 20] [--warmup 5] [--epochs 3] [--batch-size 8] [--clips 256] [--seconds 4]

`scratch:base` is facebook/wav2vec2-base's shape with random weights (no download). `--clips`
clips of exactly `--seconds` (vibrato tone + noise, 16 kHz, 4 labels) are written once; every
case runs in this process, one after another, each on a fresh model, through the real code:

1. TAPT, `run_tapt` (`TaptConfig.precision`, `log_every=1`): `tapt_log.jsonl` stamps each step
   with the wall seconds since the loop began, taken after the step's loss is read back to the
   host (a device sync). Seconds per step = (stamp of the last step - stamp of step `--warmup`)
   / steps between, so the first `--warmup` steps and model loading / saving are not timed.
2. Fine-tuning, `fit` (`TrainConfig.precision`): CNN frozen and cached on disk as the loop does,
   no dev set; fit's history times each epoch's training (host-synced). Epoch 1 fills the CNN
   cache and is not timed; the other epochs are averaged.
3. Pool scoring, `score_pool` (probabilities + embeddings, as the loop calls it) with
   `TrainConfig(precision=...)`, after an untimed 2-clip warm-up: with an empty CNN cache (the
   CNN runs and fills it), then with the filled one (only the transformer runs). Scoring
   autocasts to the precision on a GPU only; on a CPU it runs in fp32 whatever is asked.

`compute_dtype` is the dtype of the first `nn.Linear` output of a case (a one-shot global
forward hook): what really ran, not what was asked. Accelerate fixes the mixed precision once
per process, so its AcceleratorState is reset before each case. Peak GPU memory is
`torch.cuda.max_memory_allocated`, reset before each case. Without CUDA (or with `--device cpu`)
it runs fp32 on the CPU, bf16 (CPU autocast) only if asked: a smoke test, not a GPU timing.
Progress goes to stderr; prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from md import table

SR = 16_000
ACCELERATE = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
TIMES = {  # the seconds that speed-ups compare
    "tapt": ["seconds_per_step"],
    "finetune": ["seconds_per_epoch"],
    "scoring": ["empty_cache_seconds", "filled_cache_seconds"],
}


def write_corpus(folder: Path, n: int, seconds: float):
    """n clips of `seconds` each, and their manifest."""
    import numpy as np
    import soundfile as sf

    from after.data.manifest import Manifest, Utterance

    folder.mkdir(parents=True)
    rng, t = np.random.default_rng(0), np.arange(round(seconds * SR)) / SR
    labels, utts = ("anger", "happiness", "neutral", "sadness"), []
    for i in range(n):
        f0 = (120 + 200 * rng.random()) * (1 + 0.05 * np.sin(2 * np.pi * 4 * t))
        x = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / SR) + 0.02 * rng.standard_normal(t.size)
        path = folder / f"c{i:05d}.wav"
        sf.write(path, x.astype(np.float32), SR, subtype="PCM_16")
        utts.append(Utterance(path.stem, str(path), labels[i % 4], f"spk{i % 4}", "bench"))
    return Manifest(utts)


def measure(torch, phase, precision: str, *rest) -> dict:
    """`phase(torch, *rest, precision)`'s timings, run on a clean slate, with its compute dtype
    and peak GPU memory."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()  # accelerate allows one mixed precision per process
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    seen: list[str] = []

    def first_linear(module, _args, out) -> None:
        if isinstance(module, torch.nn.Linear) and not seen:
            seen.append(str(out.dtype).removeprefix("torch."))
            hook.remove()

    hook = torch.nn.modules.module.register_module_forward_hook(first_linear)
    print(f"{phase.__name__} {precision} ...", file=sys.stderr, flush=True)
    try:
        timings = phase(torch, *rest, precision)
    finally:
        hook.remove()
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    row = {"precision": precision, "compute_dtype": seen[0] if seen else None, **timings}
    row["peak_gpu_memory_mb"] = None if peak is None else round(peak, 1)
    print(f"  {row}", file=sys.stderr, flush=True)
    return row


def tapt(torch, args, manifest, tmp: Path, precision: str) -> dict:
    from after.config import TaptConfig
    from after.data.folds import Fold
    from after.tapt import LOG_FILE, run_tapt

    fold = Fold("all", tuple(manifest.ids), (), (), (), ())
    shared = {"batch_size": args.batch_size, "max_seconds": args.seconds}
    shared["precision"] = ACCELERATE[precision]
    config = TaptConfig(steps=args.steps, warmup_steps=1, log_every=1, save_every=10**9, **shared)
    out = run_tapt(manifest, fold, args.backbone, tmp / f"tapt_{precision}", config, progress=False)
    log = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    start, end = log[args.warmup - 1], log[-1]
    s, steps = end["seconds"] - start["seconds"], end["step"] - start["step"]
    audio = end["audio_seconds"] - start["audio_seconds"]
    return {
        "timed_steps": steps,
        "seconds_per_step": round(s / steps, 4),
        "audio_seconds_per_second": round(audio / s, 2),
        "final_loss": round(end["loss"], 4),
    }


def finetune(torch, args, manifest, tmp: Path, precision: str) -> dict:
    from after.config import TrainConfig
    from after.train import fit

    shared = {"batch_size": args.batch_size, "max_seconds": args.seconds}
    config = TrainConfig(epochs=args.epochs, patience=0, precision=ACCELERATE[precision], **shared)
    cache = tmp / f"cnn_{precision}"
    r = fit(manifest, manifest.ids, [], args.backbone, config, cache_dir=cache, progress=False)
    s = sum(h["seconds"] for h in r.history[1:]) / (len(r.history) - 1)
    return {
        "timed_epochs": len(r.history) - 1,
        "seconds_per_epoch": round(s, 4),
        "clips_per_second": round(len(manifest) / s, 2),
        "audio_seconds_per_second": round(len(manifest) * args.seconds / s, 2),
    }


def scoring(torch, args, manifest, tmp: Path, precision: str) -> dict:
    from after.config import TrainConfig
    from after.models.classifier import new_classifier
    from after.scoring import score_pool

    config, ids = TrainConfig(precision=ACCELERATE[precision]), manifest.ids
    torch.manual_seed(0)
    clf = new_classifier(args.backbone, manifest.labels)
    score_pool(clf, manifest, ids[:2], embeddings=True, config=config)  # warm-up, no cache
    rows: dict = {"eval_batch_size": config.eval_batch_size}
    for cache in ("empty", "filled"):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        score_pool(clf, manifest, ids, embeddings=True, config=config, cache_dir=tmp / precision)
        s = time.perf_counter() - t
        rows[f"{cache}_cache_seconds"] = round(s, 3)
        rows[f"{cache}_cache_clips_per_second"] = round(len(ids) / s, 2)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbone", default="scratch:base")
    p.add_argument("--precisions", help="fp32,bf16,fp16 (default: fp32,bf16 on CUDA, fp32 on CPU)")
    p.add_argument("--steps", type=int, default=20, help="TAPT steps, warm-up included")
    p.add_argument("--warmup", type=int, help="untimed first TAPT steps (default: steps // 4)")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs; the first untimed")
    p.add_argument("--batch-size", type=int, default=8, help="TAPT and fine-tuning batch")
    p.add_argument("--clips", type=int, default=256)
    p.add_argument("--seconds", type=float, default=4.0, help="clip length")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    args = p.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported
    import torch

    cuda, notes = torch.cuda.is_available(), []
    precisions = (args.precisions or ("fp32,bf16" if cuda else "fp32")).split(",")
    args.warmup = max(1, args.steps // 4) if args.warmup is None else args.warmup
    if args.device == "cuda" and not cuda:
        p.error("--device cuda: torch sees no CUDA device")
    if precisions[0] != "fp32" or any(x not in ACCELERATE for x in precisions):
        p.error("--precisions: fp32 first, then any of bf16, fp16")
    if not 1 <= args.warmup < args.steps or args.epochs < 2:
        p.error("--warmup must be at least 1 and below --steps, and --epochs at least 2")
    if cuda and "bf16" in precisions and not torch.cuda.is_bf16_supported():
        p.error(f"{torch.cuda.get_device_name()} has no bf16")
    if not cuda and "fp16" in precisions:
        p.error("fp16 needs a CUDA device (bf16 runs on a CPU, for smoke tests)")
    if not cuda and "bf16" in precisions:
        notes.append("bf16 on CPU (torch.autocast('cpu')): a smoke test, not a GPU timing")

    report: dict = {
        "benchmark": "gpu",
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cpu_threads": torch.get_num_threads(),
        "backbone": args.backbone,
        "clips": args.clips,
        "clip_seconds": args.seconds,
        "batch_size": args.batch_size,
        "notes": notes,
    }
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        manifest = write_corpus(tmp / "clips", args.clips, args.seconds)
        for phase in (tapt, finetune, scoring):
            rows = [measure(torch, phase, x, args, manifest, tmp) for x in precisions]
            report[phase.__name__] = rows
    if any(r["compute_dtype"] == "float32" for r in report["scoring"][1:]):
        notes.append(
            "scoring ran in float32 at a lower precision (see compute_dtype): it autocasts "
            "on a GPU only"
        )
    report["speedup_over_fp32"] = {  # fp32 seconds / this precision's seconds
        x: {
            name: {k: round(report[name][0][k] / report[name][i][k], 2) for k in keys}
            for name, keys in TIMES.items()
        }
        for i, x in enumerate(precisions[1:], 1)
    }
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=2))


def render(r: dict[str, Any]) -> list[str]:
    """BENCHMARKS.md's section on a printed result: each phase by precision."""
    lines = [f"{r['device']}, torch {r['torch']}, CUDA {r['cuda']}, `{r['backbone']}`.", ""]
    for phase in ("tapt", "finetune", "scoring"):
        rows = r[phase]
        keys = [k for k in rows[0] if k != "precision"]
        cells = [[x["precision"], *(x[k] for k in keys)] for x in rows]
        lines += [f"{phase}:", "", *table(["precision", *keys], cells), ""]
    lines.append(f"Speed-up over fp32: {json.dumps(r['speedup_over_fp32'])}")
    return lines + [f"Note: {n}" for n in r["notes"]]


if __name__ == "__main__":
    main()
