"""Deterministic fault injection, for the crash-safety tests.

With `AFTER_FAULT=name:n` in the environment, the n-th time this process reaches
`fault_point("name")` it kills itself with SIGKILL: no cleanup, no flush, no atexit, exactly
like a power cut or the OOM killer at that line. Without the variable a fault point costs one
dictionary lookup. Points: `write` (an atomic write, after its temp file is synced and before
the rename), `score`, `select` and `train` (the loop's phases, after their work and before the
state is saved), `label-import` (inside an import's transaction, after its first row),
`train-step` (after each fine-tuning micro-batch), `score-chunk` (after each pool-scoring chunk
is written) and `tapt-step` (after each TAPT step).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_reached: Counter[str] = Counter()


def fault_point(name: str) -> None:
    spec = os.environ.get("AFTER_FAULT")
    if not spec:
        return
    wanted, _, nth = spec.partition(":")
    if name != wanted:
        return
    _reached[name] += 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
