"""The process around a command: its standard streams and the signals that end it.

Set up first thing (``install``), before anything else is imported or any thread started:

- Standard streams: a stream closed at start (``>&-``, ``2>&-``) is reopened on /dev/null, so
  no file bninspect opens later can take its number (and receive its messages). With stderr
  closed, messages go nowhere, never onto stdout; with stdout closed, a command that has a
  result to print refuses to start (``require_stdout``). Only the result is ever written to
  stdout, through ``write_result``, and a failed write there is a one-line error, exit 1.
- Signals: SIGINT, SIGTERM, SIGHUP and the other signals that end a process by default and can
  be caught are blocked in every thread and taken by one watcher thread (``sigwait``), which
  acts at once whatever the others are doing: it removes the temporary files of unfinished
  saves (waiting for files being put in place to land, or be taken back), says
  ``Error: interrupted by SIGTERM`` and exits 128 + the signal's number (SIGINT 130, SIGHUP 129,
  SIGTERM 143). SIGXFSZ (a file-size limit) is ignored, so an oversized write fails with an
  error instead of killing the process; SIGPIPE stays ignored as Python has it.
- Warnings: numpy's RuntimeWarnings (overflow, invalid value) are handled where they arise
  (np.errstate); one missed would print a Python source line, no message for a user, so they
  are ignored unless -W or PYTHONWARNINGS says otherwise (the tests and scripts/fuzz.py make
  them errors, to find any).
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import warnings

# Imported now, in the main thread: the watcher thread must import nothing when a signal
# comes, while the main thread may be importing itself.
from bninspect.input.files import TEMPORARIES_LOCK, remove_temporaries
from bninspect.text import printable

# Signals whose default is to end the process and which can be caught.
CAUGHT = tuple(
    getattr(signal, name)
    for name in (
        "SIGINT",
        "SIGTERM",
        "SIGHUP",
        "SIGQUIT",
        "SIGUSR1",
        "SIGUSR2",
        "SIGALRM",
        "SIGVTALRM",
        "SIGPROF",
        "SIGXCPU",
        "SIGPWR",
    )
    if hasattr(signal, name)
)

_closed_at_start: set[int] = set()


def _reopen_closed_streams() -> None:
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            _closed_at_start.add(fd)
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:  # the lowest free number: fd itself, unless a lower one is closed
                os.dup2(null, fd)
                os.close(null)
    if sys.stderr is None or 2 in _closed_at_start:
        sys.stderr = open(2, "w", errors="backslashreplace", closefd=False, buffering=1)  # noqa: SIM115


def say(line: str) -> None:
    """Write one message line to stderr, printable (text.printable): never to stdout, and
    never failing (a closed or broken stderr loses the message)."""
    stream = sys.stderr
    if stream is None:
        return
    try:
        stream.write(printable(line) + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def _watch(signals: tuple[int, ...]) -> None:
    signum = signal.sigwait(signals)
    with TEMPORARIES_LOCK:  # files being put in place land, or are taken back, first
        removed = remove_temporaries()
        try:
            if sys.stderr is not None and sys.stderr.isatty():
                sys.stderr.write("\x1b[?25h\n")  # a progress bar had hidden the cursor
        except (OSError, ValueError):
            pass
        name = signal.Signals(signum).name
        say(
            f"Error: interrupted by {name}"
            + ("; its unfinished output files were removed" if removed else "")
        )
        os._exit(128 + signum)


_installed = False


def install() -> None:
    """Set up the streams and signals as the module's docstring says; call it in the main
    thread before any other thread starts (threads inherit the blocked signals)."""
    global _installed
    if _installed:
        return
    _installed = True
    _reopen_closed_streams()
    sys.stdout = _ResultStream()
    if not sys.warnoptions:
        warnings.simplefilter("ignore", RuntimeWarning)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, CAUGHT)
    threading.Thread(target=_watch, args=(CAUGHT,), name="signals", daemon=True).start()


class StreamError(Exception):
    """The result could not be written to stdout; the message says why."""


def require_stdout() -> None:
    """Raise StreamError before any work if stdout was closed at start: the result would go
    nowhere."""
    if 1 in _closed_at_start:
        raise StreamError(
            "stdout is closed, so the result cannot be printed; run again with stdout open "
            "(redirect it to a file to keep the result)"
        )


def write_result(text: str) -> None:
    """Write the result to stdout, all of it; a failure (a closed pipe, a full disk) raises
    StreamError, and stdout is pointed at /dev/null so nothing fails again at exit."""
    require_stdout()
    stream = sys.stdout
    if stream is None or isinstance(stream, _ResultStream) or stream is sys.__stdout__:
        _write_stdout_fd(text)
        return
    try:  # a stream put in place of stdout (a test runner's): its own writes
        stream.write(text)
        stream.flush()
    except (OSError, ValueError) as exc:
        raise _stream_error(exc) from None


def _stream_error(exc: BaseException) -> StreamError:
    _silence_stdout()
    reason = getattr(exc, "strerror", None) or str(exc)
    return StreamError(
        f"could not write the result to stdout ({reason}); check where stdout goes (a "
        "closed pipe, a full disk)"
    )


def _write_stdout_fd(text: str) -> None:
    """Write to file descriptor 1 until every byte is out. Not through Python's buffered
    stdout: when a pipe's reader leaves half way through a large write, the kernel reports the
    part written, and the buffered writer then drops the rest without an error (exit 0 with the
    result cut short)."""
    try:
        if sys.__stdout__ is not None:
            sys.__stdout__.flush()  # anything written the ordinary way goes first
        data = memoryview(text.encode("utf-8", "backslashreplace"))
        while data:
            written = os.write(1, data)
            data = data[written:]
    except (OSError, ValueError) as exc:
        raise _stream_error(exc) from None


class _ResultStream(io.TextIOBase):
    """sys.stdout for the command line: what the libraries print there (click's --help and
    --version) goes through the same checked writes as a result, so a closed or full stdout is
    a one-line error, never a traceback or a silent exit 0."""

    encoding = "utf-8"

    def write(self, text: str) -> int:
        write_result(text)
        return len(text)

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return 1

    def isatty(self) -> bool:
        return os.isatty(1)


def _silence_stdout() -> None:
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    except OSError:
        pass
