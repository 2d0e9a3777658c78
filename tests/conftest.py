"""Shared fixtures: a deterministic terminal, a CLI runner, and hypothesis settings."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

SCHEMAS = Path(__file__).resolve().parent.parent / "bninspect" / "results" / "schemas"

# Rendered tables must not depend on the terminal running the tests.
os.environ.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
os.environ.pop("BNINSPECT_DEBUG", None)

# torch's first import and first kernel call take a second or more: no per-example deadline.
settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
# HYPOTHESIS_PROFILE=thorough pytest: ten times the examples, for a deeper search before a release.
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


class Cli:
    """Invoke bninspect in-process, as the console script would, and keep stdout and stderr."""

    def __init__(self) -> None:
        from typer.testing import CliRunner

        from bninspect.cli.main import app

        self.runner, self.app = CliRunner(), app

    def __call__(self, *args: str, code: int = 0):
        result = self.runner.invoke(self.app, [str(a) for a in args], prog_name="bninspect")
        assert result.exit_code == code, (
            f"exit {result.exit_code} != {code}\nstdout:\n{result.stdout}\n"
            f"stderr:\n{result.stderr}\nexception: {result.exception!r}"
        )
        if "--json" in args and result.stdout:
            # Every JSON document any test produces must validate against its published schema.
            validate_document(json.loads(result.stdout, parse_constant=_reject_constant))
        return result

    def json(self, *args: str) -> dict:
        """Run with --json and parse stdout as the one strict JSON document it must be."""
        result = self(*args, "--json")
        return json.loads(result.stdout, parse_constant=_reject_constant)

    def error(self, *args: str, code: int) -> str:
        """Run expecting failure; return the single error line from stderr."""
        result = self(*args, code=code)
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
        assert "Traceback" not in result.stderr
        return lines[0].removeprefix("Error: ")


@functools.cache
def _validator(command: str):
    from jsonschema import Draft202012Validator

    path = SCHEMAS / f"{command}.schema.json"
    schema = json.loads(path.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def validate_document(doc: dict) -> None:
    """Fail with every violation if ``doc`` does not match its command's schema file."""
    errors = sorted(_validator(doc["command"]).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"/{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def _reject_constant(name: str):
    raise AssertionError(f"JSON contains the non-standard literal {name}")


@pytest.fixture
def cli() -> Cli:
    return Cli()


@pytest.fixture(scope="session")
def server():
    """bninspect's command line in processes of their own, with bounded memory and time
    (tests/cli_server.py): for what must not happen in the test process (a signal, a crash,
    a closed stdout, memory that grows without bound)."""
    from cli_server import CliServer

    started = CliServer()
    yield started
    started.close()
