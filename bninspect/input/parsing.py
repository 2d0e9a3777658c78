"""Turn option strings into plain data. No arrays, no files: every function here is pure.

Each error names the option, the text given and the form expected, so the CLI can print it as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Literal

from bninspect.errors import OptionError
from bninspect.input.layout import shape_forms
from bninspect.text import shape as shape_of
from bninspect.text import short

MIN_RANK, MAX_RANK = 2, 5
SHAPE_FORMS = shape_forms(1)

VectorKind = Literal["ones", "zeros", "random", "list", "file"]


@dataclass(frozen=True)
class VectorSpec:
    """How a per-channel vector (weight, bias, running mean or variance) was asked for.

    ``text`` is the option exactly as given, kept for reports; ``values`` is set for a comma list,
    ``path`` for a .npy file.
    """

    kind: VectorKind
    text: str
    values: tuple[float, ...] = ()
    path: str | None = None


def _split_ints(option: str, text: str, what: str, separators: str = ",") -> tuple[int, ...]:
    """The integers of ``text``, separated by any of ``separators``; ``what`` says in messages
    what to give instead."""
    unified = text
    for separator in separators[1:]:
        unified = unified.replace(separator, separators[0])
    values = []
    for position, part in enumerate(p.strip() for p in unified.split(separators[0])):
        if part == "":
            raise OptionError(f"{option} '{text}': entry {position} is empty; give {what}")
        try:
            values.append(int(part))
        except ValueError:
            raise OptionError(
                f"{option} '{text}': entry {position} ('{part}') is not an integer; give {what}"
            ) from None
    return tuple(values)


def parse_shape(text: str, channel_axis: int = 1) -> tuple[int, ...]:
    """Parse ``--shape`` ("1x2x3x4", as the tool prints shapes, or "1,2,3,4") into a tuple of
    positive sizes with rank 2 to 5 (channels on ``channel_axis``, for the messages)."""
    shape = _split_ints("--shape", text, "sizes like 1x2x3x4 or 1,2,3,4", "xX,")
    for position, size in enumerate(shape):
        if size <= 0:
            raise OptionError(
                f"--shape '{text}': size {size} at position {position} is not positive; "
                "every size must be at least 1"
            )
    if not MIN_RANK <= len(shape) <= MAX_RANK:
        raise OptionError(
            f"--shape '{text}' has rank {len(shape)}; batch norm takes rank 2 to 5, "
            f"{shape_forms(channel_axis)}, with channels on axis {channel_axis}"
        )
    return shape


def parse_index(text: str) -> tuple[int, ...]:
    """Parse ``--index`` ("0,0,0,0", negatives allowed) into a tuple of integers."""
    return _split_ints("--index", text, "one integer per axis like 1,2,3,4")


def resolve_index(index: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Check ``index`` against ``shape`` and return it with negative entries counted from the end,
    as numpy does."""
    text = ",".join(map(str, index))
    shape_text = shape_of(shape)
    if len(index) != len(shape):
        raise OptionError(
            f"--index {text} has {len(index)} {'entry' if len(index) == 1 else 'entries'} but "
            f"the input has rank {len(shape)} "
            f"(shape {shape_text}); give {len(shape)} comma-separated integers"
        )
    resolved = []
    for axis, (i, size) in enumerate(zip(index, shape, strict=True)):
        if not -size <= i < size:
            raise OptionError(
                f"--index {text}: entry {axis} is {i} but axis {axis} has size {size}; "
                f"valid range is {-size} to {size - 1}"
            )
        resolved.append(i % size)
    return tuple(resolved)


def parse_vector_spec(option: str, text: str) -> VectorSpec:
    """Parse a per-channel vector option: ``ones``, ``zeros``, ``random``, a comma list of
    numbers, or a path ending in ``.npy``."""
    stripped = text.strip()
    if stripped in ("ones", "zeros", "random"):
        return VectorSpec(kind=stripped, text=stripped)
    if stripped.endswith(".npy"):
        return VectorSpec(kind="file", text=stripped, path=stripped)
    if stripped.endswith((".pt", ".pth", ".ckpt", ".pt2")):
        raise OptionError(
            f"{option} '{text}': a PyTorch file, not a .npy of one value per channel; for a "
            f"model's batch norms run bninspect model --weights {stripped} (with --model to run "
            "a batch)"
        )
    values = []
    for position, part in enumerate(p.strip() for p in stripped.split(",")):
        try:
            value = float(part)
        except ValueError:
            raise OptionError(
                f"{option} '{text}': entry {position} ('{part}') is not a number; give ones, "
                "zeros, random, a comma list of one number per channel, or a .npy file"
            ) from None
        if not math.isfinite(value):
            raise OptionError(
                f"{option} '{text}': entry {position} is {part}; values must be finite"
            )
        values.append(value)
    # Reports show the list as parsed: ' 1 , 2 ' reads back as '1,2'.
    canonical = ",".join(p.strip() for p in stripped.split(","))
    return VectorSpec(kind="list", text=canonical, values=tuple(values))


def parse_output_path(option: str, text: str) -> Path:
    """A path to save a file at, as given: refused if it can only name a directory (it ends
    with '/', or is '.' or '..'), which pathlib would silently drop ('out/' -> 'out')."""
    last = text.rstrip("/").rsplit("/", 1)[-1]
    if text == "" or text.endswith("/") or last in ("", ".", ".."):
        raise OptionError(
            f"{option} '{text}': names a directory, not a file; give a file path, e.g. "
            f"{text.rstrip('/') or '.'}/output.npy"
        )
    return Path(text)


def check_eps(eps: float, who: str = "PyTorch", default: float = 1e-5) -> float:
    """Return ``eps`` if it is finite and not negative (``who``'s default named otherwise)."""
    if not math.isfinite(eps) or eps < 0:
        raise OptionError(
            f"--eps {short(eps)}: must be a finite number >= 0 "
            f"({who}'s default is {short(default)})"
        )
    return eps


def parse_momentum(text: str) -> float | None:
    """Parse ``--momentum``: a number, or ``none`` (PyTorch's cumulative average) as None."""
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise OptionError(
            f"--momentum '{text}': not a number; give a number in [0, 1], or none for "
            "PyTorch's cumulative average"
        ) from None


def check_momentum(
    momentum: float,
    meaning: str = "PyTorch's default 0.1 gives the new batch weight 0.1 in the running statistics",
) -> float:
    """Return ``momentum`` if it lies in [0, 1]; ``meaning`` explains the default otherwise."""
    if not (math.isfinite(momentum) and 0.0 <= momentum <= 1.0):
        raise OptionError(f"--momentum {short(momentum)}: must lie in [0, 1]; {meaning}")
    return momentum


@dataclass(frozen=True)
class TypedValue:
    """A number as the user typed it: its value and the unit of its last digit (1e-4 for
    0.0142, 1 for 12, 1e-5 for 1.20e-3), which says how precisely it was given."""

    value: float
    digit_unit: float


def parse_against_value(text: str) -> TypedValue:
    """Parse ``--against-value``: a finite decimal number, keeping how many digits it has."""
    try:
        decimal = Decimal(text.strip())
    except InvalidOperation:
        raise OptionError(
            f"--against-value '{text}': not a number; give your value for the element, e.g. "
            "-1.1236"
        ) from None
    if not (decimal.is_finite() and math.isfinite(float(decimal))):
        raise OptionError(f"--against-value '{text}': must be a finite number")
    return TypedValue(float(decimal), float(Decimal(1).scaleb(decimal.as_tuple().exponent)))
