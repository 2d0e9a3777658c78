"""``bninspect explain``: one output element derived step by step."""

from __future__ import annotations

import math
from pathlib import Path
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
from bninspect.input.layout import batch_axis, to_core_index, to_user_index
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
            readable=False,  # checked by bninspect, exit code 1
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
            say(message)
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
        if precision:  # before any work: a channel too long to emulate in Python is refused
            from bninspect.pytorch.cpu_emulation import one_value_cost

            image_size = math.prod(planned.shape[2:])
            problem = one_value_cost(
                settings.batch_size * image_size, image_size, settings.mode == "train"
            )
            if problem is not None:
                raise OptionError(problem)
        dy = grad_output_for(planned, request, grad_output) if grad else None
        if against is None:
            return resolved, typed, dy
        from bninspect.check.against import TheirValue
        from bninspect.input.their_output import load_element

        # Every step's output, stacked, as --save-output writes it; only the element is read
        # (bounded memory whatever the file's size), at its place in the file's layout.
        first = (settings.training_steps - 1) * settings.batch_size
        element = to_user_index((first + resolved[0], *resolved[1:]), planned.channel_axis)
        value, info = load_element(
            against, "--against", planned.user_shape, planned.dtype, element,
            planned.channel_axis,
        )
        return resolved, TheirValue(value, info.path), dy

    def report(inspection, extra, _progress):
        from bninspect.check.against import given_value
        from bninspect.report.explain import derive_element  # late, as in run

        resolved, theirs, dy = extra
        if theirs is not None and theirs is typed:  # typed by hand
            theirs = given_value(theirs.value, theirs.digit_unit)
        result = derive_element(inspection, resolved, precision, theirs)
        if dy is None:
            return result
        from bninspect.grad.backward import inspect_backward
        from bninspect.grad.report import build_grad_explain, with_backward

        backward = inspect_backward(inspection, *dy)
        return with_backward(result, build_grad_explain(inspection, backward, resolved, precision))

    from bninspect.input.memory import explain_bytes

    def need(planned, batch_size, steps):  # the channel's copies; the backward
        backward = math.prod(planned.shape) * 8 * GRAD_FLOAT64_PER_ELEMENT if grad else 0
        return explain_bytes(planned, batch_size, steps) + backward

    reads = tuple(path for path in (against, grad_output) if path is not None)
    result = inspect(request, json_output, report, before, reads=reads, extra_need=need)
    emit(result, json_output, detail)
