"""``bninspect explain``: one output element derived step by step."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from bninspect.cli.app import app
from bninspect.cli.options import (
    JsonFlag,
    QuietFlag,
    VerboseFlag,
    detail_level,
    with_inspect_options,
)
from bninspect.cli.output import emit, inspect
from bninspect.cli.ranks import TIMEOUT_DEFAULT, Ranks, RankSizes, RankTimeout
from bninspect.errors import OptionError
from bninspect.input.parsing import parse_index, resolve_index
from bninspect.input.request import InspectRequest


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
    ranks: Ranks = None,
    rank_sizes: RankSizes = None,
    rank_timeout: RankTimeout = TIMEOUT_DEFAULT,
    json_output: JsonFlag = False,
    quiet: QuietFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Derive one output element step by step, with the real numbers, beside PyTorch's value.

    Ends with PyTorch's value: equal to the correctly rounded reference to the last bit, or the
    exact error; in train mode also the running-statistics update of the element's channel.

    With --ranks K or --rank-sizes: the element under each data-parallel regime (its rank
    alone, SyncBatchNorm's pooling, the per-rank variances averaged), showing where its rank's
    statistics differ from the pooled ones.
    """
    detail = detail_level(quiet, verbose, json_output)
    wanted = parse_index(index)
    if ranks is not None or rank_sizes is not None:
        if precision or against is not None:
            raise OptionError(
                "--precision and --against explain one process's element; drop them or --ranks"
            )
        from bninspect.distributed.batch import run_split
        from bninspect.distributed.explain import build_explain_result

        split, resolved = run_split(
            request,
            ranks,
            rank_sizes,
            rank_timeout,
            index_for=lambda shape: resolve_index(wanted, shape),
        )
        for message in split.messages:
            print(message, file=sys.stderr)
        emit(build_explain_result(split, resolved), json_output, detail)
        return

    def before(planned, settings):  # an element of the last step's batch, their value for it
        batch_shape = (settings.batch_size, *planned.shape[1:])
        resolved = resolve_index(wanted, batch_shape)
        if against is None:
            return resolved, None
        from bninspect.input.their_output import load_output

        # every step's output, stacked, as --save-output writes it
        return resolved, load_output(against, "--against", planned.shape, planned.dtype)

    def report(inspection, extra, _progress):
        from bninspect.report.explain import derive_element  # late, as in run

        resolved, theirs = extra
        return derive_element(inspection, resolved, precision, theirs)

    emit(inspect(request, json_output, report, before), json_output, detail)
