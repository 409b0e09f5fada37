"""A lever of the frozen-features learner against its baseline, paired run by run: the same corpus,
folds, seeds, strategies and schedule run through `bench/label_efficiency.py` twice, once with the
lever (e.g. `--feature-view auto --self-training 1`) and once without.

    .venv/bin/python bench/label_levers.py --base runs/le/urdu_clip --lever runs/le/urdu_auto_st

Prints one JSON object: for each strategy and budget, the lever's test UA minus the baseline's,
paired by (fold, seed) with the two-sided Wilcoxon signed-rank p and n (with `min_p`, the smallest
p that n pairs allow); the same for all labels; each side's settings; and how often the inner CV
chose each feature view under the lever.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from md import difference, table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--base", type=Path, required=True, help="a compare folder without the lever")
    p.add_argument("--lever", type=Path, required=True, help="the same compare with the lever")
    args = p.parse_args()

    from after.metrics import paired_difference
    from after.report import read_report_inputs

    sides = {
        name: read_report_inputs([d]) for name, d in (("base", args.base), ("lever", args.lever))
    }

    def by_key(inputs: Any) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
        return {
            (r.config["al"]["strategy"], r.config["fold"], r.config["al"]["seed"]): r.state.rounds
            for r in inputs.runs
        }

    base, lever = by_key(sides["base"]), by_key(sides["lever"])
    shared = sorted(set(base) & set(lever))
    schedule = sides["lever"].runs[0].config["al"]["schedule"]
    strategies: dict[str, Any] = {}
    for strategy in dict.fromkeys(k[0] for k in shared):
        keys = [k for k in shared if k[0] == strategy]
        per_budget = {}
        for i, budget in enumerate(schedule):
            pairs = [(lever[k][i]["test_ua"], base[k][i]["test_ua"]) for k in keys]
            ours, theirs = zip(*pairs, strict=True)
            d = paired_difference(ours, theirs)
            per_budget[budget] = {
                "points": round(100 * d["mean"], 2),
                "std": round(100 * d["std"], 2),
                "wilcoxon_p": round(d["wilcoxon_p"], 4),
                "n": d["n"],
                "min_p": round(d["min_p"], 4),
            }
        strategies[strategy] = per_budget

    def full(inputs: Any) -> dict[tuple[str, int], float]:
        return {(x["fold"], x["seed"]): x["test_ua"] for xs in inputs.full.values() for x in xs}

    fb, fl = full(sides["base"]), full(sides["lever"])
    common = sorted(set(fb) & set(fl))
    all_labels = paired_difference([fl[k] for k in common], [fb[k] for k in common])
    views: dict[str, int] = {}
    for r in sides["lever"].runs:
        for record in r.state.rounds:
            if "view" in record:
                views[record["view"]] = views.get(record["view"], 0) + 1

    def settings(inputs: Any) -> dict[str, Any]:
        train = inputs.runs[0].config["train"]
        keys = ("feature_view", "self_training", "pseudo_threshold")
        return {k: train.get(k) for k in keys}

    print(
        json.dumps(
            {
                "benchmark": "label_levers",
                "base": {"folder": str(args.base), **settings(sides["base"])},
                "lever": {"folder": str(args.lever), **settings(sides["lever"])},
                "corpus": ", ".join(sorted(sides["lever"].corpora)),
                "runs_paired": len(shared),
                "schedule": list(schedule),
                "lever_minus_base": strategies,
                "all_labels_lever_minus_base": {
                    "points": round(100 * all_labels["mean"], 2),
                    "std": round(100 * all_labels["std"], 2),
                    "wilcoxon_p": round(all_labels["wilcoxon_p"], 4),
                    "n": all_labels["n"],
                },
                "views_chosen_under_lever": views,
            },
            indent=2,
        )
    )


def render(r: dict[str, Any]) -> list[str]:
    """BENCHMARKS.md's section on a printed result: lever minus base by strategy and budget."""
    budgets = r["schedule"]
    a = r["all_labels_lever_minus_base"]
    lever = r["lever"]
    return [
        f"{r['corpus']}; {r['runs_paired']} runs paired by strategy, fold and seed. Lever: feature "
        f"view {lever['feature_view']}, self-training {lever['self_training']}; base: feature view "
        f"{r['base']['feature_view']}, self-training {r['base']['self_training']}. Test UA points, "
        "lever minus base (mean ± sample std, two-sided Wilcoxon p; n*: too few pairs to ever "
        "reach p < 0.05).",
        "",
        *table(
            ["strategy", *(f"{100 * float(b):g}%" for b in budgets)],
            [[n, *(difference(v[b]) for b in budgets)] for n, v in r["lever_minus_base"].items()],
        ),
        "",
        f"All labels: {a['points']:+.1f} ± {a['std']:.1f} points (p={a['wilcoxon_p']:.2g}, "
        f"n={a['n']}). Views the inner CV chose over every round: "
        f"{r['views_chosen_under_lever'] or 'none recorded'}.",
    ]


if __name__ == "__main__":
    main()
