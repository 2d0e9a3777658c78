"""The result objects of the backward pass: ``run --grad`` (per channel), ``explain --grad`` (one
element derived step by step) and ``check --grad-input`` (their gradients against the reference,
the mistake named). Field names follow the JSON vocabulary: grad_output (dy), grad_input (dx),
grad_weight, grad_bias, x_hat, ulp_error_at_scale, ..."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bninspect.results.check import NonFinite, SuggestedTolerance, Tolerance
from bninspect.results.common import (
    Comparison,
    InputInfo,
    Number,
    Settings,
    Step,
    Undefined,
    Verdict,
)

# The CS231n relative error's usual reading (the course's gradient-check notes).
CS231N_WRONG, CS231N_GOOD = 1e-2, 1e-7
CS231N_FORMULA = "max |a - b| / max(1e-8, |a| + |b|), elementwise"
CS231N_CAVEAT = (
    "it divides by the gradient's own size, so a near-zero gradient reads as wrong however "
    "small its error, and a low-precision dtype cannot reach 1e-7; ULPs at the channel's "
    "scale do not mislead this way"
)


@dataclass(frozen=True)
class GradOutputInfo:
    """Where dy came from: a .npy file, or standard normal draws from a seed."""

    source: str  # "generated" or "file"
    # generated: numpy.random.default_rng([seed, stream]).standard_normal in float32, then the
    # dtype (stream 5: the input draws from default_rng(seed), 'random' vectors from 1 to 4)
    seed: int | None
    stream: int | None
    path: str | None
    sha256: str | None
    dtype: str  # as PyTorch received it (the input's dtype)
    notices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cs231nError:
    """The relative error students are told to trust, with its usual reading:
    above 1e-2 "wrong", below 1e-7 "good", between "suspect"."""

    rel_error: Number
    reading: str  # "good", "suspect", "wrong", or "n/a"


@dataclass(frozen=True)
class GradChannel:
    """One channel of ``run --grad``: the reference sums the gradients are made of, the reference
    dweight and dbias, autograd's beside them, and autograd's errors in ULPs of the dtype at the
    channel's scale for each gradient (see grad/reference.py for the scales)."""

    channel: int
    count: int
    sum_grad_output: float  # sum dy
    sum_grad_output_x_hat: float  # sum dy * x_hat
    grad_weight: Number  # reference dweight = sum dy * x_hat; undefined without affine
    grad_bias: Number  # reference dbias = sum dy
    grad_weight_torch: Number
    grad_bias_torch: Number
    grad_input_scale: float
    grad_weight_scale: float
    grad_bias_scale: float
    grad_input_max_abs_error: Number
    grad_input_ulp_error_at_scale: Number
    grad_weight_ulp_error_at_scale: Number
    grad_bias_ulp_error_at_scale: Number
    grad_input_cs231n: Cs231nError  # autograd's dx against the reference, this channel
    # What a correct backward in the dtype can leave on this channel, in the same ULPs at each
    # gradient's scale (grad/tolerance.py): autograd's error is rounding within it
    grad_input_bound_ulps: Number
    grad_weight_bound_ulps: Number
    grad_bias_bound_ulps: Number


@dataclass(frozen=True)
class GradRun:
    """``run --grad``: autograd's backward against the float64 reference, per channel."""

    # agrees/differs: autograd's dx, dweight, dbias within rounding of the reference or not;
    # not-compared: PyTorch could not run (run's statuses: one Verdict schema per document)
    verdict: Verdict
    grad_output: GradOutputInfo
    mode: str
    channels: tuple[GradChannel, ...]  # each with its bounds: channels[].grad_*_bound_ulps
    max_grad_input_ulp_error_at_scale: Number
    max_grad_weight_ulp_error_at_scale: Number
    max_grad_bias_ulp_error_at_scale: Number
    cs231n: dict[str, Cs231nError]  # per gradient, over the whole tensor
    cs231n_formula: str
    cs231n_caveat: str
    torch_version: str | Undefined


@dataclass(frozen=True)
class DxTerm:
    """One of the three terms dx is the sum of, as the staged derivation and the compact
    formula each give it (equal in exact arithmetic)."""

    name: str  # "direct", "through the variance", "through the mean"
    staged_formula: str
    staged: Number
    compact_formula: str
    compact: Number


@dataclass(frozen=True)
class GradPrecisionStep:
    """One step of PyTorch's CPU backward for the element, as PyTorch holds it (emulated) and
    without rounding (as explain --precision's PrecisionStep)."""

    name: str
    how: str
    torch: float  # as PyTorch holds it (emulated)
    reference: float  # the same quantity without rounding (float64)


@dataclass(frozen=True)
class GradValues:
    """dx at the element, and dweight and dbias of its channel."""

    grad_input: float
    grad_weight: Number
    grad_bias: Number


@dataclass(frozen=True)
class GradPrecision:
    """``explain --grad --precision``: PyTorch's CPU backward kernel redone in its arithmetic
    for the element: its sums, k, grad_mean, and dx, dweight, dbias, and whether the
    emulation matched autograd bit for bit."""

    path: str
    claim: str
    cpu_capability: str
    threads: int
    emulation: tuple[GradPrecisionStep, ...]  # PyTorch's arithmetic, step by step
    emulated: GradValues  # as the emulation computes them
    torch: GradValues  # as autograd computed them
    bit_exact: bool  # emulated == torch, all three


@dataclass(frozen=True)
class GradExplain:
    """``explain --grad``: dx at the element, dweight and dbias of its channel, derived step by
    step both ways, the three terms of dx side by side, then autograd's values."""

    verdict: Verdict
    grad_output: GradOutputInfo
    index: tuple[int, ...]
    channel: int
    mode: str
    count: int
    x: float
    x_hat: float
    grad_output_value: float  # dy at the element
    derivation: tuple[Step, ...]  # staged, through the graph
    compact_derivation: tuple[Step, ...]  # the compact formula
    terms: tuple[DxTerm, ...]  # empty in eval mode, where dx has one term
    comparisons: tuple[Comparison, ...]  # dx, dweight, dbias
    cs231n: Cs231nError  # of autograd's dx at the element
    precision: GradPrecision | Undefined
    torch_version: str | Undefined


@dataclass(frozen=True)
class GradElement:
    """One element of their gradient beside the reference (and autograd's)."""

    index: tuple[int, ...]
    theirs: Number
    reference: Number
    torch: Number
    abs_error: Number
    rel_error: Number
    ulp_error: Number
    ulp_error_at_scale: Number


@dataclass(frozen=True)
class GradChannelCheck:
    """One channel of one of their gradients."""

    channel: int
    max_abs_error: Number  # over the elements finite on both sides
    ulp_error_at_scale: Number
    mismatches: int
    scale: float
    # What a correct backward in the dtype can leave here, in ULPs at the scale (the derived
    # tolerance's per_channel_atol in these units; grad/tolerance.py)
    bound_ulps: Number
    non_finite: int  # elements NaN or infinite in theirs where the reference is finite


@dataclass(frozen=True)
class GradientCheck:
    """One of their gradients (grad_input, grad_weight or grad_bias) against the reference."""

    name: str
    path: str
    sha256: str
    dtype: str
    tolerance: Tolerance  # derived per channel unless --atol/--rtol given
    passed: bool
    elements: int
    mismatches: int  # non-finite disagreements included
    max_abs_error: Number  # over the elements finite on both sides (non_finite: the others)
    max_ulp_error_at_scale: Number
    torch_max_ulp_error_at_scale: Number  # autograd's own, for scale
    cs231n: Cs231nError
    worst: tuple[GradElement, ...]
    channels: tuple[GradChannelCheck, ...]
    suggested: SuggestedTolerance | Undefined
    # the largest of channels[].bound_ulps: what a correct backward can leave
    max_bound_ulps: Number
    # elements NaN or infinite on one side only (check's NonFinite: counts, first indices)
    non_finite: NonFinite | Undefined


@dataclass(frozen=True)
class GradHypothesis:
    """One known backward mistake tried against their gradients: the error left under it, in
    ULPs of the dtype at each channel's scale, per gradient given and the max over them, over
    the elements of theirs that are finite. ``over_bound``: per gradient, the worst channel's
    error over what a correct implementation of the mistake can leave (at most 1: within
    rounding). ``explains`` lists the gradients it explains: wrong under the stated formulas,
    within rounding under the mistake, while every gradient right under the stated formulas
    stays right under it. ``form``: which way of writing the mistake fits best, where the
    staged backward and the compact formula differ under it."""

    name: str
    description: str
    max_ulp_error_at_scale: Number
    left: dict[str, Number]  # per gradient given
    explains: tuple[str, ...]
    over_bound: dict[str, Number]
    form: str | Undefined


@dataclass(frozen=True)
class GradDiagnosis:
    """The catalogue tried, best first. ``explained``: every gradient that is wrong has a
    mistake explaining it; ``explained_by`` names it per gradient (or why none)."""

    explained: bool
    conclusion: str
    stated: dict[str, Number]  # per gradient given: the error under the stated formulas
    explained_by: dict[str, str | Undefined]
    hypotheses: tuple[GradHypothesis, ...]
    # per gradient given: the stated formulas' error over the bound (above 1: wrong)
    stated_over_bound: dict[str, Number]


@dataclass(frozen=True)
class GradCheckResult:
    """Everything ``bninspect check --grad-input`` reports."""

    # A document of its own beside check's forward one (its schema: check-grad.schema.json)
    command: ClassVar[str] = "check-grad"
    verdict_statuses: ClassVar[tuple[str, ...]] = ("pass", "fail")

    verdict: Verdict  # pass: every gradient given within tolerance; fail: not
    input: InputInfo
    settings: Settings
    grad_output: GradOutputInfo
    torch_version: str | Undefined
    torch_module: str  # what PyTorch's module ran as, or why it could not
    passed: bool
    gradients: tuple[GradientCheck, ...]
    diagnosis: GradDiagnosis
