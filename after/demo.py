"""The demo (`after demo`, `make demo`): AFTER end to end on the built-in synthetic corpus, offline,
on a CPU, in minutes.

1. Synthesize the corpus with espeak-ng, check its audio, make leave-one-speaker-out folds.
2. TAPT: a random-init wav2vec 2.0 (`scratch:tiny`) continues its self-supervised objective on the
   training audio of fold 0 only. Its loss drop is reported, and the TAPT model is then fine-tuned
   on all labels of fold 0 as a check of what it has learned about emotion.
3. Active learning on frozen eGeMAPS features: a k-means cold start, then the default strategy and
   random sampling up to 20% of the pool, and fine-tuning on all labels, on several folds and seeds
   (`after.loop.compare`).
4. The report of step 3 (`after.report.write_report`).

Why step 3 does not start from the TAPT model: a wav2vec 2.0 trained from scratch for a minute on
a few minutes of audio has learned no emotion (fine-tuned on all labels it stays near chance), so
active learning on it would compare noise. TAPT as AFTER means it starts from a pretrained
checkpoint and needs a GPU; the demo shows the stage run, not its benefit.

Every stage keeps its outputs in the demo folder, so running the demo again reuses them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from after.config import ALConfig, TaptConfig, TrainConfig
from after.data.audio import validate_manifest
from after.data.folds import Fold, make_folds
from after.data.manifest import Manifest
from after.data.synth import synthesize
from after.errors import AfterError
from after.io import atomic_write_json, read_json
from after.progress import progress_bar

TAPT_BACKBONE = "scratch:tiny"
FEATURE_BACKBONE = "egemaps"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo. `DEMO` is what `after demo` runs; `QUICK` checks the pipeline in
    seconds (`--quick`)."""

    num_speakers: int = 8
    num_sentences: int = 48
    tapt_steps: int = 500
    check_epochs: int = 5  # fine-tuning the TAPT model on all labels of fold 0
    num_folds: int = 4  # every other leave-one-speaker-out fold, so voices of both sexes
    seeds: tuple[int, ...] = (0, 1)
    schedule: tuple[str, ...] = ALConfig.schedule
    epochs: int = 40
    head_lr: float = 1e-2  # a linear head on 88 features: few labels need large steps


DEMO = DemoSettings()
QUICK = DemoSettings(
    num_speakers=4,
    num_sentences=4,
    tapt_steps=10,
    check_epochs=1,
    num_folds=1,
    seeds=(0,),
    schedule=("0.1", "0.2"),
    epochs=3,
)


def run_demo(
    out_dir: str | Path,
    settings: DemoSettings = DEMO,
    *,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo into `out_dir`; returns what its final table shows: `tapt` (loss drop and
    the check's scores), `table` (header and rows of `after.report.ua_table`) and `report` (the
    files `write_report` wrote)."""
    import torch

    threads = torch.get_num_threads()
    # The demo's models are tiny: a second thread gains little, and on a machine whose cores are
    # busy with other work torch's threads wait on each other (measured on 2 busy cores: 100 TAPT
    # steps in 17 s on one thread, 178 s on two).
    torch.set_num_threads(1)
    try:
        return _run_demo(Path(out_dir), settings, seed, log)
    finally:
        torch.set_num_threads(threads)


def _run_demo(
    out: Path, settings: DemoSettings, seed: int, log: Callable[[str], None]
) -> dict[str, Any]:
    from after.loop.compare import compare
    from after.report import group_runs, read_report_inputs, ua_table, write_report

    strategies = [ALConfig.strategy, "random"]
    cache = str((out / "cache").resolve())
    _claim(out, {"seed": seed, **dataclasses.asdict(settings)})
    t0 = time.perf_counter()

    def stage(text: str) -> None:
        minutes, seconds = divmod(round(time.perf_counter() - t0), 60)
        log(f"[{minutes}:{seconds:02d}] {text}")

    stage("1/4 synthesizing the demo corpus with espeak-ng, checking it, making folds")
    corpus = synthesize(
        out / "corpus",
        num_speakers=settings.num_speakers,
        num_sentences=settings.num_sentences,
        seed=seed,
    )
    with progress_bar(transient=True) as bar:
        task = bar.add_task("checking audio", total=len(corpus), info="")
        checked = validate_manifest(corpus, on_item=lambda: bar.advance(task))
    if checked.rejected:
        raise AfterError(
            f"{out / 'corpus'}: {len(checked.rejected)} synthesized clip(s) unusable, e.g. "
            f"{checked.rejected[0].id} ({checked.rejected[0].reason}); delete the folder and run "
            "the demo again"
        )
    manifest = checked.usable
    manifest_path = manifest.to_jsonl(out / "manifest.jsonl")
    folds = make_folds(manifest, "loso", seed=seed)
    folds_path = folds.to_json(out / "folds.json")
    log(
        f"{len(manifest)} clips, {len(manifest.speakers)} speakers, labels "
        f"{', '.join(manifest.labels)}; {len(folds)} leave-one-speaker-out folds"
    )

    fold = folds.get(0)
    stage(
        f"2/4 TAPT of {TAPT_BACKBONE} (random init) on the {len(fold.train)} training "
        f"clips of fold {fold.name}, {settings.tapt_steps} steps; then a check: fine-tuning it "
        "on all labels of that fold"
    )
    tapt = _tapt(manifest, fold, out, settings, seed, cache)
    log(
        f"TAPT loss {tapt['first_loss']:.2f} -> {tapt['final_loss']:.2f} (guessing: "
        f"{tapt['chance_loss']:.2f}); fine-tuned on all labels: test UA "
        f"{100 * tapt['check_ua']:.1f}% (chance {100 / len(manifest.labels):.0f}%)"
    )

    chosen = list(folds.folds[::2][: settings.num_folds])
    stage(
        f"3/4 active learning on {FEATURE_BACKBONE} features: {' vs '.join(strategies)}, "
        f"k-means cold start, {settings.schedule[0]} -> {settings.schedule[-1]} of the pool, and "
        f"all labels; folds {', '.join(f.name for f in chosen)}; seeds "
        f"{', '.join(map(str, settings.seeds))}"
    )
    train = TrainConfig(
        epochs=settings.epochs, batch_size=8, head_lr=settings.head_lr, patience=0, seed=seed
    )
    compare(
        manifest,
        str(manifest_path.resolve()),
        str(folds_path.resolve()),
        chosen,
        FEATURE_BACKBONE,
        strategies,
        list(settings.seeds),
        ALConfig(schedule=settings.schedule, cold_start="kmeans"),
        train,
        out / "compare",
        cache_dir=cache,
        log=lambda line: None,  # the progress bar says where it is
        progress=True,
    )

    stage("4/4 the report")
    report = write_report([out / "compare"], out / "report")
    inputs = read_report_inputs([out / "compare"])
    header, rows = ua_table(group_runs(inputs.runs), inputs.full)
    stage("done")
    return {"tapt": tapt, "table": {"header": header, "rows": rows}, "report": report}


def _claim(out: Path, settings: dict[str, Any]) -> None:
    """Keep the demo's settings in `out`/settings.json; `AfterError` if the folder holds a demo
    run with other settings, whose outputs would otherwise be reused as if they were these."""
    path = out / "settings.json"
    wanted = json.loads(json.dumps(settings))
    if path.is_file():
        found = read_json(path, f"delete {out}")
        differ = sorted(k for k in wanted.keys() | found.keys() if found.get(k) != wanted.get(k))
        if differ:
            raise AfterError(
                f"{out}: holds a demo run with other settings ({', '.join(differ)}); delete it "
                "or choose another --out"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, wanted)


def _tapt(
    manifest: Manifest, fold: Fold, out_dir: Path, settings: DemoSettings, seed: int, cache: str
) -> dict[str, Any]:
    """TAPT into `out_dir`/tapt, its loss drop, and the all-labels check of the TAPT model;
    kept in `out_dir`/tapt.json and reused from there."""
    from after.tapt import DONE_FILE, LOG_FILE, run_tapt
    from after.train import fit_and_test

    out = out_dir / "tapt"
    summary_path = out_dir / "tapt.json"
    if summary_path.is_file():
        return dict(json.loads(summary_path.read_text()))
    t0 = time.perf_counter()
    if not (out / DONE_FILE).is_file():
        config = TaptConfig(
            steps=settings.tapt_steps,
            batch_size=8,
            max_seconds=3.0,
            lr=1e-3,  # a random init, not a pretrained model to preserve
            warmup_steps=max(1, settings.tapt_steps // 10),
            seed=seed,
            save_every=settings.tapt_steps,
        )
        run_tapt(manifest, fold, TAPT_BACKBONE, out, config)
    tapt_s = time.perf_counter() - t0
    losses = [json.loads(line)["loss"] for line in (out / LOG_FILE).read_text().splitlines()]
    num_negatives = json.loads((out / "config.json").read_text())["num_negatives"]
    check = TrainConfig(epochs=settings.check_epochs, batch_size=8, lr=1e-3, patience=0, seed=seed)
    _, record = fit_and_test(manifest, fold, str(out), check, cache_dir=cache)
    summary = {
        "backbone": TAPT_BACKBONE,
        "fold": fold.name,
        "steps": settings.tapt_steps,
        "seconds": round(tapt_s, 1),
        "first_loss": losses[0],
        "final_loss": sum(losses[-5:]) / len(losses[-5:]),  # logged steps are noisy
        # the contrastive loss of guessing: the positive among num_negatives + 1 candidates
        "chance_loss": math.log(num_negatives + 1),
        "check_ua": record["test"]["ua"],
        "check_wa": record["test"]["wa"],
    }
    atomic_write_json(summary_path, summary)
    return summary
