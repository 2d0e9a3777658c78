"""The entry point of the ``bninspect`` console script and ``python -m bninspect``: the typer
application with every command registered."""

from __future__ import annotations

import functools
from typing import Annotated

import typer

from bninspect import __version__
from bninspect.cli.app import app
from bninspect.errors import BnInspectError, is_allocation_failure


def _print_version(asked: bool) -> None:
    if asked:
        print(f"bninspect {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print bninspect's version and exit.",
        ),
    ] = False,
) -> None:
    """Options before the command (the app's help in app.py describes the tool)."""

# Importing a command module registers it on the app (typer's decorators); --help lists the
# commands in the order they are imported here.
# isort: off
from bninspect.cli import run  # noqa: E402, F401
from bninspect.cli import explain  # noqa: E402, F401
from bninspect.cli import check  # noqa: E402, F401
from bninspect.cli import conventions  # noqa: E402, F401
from bninspect.cli import model  # noqa: E402, F401

# isort: on


def _allocation_failures_run_out_of_memory(callback):
    """``callback`` (a command), with torch's failed allocations (a RuntimeError from its
    allocator, wherever torch runs) raised as the MemoryError they are: the command line then
    says "ran out of memory", not "internal error" or the input's fault."""

    @functools.wraps(callback)
    def command(*args, **kwargs):
        try:
            return callback(*args, **kwargs)
        except BnInspectError:
            raise
        except Exception as exc:
            if is_allocation_failure(exc) and not isinstance(exc, MemoryError):
                raise MemoryError(str(exc)) from None
            raise

    return command


for _registered in app.registered_commands:
    _registered.callback = _allocation_failures_run_out_of_memory(_registered.callback)


def main() -> None:
    """Run the application (entry.main sets up the process first)."""
    from bninspect.cli import process

    process.install()  # already done by entry.main; here for older installed console scripts
    app()
