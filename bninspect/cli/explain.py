"""``bninspect explain``: one output element derived step by step."""

from __future__ import annotations

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
    grad: GradFlag = False,
    grad_output: GradOutput = None,
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
    """
    detail = detail_level(quiet, verbose, json_output)
    wanted = parse_index(index)
    if grad:
        check_grad_request(request, grad_output, "--grad")
    else:
        refuse_grad_output_alone(grad_output, "--grad")

    def before(planned, settings):  # an element of the last step's batch, their value for it
        batch_shape = (settings.batch_size, *planned.shape[1:])
        resolved = resolve_index(wanted, batch_shape)
        dy = grad_output_for(planned, request, grad_output) if grad else None
        if against is None:
            return resolved, None, dy
        from bninspect.input.their_output import load_output

        # every step's output, stacked, as --save-output writes it
        return resolved, load_output(against, "--against", planned.shape, planned.dtype), dy

    def report(inspection, extra, _progress):
        from bninspect.report.explain import derive_element  # late, as in run

        resolved, theirs, dy = extra
        result = derive_element(inspection, resolved, precision, theirs)
        if dy is None:
            return result
        from bninspect.grad.backward import inspect_backward
        from bninspect.grad.report import build_grad_explain, with_backward

        backward = inspect_backward(inspection, *dy)
        return with_backward(result, build_grad_explain(inspection, backward, resolved, precision))

    emit(inspect(request, json_output, report, before), json_output, detail)
