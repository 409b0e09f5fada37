"""Random generators derived from a seed and a purpose, so that draws never depend on call order."""

from __future__ import annotations

import zlib

import numpy as np


def derived_rng(seed: int, *keys: object) -> np.random.Generator:
    """A generator for (seed, *keys): the same arguments always give the same draws, and
    different keys (a round, a clip id, "crop") give independent streams."""
    return np.random.default_rng([seed, *(zlib.crc32(str(k).encode()) for k in keys)])
