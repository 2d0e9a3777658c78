"""``bninspect check``: someone else's output tested against the reference, the mistake named."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bninspect.cli.app import app
from bninspect.cli.options import JsonFlag, for_check, with_inspect_options
from bninspect.cli.output import emit, inspect
from bninspect.input.request import InspectRequest


@app.command(short_help="Test your batch norm's output and name the mistake.")
@with_inspect_options("check")
def check(
    request: InspectRequest,
    output: Annotated[
        Path,
        typer.Option(
            metavar="PATH",
            help="Your batch norm's output for --input (.npy, the same shape and layout).",
        ),
    ],
    atol: Annotated[
        float | None,
        typer.Option(
            metavar="X", help="Absolute tolerance; default torch.testing's for the dtype."
        ),
    ] = None,
    rtol: Annotated[
        float | None,
        typer.Option(
            metavar="X", help="Relative tolerance; default torch.testing's for the dtype."
        ),
    ] = None,
    top: Annotated[
        int, typer.Option(min=1, metavar="N", help="How many of the worst elements to list.")
    ] = 5,
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
        from bninspect.input.their_output import check_memory, load_output

        check_memory(planned.user_shape, planned.dtype, request.input_path)
        return load_output(
            output, "--output", planned.user_shape, planned.dtype, planned.channel_axis
        )

    def report(inspection, loaded, progress):
        # Imported only now (~0.25 s): errors in the checks above stay quick.
        from bninspect.check.report import build_check_result, tolerance_for

        theirs, info = loaded
        tolerance = tolerance_for(inspection.tensor.info.dtype, atol, rtol)
        return build_check_result(inspection, theirs, info, tolerance, top, progress)

    result = inspect(checked, json_output, report, before)
    emit(result, json_output)
    if not result.passed:
        raise typer.Exit(3)
