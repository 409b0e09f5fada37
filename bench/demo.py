"""The demo, as `make demo` runs it, recorded: what it printed and how long it took.

    .venv/bin/python bench/demo.py [--out runs/bench/demo]

Runs `after.demo.run_demo` into a fresh folder and prints one JSON object: the demo's settings,
its table (test UA per strategy and budget), the fine-tuning check, and its wall time. The
README's demo section is rendered from this result (`bench/run_all.py`), so its figures are the
ones a run produced.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench/demo"))
    args = p.parse_args()

    from after.demo import DEMO, FEATURE_BACKBONE, FINE_TUNE_BACKBONE, run_demo

    shutil.rmtree(args.out, ignore_errors=True)  # a fresh run: nothing reused
    t0 = time.perf_counter()
    result = run_demo(args.out, DEMO, log=lambda line: print(line, file=sys.stderr, flush=True))
    report = {
        "benchmark": "demo",
        "settings": dataclasses.asdict(DEMO),
        "fine_tune_backbone": FINE_TUNE_BACKBONE,
        "feature_backbone": FEATURE_BACKBONE,
        "minutes": round((time.perf_counter() - t0) / 60, 1),
        "table": result["table"],
        "vs_random": result["vs_random"],
        "tapt": result["tapt"],
        "finetune": result["finetune"],
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
