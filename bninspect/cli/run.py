"""``bninspect run``: per-channel statistics, PyTorch beside the float64 reference."""

from __future__ import annotations

import math
from typing import Annotated

import typer

from bninspect.cli.app import app
from bninspect.cli.grad import (
    GRAD_FLOAT64_PER_ELEMENT,
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
from bninspect.cli.process import say
from bninspect.cli.ranks import (
    TIMEOUT_DEFAULT,
    Ranks,
    RankSizes,
    RankTimeout,
    notice_unused_timeout,
    refuse_one_process_options,
)
from bninspect.errors import OptionError
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
    ranks: Ranks = None,
    rank_sizes: RankSizes = None,
    rank_timeout: RankTimeout = TIMEOUT_DEFAULT,
    json_output: JsonFlag = False,
    quiet: QuietFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Per-channel statistics of PyTorch's batch norm beside an independent float64 reference.

    Count, mean, biased and unbiased variance, eps, weight, bias, the running buffers after the
    pass, channel health, and how far PyTorch's output and buffers are from the reference.

    With --ranks K or --rank-sizes, the batch split over data-parallel ranks: the full batch,
    per-rank batch norm (DDP without SyncBatchNorm) and SyncBatchNorm's pooled statistics side
    by side, with the running buffers each leaves. With --stats-only and --input 'PATTERN'
    (quoted), the population statistics of many files, in one process, K local ranks, or under
    torchrun.
    """
    detail = detail_level(quiet, verbose, json_output)
    from bninspect.distributed.environment import torchrun
    from bninspect.distributed.sharding import is_pattern

    notice_unused_timeout(ranks, rank_sizes, rank_timeout)
    pattern = request.input_path is not None and is_pattern(str(request.input_path))
    if stats_only and (pattern or ranks is not None or torchrun() is not None):
        _population(
            request, ranks, rank_sizes, rank_timeout, var_method or grad, json_output, detail
        )
        return
    if pattern:
        raise OptionError(
            f"--input '{request.input_path}' is a pattern of files; patterns are streamed with "
            "--stats-only (population statistics), or give one .npy file"
        )
    if ranks is not None or rank_sizes is not None:
        given = [("--var-method", var_method), ("--grad", grad),
                 ("--grad-output", grad_output is not None)]  # fmt: skip
        refuse_one_process_options([name for name, hit in given if hit], ranks)
        from bninspect.distributed.batch import run_split
        from bninspect.distributed.report import build_run_result as build_split_result

        split, _ = run_split(request, ranks, rank_sizes, rank_timeout)
        for message in split.messages:
            say(message)
        emit(build_split_result(split), json_output, detail)
        return
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

    def need(planned, _batch_size, steps):  # the report, per channel and per step; backward
        from bninspect.input.memory import run_report_bytes

        backward = math.prod(planned.shape) * 8 * GRAD_FLOAT64_PER_ELEMENT if grad else 0
        return run_report_bytes(planned.shape[1], steps) + backward

    reads = (grad_output,) if grad_output is not None else ()
    result = inspect(
        request, json_output, report, before, compare_only=True, reads=reads, extra_need=need
    )
    emit(result, json_output, detail)


def _population(request, ranks, rank_sizes, timeout, one_tensor, json_output, detail) -> None:
    """--stats-only on a pattern of files (or with --ranks, or under torchrun)."""
    if request.input_path is None:
        raise OptionError(
            "--stats-only with --ranks streams files; give --input (a .npy, or a quoted "
            "pattern like 'shards/*.npy')"
        )
    refused = [
        (rank_sizes is not None, "--rank-sizes splits one batch; for files give --ranks K"),
        (request.save_input is not None or request.save_output is not None, "--save-input and "
         "--save-output write one tensor; population statistics read many: drop them"),
        (request.steps is not None or request.batch_size is not None, "--steps and --batch-size "
         "feed training batches; population statistics take every value: drop them"),
        (request.dtype is not None, "--dtype converts one tensor; population statistics read "
         "each file as it is: drop --dtype"),
        (request.channel_axis != 1, "population statistics read every file channels-first "
         "(N, C, ...); drop --channel-axis, or save the files with channels on axis 1"),
        (one_tensor, "--var-method and --grad inspect one tensor; drop them"),
    ]  # fmt: skip
    for hit, message in refused:
        if hit:
            raise OptionError(message)
    from bninspect.distributed.files import population_statistics

    result, mine = population_statistics(str(request.input_path), ranks, timeout)
    if mine:  # under torchrun, rank 0 alone prints
        emit(result, json_output, detail)
