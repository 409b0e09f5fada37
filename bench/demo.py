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
from typing import Any

from md import table


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


def render(r: dict[str, Any]) -> list[str]:
    """BENCHMARKS.md's section on a printed result: the demo's table and its check."""
    return [*table(r["table"]["header"], r["table"]["rows"]), "", _check(r)]


def readme(r: dict[str, Any]) -> list[str]:
    """README's demo block: the table with its protocol, the default strategy against random,
    the check."""
    s = r["settings"]
    versus: list[str] = []
    if r["vs_random"]:
        last = r["vs_random"][-1]
        strategy = r["table"]["rows"][0][0].split(" (")[0]  # the first row: the default strategy
        versus = [
            f"`{strategy}` (the default strategy) minus random at "
            f"{100 * float(last['budget']):g}% of the pool, paired by fold and seed: "
            f"{100 * last['mean']:+.1f} ± {100 * last['std']:.1f} points (n={last['n']}, "
            f"Wilcoxon p = {last['wilcoxon_p']:.2g}).",
            "",
        ]
    return [
        f"Recorded by `bench/run_all.py --only demo` ({r['minutes']} min on the 2-core CPU machine "
        "this was built on). Test UA %, mean ± sample std over "
        f"{s['num_folds']} folds x {len(s['seeds'])} seeds; chance is 25%:",
        "",
        *table(r["table"]["header"], r["table"]["rows"]),
        "",
        *versus,
        _check(r),
    ]


def _check(r: dict[str, Any]) -> str:
    f, t = r["finetune"], r["tapt"]
    return (
        f"Fold {f['fold']}, test UA without / with TAPT ({t['steps']} steps on the fold's "
        f"training audio, {t['seconds']:.0f} s, loss {t['first_loss']:.3f} -> "
        f"{t['final_loss']:.3f}): `{f['backbone']}` fine-tuned on all labels ({f['epochs']} "
        f"epochs, bottom {f['frozen_layers']} layers frozen) {100 * f['finetuned_ua']:.1f}% / "
        f"{100 * f['tapt_finetuned_ua']:.1f}%; frozen features {100 * f['frozen_ua']:.1f}% / "
        f"{100 * f['tapt_frozen_ua']:.1f}% (one fold, one seed: a check, not a comparison). "
        f"Wall time: {r['minutes']} min."
    )


if __name__ == "__main__":
    main()
