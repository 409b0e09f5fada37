"""Query-strategy speed and its growth with the pool: seconds for every registered strategy to
pick one round's queries (`--query-fraction` of the pool, 2% as in AFTER's schedule steps) from
synthetic pools of 1,000, 10,000 and 100,000 clips, and the growth exponent between the two
largest pools (1.0: linear in N; CoreSet and BADGE cost O(N x queries), so with queries a
fraction of N they grow as N^2).

    .venv/bin/python bench/strategies.py [--n 1000,10000,100000] [--dim 768]

The pool is float32: embeddings (N, D) from a mixture of 64 Gaussian blobs (some structure, as
real features have; k-means on pure noise would be slower than on real data), softmax `probs`
(N, C) of a random linear head on them, `mc_probs` (N, C, S) from that head with dropout-like
noise, BADGE gradient embeddings (p - onehot(argmax p)) x h of size C * D, and surprisal
embeddings (N, L) of positive values. `--labeled-fraction` of N clips are already labeled
(CoreSet measures its distance to them). Each strategy runs once, with an empty memo
(Cluster-Margin clusters the pool in that call); a strategy that leaves work in the memo for
later rounds is timed once more with it (`later_round_seconds`). Prints one JSON object; peak
RSS is that of the whole process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from md import table

if TYPE_CHECKING:
    from after.strategies import PoolOutputs

CHUNK = 8192


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def make_outputs(
    ids: list[str], dim: int, classes: int, passes: int, surprisal_dim: int, seed: int
) -> PoolOutputs:
    """Every field for `ids`, float32, built in row chunks to bound the temporaries."""
    from after.strategies import PoolOutputs

    rng = np.random.default_rng(seed)
    n = len(ids)
    centres = rng.standard_normal((64, dim)).astype(np.float32) * 2.0
    head = rng.standard_normal((dim, classes)).astype(np.float32) / np.sqrt(dim)
    emb = np.empty((n, dim), dtype=np.float32)
    probs = np.empty((n, classes), dtype=np.float32)
    mc = np.empty((n, classes, passes), dtype=np.float32)
    grad = np.empty((n, classes * dim), dtype=np.float32)
    for i in range(0, n, CHUNK):
        m = min(CHUNK, n - i)
        h = centres[rng.integers(64, size=m)] + rng.standard_normal((m, dim), dtype=np.float32)
        logits = h @ head * 3.0
        p = softmax(logits.astype(np.float64))
        noise = rng.standard_normal((m, passes, classes))
        mc[i : i + m] = softmax(logits[:, None, :] + noise).transpose(0, 2, 1)
        emb[i : i + m] = h
        probs[i : i + m] = p
        onehot = np.eye(classes)[p.argmax(axis=1)]
        grad[i : i + m] = ((p - onehot)[:, :, None] * h[:, None, :]).reshape(m, -1)
    surprisal = rng.gamma(2.0, size=(n, surprisal_dim)).astype(np.float32)
    return PoolOutputs(
        ids=ids,
        probs=probs,
        mc_probs=mc,
        embeddings=emb,
        grad_embeddings=grad,
        surprisal=surprisal,
    )


def select(
    strategy: Any,
    pool: PoolOutputs,
    n: int,
    labeled: PoolOutputs,
    seed: int,
    memo: dict[str, Any],
    fresh: bool = False,
) -> list[str]:
    """One round's pick; `fresh` empties the memo first (a first round)."""
    if fresh:
        memo.clear()
    rng = np.random.default_rng(seed)
    return list(strategy.select(pool, n, labeled=labeled, rng=rng, memo=memo))


def best_of(call: Callable[[], Any], budget_s: float = 0.5) -> tuple[Any, float]:
    """(result, seconds): the fastest of repeated calls while they add up to under `budget_s`
    (at most 50), so that millisecond calls are not timer noise; a slow call runs once."""
    best, total = math.inf, 0.0
    for _ in range(50):
        t = time.perf_counter()
        result = call()
        took = time.perf_counter() - t
        best, total = min(best, took), total + took
        if total >= budget_s:
            break
    return result, round(best, 5)


def main() -> None:
    from after.strategies import STRATEGIES, get_strategy

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", default="1000,10000,100000", help="pool sizes N, comma-separated")
    p.add_argument("--dim", type=int, default=768, help="embedding size D")
    p.add_argument("--classes", type=int, default=4, help="classes C")
    p.add_argument("--passes", type=int, default=10, help="MC-dropout passes S")
    p.add_argument("--surprisal-dim", type=int, default=None, help="L (default: D)")
    p.add_argument("--query-fraction", type=float, default=0.02, help="queries per round / N")
    p.add_argument("--labeled-fraction", type=float, default=0.02, help="labeled clips / N")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    surprisal_dim = args.surprisal_dim or args.dim
    sizes = [int(x) for x in args.n.split(",")]
    names = args.strategies.split(",")
    # Imports the first strategy to use them would otherwise pay for.
    import sklearn.cluster  # noqa: F401
    import torch  # noqa: F401

    runs = []
    for n in sizes:
        queries = max(1, round(args.query_fraction * n))
        n_labeled = max(1, round(args.labeled_fraction * n))
        t0 = time.perf_counter()
        ids = [f"clip{i:07d}" for i in range(n + n_labeled)]
        pool = make_outputs(ids[:n], args.dim, args.classes, args.passes, surprisal_dim, args.seed)
        labeled = make_outputs(
            ids[n:], args.dim, args.classes, args.passes, surprisal_dim, args.seed + 1
        )
        build_s = time.perf_counter() - t0
        seconds: dict[str, float] = {}
        later: dict[str, float] = {}
        for name in names:
            strategy = get_strategy(name)
            memo: dict = {}
            first = partial(select, strategy, pool, queries, labeled, args.seed, memo, fresh=True)
            got, seconds[name] = best_of(first)
            assert len(set(got)) == queries
            print(f"N={n} {name}: {seconds[name]} s", file=sys.stderr, flush=True)
            if memo:  # it keeps work for later rounds (Cluster-Margin's clusters): time one
                again = partial(select, strategy, pool, queries, labeled, args.seed + 1, memo)
                _, later[name] = best_of(again)
                print(f"N={n} {name}, a later round: {later[name]} s", file=sys.stderr)
        runs.append(
            {
                "n": n,
                "queries": queries,
                "labeled": n_labeled,
                "build_and_validate_seconds": round(build_s, 1),
                "select_seconds": seconds,
                "later_round_seconds": later,
            }
        )
        del pool, labeled

    # Growth exponent between the two largest pools: 1.0 is linear in N. Below 1 ms (best of
    # repeats) the timer and the machine's noise dominate: no exponent.
    a, b = runs[-2], runs[-1]

    def exponent(key: str, name: str) -> float | None:
        if a[key][name] < 0.001:
            return None
        return round(math.log(b[key][name] / a[key][name]) / math.log(b["n"] / a["n"]), 2)

    growth = {name: exponent("select_seconds", name) for name in names}
    growth_later = {
        name: exponent("later_round_seconds", name) for name in b["later_round_seconds"]
    }
    print(
        json.dumps(
            {
                "benchmark": "strategies",
                "pool": {
                    "dim": args.dim,
                    "classes": args.classes,
                    "mc_passes": args.passes,
                    "grad_dim": args.classes * args.dim,
                    "surprisal_dim": surprisal_dim,
                    "query_fraction": args.query_fraction,
                    "labeled_fraction": args.labeled_fraction,
                    "dtype": "float32",
                },
                "runs": runs,
                "growth_exponent": growth,
                "growth_exponent_later_rounds": growth_later,
                "superlinear": sorted(k for k, v in growth.items() if v is not None and v > 1.2),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "machine": {
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "usable_cpus": len(os.sched_getaffinity(0)),
                    "processor": platform.processor() or platform.machine(),
                },
            },
            indent=2,
        )
    )


def render(r: dict[str, Any]) -> list[str]:
    """BENCHMARKS.md's section on a printed result: selection seconds by pool size."""
    runs = r["runs"]
    names = list(runs[0]["select_seconds"])
    rows = [
        [name, *(run["select_seconds"][name] for run in runs), r["growth_exponent"][name]]
        for name in names
    ]
    rows += [  # strategies that keep work for later rounds (Cluster-Margin's clusters)
        [f"{name}, a later round", *(run["later_round_seconds"][name] for run in runs), growth]
        for name, growth in r.get("growth_exponent_later_rounds", {}).items()
    ]
    pool = r["pool"]
    return [
        f"Synthetic float32 pool: embeddings {pool['dim']}-d, {pool['classes']} classes, "
        f"{pool['mc_passes']} MC passes, BADGE gradients {pool['grad_dim']}-d; queries "
        f"{100 * pool['query_fraction']:g}% of the pool, {100 * pool['labeled_fraction']:g}% "
        f"already labeled. Peak RSS {r['peak_rss_mb']} MB.",
        "",
        *table(
            ["strategy", *(f"N={run['n']:,} (s)" for run in runs), "growth exponent"],
            rows,
        ),
        "",
        "Times are the best of repeats for calls under 0.5 s. Growth exponent: "
        "log(t_100k / t_10k) / log(10); none where the 10k time is under 1 ms (noise). "
        f"Superlinear (> 1.2): {', '.join(r['superlinear']) or 'none'}.",
    ]


if __name__ == "__main__":
    main()
