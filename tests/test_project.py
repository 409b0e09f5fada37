"""What a researcher looks for before using the project: its licence, how to cite it, messages that
keep people's labels safe, and a package whose layers import downward."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_licence_and_citation() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "Apache-2.0"}
    assert (
        "Apache License\n                           Version 2.0" in (ROOT / "LICENSE").read_text()
    )
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["license"] == "Apache-2.0" and cff["version"] == project["version"]
    paper = cff["preferred-citation"]
    assert paper["title"].startswith("After: Active Learning Based Fine-Tuning Framework")
    assert paper["authors"][0]["family-names"] == "Li" and paper["year"] == 2023


def test_no_message_suggests_deleting_what_may_hold_peoples_labels() -> None:
    """A run folder may hold people's answers (labels.sqlite): no message may tell anyone to
    delete one. The only messages that say "delete" are about folders that hold none: the
    demo's (simulated labels) and a comparison's simulated runs (`RERUN_FIX`, used by compare
    alone)."""
    import ast

    allowed = {"demo.py", "loop/compare.py", "loop/runner.py", "scoring.py"}
    found = []
    for path in sorted((ROOT / "after").rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            text = node.value if isinstance(node, ast.Constant) else None
            advice = isinstance(text, str) and not text.startswith("DELETE FROM")  # not SQL
            if advice and "delete" in str(text).lower() and id(node) not in docstrings:
                found.append((path.relative_to(ROOT / "after").as_posix(), text))
    assert {where for where, _ in found} <= allowed, found
    runner = [text for where, text in found if where == "loop/runner.py"]
    assert all("delete it (or the whole output folder)" in t for t in runner), runner
    scores = [text for where, text in found if where == "scoring.py"]
    assert all("scores only, no label is in it" in t for t in scores), scores
    sources = {p.name: p.read_text() for p in (ROOT / "after").rglob("*.py")}
    users = {name for name, text in sources.items() if "check_same_settings(" in text}
    assert users == {"runner.py", "compare.py"}  # the run command passes no folder to delete


def _imports(path: Path, package: str) -> set[str]:
    """The `after` modules that a module imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:  # relative: from the module's own package
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m == "after" or m.startswith("after.")}


def test_no_module_of_the_package_imports_itself_in_a_circle() -> None:
    """Layers import downward only: no chain of imports (lazy ones included) leads a module of
    `after` back to itself. A circle means a module sits in two layers (docs/ARCHITECTURE.md)."""
    root = Path(__file__).parents[1]
    modules = {
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (root / "after").rglob("*.py")
    }
    graph = {
        name: {
            m
            for m in _imports(path, name if path.name == "__init__.py" else name.rpartition(".")[0])
            if m in modules and m != name and not name.startswith(m + ".")
        }
        for name, path in modules.items()
    }
    circles = []
    for start in graph:  # a depth-first search from each module for a path back to it
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    circles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not circles, "\n".join(sorted(circles))
