"""``bninspect explain``: one output element derived step by step."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from bninspect.cli.app import app
from bninspect.cli.options import JsonFlag, with_inspect_options
from bninspect.cli.output import emit, inspect
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
            readable=False,  # checked by bninspect, exit code 1
        ),
    ] = None,
    json_output: JsonFlag = False,
) -> None:
    """Derive one output element step by step, with the real numbers, beside PyTorch's value.

    Ends with PyTorch's value: equal to the correctly rounded reference to the last bit, or the
    exact error; in train mode also the running-statistics update of the element's channel.
    """
    wanted = parse_index(index)

    def before(planned, settings):  # an element of the last step's batch, their value for it
        batch_shape = (settings.batch_size, *planned.shape[1:])
        resolved = resolve_index(wanted, batch_shape)
        if precision:  # before any work: a channel too long to emulate in Python is refused
            from bninspect.pytorch.cpu_emulation import one_value_cost

            image_size = math.prod(planned.shape[2:])
            problem = one_value_cost(
                settings.batch_size * image_size, image_size, settings.mode == "train"
            )
            if problem is not None:
                raise OptionError(problem)
        if against is None:
            return resolved, None
        from bninspect.input.their_output import load_element

        # Every step's output, stacked, as --save-output writes it; only the element is read.
        first = (settings.steps - 1) * settings.batch_size
        element = (first + resolved[0], *resolved[1:])
        theirs = load_element(against, "--against", planned.shape, planned.dtype, element)
        return resolved, theirs

    def report(inspection, extra, _progress):
        from bninspect.report.explain import derive_element  # late, as in run

        resolved, theirs = extra
        return derive_element(inspection, resolved, precision, theirs)

    from bninspect.input.memory import explain_bytes

    reads = (against,) if against is not None else ()
    emit(
        inspect(request, json_output, report, before, reads=reads, extra_need=explain_bytes),
        json_output,
    )
