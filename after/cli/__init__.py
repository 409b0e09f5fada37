"""The `after` command line: the only place that parses arguments.

    app.py      the Typer app, `main` (errors, Ctrl-C), tables and consoles
    configs.py  options generated from the settings dataclasses (`with_configs`)
    options.py  every option, defined once
    data.py     prepare, validate, folds, stats, synth
    models.py   tapt, train, evaluate, predict, cv
    loop.py     run, compare, rerun
    report.py   report, demo
    label.py    label serve, status, export, import

Commands are listed by `after --help` in the order these modules register them.
"""

from after.cli.app import app, main

# Each module registers its commands when imported, in the order `after --help` lists them.
# isort: off
from after.cli import data, models, loop, report, label  # noqa: F401
# isort: on

__all__ = ["app", "main"]
