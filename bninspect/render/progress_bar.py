"""A progress bar on stderr for long work, drawn only where a person watches: stderr is a
terminal, the output is not JSON, and the work has already taken about a second."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bninspect.pytorch.inspection import PhaseProgress

# Work done sooner than this shows no bar: a bar that flashes for a moment only distracts.
DELAY_SECONDS = 1.0


@contextmanager
def progress_bar(as_json: bool) -> Iterator[PhaseProgress | None]:
    """Yield a PhaseProgress that draws one bar per phase once the work inside has taken
    DELAY_SECONDS, or None when no bar is wanted."""
    if as_json or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeElapsedColumn(),  # moves while torch imports or PyTorch runs between phases
    )
    bar = Progress(*columns, console=Console(stderr=True), transient=True)
    lock, finished, started = threading.Lock(), threading.Event(), threading.Event()

    def start() -> None:
        with lock:  # never start a bar the work has already closed
            if not finished.is_set():
                bar.start()
                started.set()

    timer = threading.Timer(DELAY_SECONDS, start)
    timer.daemon = True
    timer.start()

    def phase(name: str, size: int):
        task = bar.add_task(name, total=size)
        return lambda done: bar.advance(task, done)

    try:
        yield phase
    finally:
        with lock:
            finished.set()
            timer.cancel()
            if started.is_set():  # rich would end a bar it never drew with a newline
                bar.stop()
