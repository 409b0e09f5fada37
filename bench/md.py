"""The Markdown pieces that the benchmarks' `render` functions share (BENCHMARKS.md and README.md
are assembled from them by `bench/run_all.py`).

Named `md`, not `markdown`: Python-Markdown installs a top-level `markdown` package.
"""

from __future__ import annotations

from typing import Any


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table: the first column left-aligned, the others right-aligned."""
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |",
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]


def pct(ms: dict[str, float]) -> str:
    """A mean ± std of fractions ({'mean', 'std', 'n'}) in percent."""
    return f"{100 * ms['mean']:.1f} ± {100 * ms['std']:.1f} (n={ms['n']})"


def difference(d: dict[str, Any]) -> str:
    """A paired difference in points ({'points', 'std', 'wilcoxon_p', 'n', 'min_p'}); n is
    starred where so few pairs could never reach p < 0.05."""
    few = "*" if d["min_p"] >= 0.05 else ""
    return f"{d['points']:+.1f} ± {d['std']:.1f} (p={d['wilcoxon_p']:.2g}, n={d['n']}{few})"
