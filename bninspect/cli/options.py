"""The input and layer options every inspecting command takes, declared once.

``with_inspect_options`` adds them to a typer command's signature and hands the command a parsed
``InspectRequest`` instead, so ``run`` and ``explain`` take the same options with the same
defaults and cannot drift apart.
"""

import dataclasses
import functools
import inspect
import math
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from bninspect.conventions.rules import CONVENTIONS, Convention, momentum_sentence
from bninspect.dtypes import DTYPE_NAMES
from bninspect.errors import OptionError
from bninspect.input.parsing import (
    check_eps,
    check_momentum,
    parse_momentum,
    parse_output_path,
    parse_shape,
    parse_vector_spec,
)
from bninspect.input.request import InspectRequest
from bninspect.text import short


class Mode(str, Enum):
    train = "train"
    eval = "eval"


DType = Enum("DType", {name: name for name in DTYPE_NAMES}, type=str)
# typer shows an Enum's values as the choices; built from the conventions so they cannot drift.
ConventionName = Enum("ConventionName", {name: name for name in CONVENTIONS}, type=str)


INPUT, LAYER, FILES = "Input", "Layer", "Output files"
VECTOR_FORMS = (
    "ones, zeros, random (uniform in [0,1) from --seed), a comma list of one number per "
    "channel, or a .npy file of them"
)

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print one JSON document to stdout instead of tables.")
]


def _option(name: str, kind: Any, default: Any, *decls: str, **info: Any) -> inspect.Parameter:
    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        default=default,
        annotation=Annotated[kind, typer.Option(*decls, **info)],
    )


SHARED_OPTIONS = [
    _option(
        "shape",
        str | None,
        None,
        help="Shape of the generated tensor, channels on axis 1: "
        "N,C or N,C,L or N,C,H,W or N,C,D,H,W.",
        show_default="1,2,3,4",
        rich_help_panel=INPUT,
    ),
    _option(
        "seed",
        int,
        0,
        min=0,
        max=2**63 - 1,  # JSON readers that take integers as int64 must read it back
        help="Seed of the generated tensor and of 'random' vectors.",
        rich_help_panel=INPUT,
    ),
    _option(
        "input",
        Path | None,
        None,
        "--input",
        help="Inspect this .npy tensor instead of a generated one (pickles are never loaded).",
        rich_help_panel=INPUT,
        readable=False,  # bninspect checks it, with its own message and exit code 1
    ),
    _option(
        "dtype",
        DType | None,
        None,
        help="Run in this dtype: the generated tensor's (default float32), or a conversion of "
        "--input's (default: the file's own).",
        rich_help_panel=INPUT,
    ),
    _option(
        "offset",
        float,
        0.0,
        help="Generated tensor: add this to every value (shows cancellation: try 1e4).",
        rich_help_panel=INPUT,
    ),
    _option(
        "scale",
        float,
        1.0,
        help="Generated tensor: multiply the standard-normal values by this.",
        rich_help_panel=INPUT,
    ),
    _option(
        "convention",
        ConventionName,
        ConventionName.pytorch,
        help="Whose batch-norm rules the reference follows (see 'bninspect conventions'); "
        "PyTorch's module runs beside it with the same rule translated.",
        rich_help_panel=LAYER,
    ),
    _option(
        "eps",
        float | None,
        None,
        help="Added to the variance inside the square root.",
        show_default="the convention's: 1e-5 for PyTorch",
        rich_help_panel=LAYER,
    ),
    _option(
        "momentum",
        str | None,
        None,
        help="In the convention's meaning, in [0, 1] (PyTorch, TensorFlow: the new batch's "
        "weight; Keras, ONNX, Flax, MXNet, Paddle: the old value's; Caffe: "
        "moving_average_fraction), or none: PyTorch's cumulative average.",
        show_default="the convention's: 0.1 for PyTorch",
        rich_help_panel=LAYER,
    ),
    _option(
        "steps",
        int | None,
        None,
        min=1,
        help="Training steps: batches fed one after another through one layer (train mode). "
        "Generated input draws each batch of --shape from the seed in turn.",
        show_default="1, or every batch of --input",
        rich_help_panel=INPUT,
    ),
    _option(
        "batch_size",
        int | None,
        None,
        min=1,
        help="Split --input's axis 0 into batches of this many samples, one per step.",
        show_default="the whole input, or what --steps implies",
        rich_help_panel=INPUT,
    ),
    _option("weight", str, "ones", help=f"Weight (gamma): {VECTOR_FORMS}.", rich_help_panel=LAYER),
    _option(
        "bias", str, "zeros", help="Bias (beta), in the forms of --weight.", rich_help_panel=LAYER
    ),
    _option(
        "affine",
        bool,
        True,
        "--affine/--no-affine",
        help="Whether the layer has weight and bias.",
        rich_help_panel=LAYER,
    ),
    _option(
        "mode",
        Mode,
        Mode.train,
        help="train: normalize with batch statistics and update "
        "the running ones; eval: normalize with the running statistics.",
        rich_help_panel=LAYER,
    ),
    _option(
        "running_mean",
        str,
        "zeros",
        help="Running mean before the pass, in the forms of --weight.",
        rich_help_panel=LAYER,
    ),
    _option(
        "running_var",
        str,
        "ones",
        help="Running variance before the pass, in the forms of --weight.",
        rich_help_panel=LAYER,
    ),
    _option(
        "save_input",
        str | None,  # parsed in build_request: pathlib would drop a trailing '/'
        None,
        help="Write the inspected tensor to this .npy file.",
        rich_help_panel=FILES,
    ),
    _option(
        "save_output",
        str | None,  # as --save-input
        None,
        help="Write PyTorch's output to this .npy file.",
        rich_help_panel=FILES,
    ),
    _option(
        "force",
        bool,
        False,
        "--force",
        help="Let --save-input/--save-output overwrite existing files.",
        rich_help_panel=FILES,
    ),
]


def resolve_momentum(text: str | None, convention: Convention) -> float | None:
    """``--momentum`` in ``convention``'s meaning: its default when not given, None for none
    (only where the convention has a cumulative average)."""
    if text is None:
        return convention.momentum_default
    momentum = parse_momentum(text)
    if momentum is None:
        if not convention.accepts_cumulative:
            raise OptionError(
                f"--momentum none is PyTorch's cumulative average (momentum=None); "
                f"{convention.display} has no such rule; give its "
                f"{convention.momentum_parameter} in [0, 1] (default "
                f"{convention.momentum_default:g})"
            )
        return None
    default = convention.momentum_default
    return check_momentum(
        momentum,
        f"{convention.display}'s default {default:g} {momentum_sentence(convention, default)}",
    )


def build_request(
    *,
    shape: str | None,
    seed: int,
    input: Path | None,
    convention: ConventionName,
    eps: float | None,
    momentum: str | None,
    steps: int | None,
    batch_size: int | None,
    weight: str,
    bias: str,
    affine: bool,
    mode: Mode,
    running_mean: str,
    running_var: str,
    save_input: str | None,
    save_output: str | None,
    force: bool,
    dtype: Enum | None,
    offset: float,
    scale: float,
) -> InspectRequest:
    """Parse the shared options into a request; raises OptionError on a malformed one."""
    if input is not None and shape is not None:
        raise OptionError(
            "--shape and --input both given; the file has its own shape, drop --shape"
        )
    if input is not None and (offset != 0.0 or scale != 1.0):
        raise OptionError(
            "--offset and --scale shape the generated tensor; with --input, transform the file "
            "instead, or drop them"
        )
    for name, value in (("--offset", offset), ("--scale", scale)):
        if not math.isfinite(value):
            raise OptionError(f"{name} {short(value)}: must be a finite number")
    if not affine and (weight != "ones" or bias != "zeros"):
        raise OptionError(
            "--weight and --bias have no effect with --no-affine; drop one or the other"
        )
    if batch_size is not None and input is None:
        raise OptionError(
            "--batch-size splits --input's axis 0; a generated tensor's batch size is the first "
            "size of --shape"
        )
    if mode == Mode.eval and ((steps or 1) > 1 or batch_size is not None):
        raise OptionError(
            "--steps and --batch-size feed training batches, but eval mode never updates the "
            "running statistics; drop them, or use --mode train"
        )
    rules = CONVENTIONS[convention.value]
    return InspectRequest(
        shape=parse_shape(shape) if shape is not None else None,
        seed=seed,
        input_path=input,
        eps=rules.eps_default if eps is None else check_eps(eps, rules.display, rules.eps_default),
        momentum=resolve_momentum(momentum, rules),
        affine=affine,
        mode=mode.value,
        vectors={
            "--weight": parse_vector_spec("--weight", weight),
            "--bias": parse_vector_spec("--bias", bias),
            "--running-mean": parse_vector_spec("--running-mean", running_mean),
            "--running-var": parse_vector_spec("--running-var", running_var),
        },
        save_input=None if save_input is None else parse_output_path("--save-input", save_input),
        save_output=(
            None if save_output is None else parse_output_path("--save-output", save_output)
        ),
        force=force,
        dtype=dtype.value if dtype is not None else None,
        offset=offset,
        scale=scale,
        convention=rules,
        steps=steps,
        batch_size=batch_size,
    )


def for_check(request: InspectRequest, atol: float | None, rtol: float | None) -> InspectRequest:
    """The request for ``check``; refuse what it cannot compare."""
    if request.input_path is None:
        raise OptionError(
            "check needs --input: the tensor your batch norm was given, as .npy (a generated "
            "tensor can be saved first with bninspect run --save-input x.npy)"
        )
    if request.steps is not None or request.batch_size is not None:
        raise OptionError(
            "check compares one forward pass; drop --steps and --batch-size (check each step's "
            "output on its own batch)"
        )
    for name, value in (("--atol", atol), ("--rtol", rtol)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise OptionError(f"{name} {short(value)}: must be a finite number >= 0")
    return request


def for_stats_only(request: InspectRequest) -> InspectRequest:
    """The request, streaming statistics only; refuse what needs PyTorch's output."""
    if request.save_output is not None:
        raise OptionError(
            "--save-output needs PyTorch's output, which --stats-only does not compute; drop one"
        )
    return dataclasses.replace(request, stats_only=True)


def with_inspect_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give a typer command the shared options; it receives them as ``request: InspectRequest``
    after its own parameters."""
    own = [
        p
        for p in inspect.signature(command, eval_str=True).parameters.values()
        if p.name != "request"
    ]
    shared_names = [p.name for p in SHARED_OPTIONS]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        shared = {name: kwargs.pop(name) for name in shared_names}
        return command(request=build_request(**shared), **kwargs)

    parameters = own + SHARED_OPTIONS
    wrapper.__signature__ = inspect.Signature(parameters)  # what typer reads the options from
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper
