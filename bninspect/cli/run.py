"""``bninspect run``: per-channel statistics, PyTorch beside the float64 reference."""

from __future__ import annotations

from typing import Annotated

import typer

from bninspect.cli.app import app
from bninspect.cli.options import JsonFlag, for_stats_only, with_inspect_options
from bninspect.cli.output import emit, inspect
from bninspect.input.request import InspectRequest


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
        from bninspect.report.run import build_run_result

        return build_run_result(inspection, progress, var_method)

    def need(planned, _batch_size, steps):  # the report, per channel and per step
        from bninspect.input.memory import run_report_bytes

        return run_report_bytes(planned.shape[1], steps)

    emit(inspect(request, json_output, report, compare_only=True, extra_need=need), json_output)
