"""Run the benchmarks and collect their figures into BENCHMARKS.md.

    .venv/bin/python bench/run_all.py                 # every benchmark, then BENCHMARKS.md
    .venv/bin/python bench/run_all.py --only scoring,strategies
    .venv/bin/python bench/run_all.py --render        # BENCHMARKS.md from the saved results
    make bench                                        # the same as the first line

Each benchmark runs in its own process, one after another (never side by side: they would slow
each other down), with the arguments in `BENCHES` and one torch thread unless OMP_NUM_THREADS is
set (on a 2-core machine shared with other work, torch's threads wait on each other). Its JSON
goes to `bench/results/NAME.json` together with the exact command, the commit, the machine, the
wall time and the load average before and after (the machine may be shared; every ratio in the
results is measured side by side within one run). `BENCHMARKS.md` is then written from every
saved result, so a benchmark run alone updates its section and keeps the others.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
OUT = ROOT / "BENCHMARKS.md"


@dataclass(frozen=True)
class Bench:
    name: str
    title: str
    args: tuple[str, ...]
    about: str
    gpu: bool = False  # runs only where CUDA is available


BENCHES = (
    Bench(
        "whisper_features",
        "Frozen Whisper features on EmoDB: layer, pooling, window; the learner vs scikit-learn",
        ("bench/whisper_features.py",),
        "Which layer, pooling and input window of a frozen Whisper encoder to use (UA of the "
        "project's learner on each), extraction speed, and that learner side by side with a "
        "tuned scikit-learn logistic regression on the same features and folds.",
    ),
    Bench(
        "whisper_finetune",
        "Fine-tuned Whisper tiny.en against its frozen features on EmoDB",
        ("bench/whisper_finetune.py",),
        "Whisper tiny.en fine-tuned against the frozen-feature learner on the same folds, paired "
        "per fold and seed; scoring speed with the frozen bottom's cache empty and filled.",
    ),
    Bench(
        "tapt_whisper",
        "TAPT of Whisper tiny.en on EmoDB: with and without, paired",
        ("bench/tapt_whisper.py", "--out", "runs/bench/tapt_whisper"),
        "Task-adaptive pre-training of whisper-tiny.en on each fold's training audio, against no "
        "TAPT: frozen features, fine-tuning on all labels, and active learning to 20%, paired "
        "per fold (and seed) with Wilcoxon's test; the TAPT loss of every fold.",
    ),
    Bench(
        "tapt_levers",
        "TAPT's levers on Whisper tiny.en, judged on frozen features",
        (
            "bench/tapt_levers.py",
            "--levers",
            "steps=3;lr=3e-5;mask=0.3x5;target=4",
            "--out",
            "runs/bench/tapt_levers",
        ),
        "One TAPT setting changed at a time from the default (a 3-step run as a control for how "
        "much the probe moves when the weights barely move; a lower learning rate; shorter, "
        "sparser masks; k-means targets from the last layer), each against no TAPT on the same "
        "folds with Wilcoxon's test.",
    ),
    Bench(
        "time_whisper",
        "Time: active learning to 20% against all labels, Whisper tiny.en, fresh and warm rounds",
        ("bench/time_whisper.py",),
        "Wall time of an AL run to 20% of the pool over one fine-tuning on all labels of the "
        "same fold and seed, side by side: AFTER's fresh rounds and warm-started rounds that "
        "cost what they add; test UA of each. The paper reports 0.21; our target is <= 0.15 "
        "within 1 UA point of all labels.",
    ),
    Bench(
        "demo",
        "The demo",
        ("bench/demo.py", "--out", "runs/bench/demo"),
        "`make demo` from scratch: its table, its fine-tuning check and its wall time. The "
        "README's demo section is rendered from this result.",
    ),
    Bench(
        "label_efficiency",
        "Label efficiency on EmoDB: frozen Whisper tiny.en features, every strategy",
        ("bench/label_efficiency.py", "--out", "runs/bench/label_efficiency"),
        "Test UA at each label budget for every strategy vs random and all labels.",
    ),
    Bench(
        "label_efficiency_tapt",
        "Label efficiency on EmoDB: a scratch wav2vec 2.0 with and without TAPT",
        (
            "bench/label_efficiency.py",
            "--backbone=scratch:tiny",
            "--tapt-steps=300",
            "--folds=5",
            "--fold-step=2",
            "--seeds=0,1,2",
            "--epochs=10",
            "--out=runs/bench/label_efficiency_tapt",
        ),
        "The same loop on a randomly initialised wav2vec 2.0, fine-tuned as is and after TAPT "
        "on each fold's training audio.",
    ),
    Bench(
        "time_ratio",
        "Time: active learning to 20% over fine-tuning on all labels",
        ("bench/time_ratio.py",),
        "Wall time of one AL run to 20% of the pool / one fine-tuning on all labels, same "
        "backbone and epochs, with and without the cache. The paper reports 0.21; our target "
        "is <= 0.15.",
    ),
    Bench(
        "scoring",
        "Pool scoring: throughput, share of the machine's matmul peak, memory",
        ("bench/scoring.py",),
        "Clips per second with an empty and a filled CNN cache, as a fraction of the dense "
        "GEMM rate measured in the same run; peak RSS of scoring 1k and 10k clips.",
    ),
    Bench(
        "strategies",
        "Selection time against pool size (1k, 10k, 100k clips)",
        ("bench/strategies.py",),
        "Seconds for each strategy to pick 2% of a synthetic pool; growth exponent between "
        "10k and 100k (1.0 = linear).",
    ),
    Bench(
        "tapt",
        "TAPT step time and memory",
        ("bench/tapt.py",),
        "Seconds per TAPT step and peak RSS for the scratch configs, CNN trained vs frozen.",
    ),
    Bench(
        "processes",
        "Pool scoring on 1 vs 2 processes",
        ("bench/scaling.py", "--threads=1", "--sentences=32"),
        "The sharded scoring path (torchrun workers, gloo) against one process.",
    ),
    Bench(
        "gpu",
        "GPU: fp32 vs bf16 for TAPT, fine-tuning and scoring",
        ("bench/gpu.py", "--backbone=scratch:base", "--precisions=fp32,bf16"),
        "A base-size wav2vec 2.0 (random init) on one GPU: TAPT seconds per step, fine-tuning "
        "seconds per epoch and scoring clips per second, fp32 vs bf16, with peak GPU memory.",
        gpu=True,
    ),
)


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU model and count, memory, Python and torch, GPU."""
    facts: dict[str, Any] = {
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                facts["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    import torch

    facts["torch"] = torch.__version__
    facts["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return facts


def last_json(stdout: str) -> dict[str, Any]:
    """The JSON object a benchmark prints last (it may print progress lines before it)."""
    lines = stdout.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("{"):
            try:
                return dict(json.loads("\n".join(lines[i:])))
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON object at the end of its output")


def commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


def run(bench: Bench) -> bool:
    """Run one benchmark; save its result. False (and the tail of its stderr) if it failed."""
    cmd = [sys.executable, *bench.args]
    shown = ".venv/bin/python " + shlex.join(bench.args)
    print(f"== {bench.name}: {shown}", file=sys.stderr, flush=True)
    revision = commit()  # of the code the benchmark starts with
    load_before = os.getloadavg()
    started = dt.datetime.now(dt.UTC)
    t = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, check=False)
    seconds = time.perf_counter() - t
    try:
        if done.returncode != 0:
            raise ValueError(f"exit status {done.returncode}")
        result = last_json(done.stdout)
    except ValueError as e:
        print(f"{bench.name} failed ({e}); its result is not saved", file=sys.stderr)
        return False
    record = {
        "command": f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']} {shown}",
        "commit": revision,
        "started_utc": started.isoformat(timespec="seconds"),
        "wall_seconds": round(seconds, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "machine": machine(),
        "result": result,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{bench.name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    tmp.replace(path)
    print(f"{bench.name}: {seconds / 60:.1f} min -> {path}", file=sys.stderr, flush=True)
    return True


# ---- BENCHMARKS.md -------------------------------------------------------------------------------


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |",
        *("| " + " | ".join(str(c) for c in row) + " |" for row in rows),
    ]


def pct(ms: dict[str, float]) -> str:
    return f"{100 * ms['mean']:.1f} ± {100 * ms['std']:.1f} (n={ms['n']})"


def render_label_efficiency(r: dict[str, Any]) -> list[str]:
    budgets = r["schedule"]
    rows = [
        [
            name,
            *(s["test_ua_by_budget"].get(b, "-") for b in budgets),
            s["auc_ua"],
            f"{s['time_vs_all_labels']}x",
        ]
        for name, s in r["strategies"].items()
    ]
    view = r.get("feature_view", "clip")
    learner = (
        f" Features: {view} view"
        + (" (transductive)" if r.get("transductive") else "")
        + (f", self-training weight {r['self_training']}" if r.get("self_training") else "")
        + (f"; views chosen over all rounds: {r['views_chosen']}" if r.get("views_chosen") else "")
        + "."
    )
    lines = [
        f"{r['corpus']}; {r['protocol']}; backbone `{r['backbone']}`. Test UA % (mean ± sample "
        "std over fold x seed runs); AUC: the area under the UA curve over the labeled fraction "
        "divided by its span (a mean UA over the budgets); time: one AL run over one all-labels "
        "fine-tuning." + learner,
        "",
        *table(
            ["strategy", *(f"{100 * float(b):g}%" for b in budgets), "AUC", "time"],
            rows,
        ),
        "",
        f"All labels: UA {pct(r['all_labels_test_ua'])}.",
    ]
    paired = {n: s["vs_random"] for n, s in r["strategies"].items() if s.get("vs_random")}
    if paired:
        lines += [
            "",
            "Against random, paired by fold and seed: mean difference in UA points (two-sided "
            "Wilcoxon signed-rank p):",
            "",
            *table(
                ["strategy", *(f"{100 * float(b):g}%" for b in budgets)],
                [
                    [
                        n,
                        *(
                            f"{v[b]['points']:+.1f} (p={v[b]['wilcoxon_p']:.2g})" if b in v else "-"
                            for b in budgets
                        ),
                    ]
                    for n, v in paired.items()
                ],
            ),
        ]
    return lines


def render_label_levers(r: dict[str, Any]) -> list[str]:
    budgets = r["schedule"]

    def cell(v: dict[str, Any]) -> str:
        few = "*" if v["min_p"] >= 0.05 else ""
        return f"{v['points']:+.1f} ± {v['std']:.1f} (p={v['wilcoxon_p']:.2g}, n={v['n']}{few})"

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
            [[n, *(cell(v[b]) for b in budgets)] for n, v in r["lever_minus_base"].items()],
        ),
        "",
        f"All labels: {a['points']:+.1f} ± {a['std']:.1f} points (p={a['wilcoxon_p']:.2g}, "
        f"n={a['n']}). Views the inner CV chose over every round: "
        f"{r['views_chosen_under_lever'] or 'none recorded'}.",
    ]


def render_label_efficiency_tapt(r: dict[str, Any]) -> list[str]:
    tapt = r["tapt"]
    lines = [
        f"{r['corpus']}; {r['protocol']}; backbone `{r['backbone']}`. TAPT: {tapt['steps']} "
        "steps per fold on the fold's training audio only:",
        "",
        *table(
            ["fold", "seconds", "first loss", "final loss", "chance loss"],
            [[fold, *t.values()] for fold, t in tapt["per_fold"].items()],
        ),
        "",
    ]
    for variant, strategies in r["variants"].items():
        lines.append(f"**{variant}** (test UA %):")
        lines.append("")
        budgets = list(next(iter(strategies["strategies"].values()))["test_ua_by_budget"])
        rows = [
            [name, *(s["test_ua_by_budget"][b] for b in budgets), "-"]
            for name, s in strategies["strategies"].items()
        ]
        rows.append(["all labels", *("-" for _ in budgets), strategies["all_labels_test_ua"]])
        header = ["strategy", *(f"{100 * float(b):g}%" for b in budgets), "all labels"]
        lines += [*table(header, rows), ""]
    gains = r["tapt_minus_plain_at_last_budget"]
    return [
        *lines,
        "TAPT minus plain at the last budget (points): "
        + ", ".join(f"{name} {gain:+.2f}" for name, gain in gains.items())
        + ".",
    ]


def render_time_ratio(r: dict[str, Any]) -> list[str]:
    rows = [
        [
            c["backbone"],
            c["cache"],
            c["full_seconds"],
            c["al_seconds"],
            f"**{c['ratio_total']}**",
            c["ratio_rounds_only"],
            f"{100 * c['full_test_ua']:.1f} / {100 * c['al_final_test_ua']:.1f}",
        ]
        for c in r["cases"]
    ]
    return [
        f"{r['corpus']}; {r['epochs']} epochs for every fine-tuning; strategy {r['strategy']}, "
        f"schedule {', '.join(r['schedule'])}, cold start {r['cold_start']}; torch threads "
        f"{r['torch_threads']}. Paper: {r['paper_ratio']}; target: <= {r['target_ratio']}. "
        "Floor for this schedule when every round fine-tunes afresh for the same epochs (the "
        "labeled shares summed over rounds; training alone, before scoring): "
        f"{sum(float(b) for b in r['schedule']):.2f}.",
        "",
        *table(
            [
                "backbone",
                "cache",
                "all labels (s)",
                "AL to 20% (s)",
                "AL / all",
                "rounds only / all",
                "test UA all / AL (%)",
            ],
            rows,
        ),
    ]


def render_scoring(r: dict[str, Any]) -> list[str]:
    gemm = r["gemm"]
    rows = []
    for c in r["throughput"]:
        for mode, m in c["cache"].items():
            rows.append(
                [
                    f"`{c['backbone']}` ({c['parameters_millions']} M)",
                    mode,
                    m["clips_per_second"],
                    m["audio_seconds_per_second"],
                    m["gflops_per_clip_charged"],
                    m["achieved_gflops"],
                    f"{100 * m['fraction_of_gemm_peak']:.1f}%",
                ]
            )
    lines = [
        f"{r['clip_seconds']} s clips, {r['torch_threads']} torch thread(s), {r['device']}. "
        f"Dense GEMM ({gemm['op']}): {gemm['gflops_before']} GFLOP/s before, "
        f"{gemm['gflops_after']} after.",
        "",
        *table(
            [
                "backbone",
                "CNN cache",
                "clips/s",
                "audio s/s",
                "GFLOP/clip",
                "GFLOP/s",
                "of GEMM peak",
            ],
            rows,
        ),
        "",
        f"Memory, `{r['memory']['backbone']}` (peak RSS while scoring; growth = peak - RSS "
        "before scoring):",
        "",
    ]
    rows = [
        [
            m["clips"],
            m["mode"],
            m["seconds"],
            m["rss_before_mb"],
            m["peak_rss_mb"],
            m["growth_mb"],
            m["output_arrays_mb"],
        ]
        for m in r["memory"]["cases"]
    ]
    lines += table(
        ["clips", "mode", "seconds", "RSS before (MB)", "peak (MB)", "growth (MB)", "outputs (MB)"],
        rows,
    )
    return lines


def render_strategies(r: dict[str, Any]) -> list[str]:
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


def render_tapt(r: dict[str, Any]) -> list[str]:
    rows = [
        [
            c["size"],
            c["cnn"],
            c["seconds_per_step"],
            c["audio_seconds_per_second"],
            c["peak_rss_mb"],
        ]
        for c in r["cases"]
    ]
    return [
        f"{r['corpus']}; batch {r['batch_size']}, crops of {r['crop_seconds']} s.",
        "",
        *table(["scratch size", "CNN", "s/step", "audio s/s", "peak RSS (MB)"], rows),
    ]


def render_processes(r: dict[str, Any]) -> list[str]:
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


def render_gpu(r: dict[str, Any]) -> list[str]:
    lines = [f"{r['device']}, torch {r['torch']}, CUDA {r['cuda']}, `{r['backbone']}`.", ""]
    for phase in ("tapt", "finetune", "scoring"):
        rows = r[phase]
        keys = [k for k in rows[0] if k != "precision"]
        cells = [[x["precision"], *(x[k] for k in keys)] for x in rows]
        lines += [f"{phase}:", "", *table(["precision", *keys], cells), ""]
    lines.append(f"Speed-up over fp32: {json.dumps(r['speedup_over_fp32'])}")
    return lines + [f"Note: {n}" for n in r["notes"]]


def render_whisper_features(r: dict[str, Any]) -> list[str]:
    lines = [f"{r['corpus']}; {r['protocol']}.", "", "**Choice** (test UA %):", ""]
    choice = r["choice"]
    configs = list(choice)
    rows_names = list(dict.fromkeys(name for rows in choice.values() for name in rows))
    rows = [
        [name, *(choice[c].get(name, {}).get("ua", "-") for c in configs)] for name in rows_names
    ]
    lines += [*table(["features", *configs], rows), ""]
    speed = r["clips_per_second"]
    lines += [
        "Extraction, clips per second (all layers, one clip at a time): "
        + "; ".join(f"{k}: {v}" for k, v in speed.items())
        + ".",
        "",
        "**The learner against scikit-learn** (test UA %, same features and folds):",
        "",
        *table(
            ["features", "after (L-BFGS, C by CV)", "scikit-learn (C by CV)", "after - sklearn"],
            [
                [f"`{b}`", x["after"]["ua"], x["sklearn"]["ua"], x["difference"]]
                for b, x in r["learner_vs_sklearn"].items()
            ],
        ),
        "",
        "**Through `after cv`'s path** (`fit_and_test`, one dev speaker left out of training):",
        "",
        *table(
            ["features", "UA %", "folds x seeds", "seeds agree exactly"],
            [
                [f"`{b}`", x["ua"], x["folds_x_seeds"], x["seeds_agree_exactly"]]
                for b, x in r["through_cv"].items()
            ],
        ),
    ]
    return lines


def render_whisper_finetune(r: dict[str, Any]) -> list[str]:
    s = r["summary"]
    variants = [k for k in s if k != "frozen:whisper-tiny.en"]
    rows = [
        [
            "`frozen:whisper-tiny.en` (learner on frozen features)",
            s["frozen:whisper-tiny.en"]["ua"],
            "-",
            "-",
            "-",
        ]
    ]
    rows += [
        [
            f"`whisper-tiny.en` fine-tuned, {v}",
            s[v]["ua"],
            s[v]["minus_frozen"]["difference"],
            s[v]["minus_frozen"]["wilcoxon_p"],
            s[v]["train_seconds"],
        ]
        for v in variants
    ]
    speed = r["scoring_clips_per_second"]
    return [
        f"{r['corpus']}; {r['protocol']}. Fine-tuning: {r['training']}.",
        "",
        *table(["model", "test UA %", "minus frozen (points)", "Wilcoxon p", "train s/run"], rows),
        "",
        "Per-pair differences are in `bench/results/whisper_finetune.json`.",
        "",
        f"Scoring 535 clips with a fine-tuned model, its bottom two layers read from the cache: "
        f"{speed['cache empty']} clips/s with the cache empty, {speed['cache filled']} filled "
        f"({speed['speed_up']}x).",
    ]


def render_tapt_whisper(r: dict[str, Any]) -> list[str]:
    t = r["tapt"]
    rows = [
        [name, c["plain"], c["tapt"], c["difference"], c["n"], c["wilcoxon_p"]]
        for name, c in r["comparisons"].items()
    ]
    folds = [
        [
            fold,
            f["tapt_seconds"],
            f"{f['loss_curve'][0][1]:.3f} -> {f['loss_curve'][-1][1]:.3f}",
            f"{f['masked_accuracy'][0]:.3f} -> {f['masked_accuracy'][1]:.3f}",
        ]
        for fold, f in r["per_fold"].items()
    ]
    return [
        f"{r['corpus']}; {r['protocol']}. TAPT: {t['objective']}, {t['steps']} steps, lr "
        f"{t['lr']}, batch {t['batch']}, crops of {t['crop_seconds']} s, masks "
        f"{t['mask_prob']} x {t['mask_length']} frames. Fine-tuning: {r['finetune']}.",
        "",
        *table(
            [
                "test UA %",
                "without TAPT",
                "with TAPT",
                "with - without (points)",
                "n",
                "Wilcoxon p",
            ],
            rows,
        ),
        "",
        "TAPT per fold (loss and masked-frame accuracy, first logged step -> last; the whole "
        "curves are in `bench/results/tapt_whisper.json`):",
        "",
        *table(["fold", "seconds", "loss", "masked accuracy"], folds),
    ]


def render_tapt_levers(r: dict[str, Any]) -> list[str]:
    return [
        f"{r['corpus']}; {r['protocol']}. TAPT as in the section above ({r['base']}), one lever "
        f"changed at a time. Without TAPT: {r['plain_ua']} UA.",
        "",
        *table(
            ["lever", "UA % after TAPT", "minus without", "per fold", "Wilcoxon p", "loss"],
            [
                [
                    f"`{name}`",
                    x["tapt_ua"],
                    x["difference"],
                    ", ".join(f"{v:+.1f}" for v in x["per_fold"]),
                    x["wilcoxon_p"],
                    "; ".join(x["loss"]),
                ]
                for name, x in r["levers"].items()
            ],
        ),
    ]


def render_time_whisper(r: dict[str, Any]) -> list[str]:
    s = r["summary"]
    rows = [["all labels", "1", s["all_labels"]["test_ua"], "-", s["all_labels"]["seconds"]]]
    for mode, name in (("fresh", "AL, fresh rounds (AFTER)"), ("warm", "AL, warm rounds")):
        x = s[mode]
        d = x["minus_all_labels"]
        rows.append(
            [
                name,
                x["ratio"],
                x["test_ua"],
                f"{d['mean']:+.1f} ± {d['std']:.1f} (p={d['wilcoxon_p']:.2g})",
                ", ".join(f"{k.removesuffix('_s')} {v}" for k, v in x["parts_seconds"].items()),
            ]
        )
    return [
        f"{r['corpus']}; {r['protocol']}; `{r['backbone']}`, {r['epochs']} epochs, the conv stem "
        f"and bottom two layers frozen and cached (filled once before timing: "
        f"{r['cache_fill_seconds']} s); entropy, schedule {', '.join(r['schedule'])}. Paper: "
        f"{r['paper_ratio']}; target: <= {r['target_ratio']}.",
        "",
        *table(
            ["run", "time / all labels", "test UA %", "minus all labels (points)", "seconds"],
            rows,
        ),
    ]


def render_demo(r: dict[str, Any]) -> list[str]:
    return [*table(r["table"]["header"], r["table"]["rows"]), "", _demo_check(r)]


def _demo_check(r: dict[str, Any]) -> str:
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


RENDER: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "whisper_finetune": render_whisper_finetune,
    "demo": render_demo,
    "time_whisper": render_time_whisper,
    "tapt_whisper": render_tapt_whisper,
    "tapt_levers": render_tapt_levers,
    "whisper_features": render_whisper_features,
    "label_efficiency": render_label_efficiency,
    "label_efficiency_urdu": render_label_efficiency,
    **{
        f"label_efficiency_{c}_{lever}": render_label_efficiency
        for c in ("emodb", "urdu")
        for lever in ("auto", "auto_st")
    },
    **{
        f"label_levers_{c}_{lever}": render_label_levers
        for c in ("emodb", "urdu")
        for lever in ("auto", "auto_st")
    },
    "label_efficiency_tapt": render_label_efficiency_tapt,
    "time_ratio": render_time_ratio,
    "scoring": render_scoring,
    "strategies": render_strategies,
    "tapt": render_tapt,
    "processes": render_processes,
    "gpu": render_gpu,
}

HEADER = """# Benchmarks

Written by `make bench` (`.venv/bin/python bench/run_all.py`) from `bench/results/*.json`; do not
edit by hand. Each section names the command that produced it, the commit, the machine and its
load. The machine may be shared with other work, so compare figures within one benchmark's run
(every ratio below was measured side by side in one run), not across sections or machines. A
commit marked "-dirty" had uncommitted changes, committed together with the results.
"""


def render() -> str:
    lines = [HEADER]
    for bench in BENCHES:
        path = RESULTS / f"{bench.name}.json"
        lines.append(f"## {bench.title}\n")
        if not path.is_file() and bench.gpu:
            lines.append(
                f"Not measured: no GPU was available. On a GPU machine: `.venv/bin/python "
                f"bench/run_all.py --only {bench.name}`.\n"
            )
            continue
        if not path.is_file():
            lines.append(f"Not run yet: `.venv/bin/python bench/run_all.py --only {bench.name}`.\n")
            continue
        record = json.loads(path.read_text())
        m = record["machine"]
        lines += [
            bench.about,
            "",
            f"- command: `{record['command']}`",
            f"- ran: {record['started_utc']}, commit {record['commit']}, "
            f"{record['wall_seconds'] / 60:.1f} min; load average before "
            f"{record['load_average_before'][0]}, after {record['load_average_after'][0]}",
            f"- machine: {m.get('cpu', 'unknown CPU')}, {m['usable_cpus']} of {m['cpus']} CPUs, "
            f"{m.get('memory_gib', '?')} GiB, {m['os']}, Python {m['python']}, torch "
            f"{m['torch']}, GPU {m['gpu']}",
            "",
            *RENDER[bench.name](record["result"]),
            "",
        ]
        notes = ROOT / "bench" / "notes" / f"{bench.name}.md"
        if notes.is_file():
            lines += [notes.read_text().strip(), ""]
    return "\n".join(lines).rstrip() + "\n"


# ---- README.md's generated blocks ------------------------------------------------------------

README = ROOT / "README.md"
_BLOCK = re.compile(r"(<!-- generated: ([\w-]+) -->\n).*?(<!-- end generated -->)", re.S)


def _result(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return dict(json.loads(path.read_text())["result"]) if path.is_file() else None


def readme_demo() -> list[str]:
    r = _result("demo")
    if r is None:
        return ["Not recorded yet: `.venv/bin/python bench/run_all.py --only demo`."]
    s = r["settings"]
    lines = [
        f"Recorded by `bench/run_all.py --only demo` ({r['minutes']} min on the 2-core CPU machine "
        "this was built on). Test UA %, mean ± sample std over "
        f"{s['num_folds']} folds x {len(s['seeds'])} seeds; chance is 25%:",
        "",
        *table(r["table"]["header"], r["table"]["rows"]),
        "",
    ]
    if r["vs_random"]:
        last = r["vs_random"][-1]
        lines += [
            f"Entropy minus random at {100 * float(last['budget']):g}% of the pool, paired by fold "
            f"and seed: {100 * last['mean']:+.1f} ± {100 * last['std']:.1f} points (n={last['n']}, "
            f"Wilcoxon p = {last['wilcoxon_p']:.2g}).",
            "",
        ]
    lines.append(_demo_check(r))
    return lines


def readme_headlines() -> list[str]:
    lines = []
    wf = _result("whisper_features")
    if wf is not None:
        tiny = wf["choice"]["whisper-tiny.en, window cut"]
        base = wf["choice"]["whisper-base, window cut"]
        lines.append(
            "- **Frozen Whisper features, the project's learner, 10 folds:** tiny.en's middle "
            f"layer {tiny['layer 2, mean']['ua']} (its last layer {tiny['layer 4, mean']['ua']}); "
            f"base's middle layer {base['layer 3, mean']['ua']} "
            f"(last {base['layer 6, mean']['ua']}). Against a tuned scikit-learn logistic "
            "regression on the same features: "
            + ", ".join(
                f"`{b}` {x['difference'].split(' ')[0]} points"
                for b, x in wf["learner_vs_sklearn"].items()
            )
            + "."
        )
    ft = _result("whisper_finetune")
    if ft is not None:
        s = ft["summary"]
        every = s["every layer trained"]
        lines.append(
            f"- **Fine-tuned `whisper-tiny.en`** ({ft['protocol']}): {every['ua']} UA, "
            f"{every['minus_frozen']['difference']} points against its frozen features "
            f"(Wilcoxon p = {every['minus_frozen']['wilcoxon_p']:.2g})."
        )
    tw = _result("tapt_whisper")
    if tw is not None:
        c = tw["comparisons"]
        lines.append(
            f"- **TAPT of `whisper-tiny.en`** ({tw['tapt']['steps']} steps per fold on its "
            f"training audio; {tw['protocol']}): with minus without, "
            + "; ".join(
                f"{name} {x['difference']} points (p = {x['wilcoxon_p']:.2g})"
                for name, x in c.items()
            )
            + "."
        )
    le = _result("label_efficiency")
    if le is not None and any(s.get("vs_random") for s in le["strategies"].values()):
        last = le["schedule"][-1]
        best = max(
            (n for n in le["strategies"] if le["strategies"][n].get("vs_random")),
            key=lambda n: le["strategies"][n]["vs_random"][last]["points"],
        )
        gain = le["strategies"][best]["vs_random"][last]
        lines.append(
            f"- **Label efficiency, `{le['backbone']}`** ({le['protocol']}): at "
            f"{100 * float(last):g}% of the pool random sampling reaches "
            f"{le['strategies']['random']['test_ua_by_budget'][last]}, the best strategy "
            f"({best}) {le['strategies'][best]['test_ua_by_budget'][last]}: {gain['points']:+.1f} "
            f"points (Wilcoxon p = {gain['wilcoxon_p']:.2g}); all labels "
            f"{pct(le['all_labels_test_ua'])}."
        )
    tm = _result("time_whisper")
    if tm is not None:
        s = tm["summary"]
        lines.append(
            f"- **Time, fine-tuned `{tm['backbone']}`** ({tm['protocol']}): active learning to 20% "
            f"takes {s['fresh']['ratio']} of all-labels fine-tuning with fresh rounds and "
            f"{s['warm']['ratio']} with warm-started ones (paper 0.21), at test UA "
            f"{s['fresh']['test_ua']} and {s['warm']['test_ua']} against "
            f"{s['all_labels']['test_ua']} with all labels."
        )
    return lines or ["Not run yet: `make bench`."]


README_BLOCKS: dict[str, Callable[[], list[str]]] = {
    "demo": readme_demo,
    "headlines": readme_headlines,
}


def render_readme(text: str) -> str:
    """`text` (README.md) with every generated block rewritten from the saved results."""

    def fill(m: re.Match[str]) -> str:
        return m.group(1) + "\n".join(README_BLOCKS[m.group(2)]()) + "\n" + m.group(3)

    return _BLOCK.sub(fill, text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", help="comma-separated names: " + ", ".join(b.name for b in BENCHES))
    p.add_argument(
        "--render", action="store_true", help="only rewrite BENCHMARKS.md and README's blocks"
    )
    args = p.parse_args()
    names = {b.name for b in BENCHES}
    chosen = set(args.only.split(",")) if args.only else names
    if chosen - names:
        sys.exit(f"--only: unknown {', '.join(sorted(chosen - names))}; choose from {names}")
    failed: list[str] = []
    if not args.render:
        import torch

        for bench in BENCHES:
            if bench.name not in chosen:
                continue
            if bench.gpu and not torch.cuda.is_available():
                print(f"{bench.name}: skipped, no GPU", file=sys.stderr)
            elif not run(bench):
                failed.append(bench.name)
    OUT.write_text(render())
    README.write_text(render_readme(README.read_text()))
    print(f"wrote {OUT} and README.md's generated blocks", file=sys.stderr)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
