"""BENCHMARKS.md is what `bench/run_all.py` writes from the saved results, every benchmark it runs
has a saved result, and each benchmark script renders the JSON it prints."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

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
