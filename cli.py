"""The `matcard` command line: a thin Typer shell over the matcard Python API.

Exit codes: 0 success, 1 runtime failure, 2 bad usage (unknown dataset/task, invalid config).
Heavy imports happen inside the commands so that `matcard --help` is instant.
Each command group lives in its own marked section below.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional  # noqa: F401  (Optional is used by command signatures)

import typer

from matcard._version import __version__
from matcard.console import console
from matcard.errors import MatcardError

app = typer.Typer(
    name="matcard",
    help="Imbalance-aware classifiers for crystal structures: datasets, training, evaluation, screening.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"matcard {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """matcard: find the minority class in crystal data."""


def fail(error: MatcardError) -> typer.Exit:
    """Report a MatcardError on stderr and return the Exit carrying its exit code."""
    console.print(f"[bold red]error:[/] {error}")
    return typer.Exit(code=error.exit_code)


# === datasets: datasets / download / inspect =====================================

# === featurize ===================================================================

# === reproduce ===================================================================

# === train / evaluate ============================================================

# === screen ======================================================================

# === benchmark ===================================================================


def main() -> None:
    try:
        app()
    except MatcardError as error:  # errors raised outside a command's own handling
        console.print(f"[bold red]error:[/] {error}")
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
