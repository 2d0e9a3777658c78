"""The result objects: the contract between the core and every output format.

Each command builds one of these; ``json_output`` serializes it field by field and ``table_output``
shows the fields marked with a table label, so the JSON and the table cannot disagree. Nothing
here computes: the core fills in every number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

# Bump when a field is renamed or removed or its meaning changes; adding a field keeps the version.
SCHEMA_VERSION = 1


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


def column(label: str, group: str) -> dict[str, Any]:
    """Field metadata: show this field in table ``group`` under the header ``label``."""
    return {"label": label, "group": group}


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


@dataclass(frozen=True)
class Settings:
    """The layer as configured. Vector options keep the text the user gave ("ones", "0.5,0.2",
    "w.npy"); the resolved per-channel values are in each channel's report."""

    module: str  # "BatchNorm1d", "BatchNorm2d" or "BatchNorm3d"
    mode: str  # "train" or "eval"
    eps: float  # as used: after the convention's floor, if any
    momentum: Number  # in the convention's meaning; undefined for --momentum none
    affine: bool
    weight: str
    bias: str
    running_mean: str  # the buffer's value before the first step
    running_var: str
    convention: str  # whose rules the reference follows: "pytorch", "keras", ...
    steps: int  # training steps (batches fed); 1 in eval mode
    batch_size: int  # samples per batch (axis 0)
    torch_momentum: Number  # PyTorch's momentum for the same rule
    notices: tuple[str, ...] = ()  # e.g. eps raised to the convention's floor


# Why --momentum none has no number.
CUMULATIVE = "--momentum none: PyTorch's cumulative average, step k weighs the batch 1/k"


STATS = "Batch statistics (float64 reference)"
LAYER = "What normalizes; running buffers after the pass"
AGREEMENT = "PyTorch's output vs reference, max per channel"
BUFFERS = "PyTorch's running buffers vs reference"
GAP = "Train/eval gap on this batch"


@dataclass(frozen=True)
class ChannelReport:
    """One channel of ``run``: the reference statistics, its health, and how far PyTorch is
    from the reference.

    ``std`` and ``inv_std`` are what normalizes: sqrt(var_biased + eps) in train mode,
    sqrt(running_var + eps) in eval mode. ``running_mean``/``running_var`` are the buffers after
    the forward pass (updated in train mode, unchanged in eval mode). Errors compare PyTorch with
    the float64 reference: absolute; in ULPs of the dtype at the channel's scale (the headline:
    ``max_scaled_error`` = max |err| / ULP(output_scale)); and in ULPs at each element's own
    reference value (``max_ulp_error``, inflated wherever |y| is far below the scale). The
    running mean's error likewise in ULPs at its update's scale (``running_mean_scaled_error``,
    the headline) and at its own value; the running variance's own value is its scale.
    """

    channel: int
    count: int = field(metadata=column("count", STATS))
    mean: Number = field(metadata=column("mean", STATS))
    var_biased: Number = field(metadata=column("var_biased\n(/N)", STATS))
    var_unbiased: Number = field(metadata=column("var_unbiased\n(/N-1)", STATS))
    nan_count: int = field(metadata=column("NaN", STATS))
    posinf_count: int = field(metadata=column("+Inf", STATS))
    neginf_count: int = field(metadata=column("-Inf", STATS))
    flags: tuple[str, ...] = field(metadata=column("flags", STATS))  # codes of health.LEGEND
    eps_share: Number  # eps / (var + eps) for the variance that normalizes
    mean_to_std: Number  # |mean| / std for the mean and std that normalize
    bits_lost: Number  # log2(mean_to_std) where above 1: output bits x * alpha + beta cancels
    sum_of_squares: Number  # sum of x^2 over the channel
    eps: float = field(metadata=column("eps", LAYER))
    weight: float = field(metadata=column("weight", LAYER))
    bias: float = field(metadata=column("bias", LAYER))
    std: Number = field(metadata=column("std", LAYER))  # sqrt(var + eps), var as normalizes
    inv_std: Number = field(metadata=column("inv_std", LAYER))
    running_mean: Number = field(metadata=column("running\nmean", LAYER))
    running_var: Number = field(metadata=column("running\nvar", LAYER))
    output_scale: Number  # max(largest |reference output|, |weight|): see agreement.channel_scale
    max_scaled_error: Number = field(metadata=column("ULP at\nscale", AGREEMENT))
    max_abs_error: Number = field(metadata=column("|err|", AGREEMENT))
    max_ulp_error: Number = field(metadata=column("ULP\nelementwise", AGREEMENT))
    worst_index: tuple[int, ...] | Undefined  # where the elementwise ULP error is largest
    running_mean_scale: Number  # agreement.running_mean_scale: the update's largest term
    running_mean_abs_error: Number = field(metadata=column("mean\n|err|", BUFFERS))
    running_mean_scaled_error: Number = field(metadata=column("mean ULP\nat scale", BUFFERS))
    running_mean_ulp_error: Number = field(metadata=column("mean ULP\nown value", BUFFERS))
    running_var_abs_error: Number = field(metadata=column("var\n|err|", BUFFERS))
    running_var_ulp_error: Number = field(metadata=column("var ULP\nown value", BUFFERS))
    train_eval_max_gap: Number = field(metadata=column("max\n|y_train - y_eval|", GAP))
    train_eval_mean_gap: Number = field(metadata=column("mean\n|y_train - y_eval|", GAP))
    eval_max_abs_error: Number = field(metadata=column("PyTorch eval\noutput |err|", GAP))


HISTORY = "Running statistics, step by step"
CAFFE_BLOBS = "Caffe's blobs: sums and scale factor"
HISTORY_VS_TORCH = "PyTorch's running buffers vs reference, step by step"


@dataclass(frozen=True)
class StepChannel:
    """One channel after one training step: the batch statistics folded in (the variance of the
    kind the convention stores), the buffers as stored (Caffe: unnormalized sums), the running
    statistics eval mode would use (stored / scale_factor), and PyTorch's buffers beside them."""

    channel: int
    batch_mean: Number = field(metadata=column("batch\nmean", HISTORY))
    batch_var: Number = field(metadata=column("batch var\n(stored kind)", HISTORY))
    stored_mean: Number = field(metadata=column("stored\nmean", CAFFE_BLOBS))
    stored_var: Number = field(metadata=column("stored\nvar", CAFFE_BLOBS))
    running_mean: Number = field(metadata=column("running\nmean", HISTORY))
    running_var: Number = field(metadata=column("running\nvar", HISTORY))
    torch_running_mean: Number
    torch_running_var: Number
    running_mean_scale: Number  # agreement.running_mean_scale: the update's largest term
    running_mean_abs_error: Number = field(metadata=column("mean\n|err|", HISTORY_VS_TORCH))
    running_mean_scaled_error: Number = field(
        metadata=column("mean ULP\nat scale", HISTORY_VS_TORCH)
    )
    running_mean_ulp_error: Number = field(metadata=column("mean ULP\nown value", HISTORY_VS_TORCH))
    running_var_abs_error: Number = field(metadata=column("var\n|err|", HISTORY_VS_TORCH))
    running_var_ulp_error: Number = field(metadata=column("var ULP\nown value", HISTORY_VS_TORCH))


@dataclass(frozen=True)
class StepRecord:
    """One training step: which samples it fed, the weight the batch got in the running
    statistics (PyTorch's momentum for that step), Caffe's scale factor (1 elsewhere), and every
    channel's statistics after it."""

    step: int  # 1-based
    first_sample: int  # index on axis 0 of the input where the batch starts
    num_batches_tracked: int
    batch_weight: float
    scale_factor: float
    channels: tuple[StepChannel, ...]


@dataclass(frozen=True)
class VarianceMethods:
    """One channel's biased variance three ways in working precision, against float64.

    Relative errors are (value - reference) / reference; a negative variance is possible for
    the naive formula, which subtracts two nearly equal numbers.
    """

    channel: int
    working_precision: str  # "float32", or "float64" for float64 input
    reference: Number  # float64, from the reference statistics
    two_pass: float  # mean first, then the mean of squared deviations
    two_pass_rel_error: Number
    naive: float  # E[x^2] - E[x]^2 in one pass
    naive_rel_error: Number
    welford: float  # Welford's running update
    welford_rel_error: Number


@dataclass(frozen=True)
class RunResult:
    """Everything ``bninspect run`` reports."""

    command: ClassVar[str] = "run"

    input: InputInfo
    settings: Settings
    torch_version: str | Undefined
    num_batches_tracked: int | Undefined  # PyTorch's counter after the last step
    channels: tuple[ChannelReport, ...]
    max_scaled_error: Number  # over all channels, output only: the headline
    max_abs_error: Number
    max_ulp_error: Number
    flag_legend: dict[str, str]  # the meaning of each health flag raised
    variance_methods: tuple[VarianceMethods, ...] | Undefined  # with --var-method
    peer: str  # what PyTorch ran as, or why it could not
    running_history: tuple[StepRecord, ...]  # every training step; empty in eval mode


@dataclass(frozen=True)
class Step:
    """One line of a derivation: ``name = formula`` with the numbers put in, and its value."""

    name: str
    formula: str
    substitution: str  # the formula with the actual numbers, rounded for people
    value: Number  # full precision
    note: str | None = None
    rule: str | None = None  # the convention's rule applied here, where frameworks differ
    differs_from_pytorch: str | None = None  # what PyTorch does instead, where it differs


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
    scaled_error: Number  # in ULPs of the dtype at ``scale``: the headline
    ulp_error: Number  # in ULPs of the dtype at the reference value
    correctly_rounded: bool | Undefined  # torch == reference_rounded: equal to the last bit


@dataclass(frozen=True)
class PrecisionStep:
    """One step of PyTorch's arithmetic for an element: its value as PyTorch holds it, the
    exact value, and how far this step's rounding moved y."""

    name: str
    how: str  # how PyTorch computes it: the operation and its precision
    torch_value: float  # as PyTorch holds it (emulated)
    exact: float  # the same quantity without rounding (float64)
    effect_on_y: float  # signed, in ULPs of the dtype at the channel's scale


@dataclass(frozen=True)
class PrecisionReport:
    """``explain --precision``: PyTorch's CPU kernel redone in its own arithmetic.

    The effects of the steps add up to y_emulated - y_exact. ``bit_exact`` says whether the
    emulation reproduced PyTorch's y; if not, ``difference_ulps`` says by how much and
    ``path`` why (which kernel path, and whether it is emulated exactly).
    """

    path: str  # the kernel path followed, from torch_cpu_emulation
    claim: str  # how closely the emulation follows PyTorch on this dtype and path
    cpu_capability: str  # the vector kernel torch used ("AVX512", "AVX2", "DEFAULT")
    threads: int  # torch's intra-op threads
    fma: bool  # whether the kernel rounds a * b + c once
    channel_scale: float  # max |reference y| of the channel: the unit of effect_on_y
    steps: tuple[PrecisionStep, ...]
    y_emulated: float
    y_torch: float
    bit_exact: bool
    difference_ulps: float  # (y_emulated - y_torch) in ULPs of the dtype at y_torch


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
    """``explain --against``: their value for the element, and where the steps would have to
    differ to produce it."""

    path: str
    theirs: Number
    abs_error: Number
    ulp_error: Number  # in ULPs of the input dtype at the channel's scale
    implied: tuple[ImpliedStep, ...]
    verdict: str


@dataclass(frozen=True)
class ExplainResult:
    """Everything ``bninspect explain`` reports for one output element: the derivation, then
    PyTorch's y beside the reference y. ``running`` compares the element's channel's running
    buffers in train mode (empty in eval mode)."""

    command: ClassVar[str] = "explain"

    input: InputInfo
    settings: Settings
    torch_version: str | Undefined
    index: tuple[int, ...]
    channel: int
    x: float
    steps: tuple[Step, ...]
    y_reference: Number
    y_reference_rounded: Number  # y_reference rounded to the dtype: the best PyTorch could return
    y_torch: Number
    y_torch_hex: str | Undefined  # float.hex of PyTorch's y: its exact bits
    abs_error: Number
    output_scale: Number  # the channel's scale, as run's: agreement.channel_scale
    scaled_error: Number  # in ULPs of the dtype at output_scale: the headline
    ulp_error: Number  # in ULPs of the dtype at y_reference
    correctly_rounded: bool | Undefined  # y_torch == y_reference_rounded: to the last bit
    running: tuple[Comparison, ...]
    precision: PrecisionReport | Undefined  # with --precision
    against: AgainstReport | Undefined  # with --against
    peer: str  # what PyTorch ran as, or why it could not
    step: int  # the training step whose batch holds the element (1 in eval mode)


@dataclass(frozen=True)
class CardFact:
    """One cell of the conventions card: a framework's rule, where it comes from, and how sure
    bninspect is of it: "checked" (run against the framework here), "source" (read in its
    source) or "unverified"."""

    rule: str
    value: str
    source: str
    status: str


@dataclass(frozen=True)
class ConventionCard:
    """One framework's row of the card: the rules as data and as sentences with sources."""

    name: str
    framework: str
    normalizes: str  # "biased" or "unbiased"
    stores: str
    momentum_meaning: str  # "batch", "keep" or "caffe"
    momentum_parameter: str
    momentum_default: float
    eps_default: float
    eps_floor: Number
    one_value: str  # "refuse", "normalize" or "pass_through"
    checked_against: str | None
    facts: tuple[CardFact, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class MomentumEquivalent:
    """The momentum in one convention that gives the same running-statistics rule."""

    convention: str
    parameter: str
    momentum: Number
    note: str | None


@dataclass(frozen=True)
class MomentumTranslation:
    """``momentum`` given in ``source`` convention's meaning, as every convention writes it."""

    source: str
    momentum: Number
    batch_weight: Number  # the weight of a new batch: PyTorch's meaning
    equivalents: tuple[MomentumEquivalent, ...]


@dataclass(frozen=True)
class ConventionsResult:
    """Everything ``bninspect conventions`` reports: the card, and a momentum translation when
    asked for one."""

    command: ClassVar[str] = "conventions"

    conventions: tuple[ConventionCard, ...]
    translation: MomentumTranslation | None
