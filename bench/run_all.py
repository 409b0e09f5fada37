"""Run the benchmarks and collect their figures into BENCHMARKS.md.

    .venv/bin/python bench/run_all.py                 # every benchmark, then BENCHMARKS.md
    .venv/bin/python bench/run_all.py --only scoring,strategies
    .venv/bin/python bench/run_all.py --render        # BENCHMARKS.md from the saved results
    .venv/bin/python bench/run_all.py --only X --checkout ../wt   # X's code from another checkout
    make bench                                        # the same as the first line

Each benchmark runs in its own process, one after another (never side by side: they would slow
each other down), with the arguments in `BENCHES` and one torch thread unless OMP_NUM_THREADS is
set (on a 2-core machine shared with other work, torch's threads wait on each other). Its JSON
goes to `bench/results/NAME.json` together with the exact command, the commit, the machine, the
wall time and the load average before and after (the machine may be shared; every ratio in the
results is measured side by side within one run). `BENCHMARKS.md` is then written from every
saved result, so a benchmark run alone updates its section and keeps the others.

Benchmarks that run for hours are best run from a second checkout (a git worktree at a fixed
commit, `--checkout DIR`), so that work on this one cannot change the code under them: their
commands then run in DIR with DIR's code (and DIR's runs/ folders, from which they resume), and
the record names DIR's commit; the result and BENCHMARKS.md are written here.

runs/ is not tracked, and a fresh clone starts without it. A benchmark that continues over several
sessions keeps the small JSON files it resumes from in git (never models or caches), so that the
next clone resumes it: `git add -f runs/bench/whisper_finetune/*/*.json` (one record per fold,
seed and variant), `git add -f runs/bench/tapt_whisper/judged/*/*.json` (one per fold and variant),
`git add -f runs/bench/time_whisper/records/*.json` (one per fold and seed).

The script that prints a result is the one that reads it: each has `render(result)`, the Markdown
lines of its section, and those that appear among README's headlines `headline(result)`; they
share the helpers of `bench/md.py`. This file runs them and assembles the two documents.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
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
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
OUT = ROOT / "BENCHMARKS.md"


@dataclass(frozen=True)
class Bench:
    name: str  # of its saved result, bench/results/NAME.json
    title: str
    args: tuple[str, ...]  # the script (whose `render` writes its section) and its arguments
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
        ("bench/whisper_finetune.py", "--seeds", "0,1,2", "--variants", "default"),
        "Whisper tiny.en fine-tuned against the frozen-feature learner on the same folds, paired "
        "per fold and seed; scoring speed with the frozen bottom's cache empty and filled.",
    ),
    Bench(
        "tapt_whisper",
        "TAPT of Whisper tiny.en on EmoDB: with and without, paired",
        (
            "bench/tapt_whisper.py",
            "--variants",
            "steps=3;default",
            "--control",
            "steps=3",
            "--judges",
            "probe,al,finetune",
            "--folds",
            "0,2,4,6,8",
            "--seeds",
            "0",
            "--plain-finetune",
            "runs/bench/whisper_finetune/default",
            "--out",
            "runs/bench/tapt_whisper",
        ),
        "Task-adaptive pre-training of whisper-tiny.en on each fold's training audio, against no "
        "TAPT: frozen features, fine-tuning on all labels, and active learning to 20%, paired "
        "per fold (and seed) with Wilcoxon's test; the TAPT loss of every fold.",
    ),
    Bench(
        "time_whisper",
        "Time: active learning to 20% against all labels, Whisper tiny.en",
        ("bench/time_whisper.py", "--seeds", "0", "--modes", "hybrid"),
        "Wall time of an AL run to 20% of the pool over one fine-tuning on all labels of the "
        "same fold and seed, side by side: the hybrid recipe (frozen-features rounds, one "
        "fine-tuning at the end) and its rounds alone; AFTER's fresh rounds and warm-started "
        "rounds where measured; test UA of each. The paper reports 0.21; our target is <= 0.25 "
        "within 2 UA points of all labels.",
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
        "label_efficiency_urdu",
        "Label efficiency on URDU: frozen Whisper tiny.en features, every strategy",
        (
            "bench/label_efficiency.py",
            "--corpus",
            "urdu",
            "--out",
            "runs/bench/label_efficiency_urdu",
        ),
        "The same comparison on natural talk-show speech (400 clips, 29 speakers, 4 emotions), "
        "5 speaker folds: a corpus unlike EmoDB, where most speakers have a few clips of one "
        "emotion.",
    ),
    Bench(
        "label_efficiency_urdu_default",
        "The default strategy against random on URDU, clip view, 10 seeds",
        (
            "bench/label_efficiency.py",
            "--corpus",
            "urdu",
            "--strategies",
            "badge,random",
            "--seeds",
            "0,1,2,3,4,5,6,7,8,9",
            "--out",
            "runs/bench/label_efficiency_urdu_default",
        ),
        "BADGE (the default strategy) and random sampling on URDU with 10 seeds per speaker fold "
        "(50 pairs), for a test that URDU's spread leaves too weak at 3 seeds; the clip view.",
    ),
    Bench(
        "label_efficiency_urdu_view",
        "The default against random on URDU with the default view (auto), 10 seeds",
        (
            "bench/label_efficiency.py",
            "--corpus",
            "urdu",
            "--feature-view",
            "auto",
            "--strategies",
            "badge,random",
            "--seeds",
            "0,1,2,3,4,5,6,7,8,9",
            "--out",
            "runs/bench/label_efficiency_urdu_view",
        ),
        "The same 50 pairs with the feature view chosen per fit by the inner CV (`auto`, the "
        "default since this run): what a user gets on a corpus like URDU.",
    ),
    Bench(
        "label_levers_urdu_view",
        "The speaker-adaptive view's effect on URDU, paired run by run",
        (
            "bench/label_levers.py",
            "--base",
            "runs/bench/label_efficiency_urdu_default",
            "--lever",
            "runs/bench/label_efficiency_urdu_view",
        ),
        "Test UA with the auto view minus the clip view on URDU, 50 pairs per cell, no "
        "self-training on either side: whether the default view costs a corpus whose speakers "
        "have few clips of few emotions.",
    ),
    Bench(
        "label_efficiency_levers",
        "Label efficiency on EmoDB with the levers: speaker-adaptive view (auto) and self-training",
        (
            "bench/label_efficiency.py",
            "--feature-view",
            "auto",
            "--self-training",
            "1",
            "--out",
            "runs/bench/label_efficiency_levers",
        ),
        "Every strategy against random with the feature view chosen per round by the inner CV "
        "(clip or per-speaker standardised, transductive) and self-training on the pool.",
    ),
    Bench(
        "label_efficiency_urdu_levers",
        "Label efficiency on URDU with the levers: speaker-adaptive view (auto) and self-training",
        (
            "bench/label_efficiency.py",
            "--corpus",
            "urdu",
            "--feature-view",
            "auto",
            "--self-training",
            "1",
            "--out",
            "runs/bench/label_efficiency_urdu_levers",
        ),
        "The same levers on URDU.",
    ),
    Bench(
        "label_levers",
        "The levers' effect on EmoDB, paired run by run",
        (
            "bench/label_levers.py",
            "--base",
            "runs/bench/label_efficiency",
            "--lever",
            "runs/bench/label_efficiency_levers",
        ),
        "Test UA with the levers minus without, for every strategy and budget, paired by fold "
        "and seed (after the two runs above).",
    ),
    Bench(
        "label_efficiency_view",
        "Label efficiency on EmoDB with the speaker-adaptive view alone (auto)",
        (
            "bench/label_efficiency.py",
            "--feature-view",
            "auto",
            "--strategies",
            "badge,random",
            "--out",
            "runs/bench/label_efficiency_view",
        ),
        "The default strategy and random with the feature view chosen per round by the inner CV, "
        "without self-training: the view's part of the levers' gain.",
    ),
    Bench(
        "label_levers_view",
        "The speaker-adaptive view's effect on EmoDB, paired run by run",
        (
            "bench/label_levers.py",
            "--base",
            "runs/bench/label_efficiency",
            "--lever",
            "runs/bench/label_efficiency_view",
        ),
        "Test UA with the auto view minus the clip view, no self-training on either side.",
    ),
    Bench(
        "label_levers_self_training",
        "Self-training's effect on EmoDB on top of the auto view, paired run by run",
        (
            "bench/label_levers.py",
            "--base",
            "runs/bench/label_efficiency_view",
            "--lever",
            "runs/bench/label_efficiency_levers",
        ),
        "Test UA with self-training (weight 1) minus without, both in the auto view.",
    ),
    Bench(
        "label_levers_urdu",
        "The levers' effect on URDU, paired run by run",
        (
            "bench/label_levers.py",
            "--base",
            "runs/bench/label_efficiency_urdu",
            "--lever",
            "runs/bench/label_efficiency_urdu_levers",
        ),
        "Test UA with the levers minus without on URDU, paired by fold and seed.",
    ),
    Bench(
        "pseudo_labels",
        "Pseudo-labels for self-training: the learner's own predictions against label spreading",
        ("bench/pseudo_labels.py", "--out", "runs/bench/pseudo_labels"),
        "How often each source labels pool clips right, EmoDB and URDU, paired by fold and "
        "seed: what decided between self-training and label propagation.",
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


def commit(checkout: Path = ROOT) -> str:
    done = subprocess.run(
        ["git", "-C", str(checkout), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "unknown"


def run(bench: Bench, checkout: Path = ROOT) -> bool:
    """Run one benchmark with the code of `checkout` (this one by default); save its result.
    False (and the tail of its stderr) if it failed."""
    cmd = [sys.executable, *bench.args]
    shown = ".venv/bin/python " + shlex.join(bench.args)
    print(f"== {bench.name}: {shown}", file=sys.stderr, flush=True)
    revision = commit(checkout)  # of the code the benchmark starts with
    load_before = os.getloadavg()
    started = dt.datetime.now(dt.UTC)
    t = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if checkout != ROOT:  # the record's commit is the checkout's
        env["PYTHONPATH"] = str(checkout)
    done = subprocess.run(
        cmd, cwd=checkout, env=env, stdout=subprocess.PIPE, text=True, check=False
    )
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


def section(name: str) -> ModuleType:
    """The script of benchmark `name`, imported: its `render(result)` writes its section of
    BENCHMARKS.md from the JSON it prints (and `headline(result)`, where it has one, its line in
    README.md). Benchmark scripts import torch and `after` inside their functions, so this is
    cheap."""
    bench = next(b for b in BENCHES if b.name == name)
    if str(BENCH) not in sys.path:  # where the scripts import each other and `md` from
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(Path(bench.args[0]).stem)


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
            f"{record['wall_seconds'] / 60:.1f} min (this invocation: a resumed benchmark "
            "reuses the runs it finished before); load average before "
            f"{record['load_average_before'][0]}, after {record['load_average_after'][0]}",
            f"- machine: {m.get('cpu', 'unknown CPU')}, {m['usable_cpus']} of {m['cpus']} CPUs, "
            f"{m.get('memory_gib', '?')} GiB, {m['os']}, Python {m['python']}, torch "
            f"{m['torch']}, GPU {m['gpu']}",
            "",
            *section(bench.name).render(record["result"]),
            "",
        ]
        notes = BENCH / "notes" / f"{bench.name}.md"
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
    return section("demo").readme(r)


# The benchmarks with a line in README's headlines, in order.
HEADLINES = (
    "whisper_features",
    "whisper_finetune",
    "tapt_whisper",
    "label_efficiency",
    "label_efficiency_view",
    "label_efficiency_urdu",
    "label_efficiency_urdu_default",
    "label_efficiency_urdu_view",
    "time_whisper",
)


def readme_headlines() -> list[str]:
    lines = []
    for name in HEADLINES:
        r = _result(name)
        line = None if r is None else section(name).headline(r)
        if line is not None:
            lines.append(line)
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
    p.add_argument(
        "--checkout",
        type=Path,
        default=ROOT,
        help="run the benchmarks with the code of another checkout of the project (e.g. a git "
        "worktree at a fixed commit), in that folder",
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
            elif not run(bench, args.checkout.resolve()):
                failed.append(bench.name)
    OUT.write_text(render())
    README.write_text(render_readme(README.read_text()))
    print(f"wrote {OUT} and README.md's generated blocks", file=sys.stderr)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
