"""One Rich console (stderr) and a standard progress bar for every long-running step."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape as _escape_markup
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Progress and diagnostics go to stderr so that `--json` output on stdout stays machine-readable.
console = Console(stderr=True)


def escape(value: object) -> str:
    """Text from files (names, ids, reasons, parser messages, labels) as Rich shows it literally.

    Rich reads ``[...]`` as markup: ``bad[red].cif`` would lose ``[red]`` and ``[/b]`` would raise
    MarkupError. Every file-derived string goes through this before a print, table cell or title.
    """
    return _escape_markup(str(value))


def make_progress(transient: bool = False, disable: bool = False) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=disable,
    )


def print_wide(renderable: object, min_width: int = 160) -> None:
    """Print a wide table whole: logs and pipes get ``min_width`` columns instead of Rich's 80.

    ``Console.print(width=...)`` cannot exceed the console's own width, so the width is raised for
    this one call when the output is not a terminal (a terminal keeps its real width).
    """
    if console.is_terminal:
        console.print(renderable)
        return
    previous = console.width
    console.width = max(previous, min_width)
    try:
        console.print(renderable)
    finally:
        console.width = previous
