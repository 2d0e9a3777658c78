"""The result objects of ``bninspect check`` and of ``explain --against``: someone else's batch
norm output compared with the reference, and the known mistakes that would explain it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from bninspect.results.common import InputInfo, Number, Settings, Undefined, Verdict, column

CHANNELS = "Your output vs the reference, per channel"
# Appended to a channel's pattern when some of its elements are NaN or infinite where the
# reference is not (or the other way round): the fit saw only the finite pairs.
WHERE_FINITE = " where finite"


@dataclass(frozen=True)
class OutputInfo:
    """The output file being checked."""

    path: str
    sha256: str
    shape: tuple[int, ...]
    dtype: str  # as stored in the file; compared as float64, exactly
    notices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tolerance:
    """What counts as a match: |theirs - reference| <= atol + rtol * |reference|."""

    atol: float  # derived: the largest channel's bound (per_channel_atol holds each)
    rtol: float
    source: str  # "derived from float32 and the data's conditioning ...", or "given"
    # Derived (no --atol/--rtol): per channel, the error a correct implementation in the dtype
    # can leave on this data (check/tolerance.py, docs/check.md "Tolerance"); else None
    per_channel_atol: tuple[Number, ...] | None = None
    # --allow-nonfinite-mismatch: an element NaN or infinite on one side only is not counted
    allow_nonfinite_mismatch: bool = False


@dataclass(frozen=True)
class ElementError:
    """One element of their output beside the reference (and PyTorch's value)."""

    index: tuple[int, ...]
    theirs: Number
    reference: Number
    torch: Number
    abs_error: Number
    rel_error: Number  # abs_error / |reference|
    ulp_error: Number  # in ULPs of the input dtype at the reference value
    # in ULPs of the input dtype at the element's channel's scale (the headline measure)
    ulp_error_at_scale: Number = Undefined("not computed")


@dataclass(frozen=True)
class ChannelCheck:
    """One channel: how far their output is, and the shape of the error.

    ``pattern``: "exact" (within what a correct implementation can leave: bound_ulps), "scale"
    (theirs ~ factor * reference), "shift" (theirs ~ reference + offset), "scale and shift", or
    "noise" (no affine relation explains the error), each with WHERE_FINITE appended when NaN/Inf
    elements disagree with the reference; "not finite" when no pair is finite. ``factor`` and
    ``offset`` are the least-squares fit theirs ~ factor * reference + offset over the finite
    pairs.
    """

    channel: int
    max_abs_error: Number = field(metadata=column("max |err|", CHANNELS))
    max_ulp_error_at_scale: Number = field(metadata=column("max ULP\nat scale", CHANNELS))
    mismatches: int = field(metadata=column("mismatches", CHANNELS))
    non_finite: int = field(metadata=column("NaN/Inf\nof yours", CHANNELS))  # where ref finite
    pattern: str = field(metadata=column("error\nlooks like", CHANNELS))
    factor: Number  # shown within the pattern's cell in the table
    offset: Number
    # the known mistake (or "stated settings") that explains this channel
    explained_by: str | Undefined = field(metadata=column("explained by", CHANNELS))
    # What a correct implementation in the dtype can leave on this channel, in ULPs at its
    # scale (check/tolerance.py): the diagnosis' "within rounding"
    bound_ulps: Number = Undefined("not computed")


@dataclass(frozen=True)
class HistogramBin:
    """Elements whose |error| lies in [lower, upper); lower 0 and upper 0 for exact ones."""

    lower: float
    upper: float
    count: int


@dataclass(frozen=True)
class SuggestedTolerance:
    """The smallest tolerances that would make the output pass, one knob at a time: against
    PyTorch's output, the reference rounded to the dtype, and check's own float64 reference."""

    atol: Number  # with rtol at its value
    rtol: Number  # with atol at its value
    # The line to paste, with ``mine`` your array (numpy.load) and ``expected`` as said below.
    assert_close: str
    expected: str  # PyTorch's output (which module, mode, dtype), or the rounded reference and why


@dataclass(frozen=True)
class Hypothesis:
    """One known mistake tried against their output: the error that remains under it, in ULPs
    of ``precision`` at each channel's scale (max over the tensor), and whether that is at the
    level of rounding while the stated settings' error is not (and, for a fitted mistake, with
    fitted values the mistake can produce)."""

    name: str
    description: str
    precision: str  # the dtype whose ULPs measure it
    max_ulp_error_at_scale: Number  # in ULPs of ``precision`` at each channel's scale
    explains: bool
    detail: str | None = None
    fitted: bool = False  # estimated from their output (ranks after the mistakes that are not)
    eps_per_channel: tuple[Number, ...] | None = None  # other-eps: each channel's estimate
    # The error left over what a correct implementation can leave, the worst channel's ratio:
    # at most 1 where the mistake explains every channel
    max_over_bound: Number = Undefined("not computed")


@dataclass(frozen=True)
class ChannelGroup:
    """Channels one explanation fits: a mistake's name, "stated settings", or undefined for
    the channels no known mistake explains."""

    name: str | Undefined
    description: str
    channels: tuple[int, ...]


@dataclass(frozen=True)
class Diagnosis:
    """The catalogue of known mistakes, best first. ``conclusion``: one line fit to be check's
    verdict ("FAIL: normalizes with the unbiased variance ... on all 16 channels; fix that, not
    the tolerance"); ``detail``: the evidence in a sentence; ``groups``: which explanation fits
    which channels (one group when one explanation fits all); ``note``: for an output within
    the bound, a known mistake that fits it markedly better."""

    explained: bool
    conclusion: str
    hypotheses: tuple[Hypothesis, ...]
    detail: str = ""
    groups: tuple[ChannelGroup, ...] = ()
    note: str | Undefined = Undefined("no known mistake fits the output markedly better")


@dataclass(frozen=True)
class NonFinite:
    """Elements NaN or infinite on one side only: where the reference is and theirs is not
    (or is another one), and where theirs is and the reference is finite; a few of their
    indices, and why they count (or do not) as mismatches."""

    reference_only: int
    theirs_only: int
    indices: tuple[tuple[int, ...], ...]
    counted: bool  # counted as mismatches (not --allow-nonfinite-mismatch)
    reason: str


@dataclass(frozen=True)
class BufferComparison:
    """One running buffer after the pass, theirs against the reference's update: the largest
    error in ULPs of the dtype at each channel's scale (running_mean: its update's terms;
    running_var: itself), what a correct update can leave there, and the known buffer mistake
    that explains it (or why none does)."""

    name: str  # "running_mean" or "running_var"
    path: str
    reference: tuple[Number, ...]
    theirs: tuple[Number, ...]
    max_ulp_error_at_scale: Number
    bound_ulps: Number  # the largest error a correct update can leave, in the same ULPs
    passed: bool
    # the buffer mistake that explains it, with its channels where it is not all of them
    explained_by: str | Undefined
    detail: str


@dataclass(frozen=True)
class TrackedComparison:
    """Their num_batches_tracked after the pass against the reference's: integers, equal or
    not."""

    reference: int
    theirs: int
    passed: bool
    detail: str


@dataclass(frozen=True)
class BufferCheck:
    """Their running buffers after the pass against the reference's update: ``conclusion``
    one line; ``groups`` which explanation (a buffer mistake, "stated settings", or none)
    fits which channels."""

    passed: bool
    conclusion: str
    buffers: tuple[BufferComparison, ...]
    hypotheses: tuple[Hypothesis, ...]
    groups: tuple[ChannelGroup, ...] = ()
    num_batches_tracked: TrackedComparison | Undefined = Undefined(
        "not given: --their-num-batches-tracked"
    )
    # a known buffer mistake (one, or one per group of channels) explains every channel that
    # differs from the stated update
    explained: bool = False


@dataclass(frozen=True)
class CheckResult:
    """Everything ``bninspect check`` reports."""

    command: ClassVar[str] = "check"
    verdict_statuses: ClassVar[tuple[str, ...]] = ("pass", "fail")

    verdict: Verdict  # pass: every element within the tolerance (exit 0); fail: exit 3
    input: InputInfo
    output: OutputInfo
    settings: Settings
    torch_version: str | Undefined
    torch_module: str  # what PyTorch's module ran as beside the reference, or why it did not run
    tolerance: Tolerance
    passed: bool
    elements: int
    mismatches: int
    max_ulp_error_at_scale: Number  # in ULPs at the channel's scale: the headline
    max_abs_error: Number
    # the elements where |err|, the relative error and the ULP error at the element's own
    # magnitude are largest
    worst_by_abs_error: ElementError | Undefined
    worst_by_rel_error: ElementError | Undefined
    worst_by_ulp_error: ElementError | Undefined
    worst: tuple[ElementError, ...]  # the --top largest absolute errors
    channels: tuple[ChannelCheck, ...]
    suggested: SuggestedTolerance | Undefined
    histogram: tuple[HistogramBin, ...]
    # PyTorch's own output against the reference, in the same ULPs: what a correct output leaves
    torch_max_ulp_error_at_scale: Number
    diagnosis: Diagnosis
    # What a correct implementation can leave, in ULPs at the channel's scale: the largest over
    # the channels (each channel's in channels[].bound_ulps)
    max_bound_ulps: Number = Undefined("not computed")
    non_finite: NonFinite | Undefined = Undefined("no element is NaN or infinite on one side only")
    buffers: BufferCheck | Undefined = Undefined(
        "not asked for: give --their-running-mean, --their-running-var or "
        "--their-num-batches-tracked"
    )
