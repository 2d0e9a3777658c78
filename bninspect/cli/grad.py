"""The backward pass's options, shared by ``run --grad``, ``explain --grad`` and ``check
--grad-input``: their declarations, the checks on them (before anything heavy loads), and
loading dy. Kept out of options.py: only the commands that take them import this."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from bninspect.errors import OptionError
from bninspect.input.request import InspectRequest

GRAD = "Backward pass"

GradFlag = Annotated[
    bool,
    typer.Option(
        "--grad",
        help="Also the backward pass: dx, dweight and dbias from the float64 reference beside "
        "PyTorch's autograd, for dy from --grad-output or standard normal from --seed.",
        rich_help_panel=GRAD,
    ),
]
GradOutput = Annotated[
    Path | None,
    typer.Option(
        metavar="PATH",
        help="dy, the gradient of the loss with respect to the output (.npy, the input's shape "
        "and dtype); default: standard normal, numpy.random.default_rng([--seed, 5]).",
        rich_help_panel=GRAD,
        readable=False,  # checked by bninspect, exit code 1
    ),
]
# Float64 copies a backward holds per element: x, dy, x_hat, dx, autograd's dx and temporaries.
GRAD_FLOAT64_PER_ELEMENT = 8


def check_grad_request(request: InspectRequest, grad_output: Path | None, flag: str) -> None:
    """Refuse what the backward pass cannot do, before anything is read."""
    if request.steps is not None or request.batch_size is not None:
        raise OptionError(
            f"{flag} differentiates one forward pass; drop --steps and --batch-size (save the "
            "batch you want with --save-input and inspect it alone)"
        )
    if request.stats_only:
        raise OptionError(f"{flag} needs PyTorch's autograd, which --stats-only skips; drop one")
    if grad_output is not None and request.input_path is not None:
        if grad_output.resolve() == request.input_path.resolve():
            raise OptionError("--grad-output names the --input file; dy is a file of its own")


def refuse_grad_output_alone(grad_output: Path | None, flag: str) -> None:
    if grad_output is not None:
        raise OptionError(f"--grad-output is dy for the backward pass; add {flag}, or drop it")


def grad_output_for(planned, request: InspectRequest, grad_output: Path | None):
    """dy for the planned input, loaded and checked (or drawn from --seed), and its info;
    refuses a tensor whose backward would not fit in memory."""
    import numpy as np

    from bninspect.input.gradients import (
        generated_grad_output,
        generated_info,
        load_grad_output,
    )
    from bninspect.input.memory import check_fits
    from bninspect.input.npy_files import read_header
    from bninspect.text import shape as shape_text

    elements = math.prod(planned.shape)
    check_fits(
        elements * 8 * GRAD_FLOAT64_PER_ELEMENT,
        f"the backward pass on {shape_text(planned.shape)}",
        "inspect a slice of the input (x[:n]) and of dy",
    )
    # dy is drawn, and read, in the input's own layout (--channel-axis); the core takes it with
    # the channels on axis 1, as it takes the input (a view)
    axis = planned.channel_axis
    if grad_output is None:
        dy = generated_grad_output(planned.user_shape, request.seed, planned.dtype)
        return np.moveaxis(dy, axis, 1), generated_info(request.seed, planned.dtype)
    accepted = {planned.dtype}
    if request.input_path is not None:
        accepted.add(read_header(request.input_path, "--input").dtype.name)
    dy, info = load_grad_output(grad_output, planned.user_shape, accepted, planned.dtype)
    return np.moveaxis(dy, axis, 1), info
