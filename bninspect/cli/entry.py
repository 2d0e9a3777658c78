"""The ``bninspect`` console script and ``python -m bninspect``: set up the process's streams
and signals (process.install) before anything else is imported, then run the application."""

from __future__ import annotations


def main() -> None:
    from bninspect.cli import process

    process.install()
    from bninspect.cli.main import main as run_app

    run_app()
