"""``bninspect run``: per-channel statistics, PyTorch beside the float64 reference."""

from __future__ import annotations

from typing import Annotated

import typer

from bninspect.cli.app import app
from bninspect.cli.grad import (
    GradFlag,
    GradOutput,
    check_grad_request,
    grad_output_for,
    refuse_grad_output_alone,
)
from bninspect.cli.options import (
    JsonFlag,
    QuietFlag,
    VerboseFlag,
    detail_level,
    for_stats_only,
    with_inspect_options,
)
from bninspect.cli.output import emit, inspect
from bninspect.input.request import InspectRequest


@app.command(short_help="Per-channel statistics: PyTorch beside a float64 reference.")
@with_inspect_options("run")
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
    grad: GradFlag = False,
    grad_output: GradOutput = None,
    json_output: JsonFlag = False,
    quiet: QuietFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Per-channel statistics of PyTorch's batch norm beside an independent float64 reference.

    Count, mean, biased and unbiased variance, eps, weight, bias, the running buffers after the
    pass, channel health, and how far PyTorch's output and buffers are from the reference.
    """
    detail = detail_level(quiet, verbose, json_output)
    if stats_only:
        request = for_stats_only(request)
    if grad:
        check_grad_request(request, grad_output, "--grad")
    else:
        refuse_grad_output_alone(grad_output, "--grad")

    def before(planned, _settings):  # dy, checked before torch loads
        return grad_output_for(planned, request, grad_output) if grad else None

    def report(inspection, dy, progress):
        # Report modules load only now (~0.25 s): errors in the checks stay quick.
        from bninspect.report.run import build_run_result

        result = build_run_result(inspection, progress, var_method)
        if dy is None:
            return result
        from bninspect.grad.backward import inspect_backward
        from bninspect.grad.report import build_grad_run, with_backward

        backward = inspect_backward(inspection, *dy)
        return with_backward(result, build_grad_run(inspection, backward))

    emit(inspect(request, json_output, report, before, compare_only=True), json_output, detail)
