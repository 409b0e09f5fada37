"""TAPT speed and memory: seconds per step, audio seconds per second and peak RSS for the scratch
tiny / small / base wav2vec 2.0 configs, with the CNN feature encoder trained vs frozen.

    .venv/bin/python bench/tapt.py [--sizes tiny,small,base] [--steps 6] [--batch-size 4]

Each case runs in its own process (so peak RSS is its own) on the synthetic demo corpus, through
the real `run_tapt` loop; the first `--warmup` steps are not timed. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from md import table


def one_case(
    size: str, frozen: bool, steps: int, warmup: int, batch_size: int, seconds: float
) -> dict:
    import torch

    from after.config import TaptConfig
    from after.data.folds import make_folds
    from after.data.synth import synthesize
    from after.tapt import LOG_FILE, run_tapt

    with tempfile.TemporaryDirectory() as tmp:
        manifest = synthesize(Path(tmp) / "corpus", num_speakers=4, num_sentences=6)
        fold = make_folds(manifest, "loso", seed=0).get(0)
        config = TaptConfig(
            steps=steps,
            batch_size=batch_size,
            max_seconds=seconds,
            warmup_steps=1,
            freeze_cnn=frozen,
            log_every=1,
            save_every=10**9,
        )
        out = run_tapt(manifest, fold, f"scratch:{size}", Path(tmp) / "out", config, progress=False)
        log = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    start, end = log[warmup - 1], log[-1]
    elapsed = end["seconds"] - start["seconds"]
    timed = end["step"] - start["step"]
    return {
        "size": size,
        "cnn": "frozen" if frozen else "trained",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "timed_steps": timed,
        "seconds_per_step": round(elapsed / timed, 4),
        "audio_seconds_per_second": round(
            (end["audio_seconds"] - start["audio_seconds"]) / elapsed, 2
        ),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "final_loss": round(end["loss"], 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="tiny,small,base")
    p.add_argument("--steps", type=int, default=6, help="steps per case, warm-up included")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seconds", type=float, default=4.0, help="crop length per clip")
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: size,frozen in a child process
    args = p.parse_args()
    if args.steps <= args.warmup:
        p.error("--steps must exceed --warmup")

    if args.case:
        size, frozen = args.case.split(",")
        result = one_case(
            size, frozen == "1", args.steps, args.warmup, args.batch_size, args.seconds
        )
        print(json.dumps(result))
        return

    cases = []
    for size in args.sizes.split(","):
        for frozen in ("0", "1"):
            cmd = [sys.executable, __file__, "--case", f"{size},{frozen}"]
            cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
            cmd += ["--batch-size", str(args.batch_size), "--seconds", str(args.seconds)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                sys.exit(f"case {size},{frozen} failed:\n{done.stderr[-3000:]}")
            cases.append(json.loads(done.stdout.strip().splitlines()[-1]))
    ratios = {}
    for size in args.sizes.split(","):
        trained, frozen = (c for c in cases if c["size"] == size)
        ratios[size] = round(trained["seconds_per_step"] / frozen["seconds_per_step"], 2)
    print(
        json.dumps(
            {
                "benchmark": "tapt",
                "corpus": "synth (4 voices x 6 sentences x 4 emotions), fold 0 train split",
                "batch_size": args.batch_size,
                "crop_seconds": args.seconds,
                "machine": {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "processor": platform.processor() or platform.machine(),
                },
                "cases": cases,
                "trained_over_frozen_seconds_per_step": ratios,
            },
            indent=2,
        )
    )


def render(r: dict[str, Any]) -> list[str]:
    """BENCHMARKS.md's section on a printed result: seconds per step and memory by case."""
    rows = [
        [
            c["size"],
            c["cnn"],
            c["seconds_per_step"],
            c["audio_seconds_per_second"],
            c["peak_rss_mb"],
        ]
        for c in r["cases"]
    ]
    return [
        f"{r['corpus']}; batch {r['batch_size']}, crops of {r['crop_seconds']} s.",
        "",
        *table(["scratch size", "CNN", "s/step", "audio s/s", "peak RSS (MB)"], rows),
    ]


if __name__ == "__main__":
    main()
