"""The entry point of the ``bninspect`` console script and ``python -m bninspect``: the typer
application with every command registered."""

from __future__ import annotations

from typing import Annotated

import typer

from bninspect import __version__
from bninspect.cli.app import app


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


def main() -> None:
    """Run the application (entry.main sets up the process first)."""
    from bninspect.cli import process

    process.install()  # already done by entry.main; here for older installed console scripts
    app()
