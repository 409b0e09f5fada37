"""What a researcher looks for before using the project: its licence and how to cite it."""

from __future__ import annotations

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
