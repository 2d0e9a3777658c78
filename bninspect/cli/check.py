"""``bninspect check``: someone else's output tested against the reference, the mistake named."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bninspect.cli.app import app
from bninspect.cli.options import JsonFlag, for_check, with_inspect_options
from bninspect.cli.output import emit, inspect
from bninspect.input.request import InspectRequest

CHECK_ADVICE = (
    "check a slice: save the first samples of the input and of your output (x[:n]) as "
    "smaller .npy files and check those"
)


@app.command(short_help="Test your batch norm's output and name the mistake.")
@with_inspect_options
def check(
    request: InspectRequest,
    output: Annotated[
        Path,
        typer.Option(
            help="Your batch norm's output for --input (.npy, same shape).",
            readable=False,  # checked by bninspect, exit code 1
        ),
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

    def need(planned, _batch_size, _steps):  # their output, the reference, the errors...
        from bninspect.input.their_output import check_need

        return check_need(planned.shape, planned.dtype, top)

    def before(planned, _settings):
        from bninspect.input.their_output import load_output

        return load_output(output, "--output", planned.shape, planned.dtype)

    def report(inspection, loaded, progress):
        # Imported only now (~0.25 s): errors in the checks above stay quick.
        from bninspect.check.report import build_check_result, tolerance_for

        theirs, info = loaded
        tolerance = tolerance_for(inspection.tensor.info.dtype, atol, rtol)
        return build_check_result(inspection, theirs, info, tolerance, top, progress)

    result = inspect(
        checked,
        json_output,
        report,
        before,
        reads=(output,),
        extra_need=need,
        need_words=("check on ", CHECK_ADVICE),
    )
    emit(result, json_output)
    if not result.passed:
        raise typer.Exit(3)
