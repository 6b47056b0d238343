"""Two Rich consoles and a standard progress bar for every long-running step.

``results`` (stdout) shows what a command produced: tables and summaries, so that ``| less``,
``| grep`` and ``> file`` work. ``console`` (stderr) shows progress and diagnostics: warnings,
per-file notices, errors. ``--json`` output is printed with ``typer.echo`` on stdout alone; the human
tables of such a run go to stderr (``print_wide(..., err=True)``) so stdout stays one JSON document.
"""

from __future__ import annotations

import os
import time
from typing import Any

from rich.console import Console, RenderableType
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
# Results (tables, summaries) go to stdout.
results = Console()

PROGRESS_INTERVAL_ENV = "MATCARD_PROGRESS_INTERVAL"
DEFAULT_PROGRESS_INTERVAL = 10.0  # seconds between plain progress lines when stderr is not a terminal
MAX_WIDTH = 10_000  # a runaway cell must not make a table infinitely wide


def escape(value: object) -> str:
    """Text from files (names, ids, reasons, parser messages, labels) as Rich shows it literally.

    Rich reads ``[...]`` as markup: ``bad[red].cif`` would lose ``[red]`` and ``[/b]`` would raise
    MarkupError. Every file-derived string goes through this before a print, table cell or title.
    """
    return _escape_markup(str(value))


class _Progress(Progress):
    """A Rich progress bar that, without a terminal, writes a plain line every interval instead.

    Rich draws nothing live into a file or pipe, so a long job would leave a log empty until it ends.
    Live calls ``get_renderable`` on every refresh tick (from its own thread), which gives the clock.
    """

    def __init__(self, *columns: Any, interval: float, **kwargs: Any) -> None:
        self._interval = interval  # set first: Live asks for the renderable while it is being built
        self._last_line = time.monotonic()
        super().__init__(*columns, **kwargs)

    def get_renderable(self) -> RenderableType:
        if getattr(self, "live", None) is not None and not self.disable and not self.console.is_terminal:
            now = time.monotonic()
            if now - self._last_line >= self._interval:
                self._last_line = now
                self._write_plain_lines()
        return super().get_renderable()

    def _write_plain_lines(self) -> None:
        for task in self.tasks:
            if task.finished or not task.visible:
                continue
            done = f"{task.completed:,.0f}" + (f"/{task.total:,.0f}" if task.total else "")
            percent = f" ({task.percentage:.0f} %)" if task.total else ""
            elapsed = task.elapsed or 0.0
            line = f"{task.description}: {done}{percent}, {elapsed:.0f} s elapsed"
            # Straight to the file: the console may be rendering the Live display on another thread.
            self.console.file.write(line + "\n")
            self.console.file.flush()


def progress_interval() -> float:
    """Seconds between plain progress lines: MATCARD_PROGRESS_INTERVAL, else 10."""
    try:
        value = float(os.environ.get(PROGRESS_INTERVAL_ENV, DEFAULT_PROGRESS_INTERVAL))
    except ValueError:
        return DEFAULT_PROGRESS_INTERVAL
    return value if value > 0 else DEFAULT_PROGRESS_INTERVAL


def make_progress(transient: bool = False, disable: bool = False) -> Progress:
    interval = progress_interval()
    return _Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=disable,
        interval=interval,
        # The ticks drive the plain lines too: at least one per interval.
        refresh_per_second=max(10.0, 2.0 / interval),
    )


def print_wide(renderable: RenderableType, min_width: int = 0, *, err: bool = False) -> None:
    """Print a result (table or text) on stdout, or on stderr with ``err``, never cut to 80 columns.

    A terminal keeps its real width. Without one (a pipe, a file, a log), Rich would wrap at 80
    columns mid-word (``struct/ures``); the console is widened for this call to the width the
    renderable needs (at least ``min_width``). ``Console.print(width=...)`` cannot exceed the
    console's own width, hence the temporary change.
    """
    target = console if err else results
    if target.is_terminal:
        target.print(renderable, soft_wrap=isinstance(renderable, str))
        return
    if isinstance(renderable, str):  # plain text lines: never wrapped
        target.print(renderable, soft_wrap=True)
        return
    previous = target.width
    needed = target.measure(renderable, options=target.options.update_width(MAX_WIDTH)).maximum
    target.width = min(MAX_WIDTH, max(previous, min_width, needed))
    try:
        target.print(renderable)
    finally:
        target.width = previous
