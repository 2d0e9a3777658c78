"""The input and layer options of the inspecting commands, declared once, each with the commands
that take it.

``with_inspect_options(name)`` adds to a typer command's signature the options that command
takes (check takes no generated tensor, no training steps, no files to write) and hands it a
parsed ``InspectRequest`` instead, so the commands share options with the same defaults and
cannot drift apart, and each command's --help lists only its own.
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
from bninspect.input.option_effects import option_notices
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

# PyTorch keeps num_batches_tracked in an int64 and adds one per step.
MAX_TRACKED = 2**62


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
QuietFlag = Annotated[bool, typer.Option("--quiet", "-q", help="Print the verdict alone.")]
VerboseFlag = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", help="Also print the exhaustive tables (per step, per element, ...)."
    ),
]


def detail_level(quiet: bool, verbose: bool, as_json: bool) -> str:
    """How much of the result to print: "quiet", "normal" or "verbose"."""
    if quiet and verbose:
        raise OptionError("--quiet and --verbose contradict each other; give one")
    if as_json and (quiet or verbose):
        raise OptionError("--json prints the whole result; drop --quiet/--verbose")
    return "quiet" if quiet else "verbose" if verbose else "normal"


INSPECTING = frozenset({"run", "explain", "check"})
GENERATING = frozenset({"run", "explain"})  # check needs --input: no generated tensor, no files


@dataclasses.dataclass(frozen=True)
class SharedOption:
    """One shared option: its parameter name, type, default, declarations and typer settings,
    the commands that take it, and its help where a command reads it otherwise."""

    name: str
    kind: Any
    default: Any
    decls: tuple[str, ...]
    info: dict[str, Any]
    commands: frozenset[str]
    help_for: dict[str, str]

    def parameter(self, command: str) -> inspect.Parameter:
        """The keyword parameter typer reads for ``command``."""
        info = {**self.info, "help": self.help_for.get(command, self.info.get("help"))}
        return inspect.Parameter(
            self.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=self.default,
            annotation=Annotated[self.kind, typer.Option(*self.decls, **info)],
        )


def _option(
    name: str,
    kind: Any,
    default: Any,
    *decls: str,
    commands: frozenset[str] = INSPECTING,
    help_for: dict[str, str] | None = None,
    **info: Any,
) -> SharedOption:
    return SharedOption(name, kind, default, decls, info, commands, help_for or {})


# Metavars are short, so that every option's name and its help share one line in --help.
SHARED_OPTIONS = [
    _option(
        "shape",
        str | None,
        None,
        metavar="SHAPE",
        help="Shape of the generated tensor, as 1x2x3x4 or 1,2,3,4, channels on --channel-axis: "
        "N,C or N,C,L or N,C,H,W or N,C,D,H,W.  [default: 1x2x3x4]",
        commands=GENERATING,
        rich_help_panel=INPUT,
    ),
    _option(
        "seed",
        int | None,
        None,
        metavar="N",
        help="Seed of the generated tensor and of 'random' vectors.  [default: 0]",
        help_for={"check": "Seed of 'random' vectors.  [default: 0]"},
        rich_help_panel=INPUT,
    ),
    _option(
        "input",
        Path | None,
        None,
        "--input",
        metavar="PATH",
        help="Inspect this .npy tensor instead of a generated one (pickles are never loaded).",
        help_for={
            "check": "The tensor your batch norm was given (.npy; pickles are never loaded)."
        },
        rich_help_panel=INPUT,
        readable=False,  # bninspect checks it, with its own message and exit code 1
    ),
    _option(
        "channel_axis",
        int,
        1,
        metavar="AXIS",
        help="The axis that holds the channels: 1 for (N, C, ...) as PyTorch takes it, -1 for "
        "channels last (N, ..., C) as Keras, TensorFlow and JAX store it; any axis. Shapes, "
        "files and indices are read and written in this layout.",
        rich_help_panel=INPUT,
    ),
    _option(
        "dtype",
        DType | None,
        None,
        metavar="DTYPE",
        help=f"Run in this dtype ({', '.join(DTYPE_NAMES)}): the generated tensor's (default "
        "float32), or a conversion of --input's (default: the file's own).",
        help_for={
            "check": f"Run in this dtype ({', '.join(DTYPE_NAMES)}): a conversion of --input's "
            "(default: the file's own)."
        },
        rich_help_panel=INPUT,
    ),
    _option(
        "offset",
        float,
        0.0,
        metavar="X",
        help="Generated tensor: add this to every value (shows cancellation: try 1e4).",
        rich_help_panel=INPUT,
        commands=GENERATING,
    ),
    _option(
        "scale",
        float,
        1.0,
        metavar="X",
        help="Generated tensor: multiply the standard-normal values by this.",
        rich_help_panel=INPUT,
        commands=GENERATING,
    ),
    _option(
        "convention",
        ConventionName,
        ConventionName.pytorch,
        metavar="NAME",
        help=f"Whose batch-norm rules the reference follows ({', '.join(CONVENTIONS)}; see "
        "'bninspect conventions'); PyTorch's module runs beside it with the same rule "
        "translated.",
        rich_help_panel=LAYER,
    ),
    _option(
        "eps",
        float | None,
        None,
        metavar="X",
        help="Added to the variance inside the square root.  [default: the convention's, "
        "1e-5 for PyTorch]",
        show_default=False,
        rich_help_panel=LAYER,
    ),
    _option(
        "momentum",
        str | None,
        None,
        metavar="M",
        help="In the convention's meaning, in [0, 1] (PyTorch, TensorFlow: the new batch's "
        "weight; Keras, ONNX, Flax, MXNet, Paddle: the old value's; Caffe: "
        "moving_average_fraction), or none: PyTorch's cumulative average.  [default: the "
        "convention's, 0.1 for PyTorch]",
        help_for={
            "check": "The layer's momentum, as for run: it weighs only the running "
            "statistics' update, compared with --their-running-mean/--their-running-var."
        },
        show_default=False,
        rich_help_panel=LAYER,
    ),
    _option(
        "num_batches_tracked",
        int | None,
        None,
        metavar="N",
        help="PyTorch's num_batches_tracked before the pass: with --momentum none, training "
        "step k weighs the batch 1/(N + k), so the given running statistics count as the "
        "average of N batches.  [default: 0]",
        help_for={
            "check": "PyTorch's num_batches_tracked before the pass, as for run: it sets only "
            "the running statistics' update (see --momentum).  [default: 0]"
        },
        show_default=False,
        rich_help_panel=LAYER,
    ),
    _option(
        "steps",
        int | None,
        None,
        metavar="K",
        min=1,
        help="Training steps: batches fed one after another through one layer (train mode). "
        "Generated input draws each batch of --shape from the seed in turn.  [default: 1, or "
        "every batch of --input]",
        show_default=False,
        rich_help_panel=INPUT,
        commands=GENERATING,
    ),
    _option(
        "batch_size",
        int | None,
        None,
        metavar="B",
        min=1,
        help="Split --input's samples (axis 0, or 1 with --channel-axis 0) into batches of "
        "this many, one per step.  [default: the whole input, or what --steps implies]",
        show_default=False,
        rich_help_panel=INPUT,
        commands=GENERATING,
    ),
    _option(
        "weight",
        str,
        "ones",
        metavar="VECTOR",
        help=f"Weight (gamma): {VECTOR_FORMS}.",
        rich_help_panel=LAYER,
    ),
    _option(
        "bias",
        str,
        "zeros",
        metavar="VECTOR",
        help="Bias (beta), in the forms of --weight.",
        rich_help_panel=LAYER,
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
        metavar="MODE",
        help="train: normalize with batch statistics and update the running ones; eval: "
        "normalize with the running statistics.",
        rich_help_panel=LAYER,
    ),
    _option(
        "running_mean",
        str | None,
        None,
        metavar="VECTOR",
        help="Running mean before the pass, in the forms of --weight.  [default: zeros]",
        show_default=False,
        rich_help_panel=LAYER,
    ),
    _option(
        "running_var",
        str | None,
        None,
        metavar="VECTOR",
        help="Running variance before the pass, in the forms of --weight.  [default: ones]",
        show_default=False,
        rich_help_panel=LAYER,
    ),
    _option(
        "save_input",
        str | None,  # parsed in build_request: pathlib would drop a trailing '/'
        None,
        metavar="PATH",
        help="Write the inspected tensor to this .npy file (in the --channel-axis layout).",
        rich_help_panel=FILES,
        commands=GENERATING,
    ),
    _option(
        "save_output",
        str | None,  # as --save-input
        None,
        metavar="PATH",
        help="Write PyTorch's output to this .npy file (every step's, in the --channel-axis "
        "layout).",
        rich_help_panel=FILES,
        commands=GENERATING,
    ),
    _option(
        "force",
        bool,
        False,
        "--force",
        help="Let --save-input/--save-output overwrite existing files.",
        rich_help_panel=FILES,
        commands=GENERATING,
    ),
]
# What an option a command does not take stands at (the same as not giving it).
_DEFAULTS = {option.name: option.default for option in SHARED_OPTIONS}


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


def _given(values: dict[str, Any]) -> frozenset[str]:
    """The options given on the command line, as their names: those whose default is None and
    that have a value, and the rest where they differ from the default."""
    given = set()
    for name, value in values.items():
        default = _DEFAULTS[name]
        if (value is not None) if default is None else (value != default):
            given.add("--" + name.replace("_", "-"))
    return frozenset(given)


def _save_path(option: str, text: str | Path | None) -> Path | None:
    """A save option's path, refused if it can only name a directory (parse_output_path)."""
    return None if text is None else parse_output_path(option, str(text))


def build_request(command: str = "run", **values: Any) -> InspectRequest:
    """Parse the shared options (keyword arguments named as in SHARED_OPTIONS; those missing
    stand at their defaults) into a request for ``command``; raises OptionError on a malformed
    one."""
    values = {**_DEFAULTS, **values}
    given = _given(values)
    shape, input, affine = values["shape"], values["input"], values["affine"]
    offset, scale, mode = values["offset"], values["scale"], values["mode"]
    weight, bias = values["weight"], values["bias"]
    running_mean = "zeros" if values["running_mean"] is None else values["running_mean"]
    running_var = "ones" if values["running_var"] is None else values["running_var"]
    steps, batch_size = values["steps"], values["batch_size"]
    seed = 0 if values["seed"] is None else values["seed"]
    if not 0 <= seed < 2**63:  # JSON readers that take integers as int64 must read it back
        raise OptionError(f"--seed {seed}: must lie in 0 to 2**63 - 1")
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
    tracked = values["num_batches_tracked"]
    if tracked is not None and not 0 <= tracked <= MAX_TRACKED:
        raise OptionError(
            f"--num-batches-tracked {tracked}: must lie in 0 to 2**62 (PyTorch's counter is an "
            "int64 that counts up from it)"
        )
    if not affine and (weight != "ones" or bias != "zeros"):
        raise OptionError(
            "--weight and --bias have no effect with --no-affine; drop one or the other"
        )
    if batch_size is not None and input is None:
        raise OptionError(
            "--batch-size splits --input's samples; a generated tensor's batch size is the "
            "first size of --shape"
        )
    if mode == Mode.eval and ((steps or 1) > 1 or batch_size is not None):
        raise OptionError(
            "--steps and --batch-size feed training batches, but eval mode never updates the "
            "running statistics; drop them, or use --mode train"
        )
    convention, dtype = values["convention"], values["dtype"]
    rules = CONVENTIONS[convention.value]
    eps = values["eps"]
    request = InspectRequest(
        shape=parse_shape(shape, values["channel_axis"]) if shape is not None else None,
        seed=seed,
        input_path=input,
        eps=rules.eps_default if eps is None else check_eps(eps, rules.display, rules.eps_default),
        momentum=resolve_momentum(values["momentum"], rules),
        affine=affine,
        mode=mode.value,
        vectors={
            "--weight": parse_vector_spec("--weight", weight),
            "--bias": parse_vector_spec("--bias", bias),
            "--running-mean": parse_vector_spec("--running-mean", running_mean),
            "--running-var": parse_vector_spec("--running-var", running_var),
        },
        save_input=_save_path("--save-input", values["save_input"]),
        save_output=_save_path("--save-output", values["save_output"]),
        force=values["force"],
        dtype=dtype.value if dtype is not None else None,
        offset=offset,
        scale=scale,
        convention=rules,
        steps=steps,
        batch_size=batch_size,
        num_batches_tracked=tracked or 0,
        channel_axis=values["channel_axis"],
        given=given,
    )
    return dataclasses.replace(request, notices=option_notices(request, command))


def for_check(
    request: InspectRequest,
    atol: float | None,
    rtol: float | None,
    compared: frozenset[str] = frozenset(),
) -> InspectRequest:
    """The request for ``check``; refuse what it cannot compare. ``compared``: the options of
    their buffers given (--their-running-mean, ...), which make the update's options count
    (option_effects)."""
    if request.input_path is None:
        raise OptionError(
            "check needs --input: the tensor your batch norm was given, as .npy (a generated "
            "tensor can be saved first with bninspect run --save-input x.npy)"
        )
    for name, value in (("--atol", atol), ("--rtol", rtol)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise OptionError(f"{name} {short(value)}: must be a finite number >= 0")
    if compared:
        request = dataclasses.replace(request, notices=option_notices(request, "check", compared))
    return request


def for_stats_only(request: InspectRequest) -> InspectRequest:
    """The request, streaming statistics only; refuse what needs PyTorch's output."""
    if request.save_output is not None:
        raise OptionError(
            "--save-output needs PyTorch's output, which --stats-only does not compute; drop one"
        )
    request = dataclasses.replace(request, stats_only=True)
    return dataclasses.replace(request, notices=option_notices(request, "run"))


def with_inspect_options(command_name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a typer command the shared options that ``command_name`` takes; it receives them as
    ``request: InspectRequest`` after its own parameters."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [
            p
            for p in inspect.signature(command, eval_str=True).parameters.values()
            if p.name != "request"
        ]
        taken = [o.parameter(command_name) for o in SHARED_OPTIONS if command_name in o.commands]
        taken_names = [p.name for p in taken]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> Any:
            shared = {name: kwargs.pop(name) for name in taken_names}
            return command(request=build_request(command_name, **shared), **kwargs)

        parameters = own + taken
        wrapper.__signature__ = inspect.Signature(parameters)  # what typer reads the options from
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate
