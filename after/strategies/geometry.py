"""Squared Euclidean distances, k-means++ seeding and k-means, sized for pools of 100,000 x 768.

Distances use ||x||^2 + ||c||^2 - 2 x.c, so the work is matrix products in the input's own dtype
(float32 stays float32: half the memory traffic). Point-to-many distances are one matrix-vector
product (torch, see `matvec`); many-to-many products (numpy BLAS) are cut into `CHUNK` x `CHUNK`
blocks so memory stays bounded (4096^2 float32 = 64 MiB) whatever the sizes.
The expansion loses precision when two points nearly coincide, so a squared distance below a few
float epsilons of ||x||^2 + ||c||^2 is taken as exactly 0: a duplicate of a chosen point is then
never preferred to a genuinely distinct one.
"""

from __future__ import annotations

import warnings

import numpy as np

CHUNK = 4096
"""Rows per block in many-to-many distance computations."""


def as_float(x: np.ndarray) -> np.ndarray:
    """`x` as a C-contiguous floating array: float32 and float64 kept, anything else float64."""
    dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
    return np.ascontiguousarray(x, dtype=dtype)


def sq_norms(x: np.ndarray) -> np.ndarray:
    """Squared L2 norm of every row, as float64 (N,)."""
    return np.einsum("ij,ij->i", x, x, dtype=np.float64)


def _tolerance(dtype: np.dtype) -> float:
    """Relative size below which an expanded squared distance is rounding noise."""
    return 64.0 * float(np.finfo(dtype).eps)


def matvec(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """x @ c for (N, D) `x` and (D,) `c`, by torch (no copy of `x`).

    numpy's OpenBLAS matrix-vector product costs about 15 ms whatever the size when its threads
    must wake up on a busy machine; torch's does not, and uses all cores on large pools.
    """
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*not writable.*"
        )  # read-only arrays: we only read
        out = torch.mv(torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(c, x.dtype)))
    return out.numpy()


def sq_dists_to_point(x: np.ndarray, x_sq: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distances (N,) float64 from every row of `x` to the point `c`; `x_sq` holds the
    rows' squared norms (`sq_norms(x)`)."""
    c = np.asarray(c, dtype=x.dtype)
    c_sq = float(np.dot(c.astype(np.float64), c.astype(np.float64)))
    scale = x_sq + c_sq
    d = scale - 2.0 * matvec(x, c).astype(np.float64)
    d[d < _tolerance(x.dtype) * scale] = 0.0
    return d


def min_sq_dists(x: np.ndarray, y: np.ndarray, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """For every row of `x`, the squared distance to its nearest row of `y` and that row's index:
    ((N,) float64, (N,) int64). `y` must have at least one row."""
    y = np.asarray(y, dtype=x.dtype)
    x_sq, y_sq = sq_norms(x), sq_norms(y)
    best = np.full(len(x), np.inf)
    arg = np.zeros(len(x), dtype=np.int64)
    tol = _tolerance(x.dtype)
    for i in range(0, len(x), chunk):
        xs = x[i : i + chunk]
        for j in range(0, len(y), chunk):
            scale = x_sq[i : i + chunk, None] + y_sq[None, j : j + chunk]
            d = scale - 2.0 * (xs @ y[j : j + chunk].T).astype(np.float64)
            d[d < tol * scale] = 0.0
            k = d.argmin(axis=1)
            v = d[np.arange(len(xs)), k]
            better = v < best[i : i + chunk]
            best[i : i + chunk][better] = v[better]
            arg[i : i + chunk][better] = k[better] + j
    return best, arg


def d2_seeding(
    x: np.ndarray,
    k: int,
    rng: np.random.Generator,
    first: int | None = None,
    x_sq: np.ndarray | None = None,
) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): `k` distinct row indices of `x`.

    The first index is `first` (a uniform draw from `rng` when None); each next one is drawn with
    probability proportional to its squared distance to the nearest index chosen so far (D^2
    sampling). Chosen rows get distance 0, so they are never drawn again; once every remaining
    row coincides with a chosen one (all distances 0) the draw is uniform over the unchosen rows.
    One matrix-vector product per index: O(k N D) time, O(N) extra memory.
    """
    n = len(x)
    if x_sq is None:
        x_sq = sq_norms(x)
    chosen = np.empty(k, dtype=np.int64)
    taken = np.zeros(n, dtype=bool)
    chosen[0] = int(rng.integers(n)) if first is None else first
    taken[chosen[0]] = True
    d2 = sq_dists_to_point(x, x_sq, x[chosen[0]])
    d2[taken] = 0.0
    for t in range(1, k):
        total = float(d2.sum())
        if total > 0.0:
            cum = np.cumsum(d2)
            nxt = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
            nxt = min(nxt, n - 1)
            if d2[nxt] == 0.0:  # only at the floating-point edge of the last bin
                nxt = int(np.flatnonzero(d2 > 0.0)[-1])
        else:
            free = np.flatnonzero(~taken)
            nxt = int(free[rng.integers(len(free))])
        chosen[t] = nxt
        taken[nxt] = True
        np.minimum(d2, sq_dists_to_point(x, x_sq, x[nxt]), out=d2)
        d2[taken] = 0.0
    return chosen


def kmeans(
    x: np.ndarray, k: int, rng: np.random.Generator, max_iter: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means (scikit-learn, one run) from a `d2_seeding` start: (labels (N,), centres
    (k, D)).

    The seeding is ours rather than scikit-learn's greedy k-means++, which tries 2 + log k
    candidates per centre and takes minutes for k = 1000 on 100,000 rows. `max_iter` bounds the
    Lloyd iterations (each is one N x k distance pass); scikit-learn's warning that fewer
    distinct points than `k` exist is silenced (the caller handles empty clusters).
    """
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    seeds = d2_seeding(x, k, rng)
    model = KMeans(
        n_clusters=k,
        init=x[seeds],
        n_init=1,
        max_iter=max_iter,
        random_state=int(rng.integers(2**31 - 1)),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        labels = model.fit_predict(x)
    return np.asarray(labels, dtype=np.int64), np.asarray(model.cluster_centers_)
