"""``bninspect explain``: one output element derived step by step."""

from __future__ import annotations

import sys
from pathlib import Path
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
    with_inspect_options,
)
from bninspect.cli.output import emit, inspect
from bninspect.cli.ranks import (
    TIMEOUT_DEFAULT,
    Ranks,
    RankSizes,
    RankTimeout,
    notice_unused_timeout,
    refuse_one_process_options,
)
from bninspect.errors import OptionError
from bninspect.input.layout import batch_axis, to_core_index
from bninspect.input.parsing import parse_against_value, parse_index, resolve_index
from bninspect.input.request import InspectRequest


@app.command(short_help="Derive one output element step by step, with real numbers.")
@with_inspect_options("explain")
def explain(
    request: InspectRequest,
    index: Annotated[
        str,
        typer.Option(
            metavar="INDEX",
            help="The output element, one integer per axis in the --channel-axis layout, e.g. "
            "0,0,0,0; negative counts from the end.",
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
            metavar="PATH",
            help="Your output for the same input (.npy): its value for the element beside the "
            "derivation, the step where the numbers would have to differ, and the known "
            "mistake that gives it.",
        ),
    ] = None,
    against_value: Annotated[
        str | None,
        typer.Option(
            metavar="Y",
            help="Your value for the element, e.g. computed by hand (-1.1236): the same report "
            "as --against, judged to the digits you give.",
        ),
    ] = None,
    grad: GradFlag = False,
    grad_output: GradOutput = None,
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
    With --grad, also dx at the element and dweight, dbias of its channel, derived through the
    graph and by the compact formula, beside autograd's values (--precision: autograd's CPU
    backward redone step by step where it can be reproduced bit for bit).

    With --ranks K or --rank-sizes: the element under each data-parallel regime (its rank
    alone, SyncBatchNorm's pooling, the per-rank variances averaged), showing where its rank's
    statistics differ from the pooled ones.
    """
    detail = detail_level(quiet, verbose, json_output)
    wanted = parse_index(index)
    notice_unused_timeout(ranks, rank_sizes, rank_timeout)
    if ranks is not None or rank_sizes is not None:
        given = [("--precision", precision), ("--against", against is not None),
                 ("--against-value", against_value is not None), ("--grad", grad)]  # fmt: skip
        refuse_one_process_options([name for name, hit in given if hit], ranks)
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
    if against is not None and against_value is not None:
        raise OptionError("--against and --against-value both give your value; give one")
    typed = parse_against_value(against_value) if against_value is not None else None
    if grad:
        check_grad_request(request, grad_output, "--grad")
    else:
        refuse_grad_output_alone(grad_output, "--grad")

    def before(planned, settings):  # an element of the last step's batch, their value for it
        user_batch = list(planned.user_shape)  # the index is in the user's layout
        user_batch[batch_axis(planned.channel_axis)] = settings.batch_size
        resolved = to_core_index(resolve_index(wanted, tuple(user_batch)), planned.channel_axis)
        dy = grad_output_for(planned, request, grad_output) if grad else None
        if against is None:
            return resolved, typed, dy
        from bninspect.input.their_output import load_output

        # every step's output, stacked, as --save-output writes it
        loaded = load_output(
            against, "--against", planned.user_shape, planned.dtype, planned.channel_axis
        )
        return resolved, loaded, dy

    def report(inspection, extra, _progress):
        from bninspect.check.against import given_value
        from bninspect.report.explain import derive_element  # late, as in run

        resolved, theirs, dy = extra
        if theirs is not None and not isinstance(theirs, tuple):  # typed by hand
            theirs = given_value(theirs.value, theirs.digit_unit)
        result = derive_element(inspection, resolved, precision, theirs)
        if dy is None:
            return result
        from bninspect.grad.backward import inspect_backward
        from bninspect.grad.report import build_grad_explain, with_backward

        backward = inspect_backward(inspection, *dy)
        return with_backward(result, build_grad_explain(inspection, backward, resolved, precision))

    emit(inspect(request, json_output, report, before), json_output, detail)
