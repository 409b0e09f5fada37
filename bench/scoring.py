"""Pool scoring: throughput with an empty vs a filled frozen-CNN cache, as a fraction of the
machine's dense matmul peak, and peak memory against pool size.

    .venv/bin/python bench/scoring.py [--backbones scratch:small,scratch:base] [--clips 128]
        [--seconds 1.0] [--threads 1] [--mem-backbone scratch:tiny] [--mem-clips 1000,10000]

Throughput (one process, `--threads` torch threads): synthetic clips of `--seconds` (a vibrato
tone plus noise, written as 16 kHz WAV) are scored by `after.scoring.score_pool` with an
untrained classifier on each backbone, as the active-learning loop calls it (probabilities and
embeddings), first with an empty CNN cache (the CNN runs and fills it), then with the filled one
(only the transformer runs), side by side in the same process. The model's FLOPs per clip are
counted with `torch.utils.flop_counter.FlopCounterMode` on one forward pass of a clip (the whole
model, and the CNN feature encoder alone, so that the cached pass is charged only for what it
runs), and the machine's dense float32 GEMM rate is measured in the same process (torch.mm of
`--gemm-size` square matrices, best of several) with the same thread count. achieved / peak =
clips/s x FLOPs per clip / GEMM FLOP/s.

Memory: each pool size of `--mem-clips` is scored in its own child process with
`--mem-backbone` (default `scratch:tiny`, so 10k clips are affordable on 2 cores), in three modes:
the CNN cache on disk (what the loop does), no CNN cache (`cache_cnn=False`), and the CNN cache
in memory (`cache_dir=None`). Each child reports its RSS before scoring (model, manifest and
imports loaded), the peak RSS while scoring (VmHWM after resetting it through
/proc/self/clear_refs; the lifetime `ru_maxrss` too), and the bytes of the returned arrays.
Streaming means peak - before grows only by the output arrays. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from md import table

SR = 16_000


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak RSS since the last `reset_peak` (VmHWM), or of the process's life (ru_maxrss)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def write_clips(folder: Path, n: int, seconds: float) -> None:
    """n WAV clips `clip{i:06d}.wav` (skips those already there)."""
    import numpy as np
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(round(seconds * SR)) / SR
    for i in range(n):
        path = folder / f"clip{i:06d}.wav"
        if path.exists():
            continue
        f0 = 120 + 200 * rng.random()
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.05 * np.sin(2 * np.pi * 4 * t))) / SR
        x = 0.3 * np.sin(phase) + 0.02 * rng.standard_normal(t.size)
        sf.write(path, x.astype(np.float32), SR, subtype="PCM_16")


def make_manifest(folder: Path, n: int, seconds: float):
    from after.data.manifest import Manifest, Utterance

    labels = ("anger", "happiness", "neutral", "sadness")
    return Manifest(
        [
            Utterance(
                f"clip{i:06d}",
                str(folder / f"clip{i:06d}.wav"),
                labels[i % 4],
                f"spk{i % 10:02d}",
                "bench",
                duration_s=seconds,
            )
            for i in range(n)
        ]
    )


def gemm_gflops(size: int, repeats: int = 7) -> float:
    """Best-of-`repeats` float32 GFLOP/s of torch.mm on size x size matrices."""
    import torch

    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * size**3 / best / 1e9


def flops_per_clip(clf, seconds: float) -> tuple[float, float]:
    """(whole model, CNN feature encoder alone) FLOPs of one forward pass of one clip."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from after.models.backbones import feature_encoder

    x = torch.randn(1, round(seconds * SR))
    clf.module.eval()
    with torch.no_grad():
        with FlopCounterMode(display=False) as whole:
            clf.module(x)
        with FlopCounterMode(display=False) as cnn:
            feature_encoder(clf.module)(x)
    return float(whole.get_total_flops()), float(cnn.get_total_flops())


def throughput(backbone: str, folder: Path, clips: int, seconds: float, gflops: float) -> dict:
    import torch

    from after.config import TrainConfig
    from after.models.classifier import new_classifier
    from after.scoring import score_pool

    m = make_manifest(folder, clips, seconds)
    torch.manual_seed(0)
    clf = new_classifier(backbone, m.labels)
    whole, cnn = flops_per_clip(clf, seconds)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        score_pool(clf, m, m.ids[:2], embeddings=True, config=TrainConfig())  # warm-up, no cache
        for mode in ("empty", "filled"):
            t = time.perf_counter()
            score_pool(clf, m, m.ids, embeddings=True, config=TrainConfig(), cache_dir=cache)
            s = time.perf_counter() - t
            flops = whole if mode == "empty" else whole - cnn
            rows[mode] = {
                "seconds": round(s, 2),
                "clips_per_second": round(clips / s, 2),
                "audio_seconds_per_second": round(clips * seconds / s, 2),
                "gflops_per_clip_charged": round(flops / 1e9, 3),
                "achieved_gflops": round(clips * flops / s / 1e9, 2),
                "fraction_of_gemm_peak": round(clips * flops / s / 1e9 / gflops, 3),
            }
            print(f"{backbone} cache {mode}: {rows[mode]}", file=sys.stderr, flush=True)
    params = sum(p.numel() for p in clf.module.parameters())
    return {
        "backbone": backbone,
        "parameters_millions": round(params / 1e6, 2),
        "clips": clips,
        "gflops_per_clip": {
            "whole_model": round(whole / 1e9, 3),
            "cnn": round(cnn / 1e9, 3),
            "transformer_and_head": round((whole - cnn) / 1e9, 3),
        },
        "cache": rows,
        "filled_over_empty_speedup": round(rows["empty"]["seconds"] / rows["filled"]["seconds"], 2),
    }


def memory_case(backbone: str, folder: Path, n: int, seconds: float, mode: str) -> dict:
    """Runs in a child process: score n clips, report peak RSS."""
    import torch

    from after.config import TrainConfig
    from after.models.classifier import new_classifier
    from after.scoring import score_pool

    m = make_manifest(folder, n, seconds)
    torch.manual_seed(0)
    clf = new_classifier(backbone, m.labels)
    score_pool(clf, m, m.ids[:2], embeddings=True, config=TrainConfig(cache_cnn=False))
    before = rss_now_mb()
    reset = reset_peak()
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(cache_cnn=mode != "no_cache")
        cache_dir = Path(tmp) / "cache" if mode == "disk_cache" else None
        t = time.perf_counter()
        out = score_pool(clf, m, m.ids, embeddings=True, config=config, cache_dir=cache_dir)
        s = time.perf_counter() - t
    out_mb = sum(a.nbytes for a in out.values()) / 2**20
    return {
        "clips": n,
        "mode": mode,
        "seconds": round(s, 1),
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_is_since_scoring_began": reset,
        "process_lifetime_peak_mb": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        ),
        "growth_mb": round(peak_rss_mb() - before, 1),
        "output_arrays_mb": round(out_mb, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbones", default="scratch:small,scratch:base")
    p.add_argument("--clips", type=int, default=128, help="clips per throughput case")
    p.add_argument("--seconds", type=float, default=1.0, help="clip length")
    p.add_argument("--threads", type=int, default=1, help="torch threads (GEMM peak too)")
    p.add_argument("--gemm-size", type=int, default=2048)
    p.add_argument("--mem-backbone", default="scratch:tiny")
    p.add_argument("--mem-clips", default="1000,10000", help="pool sizes ('' skips memory)")
    p.add_argument("--mem-modes", default="disk_cache,no_cache,memory_cache")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: folder,n,mode in a child
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    if args.case:
        folder, n, mode = args.case.split(",")
        r = memory_case(args.mem_backbone, Path(folder), int(n), args.seconds, mode)
        print(json.dumps(r))
        return

    sizes = [int(x) for x in args.mem_clips.split(",") if x]
    most = max([args.clips, *sizes])
    result: dict = {
        "benchmark": "scoring",
        "clip_seconds": args.seconds,
        "torch_threads": args.threads,
        "device": "cpu",
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "clips"
        t = time.perf_counter()
        write_clips(folder, most, args.seconds)
        print(f"wrote {most} clips in {time.perf_counter() - t:.1f} s", file=sys.stderr)

        gemm_before = gemm_gflops(args.gemm_size)
        cases = [
            throughput(b, folder, args.clips, args.seconds, gemm_before)
            for b in args.backbones.split(",")
            if b
        ]
        gemm_after = gemm_gflops(args.gemm_size)
        result["gemm"] = {
            "op": f"torch.mm float32 {args.gemm_size}x{args.gemm_size}, best of 7",
            "gflops_before": round(gemm_before, 1),
            "gflops_after": round(gemm_after, 1),
            "note": "fractions use gflops_before; a large gap between before and after means "
            "the machine's load changed during the run",
        }
        result["throughput"] = cases

        memory = []
        for n in sizes:
            for mode in args.mem_modes.split(","):
                cmd = [sys.executable, __file__, "--case", f"{folder},{n},{mode}"]
                cmd += ["--mem-backbone", args.mem_backbone, "--seconds", str(args.seconds)]
                cmd += ["--threads", str(args.threads)]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    sys.exit(f"memory case {n},{mode} failed:\n{done.stderr[-3000:]}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"memory: {row}", file=sys.stderr, flush=True)
                memory.append(row)
        result["memory"] = {"backbone": args.mem_backbone, "cases": memory}
    print(json.dumps(result, indent=2))


def render(r: dict[str, Any]) -> list[str]:
    """BENCHMARKS.md's section on a printed result: throughput against the GEMM peak, memory."""
    gemm = r["gemm"]
    rows = []
    for c in r["throughput"]:
        for mode, m in c["cache"].items():
            rows.append(
                [
                    f"`{c['backbone']}` ({c['parameters_millions']} M)",
                    mode,
                    m["clips_per_second"],
                    m["audio_seconds_per_second"],
                    m["gflops_per_clip_charged"],
                    m["achieved_gflops"],
                    f"{100 * m['fraction_of_gemm_peak']:.1f}%",
                ]
            )
    lines = [
        f"{r['clip_seconds']} s clips, {r['torch_threads']} torch thread(s), {r['device']}. "
        f"Dense GEMM ({gemm['op']}): {gemm['gflops_before']} GFLOP/s before, "
        f"{gemm['gflops_after']} after.",
        "",
        *table(
            [
                "backbone",
                "CNN cache",
                "clips/s",
                "audio s/s",
                "GFLOP/clip",
                "GFLOP/s",
                "of GEMM peak",
            ],
            rows,
        ),
        "",
        f"Memory, `{r['memory']['backbone']}` (peak RSS while scoring; growth = peak - RSS "
        "before scoring):",
        "",
    ]
    rows = [
        [
            m["clips"],
            m["mode"],
            m["seconds"],
            m["rss_before_mb"],
            m["peak_rss_mb"],
            m["growth_mb"],
            m["output_arrays_mb"],
        ]
        for m in r["memory"]["cases"]
    ]
    lines += table(
        ["clips", "mode", "seconds", "RSS before (MB)", "peak (MB)", "growth (MB)", "outputs (MB)"],
        rows,
    )
    return lines


if __name__ == "__main__":
    main()
