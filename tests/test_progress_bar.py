"""The progress bar: only on a terminal, never with --json, and only once work has taken about
a second."""

from __future__ import annotations

import io
import sys
import threading

from bninspect.render import progress_bar as module
from bninspect.render.progress_bar import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _terminal(monkeypatch) -> Terminal:
    """stderr as a terminal; set in the test itself (pytest swaps stderr between phases)."""
    stderr = Terminal()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setenv("TERM", "xterm")  # the suite's TERM=dumb would draw no live bar
    return stderr


def test_no_bar_for_json_or_a_pipe(monkeypatch):
    _terminal(monkeypatch)
    with progress_bar(as_json=True) as progress:
        assert progress is None
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    with progress_bar(as_json=False) as progress:
        assert progress is None


def test_quick_work_draws_nothing(monkeypatch):
    terminal = _terminal(monkeypatch)
    monkeypatch.setattr(module, "DELAY_SECONDS", 60.0)
    with progress_bar(as_json=False) as progress:
        progress("statistics", 100)(100)
    assert terminal.getvalue() == ""


def test_slow_work_draws_its_phases(monkeypatch):
    terminal = _terminal(monkeypatch)
    monkeypatch.setattr(module, "DELAY_SECONDS", 0.0)
    started = threading.Event()
    real_start = module.threading.Timer

    def timer(delay, function):  # know when the bar has started
        def run():
            function()
            started.set()

        return real_start(delay, run)

    monkeypatch.setattr(module.threading, "Timer", timer)
    with progress_bar(as_json=False) as progress:
        tell = progress("diagnosis", 1000)
        assert started.wait(10)
        tell(500)
    assert "diagnosis" in terminal.getvalue()
