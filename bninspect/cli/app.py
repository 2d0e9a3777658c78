"""The typer application every command registers on, and the one rule for how it fails: one
``Error: ...`` line on stderr and an exit code, never a traceback."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from bninspect.cli.process import StreamError, say, write_result
from bninspect.errors import BnInspectError

# typer raises click's exceptions (vendored in newer typer); find their base without importing
# a private module, so this works with either.
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _fail(message: str, code: int) -> None:
    say(f"Error: {message}")  # one line on stderr, whatever the message holds (process.say)
    sys.exit(code)


class _OneLineErrors(TyperGroup):
    """Every failure ends as one ``Error: ...`` line on stderr and an exit code: 2 for usage
    errors (typer's and ours), 1 for input that cannot be inspected. Never a traceback, unless
    BNINSPECT_DEBUG is set, for reporting a bug."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _CLICK_EXCEPTION as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # bare `bninspect`: the help, as asked
                try:
                    write_result(exc.format_message() + "\n")
                except StreamError:
                    pass
                sys.exit(exc.exit_code)
            # Some typer versions put pydantic-style "Value error, " before a choice's message.
            message = exc.format_message().replace("Value error, ", "").rstrip(".")
            if not message:  # the help was already printed, nothing to add
                sys.exit(exc.exit_code)
            hint = f"; see '{exc.ctx.command_path} --help'" if getattr(exc, "ctx", None) else ""
            _fail(f"{message}{hint}", exc.exit_code)
        except BnInspectError as exc:
            _fail(str(exc), exc.exit_code)
        except StreamError as exc:
            _fail(str(exc), 1)
        except KeyboardInterrupt:  # only in-process: the command line takes signals itself
            _fail("interrupted by SIGINT", 130)
        except typer.Abort:
            _fail("aborted", 1)
        except MemoryError:
            _fail("ran out of memory; inspect a smaller tensor", 1)
        except Exception as exc:
            if os.environ.get("BNINSPECT_DEBUG"):
                raise
            _fail(
                f"internal error ({type(exc).__name__}: {exc}); this is a bug in bninspect, "
                "please report it with the command line (BNINSPECT_DEBUG=1 shows the traceback)",
                1,
            )
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: typer's rich help imports rich's markdown, traceback and syntax modules and
    # pygments, which doubled --help's time (0.35-0.42 s here, against 0.19-0.23 s plain).
    rich_markup_mode=None,
    help="Check PyTorch's batch normalization against an independent float64 reference: "
    "per-channel statistics, and any output element derived step by step.",
)
