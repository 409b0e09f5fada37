"""The Typer app, the entry point (`main`: user errors as one message, Ctrl-C as how to continue)
and what every command prints with: the consoles and tables."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from after.data.folds import Folds
from after.data.manifest import Manifest
from after.errors import AfterError, Interrupted, cut

app = typer.Typer(
    help="Label-efficient speech emotion recognition with task adaptation and active learning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    # Plain help: readable when piped and at any width; flags listed without a value.
    rich_markup_mode=None,
)
# What these print quotes the user's paths, ids and labels: never read it as rich markup (a path
# with "[/]" would crash, a label "[laughter]" would vanish) or as emoji codes.
console = Console(soft_wrap=True, markup=False, emoji=False)
err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False)
MAX_LINE = 1000  # characters of one line of an error message


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"after {version('after')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the version and exit.",
        is_eager=True,
        callback=_print_version,
    ),
) -> None:
    """Label-efficient speech emotion recognition with task adaptation and active learning."""


def new_table(*columns: str, title: str | None = None, right: tuple[str, ...] = ()) -> Table:
    """A table whose cells fold onto more lines where the terminal is narrow (rich would cut
    them to "emod…")."""
    out = Table(title=title, title_justify="left")
    for name in columns:
        out.add_column(name, justify="right" if name in right else "left", overflow="fold")
    return out


def print_table(table: Table, to: Console) -> None:
    """Print `table` whole: in a terminal at its width; piped or in a file at the table's own
    width (a console there is 80 columns, which would fold every wide table)."""
    if to.is_terminal:
        to.print(table)
        return
    width = to.measure(table, options=to.options.update_width(100_000)).maximum
    Console(file=to.file, width=width, soft_wrap=True, markup=False, emoji=False).print(table)


def load_fold(manifest: Path, folds_file: Path, fold: str) -> tuple[Manifest, Any]:
    """The manifest and its fold `fold` (a name, or an index given as digits)."""
    m = Manifest.from_jsonl(manifest)
    return m, Folds.from_json(folds_file, m).get(int(fold) if fold.isdigit() else fold)


def corpus_name(m: Manifest) -> str:
    return ", ".join(sorted({u.corpus for u in m}))


def _on_sigint(signum: int, frame: object) -> None:
    raise Interrupted


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one clear message (exit 2), never a traceback; Ctrl-C
    says how to continue (exit 130)."""
    import shlex
    import signal
    import threading

    args = sys.argv[1:] if argv is None else list(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _on_sigint) if in_main_thread else None
    try:
        app(args=args, prog_name="after")
    except AfterError as e:
        print_error(e)
        raise SystemExit(2) from None
    except OSError as e:  # a full disk, a read-only folder: what, where, what to do
        from after.io import os_error_message

        print_error(AfterError(os_error_message(e)))
        raise SystemExit(2) from None
    except (KeyboardInterrupt, Interrupted):
        again = cut(shlex.join(["after", *args]), MAX_LINE)
        err.print(f"interrupted; continue with: {again} (what was saved is kept)", highlight=False)
        raise SystemExit(130) from None
    except SystemExit as e:
        if e.code in (0, None) and "torch.distributed" in sys.modules:  # else no group to leave
            from after.dist import leave_process_group

            leave_process_group()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def print_error(e: Exception) -> None:
    """`error: MESSAGE` on stderr, each line cut to `MAX_LINE` characters (a message may quote a
    value megabytes long)."""
    lines = [cut(line, MAX_LINE) for line in str(e).split("\n")]
    err.print(Text("error:", style="bold red"), "\n".join(lines), highlight=False)
