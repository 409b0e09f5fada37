"""BENCHMARKS.md is what `bench/run_all.py` writes from the saved results, every benchmark it runs
has a saved result, and each benchmark script renders the JSON it prints."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run_all() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "bench" / "run_all.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_benchmarks_md_is_rendered_from_every_saved_result() -> None:
    run_all = _run_all()
    for bench in run_all.BENCHES:
        saved = (run_all.RESULTS / f"{bench.name}.json").is_file()
        assert saved or bench.gpu, f"{bench.name}: not run"
        assert (ROOT / bench.args[0]).is_file()
        assert callable(run_all.section(bench.name).render), f"{bench.args[0]}: no render"
    assert (ROOT / "BENCHMARKS.md").read_text() == run_all.render(), (
        "BENCHMARKS.md is stale: run `.venv/bin/python bench/run_all.py --render`"
    )


def test_the_readmes_figures_are_rendered_from_the_saved_results() -> None:
    run_all = _run_all()
    readme = (ROOT / "README.md").read_text()
    assert set(run_all._BLOCK.findall(readme)) == {  # every block is there, once
        ("<!-- generated: demo -->\n", "demo", "<!-- end generated -->"),
        ("<!-- generated: headlines -->\n", "headlines", "<!-- end generated -->"),
    }
    assert readme == run_all.render_readme(readme), (
        "README.md's generated blocks are stale: run `.venv/bin/python bench/run_all.py --render`"
    )


def test_the_last_json_object_of_a_benchmark_output_is_its_result() -> None:
    run_all = _run_all()
    out = '{"fold": 1}\nprogress\n{\n  "benchmark": "x",\n  "cases": [{"a": 1}]\n}\n'
    assert run_all.last_json(out) == {"benchmark": "x", "cases": [{"a": 1}]}
    with pytest.raises(ValueError, match="no JSON"):
        run_all.last_json("Traceback ...\nerror\n")


def _paired(points: float, wins: int, losses: int) -> dict[str, Any]:
    return {
        "points": points,
        "std": 4.0,
        "wilcoxon_p": 0.25,
        "n": 3,
        "min_p": 0.25,
        "wins": wins,
        "losses": losses,
    }


def test_whisper_finetune_renders_one_row_per_variant() -> None:
    """The shape `bench/whisper_finetune.py` prints (variants, each paired with the frozen features
    and all but the first with the first); the saved result still has the shape before it."""
    module = _run_all().section("whisper_finetune")
    variant = {"runs": [], "train_seconds": 274.5}
    result = {
        "benchmark": "whisper_finetune",
        "corpus": "EmoDB (535 clips)",
        "protocol": "LOSO, 3 folds, seeds [0]",
        "frozen": {"ua": "87.0 ± 5.0 (n=3)", "per_fold": {"emodb_03": 0.8184}},
        "variants": {
            "default": {
                **variant,
                "training": "20 epochs max",
                "test_ua": "83.3 ± 7.1 (n=3)",
                "minus_frozen": _paired(-3.7, 1, 2),
                "best_epochs": [3, 0, 11],
            },
            "head_init=random": {
                **variant,
                "training": "20 epochs max, a random head",
                "test_ua": "80.1 ± 6.0 (n=3)",
                "minus_frozen": _paired(-6.9, 0, 3),
                "minus_first": _paired(-3.2, 1, 2),
                "best_epochs": [5, 6, 7],
            },
        },
        "scoring_clips_per_second": {"cache empty": 30.8, "cache filled": 153.5, "speed_up": 4.98},
    }
    lines = module.render(result)
    rows = [line for line in lines if line.startswith("| `")]
    assert rows == [
        "| `frozen:whisper-tiny.en` (learner on frozen features) | 87.0 ± 5.0 (n=3) "
        "| - | - | - | - | - |",
        "| `whisper-tiny.en` fine-tuned, `default` | 83.3 ± 7.1 (n=3) "
        "| -3.7 ± 4.0 (p=0.25, n=3*) | 1 / 2 | - | 3, 0, 11 | 274.5 |",
        "| `whisper-tiny.en` fine-tuned, `head_init=random` | 80.1 ± 6.0 (n=3) "
        "| -6.9 ± 4.0 (p=0.25, n=3*) | 0 / 3 | -3.2 ± 4.0 (p=0.25, n=3*) | 5, 6, 7 | 274.5 |",
    ]
    assert "minus `default` (points)" in lines[2]
    assert "- `head_init=random`: 20 epochs max, a random head." in lines
    assert lines[-1].endswith("30.8 clips/s with the cache empty, 153.5 filled (4.98x).")
    assert "`head_init=random` 80.1 ± 6.0 (n=3) UA, -6.9 ± 4.0 points" in module.headline(result)

    result["scoring_clips_per_second"] = {}  # every run reused: no fine-tuned model to time
    assert module.render(result)[-1].startswith("Scoring speed: not measured")


def test_time_whisper_reports_the_hybrids_selection_rounds_beside_it() -> None:
    """bench/time_whisper.py: the hybrid (frozen-features rounds, one fine-tuning at the end) and
    its selection rounds alone (active learning with the frozen features) are two rows, each with
    its own ratio and UA against all labels."""
    module = _run_all().section("time_whisper")
    gap = {"points": -20.0, "std": 5.0, "wilcoxon_p": 0.002, "n": 10}
    result = {
        "corpus": "EmoDB (535 clips, 10 speakers)",
        "protocol": "LOSO, 10 folds, seeds [0]",
        "backbone": "whisper-tiny.en",
        "training": "20 epochs max",
        "strategy": "badge",
        "schedule": ["0.02", "0.2"],
        "paper_ratio": 0.21,
        "target_ratio": 0.25,
        "cache_fill_seconds": 30.0,
        "summary": {
            "all_labels": {"seconds": 450, "test_ua": "83.0 ± 8.0"},
            "hybrid": {
                "ratio": "0.21 ± 0.02",
                "test_ua": "63.0 ± 9.0",
                "minus_all_labels": gap,
                "parts_seconds": {"train_s": 90.0, "eval_s": 3.0},
            },
            "selection": {
                "ratio": "0.04 ± 0.01",
                "test_ua": "76.0 ± 8.0",
                "minus_all_labels": {**gap, "points": -7.0},
            },
        },
    }
    rows = [line for line in module.render(result) if line.startswith("| AL")]
    assert rows == [
        "| AL, hybrid (frozen-features rounds, one fine-tuning at the end) | 0.21 ± 0.02 "
        "| 63.0 ± 9.0 | -20.0 ± 5.0 (p=0.002) | train 90.0, eval 3.0 |",
        "| AL, frozen features alone (the hybrid's rounds, without its fine-tuning) "
        "| 0.04 ± 0.01 | 76.0 ± 8.0 | -7.0 ± 5.0 (p=0.002) | - |",
    ]
    assert "0.04 ± 0.01 with frozen features alone" in module.headline(result)


def test_label_spreading_follows_the_pools_clusters() -> None:
    """bench/pseudo_labels.py's graph source: two clusters with one labeled clip each label their
    pool clips right, most of them confidently."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(
            "pseudo_labels", ROOT / "bench" / "pseudo_labels.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    import numpy as np

    rng = np.random.default_rng(0)
    centres = 5.0 * rng.normal(size=(2, 8))
    pool = np.vstack([c + rng.normal(scale=0.3, size=(30, 8)) for c in centres])
    labeled = centres + rng.normal(scale=0.1, size=(2, 8))
    dist = module.label_spread(labeled, np.eye(2), pool)
    assert dist.shape == (60, 2)
    np.testing.assert_allclose(dist.sum(axis=1), 1.0)
    assert (dist[:30].argmax(axis=1) == 0).all() and (dist[30:].argmax(axis=1) == 1).all()
    assert np.median(dist.max(axis=1)) > 0.9
