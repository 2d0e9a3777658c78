"""``bninspect check``: someone else's output tested against the reference, the mistake named."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bninspect.cli.app import app
from bninspect.cli.options import (
    JsonFlag,
    QuietFlag,
    VerboseFlag,
    detail_level,
    for_check,
    with_inspect_options,
)
from bninspect.cli.output import emit, inspect
from bninspect.cli.ranks import Ranks, RankSizes
from bninspect.input.request import InspectRequest

BUFFERS = "Your buffers after the pass"


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
        typer.Option(
            help="Absolute tolerance. Default: neither --atol nor --rtol, derived per channel "
            "from the dtype and the data (what a correct implementation can leave; "
            "docs/check.md); one given, the other torch.testing's default."
        ),
    ] = None,
    rtol: Annotated[
        float | None,
        typer.Option(help="Relative tolerance; see --atol for the default."),
    ] = None,
    allow_nonfinite_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-nonfinite-mismatch",
            help="Do not count an element that is NaN or infinite on one side only (yours or "
            "the reference) as a mismatch; it is still reported.",
        ),
    ] = False,
    their_running_mean: Annotated[
        Path | None,
        typer.Option(
            help="Your running_mean after the pass (.npy, one value per channel): compared "
            "with the reference's update, the mistake named.",
            rich_help_panel=BUFFERS,
        ),
    ] = None,
    their_running_var: Annotated[
        Path | None,
        typer.Option(
            help="Your running_var after the pass (.npy), as --their-running-mean.",
            rich_help_panel=BUFFERS,
        ),
    ] = None,
    their_num_batches_tracked: Annotated[
        int | None,
        typer.Option(
            min=0, help="Your num_batches_tracked after the pass.", rich_help_panel=BUFFERS
        ),
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="How many of the worst elements to list.")] = 5,
    ranks: Ranks = None,
    rank_sizes: RankSizes = None,
    json_output: JsonFlag = False,
    quiet: QuietFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Test your batch norm's output against the reference, and name the mistake.

    Exit code 0 if every element is within the tolerance (and your buffers, if given, match
    the reference's update), 3 if not. By default the tolerance is what a correct
    implementation in the dtype can leave on this data, per channel. Reports the mismatches,
    the worst elements, the error's shape per channel, and which known mistake (unbiased
    variance, eps outside the root, wrong axes, ...) explains the output, if any. With --ranks K
    or --rank-sizes (the batch split over data-parallel ranks), also the mistakes of
    data-parallel batch norm: per-rank statistics without sync, and per-rank variances averaged
    instead of pooled.
    """
    detail = detail_level(quiet, verbose, json_output)
    checked = for_check(request, atol, rtol)
    split: list[tuple[int, ...]] = []

    def before(planned, _settings):
        from bninspect.check.buffers import load_buffers
        from bninspect.input.their_output import check_memory, load_output

        if ranks is not None or rank_sizes is not None:
            from bninspect.distributed.sharding import batch_split

            split.append(batch_split(planned.shape[0], ranks, rank_sizes))
        check_memory(planned.shape, planned.dtype, request.input_path)
        loaded = load_output(output, "--output", planned.shape, planned.dtype)
        buffers = load_buffers(
            their_running_mean, their_running_var, their_num_batches_tracked, planned.shape[1]
        )
        return loaded, buffers

    def report(inspection, loaded, progress):
        # Imported only now (~0.25 s): errors in the checks above stay quick.
        import dataclasses

        from bninspect.check.report import build_check_result

        if split:  # the data-parallel mistakes in the catalogue need the split
            inspection = dataclasses.replace(inspection, rank_sizes=split[0])
        (theirs, info), buffers = loaded
        return build_check_result(
            inspection,
            theirs,
            info,
            atol,
            rtol,
            top,
            progress,
            allow_nonfinite=allow_nonfinite_mismatch,
            their_buffers=buffers,
        )

    result = inspect(checked, json_output, report, before)
    emit(result, json_output, detail)
    if not result.passed:
        raise typer.Exit(3)
