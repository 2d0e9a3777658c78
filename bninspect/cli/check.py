"""``bninspect check``: someone else's output tested against the reference, the mistake named."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bninspect.cli.app import app
from bninspect.cli.options import JsonFlag, for_check, with_inspect_options
from bninspect.cli.output import emit, inspect
from bninspect.cli.ranks import Ranks, RankSizes
from bninspect.input.request import InspectRequest


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
    ranks: Ranks = None,
    rank_sizes: RankSizes = None,
    json_output: JsonFlag = False,
) -> None:
    """Test your batch norm's output against the reference, and name the mistake.

    Exit code 0 if every element is within atol + rtol * |reference|, 3 if not. Reports the
    mismatches, the worst elements, the error's shape per channel, the tolerance that would
    pass, and which known mistake (unbiased variance, eps outside the root, wrong axes, ...)
    explains the output, if any. With --ranks K or --rank-sizes (the batch split over
    data-parallel ranks), also the mistakes of data-parallel batch norm: per-rank statistics
    without sync, and per-rank variances averaged instead of pooled.
    """
    checked = for_check(request, atol, rtol)
    split: list[tuple[int, ...]] = []

    def before(planned, _settings):
        from bninspect.input.their_output import check_memory, load_output

        if ranks is not None or rank_sizes is not None:
            from bninspect.distributed.sharding import batch_split

            split.append(batch_split(planned.shape[0], ranks, rank_sizes))
        check_memory(planned.shape, planned.dtype, request.input_path)
        return load_output(output, "--output", planned.shape, planned.dtype)

    def report(inspection, loaded, progress):
        # Imported only now (~0.25 s): errors in the checks above stay quick.
        import dataclasses

        from bninspect.check.report import build_check_result, tolerance_for

        if split:
            inspection = dataclasses.replace(inspection, rank_sizes=split[0])
        theirs, info = loaded
        tolerance = tolerance_for(inspection.tensor.info.dtype, atol, rtol)
        return build_check_result(inspection, theirs, info, tolerance, top, progress)

    result = inspect(checked, json_output, report, before)
    emit(result, json_output)
    if not result.passed:
        raise typer.Exit(3)
