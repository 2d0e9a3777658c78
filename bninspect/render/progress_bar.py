"""A progress bar on stderr for long work, drawn only where a person watches: stderr is a
terminal, the output is not JSON, and the work has already taken about a second."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bninspect.pytorch.inspection import PhaseProgress

# Work done sooner than this shows no bar: a bar that flashes for a moment only distracts.
DELAY_SECONDS = 1.0


@contextmanager
def delayed_bar(
    as_json: bool, columns: Callable[[], tuple[Any, ...]]
) -> Iterator[Callable[[str, int], Callable[..., None]] | None]:
    """Yield ``phase(name, total) -> advance(amount=1)``, drawing one bar per phase with the
    rich progress ``columns()`` once the work inside has taken DELAY_SECONDS; None when no bar
    is wanted (stderr not a terminal, or --json)."""
    if as_json or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import Progress

    bar = Progress(*columns(), console=Console(stderr=True), transient=True)
    lock, finished, started = threading.Lock(), threading.Event(), threading.Event()

    def start() -> None:
        with lock:  # never start a bar the work has already closed
            if not finished.is_set():
                bar.start()
                started.set()

    timer = threading.Timer(DELAY_SECONDS, start)
    timer.daemon = True
    timer.start()

    def phase(name: str, total: int) -> Callable[..., None]:
        task = bar.add_task(name, total=total)
        return lambda amount=1: bar.advance(task, amount)

    try:
        yield phase
    finally:
        with lock:
            finished.set()
            timer.cancel()
            if started.is_set():  # rich would end a bar it never drew with a newline
                bar.stop()


def _byte_columns() -> tuple[Any, ...]:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    return (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),  # moves while torch imports or PyTorch runs between phases
    )


def _count_columns() -> tuple[Any, ...]:
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    return (
        TextColumn("{task.description:<8}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )


def progress_bar(as_json: bool) -> Iterator[PhaseProgress | None]:
    """A PhaseProgress over bytes of input (phase(name, size) -> advance(done)), or None."""
    return delayed_bar(as_json, _byte_columns)


def count_bar(as_json: bool) -> Iterator:
    """The same over a count of things (layers): phase(name, total) -> advance(), or None."""
    return delayed_bar(as_json, _count_columns)
