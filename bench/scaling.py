"""Pool scoring on 1 vs N processes: seconds, clips per second and audio seconds per second.

    .venv/bin/python bench/scaling.py [--processes 1,2] [--backbone scratch:small]
        [--speakers 8] [--sentences 6] [--mc-passes 0]

Scores the synthetic demo corpus (speakers x sentences x 4 emotions clips) with an untrained
classifier on `--backbone`, through `score_pool` as the active-learning loop calls it: in this
process for 1, on N workers it starts (torchrun; gloo on CPUs, one process per GPU) otherwise.
Each count is timed twice: with an empty CNN cache (the CNN runs) and a filled one (only the
transformer runs). The time of starting N workers is measured on its own (one clip) and is part
of the N-process times. Workers get an equal share of the cores each (OMP_NUM_THREADS); the
1-process case uses torch's default threads, or `--threads`. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from md import table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--backbone", default="scratch:small")
    parser.add_argument("--speakers", type=int, default=8)
    parser.add_argument("--sentences", type=int, default=6)
    parser.add_argument("--mc-passes", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads of the 1-process case (0: default)"
    )
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from after.config import TrainConfig
    from after.data.audio import clip_duration
    from after.data.synth import synthesize
    from after.models.classifier import new_classifier
    from after.scoring import score_pool

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        m = synthesize(root / "corpus", num_speakers=args.speakers, num_sentences=args.sentences)
        ids = m.ids
        audio_s = sum(clip_duration(u) for u in m)
        torch.manual_seed(0)
        clf = new_classifier(args.backbone, m.labels)
        for n in (int(x) for x in args.processes.split(",")):
            config = TrainConfig(num_processes=n)
            run = {"embeddings": True, "mc_passes": args.mc_passes, "config": config}
            start = time.perf_counter()
            score_pool(clf, m, ids[:1], out_dir=root / f"start{n}", **run)
            startup = time.perf_counter() - start
            for cache in ("empty", "filled"):
                start = time.perf_counter()
                score_pool(
                    clf, m, ids, cache_dir=root / f"cache{n}", out_dir=root / f"{cache}{n}", **run
                )
                seconds = time.perf_counter() - start
                results.append(
                    {
                        "processes": n,
                        "cnn_cache": cache,
                        "seconds": round(seconds, 2),
                        "startup_seconds": round(startup, 2) if n > 1 else 0.0,
                        "clips_per_second": round(len(ids) / seconds, 2),
                        "audio_seconds_per_second": round(audio_s / seconds, 2),
                    }
                )
    print(
        json.dumps(
            {
                "backbone": args.backbone,
                "clips": len(ids),
                "audio_minutes": round(audio_s / 60, 2),
                "mc_passes": args.mc_passes,
                "device": "cuda" if torch.cuda.is_available() else "cpu",
                "cpus": os.cpu_count(),
                "threads_one_process": torch.get_num_threads(),
                "machine": platform.machine(),
                "results": results,
            },
            indent=2,
        )
    )


def render(r: dict[str, Any]) -> list[str]:
    """BENCHMARKS.md's section on a printed result: one process against two."""
    rows = [
        [
            x["processes"],
            x["cnn_cache"],
            x["seconds"],
            x["startup_seconds"],
            x["clips_per_second"],
        ]
        for x in r["results"]
    ]
    return [
        f"`{r['backbone']}`, {r['clips']} clips ({r['audio_minutes']} min of audio), "
        f"{r['device']}, {r['cpus']} CPUs.",
        "",
        *table(["processes", "CNN cache", "seconds", "of which start-up", "clips/s"], rows),
    ]


if __name__ == "__main__":
    main()
