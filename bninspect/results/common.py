"""What every result object shares: undefined values and their reasons, the input and the
layer's settings, a value beside its reference, and the table metadata of a field."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Bump when a field is renamed or removed or its meaning changes; adding a field keeps the version.
SCHEMA_VERSION = 2  # 2: one name per quantity across commands (docs/json.md lists the renames)


@dataclass(frozen=True)
class Undefined:
    """A value that does not exist mathematically (e.g. the unbiased variance of one value).

    JSON writes it as ``null`` and records ``reason`` under ``null_reasons``; tables show "n/a".
    """

    reason: str

    @property
    def asked_for(self) -> bool:
        """False for an optional part the user did not ask for (its reason says how to)."""
        return not self.reason.startswith(NOT_ASKED)


NOT_ASKED = "not asked for"
Number = float | Undefined


def column(label: str, group: str, verbose: bool = False) -> dict[str, Any]:
    """Field metadata: show this field in table ``group`` under the header ``label``; with
    ``verbose``, only under --verbose (a measure that supports no verdict, or alarms on correct
    results, such as ULPs at an output's own magnitude near 0)."""
    return {"label": label, "group": group, "verbose": verbose}


@dataclass(frozen=True)
class Verdict:
    """The answer, first: what every command prints before anything else, and alone with -q.

    ``status`` is a short lowercase word a script can branch on (each command's schema lists its
    values, e.g. check's "pass"/"fail"); ``summary`` is one or two lines for people, complete on
    their own: what was found, where, and what to do about it.
    """

    status: str
    summary: tuple[str, ...]


@dataclass(frozen=True)
class InputInfo:
    """Where the inspected tensor came from and what it is."""

    source: str  # "generated" or "file"
    shape: tuple[int, ...]
    dtype: str  # the dtype PyTorch ran in, e.g. "float32"
    seed: int | None  # the generator's seed, for generated input
    path: str | None  # the .npy file, for loaded input
    sha256: str | Undefined | None  # of the file's bytes, for loaded input
    notices: tuple[str, ...] = ()  # conversions applied on loading, e.g. int64 -> float32
    offset: float | None = None  # generated input: offset + scale * standard normal
    scale: float | None = None
    channel_axis: int = 1  # the axis of shape that holds the channels (indices are in this layout)


@dataclass(frozen=True)
class Settings:
    """The layer as configured. Vector options keep the text the user gave ("ones", "0.5,0.2",
    "w.npy"); the resolved per-channel values are in each channel's report."""

    module: str  # "BatchNorm1d", "BatchNorm2d" or "BatchNorm3d"
    mode: str  # "train" or "eval"
    eps: float  # as used: after the convention's floor, if any
    momentum: Number  # in the convention's meaning; undefined for --momentum none
    affine: bool
    # the per-channel vectors as given on the command line ("ones", "0.5,0.2", "w.npy"); their
    # values are in each channel's report under the plain names
    weight_given: str
    bias_given: str
    running_mean_given: str  # the buffer before the first step
    running_var_given: str
    convention: str  # whose rules the reference follows: "pytorch", "keras", ...
    training_steps: int  # batches fed one after another; 1 in eval mode
    batch_size: int  # samples per batch (axis 0)
    torch_momentum: Number  # PyTorch's momentum for the same rule
    notices: tuple[str, ...] = ()  # e.g. eps raised to the convention's floor
    num_batches_tracked: int = 0  # PyTorch's counter before the first step


# Why --momentum none has no number.
CUMULATIVE = (
    "--momentum none: PyTorch's cumulative average, step k after --num-batches-tracked N weighs "
    "the batch 1/(N + k)"
)


@dataclass(frozen=True)
class Comparison:
    """A value PyTorch produced next to the float64 reference for it."""

    name: str
    reference: Number
    reference_rounded: Number  # the reference rounded to the dtype: the best PyTorch could return
    torch: Number
    torch_hex: str | Undefined  # float.hex of PyTorch's value: its exact bits
    abs_error: Number
    scale: Number  # y: the channel's scale; running_mean: its update's; running_var: itself
    ulp_error_at_scale: Number  # in ULPs of the dtype at ``scale``: the headline
    ulp_error: Number  # in ULPs of the dtype at the reference value
    correctly_rounded: bool | Undefined  # torch == reference_rounded: equal to the last bit
    # what a correct implementation in the dtype can leave here, in the same ULPs at ``scale``:
    # above it the value differs beyond rounding
    bound_ulps: Number = Undefined("no bound judged for this value")


@dataclass(frozen=True)
class Step:
    """One line of a derivation (explain's, forward or backward): ``name = formula`` with the
    numbers put in, and its value."""

    name: str
    formula: str
    substitution: str  # the formula with the actual numbers, rounded for people
    value: Number  # full precision
    note: str | None = None
    rule: str | None = None  # the convention's rule applied here, where frameworks differ
    differs_from_pytorch: str | None = None  # what PyTorch does instead, where it differs
