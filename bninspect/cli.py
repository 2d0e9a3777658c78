"""The bninspect command line: parse options, call the core, render. No maths here."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from bninspect.cli_options import (
    ConventionName,
    JsonFlag,
    for_check,
    for_stats_only,
    resolve_momentum,
    with_inspect_options,
)
from bninspect.conventions import CONVENTIONS
from bninspect.errors import BnInspectError, OptionError
from bninspect.parsing import parse_index, resolve_index
from bninspect.progress_bar import progress_bar
from bninspect.request import InspectRequest

# typer raises click's exceptions (vendored in newer typer); find their base without importing
# a private module, so this works with either.
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def _fail(message: str, code: int) -> None:
    print(f"Error: {message}", file=sys.stderr)
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
                print(exc.format_message())
                sys.exit(exc.exit_code)
            # Some typer versions put pydantic-style "Value error, " before a choice's message.
            message = exc.format_message().replace("Value error, ", "").rstrip(".")
            if not message:  # the help was already printed, nothing to add
                sys.exit(exc.exit_code)
            hint = f"; see '{exc.ctx.command_path} --help'" if getattr(exc, "ctx", None) else ""
            _fail(f"{message}{hint}", exc.exit_code)
        except BnInspectError as exc:
            _fail(str(exc), exc.exit_code)
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


def _emit(result: Any, as_json: bool) -> None:
    """Print the result: JSON alone on stdout, or rich tables; notices go to stderr."""
    notices = [
        notice
        for part in ("input", "settings", "output")
        for notice in getattr(getattr(result, part, None), "notices", ())
    ]
    for notice in notices:
        print(f"Notice: {notice}", file=sys.stderr)
    if as_json:
        from bninspect.json_output import to_json

        sys.stdout.write(to_json(result) + "\n")
        return
    from rich.console import Console

    from bninspect.table_output import render

    # crop=False: a table wider than the terminal wraps there instead of losing its right edge.
    Console().print(render(result), crop=False)


def _inspect(request: InspectRequest, as_json: bool, report, before=None, compare_only=False):
    """Prepare (every check, with ``before(planned_input, settings)`` checking and loading
    what else the command needs, all before torch loads), run, save files;
    ``report(inspection, what_before_gave, progress)`` builds the result, under the same
    progress bar. ``compare_only``: the report needs PyTorch's output only as its errors
    (see inspection.prepare)."""
    # numpy and the kernels load here, not at start-up: --help and usage errors stay instant.
    from bninspect.inspection import prepare, run_inspection, save_outputs

    prepared = prepare(request, before, compare_only)
    with progress_bar(as_json) as progress:
        inspection = run_inspection(prepared, progress)
        result = report(inspection, prepared.extra, progress)
    for message in save_outputs(request, inspection):
        print(message, file=sys.stderr)
    return result


@app.command(short_help="Per-channel statistics: PyTorch beside a float64 reference.")
@with_inspect_options
def run(
    request: InspectRequest,
    stats_only: Annotated[
        bool,
        typer.Option(
            "--stats-only",
            help="Only the float64 statistics and channel health, "
            "streamed from a memory-mapped --input in bounded memory; no PyTorch run.",
        ),
    ] = False,
    var_method: Annotated[
        bool,
        typer.Option(
            "--var-method",
            help="Also compute each channel's variance two-pass, "
            "naive one-pass (E[x^2] - E[x]^2) and Welford in working precision.",
        ),
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Per-channel statistics of PyTorch's batch norm beside an independent float64 reference.

    Count, mean, biased and unbiased variance, eps, weight, bias, the running buffers after the
    pass, channel health, and how far PyTorch's output and buffers are from the reference.
    """
    if stats_only:
        request = for_stats_only(request)

    def report(inspection, _extra, progress):
        # Report modules load only now (~0.25 s): errors in the checks stay quick.
        from bninspect.run_report import build_run_result

        return build_run_result(inspection, progress, var_method)

    _emit(_inspect(request, json_output, report, compare_only=True), json_output)


@app.command(short_help="Derive one output element step by step, with real numbers.")
@with_inspect_options
def explain(
    request: InspectRequest,
    index: Annotated[
        str,
        typer.Option(
            help="The output element, one integer per axis, e.g. 0,0,0,0; "
            "negative counts from the end."
        ),
    ],
    precision: Annotated[
        bool,
        typer.Option(
            "--precision",
            help="Also redo PyTorch's CPU arithmetic for the element "
            "step by step and show at which step its bits were lost.",
        ),
    ] = False,
    against: Annotated[
        Path | None,
        typer.Option(
            help="Your output for the same input (.npy): its value for the element beside the "
            "derivation, and the step where the numbers would have to differ.",
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Derive one output element step by step, with the real numbers, beside PyTorch's value.

    Ends with PyTorch's value: equal to the correctly rounded reference to the last bit, or the
    exact error; in train mode also the running-statistics update of the element's channel.
    """
    wanted = parse_index(index)

    def before(planned, settings):  # an element of the last step's batch, their value for it
        batch_shape = (settings.batch_size, *planned.shape[1:])
        resolved = resolve_index(wanted, batch_shape)
        if against is None:
            return resolved, None
        from bninspect.their_output import load_output

        # every step's output, stacked, as --save-output writes it
        return resolved, load_output(against, "--against", planned.shape, planned.dtype)

    def report(inspection, extra, _progress):
        from bninspect.derivation import derive_element  # late, as in run

        resolved, theirs = extra
        return derive_element(inspection, resolved, precision, theirs)

    _emit(_inspect(request, json_output, report, before), json_output)


@app.command(short_help="Test your batch norm's output and name the mistake.")
@with_inspect_options
def check(
    request: InspectRequest,
    output: Annotated[
        Path,
        typer.Option(help="Your batch norm's output for --input (.npy, same shape)."),
    ],
    atol: Annotated[
        float | None,
        typer.Option(help="Absolute tolerance; default torch.testing's for the dtype."),
    ] = None,
    rtol: Annotated[
        float | None,
        typer.Option(help="Relative tolerance; default torch.testing's for the dtype."),
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="How many of the worst elements to list.")] = 5,
    json_output: JsonFlag = False,
) -> None:
    """Test your batch norm's output against the reference, and name the mistake.

    Exit code 0 if every element is within atol + rtol * |reference|, 3 if not. Reports the
    mismatches, the worst elements, the error's shape per channel, the tolerance that would
    pass, and which known mistake (unbiased variance, eps outside the root, wrong axes, ...)
    explains the output, if any.
    """
    checked = for_check(request, atol, rtol)

    def before(planned, _settings):
        from bninspect.their_output import check_memory, load_output

        check_memory(planned.shape, planned.dtype, request.input_path)
        return load_output(output, "--output", planned.shape, planned.dtype)

    def report(inspection, loaded, progress):
        # Imported only now (~0.25 s): errors in the checks above stay quick.
        from bninspect.check_report import build_check_result, tolerance_for

        theirs, info = loaded
        tolerance = tolerance_for(inspection.tensor.info.dtype, atol, rtol)
        return build_check_result(inspection, theirs, info, tolerance, top, progress)

    result = _inspect(checked, json_output, report, before)
    _emit(result, json_output)
    if not result.passed:
        raise typer.Exit(3)


@app.command(short_help="How each framework's batch norm differs, with sources.")
def conventions(
    momentum: Annotated[
        str | None,
        typer.Option(
            help="Translate this momentum (in --from's meaning; none: PyTorch's cumulative "
            "average) into every convention's.",
        ),
    ] = None,
    source: Annotated[
        ConventionName | None,
        typer.Option("--from", help="The convention --momentum is given in (default pytorch)."),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """The reference card: how each framework's batch norm differs, and where each fact
    comes from.

    Which variance normalizes and which is stored, the momentum rule and its default, the eps
    default, one value per channel; each with its source and whether it was checked against
    the real framework here. With --momentum, the same running-statistics rule in every
    convention's terms.
    """
    from bninspect.convention_card import build_card

    if source is not None and momentum is None:
        raise OptionError(
            "--from names the convention --momentum is given in; give --momentum too, or drop "
            "--from"
        )
    rules = CONVENTIONS[source.value if source is not None else "pytorch"]
    translated = resolve_momentum(momentum, rules) if momentum is not None else None
    _emit(build_card(translated, rules, translate=momentum is not None), json_output)


def main() -> None:
    """Entry point of the ``bninspect`` console script and ``python -m bninspect``."""
    app()
