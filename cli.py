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


@app.command("screen")
def screen_command(
    model: Annotated[str, typer.Argument(help="Model bundle (RUN/model) or training run directory.")],
    inputs: Annotated[
        list[str],
        typer.Argument(help="Files, folders, globs, ASE .db, CSV/Parquet with a CIF column, dataset names."),
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Results file: .csv or .parquet.")],
    batch_size: Annotated[int, typer.Option("--batch-size", help="Structures per prediction batch.")] = 256,
    workers: Annotated[int, typer.Option("--workers", help="Local worker processes.")] = 1,
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", help="Dask scheduler address (tcp://host:port).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted screen.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Discard an interrupted screen's state and start again.")
    ] = False,
    target_class: Annotated[str | None, typer.Option("--class", help="Class ranked in the shortlist.")] = None,
    min_prob: Annotated[float | None, typer.Option("--min-prob", help="Shortlist only prob >= P.")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Shortlist at most K structures.")] = None,
    shortlist: Annotated[
        str | None, typer.Option("--shortlist", help="Shortlist file (default <stem>.shortlist.<ext>).")
    ] = None,
    ase_db: Annotated[
        str | None, typer.Option("--ase-db", help="Also write predictions into this ASE database.")
    ] = None,
    disorder: Annotated[str, typer.Option("--disorder", help="skip | keep | majority")] = "skip",
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds allowed to parse one file.")] = 10.0,
    keep_parts: Annotated[bool, typer.Option("--keep-parts", help="Keep shard parts after merging.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Predict every input structure; rank a class; resume after interruption; scale out on Dask."""
    from matcard.screening import screen
    from matcard.screening.report import summary_table

    try:
        result = screen(
            model,
            inputs,
            out,
            batch_size=batch_size,
            workers=workers,
            scheduler=scheduler,
            resume=resume,
            overwrite=overwrite,
            target_class=target_class,
            min_prob=min_prob,
            top_k=top_k,
            shortlist=shortlist,
            ase_db=ase_db,
            disorder=disorder,
            timeout=timeout,
            keep_parts=keep_parts,
        )
    except MatcardError as err:
        raise fail(err) from err
    console.print(summary_table(result))
    if json_output:
        import json

        typer.echo(json.dumps(result.to_dict(), indent=2))

# === benchmark ===================================================================


def main() -> None:
    try:
        app()
    except MatcardError as error:  # errors raised outside a command's own handling
        console.print(f"[bold red]error:[/] {error}")
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
