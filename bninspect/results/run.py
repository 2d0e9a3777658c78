"""The result of ``bninspect run``: per channel, the reference statistics, their health, PyTorch's
distance from the reference, and the running statistics step by step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from bninspect.results.common import (
    NOT_ASKED,
    InputInfo,
    Number,
    Settings,
    Undefined,
    Verdict,
    column,
)
from bninspect.results.grad import GradRun

STATS = "Batch statistics (float64 reference)"
LAYER = "What normalizes; running buffers after the pass"
# PyTorch's output and running buffers beside the reference, in ULPs of the dtype at each one's
# scale (the headline), with the own-value measures (alarming near 0) under --verbose.
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
    ``max_ulp_error_at_scale`` = max |err| / ULP(output_scale)); and in ULPs at each element's
    own reference value (``max_ulp_error``, inflated wherever |y| is far below the scale). The
    running mean's error likewise in ULPs at its update's scale
    (``running_mean_ulp_error_at_scale``, the headline) and at its own value; the running
    variance is its own scale (its terms are never negative), so it has one ULP measure.
    """

    channel: int
    count: int = field(metadata=column("count", STATS))
    mean: Number = field(metadata=column("mean", STATS))
    var_biased: Number = field(metadata=column("var_biased\n(/N)", STATS))
    var_unbiased: Number = field(metadata=column("var_unbiased\n(/(N-1))", STATS))
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
    running_mean: Number = field(metadata=column("running_mean", LAYER))
    running_var: Number = field(metadata=column("running_var", LAYER))
    output_scale: Number  # max(largest |reference output|, |weight|): see agreement.channel_scale
    max_ulp_error_at_scale: Number = field(metadata=column("ULP at\nscale", AGREEMENT))
    # what a correct implementation in the dtype can leave on this channel, in the same ULPs
    # (check.tolerance: from the dtype and the data's conditioning); above it PyTorch differs
    bound_ulps: Number = field(metadata=column("bound", AGREEMENT))
    max_abs_error: Number = field(metadata=column("|err|", AGREEMENT))
    max_ulp_error: Number = field(metadata=column("ULP\nelementwise", AGREEMENT, verbose=True))
    worst_index: tuple[int, ...] | Undefined  # where the elementwise ULP error is largest
    running_mean_scale: Number  # agreement.running_mean_scale: the update's largest term
    running_mean_abs_error: Number = field(metadata=column("mean\n|err|", BUFFERS, verbose=True))
    running_mean_ulp_error_at_scale: Number = field(metadata=column("mean ULP\nat scale", BUFFERS))
    running_mean_bound_ulps: Number = field(metadata=column("mean\nbound", BUFFERS))
    running_mean_ulp_error: Number = field(
        metadata=column("mean ULP\nown value", BUFFERS, verbose=True)
    )
    running_var_abs_error: Number = field(metadata=column("var\n|err|", BUFFERS, verbose=True))
    running_var_ulp_error_at_scale: Number = field(metadata=column("var ULP\nat scale", BUFFERS))
    running_var_bound_ulps: Number = field(metadata=column("var\nbound", BUFFERS))
    train_eval_max_gap: Number = field(metadata=column("max\n|y_train - y_eval|", GAP))
    train_eval_mean_gap: Number = field(metadata=column("mean\n|y_train - y_eval|", GAP))
    eval_max_abs_error: Number = field(metadata=column("PyTorch eval\noutput |err|", GAP))


# Each measure judged against its bound: (name, error field, bound field) of ChannelReport.
MEASURES_AGAINST_BOUND = (
    ("output", "max_ulp_error_at_scale", "bound_ulps"),
    ("running_mean", "running_mean_ulp_error_at_scale", "running_mean_bound_ulps"),
    ("running_var", "running_var_ulp_error_at_scale", "running_var_bound_ulps"),
)

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
    running_mean_ulp_error_at_scale: Number = field(
        metadata=column("mean ULP\nat scale", HISTORY_VS_TORCH)
    )
    running_mean_ulp_error: Number = field(metadata=column("mean ULP\nown value", HISTORY_VS_TORCH))
    running_var_abs_error: Number = field(metadata=column("var\n|err|", HISTORY_VS_TORCH))
    running_var_ulp_error_at_scale: Number = field(
        metadata=column("var ULP\nat scale", HISTORY_VS_TORCH)
    )


@dataclass(frozen=True)
class StepRecord:
    """One training step: which samples it fed, the weight the batch got in the running
    statistics (PyTorch's momentum for that step), Caffe's scale factor (1 elsewhere), and every
    channel's statistics after it."""

    training_step: int  # 1-based
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
    verdict_statuses: ClassVar[tuple[str, ...]] = (
        "agrees",
        "differs",
        "statistics",
        "not-compared",
    )

    # agrees/differs: PyTorch's output and buffers within rounding of the reference, or not;
    # statistics: --stats-only; not-compared: PyTorch could not run (the reason is in the summary)
    verdict: Verdict
    input: InputInfo
    settings: Settings
    torch_version: str | Undefined
    num_batches_tracked: int | Undefined  # PyTorch's counter after the last step
    channels: tuple[ChannelReport, ...]
    max_ulp_error_at_scale: Number  # over all channels, output only: the headline
    max_abs_error: Number
    max_ulp_error: Number
    flag_legend: dict[str, str]  # the meaning of each health flag raised
    variance_methods: tuple[VarianceMethods, ...] | Undefined  # with --var-method
    torch_module: str  # what PyTorch's module ran as, or why it could not
    running_history: tuple[StepRecord, ...]  # every training step; empty in eval mode
    grad: GradRun | Undefined = Undefined(f"{NOT_ASKED}: --grad")  # the backward pass
