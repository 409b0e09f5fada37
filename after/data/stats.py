"""What is in a manifest: clips per label, per speaker, per fold, and durations (plain dicts)."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from after.data.folds import Folds
from after.data.manifest import Manifest

UNLABELED = "(unlabeled)"


def summarize(manifest: Manifest, folds: Folds | None = None) -> dict[str, Any]:
    """A JSON-serialisable summary. Durations are in seconds, over clips whose duration is known."""
    labels = manifest.labels
    by_speaker: dict[str, Counter[str]] = defaultdict(Counter)
    for u in manifest:
        by_speaker[u.speaker][u.label or UNLABELED] += 1
    durations = np.array([u.duration_s for u in manifest if u.duration_s is not None], dtype=float)
    summary: dict[str, Any] = {
        "num_clips": len(manifest),
        "num_labeled": sum(u.label is not None for u in manifest),
        "num_speakers": len(by_speaker),
        "corpora": dict(Counter(u.corpus for u in manifest)),
        "labels": {lab: manifest.label_counts()[lab] for lab in labels},
        "speakers": {s: dict(c) for s, c in sorted(by_speaker.items())},
        "durations": _durations(durations, len(manifest)),
    }
    if folds is not None:
        summary["folds"] = {
            "protocol": folds.protocol,
            "seed": folds.seed,
            "folds": [
                {
                    "name": f.name,
                    "test_groups": list(f.test_groups),
                    "dev_groups": list(f.dev_groups),
                    **{
                        part: dict(Counter(manifest[i].label or UNLABELED for i in ids))
                        | {"total": len(ids)}
                        for part, ids in (("train", f.train), ("dev", f.dev), ("test", f.test))
                    },
                }
                for f in folds.folds
            ],
        }
    return summary


def _durations(d: np.ndarray, num_clips: int) -> dict[str, float | int]:
    if d.size == 0:
        return {"num_known": 0, "num_unknown": num_clips}
    return {
        "num_known": int(d.size),
        "num_unknown": num_clips - int(d.size),
        "total_min": round(float(d.sum()) / 60, 2),
        "min_s": round(float(d.min()), 3),
        "median_s": round(float(np.median(d)), 3),
        "mean_s": round(float(d.mean()), 3),
        "max_s": round(float(d.max()), 3),
        # Many corpus copies are cut to a fixed length; a large mode at the maximum shows it (EmoDB
        # copies cut at 2.0 s, for one).
        "num_at_max": int(np.isclose(d, d.max()).sum()),
    }
