"""Run the command line in-process, as a test sees it."""

from __future__ import annotations

from typing import Any


def invoke(args: list[str], capsys: Any) -> tuple[int, str]:
    """`after ARGS` in this process: (exit status, stdout and stderr together), read from
    pytest's `capsys`. A traceback in the output fails the test: every error a person can cause
    must end in a message."""
    from after.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    text = str(out.out) + str(out.err)
    assert "Traceback" not in text, text
    return code, text
