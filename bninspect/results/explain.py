"""The result of ``bninspect explain``: one output element derived step by step, PyTorch's value
beside it, and the optional --precision and --against reports."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bninspect.results.common import (
    NOT_ASKED,
    Comparison,
    InputInfo,
    Number,
    Settings,
    Step,
    Undefined,
    Verdict,
)
from bninspect.results.grad import GradExplain


@dataclass(frozen=True)
class PrecisionStep:
    """One step of PyTorch's arithmetic for an element: its value as PyTorch holds it, the
    exact value, and how far this step's rounding moved y."""

    name: str
    how: str  # how PyTorch computes it: the operation and its precision
    torch: float  # as PyTorch holds it (emulated)
    reference: float  # the same quantity without rounding (float64)
    effect_on_y: float  # signed, in ULPs of the dtype at the channel's scale


@dataclass(frozen=True)
class PrecisionReport:
    """``explain --precision``: PyTorch's CPU kernel redone in its own arithmetic.

    The effects of the steps add up to emulated - the reference y. ``bit_exact`` says whether the
    emulation reproduced PyTorch's y; if not, ``difference_ulps`` says by how much and
    ``path`` why (which kernel path, and whether it is emulated exactly).
    """

    path: str  # the kernel path followed, from torch_cpu_emulation
    claim: str  # how closely the emulation follows PyTorch on this dtype and path
    cpu_capability: str  # the vector kernel torch used ("AVX512", "AVX2", "DEFAULT")
    threads: int  # torch's intra-op threads
    fma: bool  # whether the kernel rounds a * b + c once
    scale: float  # the channel's output scale (as y.scale): the unit of effect_on_y
    emulation: tuple[PrecisionStep, ...]  # PyTorch's arithmetic, step by step
    emulated: float  # y as the emulation computes it
    torch: float  # y as PyTorch computed it
    bit_exact: bool
    difference_ulps: float  # (emulated - torch) in ULPs of the dtype at torch


@dataclass(frozen=True)
class ImpliedStep:
    """A quantity of the derivation beside the value their output implies for it, solving
    backwards from their y and assuming every earlier step right."""

    name: str
    reference: Number
    implied: Number
    note: str | None = None


@dataclass(frozen=True)
class AgainstReport:
    """``explain --against`` or ``--against-value``: their value for the element, and where the
    steps would have to differ to produce it."""

    path: str | Undefined  # their output file; undefined for a value typed with --against-value
    theirs: Number
    abs_error: Number
    ulp_error_at_scale: Number  # in ULPs of the input dtype at the channel's scale
    implied: tuple[ImpliedStep, ...]
    conclusion: str  # one sentence for people: which step parts, or which mistake it is
    # a typed value: the unit of its last digit (1e-4 for 0.0142), and abs_error in those units
    digit_unit: Number = Undefined("a value from a file is exact")
    digit_error: Number = Undefined("a value from a file is exact")


@dataclass(frozen=True)
class ExplainResult:
    """Everything ``bninspect explain`` reports for one output element: the derivation, then
    PyTorch's y beside the reference y. ``running_buffers`` compares the element's channel's
    running buffers in train mode (empty in eval mode)."""

    command: ClassVar[str] = "explain"
    verdict_statuses: ClassVar[tuple[str, ...]] = (
        "exact",
        "within-rounding",
        "differs",
        "not-compared",
    )

    # exact: PyTorch's y is the reference correctly rounded; within-rounding/differs: within
    # rounding of it at the channel's scale, or not; not-compared: PyTorch could not run
    verdict: Verdict
    input: InputInfo
    settings: Settings
    torch_version: str | Undefined
    index: tuple[int, ...]
    channel: int
    x: float
    derivation: tuple[Step, ...]
    # y: PyTorch's output element beside the reference; its scale is the channel's output scale
    y: Comparison
    running_buffers: tuple[Comparison, ...]  # the channel's, after the pass (train mode only)
    precision: PrecisionReport | Undefined  # with --precision
    against: AgainstReport | Undefined  # with --against
    torch_module: str  # what PyTorch's module ran as, or why it could not
    training_step: int  # the training step whose batch holds the element (1 in eval mode)
    grad: GradExplain | Undefined = Undefined(f"{NOT_ASKED}: --grad")  # the backward pass
