"""The results of data-parallel runs: ``run --ranks`` / ``--rank-sizes`` (one batch split over
ranks: the full batch, per-rank batch norm as DDP without SyncBatchNorm computes it, and
SyncBatchNorm's pooled statistics, side by side), ``explain --ranks`` (one element under each
of them), and ``run --stats-only`` on a pattern of files (population statistics, streamed by
one process, local ranks, or torchrun's).

Shifts (``*_shift``) measure how far a regime moves the output from the full batch's, as a
fraction of the channel's output scale (``output_scale``): max |y_regime - y_full| / scale.
Errors (``*_error``) measure rounding against the float64 reference, as everywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bninspect.results.common import InputInfo, Number, Settings, Undefined, Verdict
from bninspect.results.explain import Step


@dataclass(frozen=True)
class RankShare:
    """What one rank streamed: its files (in name order), their bytes, values per channel, and
    the seconds its streaming took."""

    rank: int
    files: tuple[str, ...]
    bytes: int
    count: int
    seconds: float


@dataclass(frozen=True)
class PopulationChannel:
    """One channel's statistics over every file: ``count`` finite values, their mean and
    variance (the biased one divides by count, the unbiased one by count - 1: what
    running_var should hold for PyTorch), and the values left out."""

    channel: int
    count: int
    mean: Number
    var_biased: Number
    var_unbiased: Number
    nan_count: int
    posinf_count: int
    neginf_count: int


@dataclass(frozen=True)
class PopulationResult:
    """``run --stats-only --input 'PATTERN'``: the population statistics of every file."""

    # A document of its own beside run's (its schema: run-population.schema.json)
    command: ClassVar[str] = "run-population"
    verdict_statuses: ClassVar[tuple[str, ...]] = ("statistics",)

    # statistics: as run --stats-only (the summary says which channels hold NaN or Inf)
    verdict: Verdict
    pattern: str
    files: int
    bytes: int
    dtypes: tuple[str, ...]
    count: int  # values per channel, finite or not
    ranks: int
    launcher: str  # how the ranks ran
    seconds: float  # rank 0, from its first file to the merged result
    shares: tuple[RankShare, ...]
    channels: tuple[PopulationChannel, ...]
    notices: tuple[str, ...] = ()


@dataclass(frozen=True)
class RegimeCheck:
    """One of the comparisons the verdict rests on, each against something independent:
    ``max_error`` (in ``unit``, found at ``where``) against the most a correct result may
    leave, ``allowed``; ``detail`` says what was compared with what."""

    name: str
    passed: bool
    max_error: Number
    allowed: Number
    unit: str
    where: str
    detail: str


@dataclass(frozen=True)
class RegimeChannel:
    """One channel under the three regimes, against the full batch.

    The full batch's float64 statistics (``mean``, ``var_biased``); SyncBatchNorm's statistics
    pooled from every rank's float64 moments gathered over gloo, their distance from the full
    batch's in ULPs of float64 (the mean's at the channel's root mean square, the variance's at
    its own value); the outputs' errors against the full batch's reference, in ULPs of the
    dtype at ``output_scale``: PyTorch's module on the full batch, and SyncBatchNorm's forward
    as CUDA computes it (emulated on CPU over the real all_gather); and the shifts of the two
    regimes that are not the full batch: per-rank batch norm (no sync; the worst rank), and
    the two ways of averaging the per-rank variances instead of pooling them, both with the
    pooled mean: by count (``averaged_*``: sum m2_k / N) and plainly with equal weights
    (``equal_weight_*``: sum var_k / K over the K ranks holding values). Each
    ``*_bound_ulps`` is what a correct computation can leave there, in the same ULPs as the
    error beside it (distributed/bounds.py):
    for the pooled statistics, two float64 computations over the N values; for SyncBatchNorm's
    output, check's bound over the full batch with SyncBatchNorm's pooling's errors."""

    channel: int
    count: int
    mean: Number
    var_biased: Number
    pooled_mean_ulp_error: Number
    pooled_mean_bound_ulps: Number
    pooled_var_ulp_error: Number
    pooled_var_bound_ulps: Number
    output_scale: Number
    torch_max_ulp_error_at_scale: Number
    sync_max_ulp_error_at_scale: Number
    sync_bound_ulps: Number
    no_sync_max_shift: Number
    no_sync_worst_rank: int | Undefined
    averaged_max_shift: Number
    equal_weight_var: Number
    equal_weight_max_shift: Number


@dataclass(frozen=True)
class BufferChannel:
    """One channel's running buffers after the step under each regime, and how far each moves
    the eval-mode output over this batch from the full batch's buffers (``*_eval_shift``).

    Full batch and SyncBatchNorm: the pooled mean and the unbiased variance with the global
    count's Bessel factor (``running_mean``, ``running_var``, float64; SyncBatchNorm's own
    buffers, emulated in the layer's dtype, ``sync_running_*_ulp_error`` from them). DDP
    without SyncBatchNorm: every rank updates its own from its own statistics (its local
    Bessel factor); with broadcast_buffers=True (DDP's default) every rank ends with rank 0's
    (``broadcast_*``); with False each keeps its own (``own_eval_shift``: the worst rank's).
    The mistake: the ranks' buffers averaged (all_reduce / K), which averages the per-rank
    variances instead of pooling them (``averaged_*``); and SyncBatchNorm with its variance
    pooled plainly with equal weights (``equal_weight_running_var``: the pooled mean, the
    equal-weight variance with the global count's Bessel factor). ``sync_running_*_bound_ulps``:
    what a correct update from SyncBatchNorm's pooled statistics can leave, in the same ULPs."""

    channel: int
    running_mean: Number
    running_var: Number
    sync_running_mean_ulp_error: Number
    sync_running_mean_bound_ulps: Number
    sync_running_var_ulp_error: Number
    sync_running_var_bound_ulps: Number
    broadcast_running_mean: Number
    broadcast_running_var: Number
    broadcast_eval_shift: Number
    own_eval_shift: Number
    own_worst_rank: int | Undefined
    averaged_running_mean: Number
    averaged_running_var: Number
    averaged_eval_shift: Number
    equal_weight_running_var: Number
    equal_weight_eval_shift: Number


@dataclass(frozen=True)
class RankChannel:
    """One channel on one rank: its own float64 statistics, how they differ from the full
    batch's (the mean by ``mean_shift`` standard deviations of the full batch, the variance by
    the factor ``var_ratio``), PyTorch's module on the rank's block against that block's own
    reference (``max_ulp_error_at_scale``) and against the full batch's (``output_shift``),
    and the rank's running buffers after the step: by hand (float64) and PyTorch's. Each
    ``*bound_ulps`` is what a correct batch norm of this block alone can leave there (check's
    bounds with the block's count, statistics and conditioning), in the same ULPs as the error
    beside it."""

    channel: int
    mean: Number
    var_biased: Number
    var_unbiased: Number
    mean_shift: Number
    var_ratio: Number
    max_abs_error: Number
    max_ulp_error_at_scale: Number
    bound_ulps: Number
    output_shift: Number
    running_mean: Number
    running_var: Number
    torch_running_mean: Number
    torch_running_var: Number
    running_mean_ulp_error_at_scale: Number
    running_mean_bound_ulps: Number
    running_var_ulp_error: Number
    running_var_bound_ulps: Number


@dataclass(frozen=True)
class RankReport:
    """One rank: its block of the batch (samples [first_sample, first_sample + samples)),
    values per channel, whether PyTorch's module ran on it (``torch_refused`` says why not) and
    on how many threads (its bits can depend on them), the seconds its work took in its
    process, and its channels."""

    rank: int
    first_sample: int
    samples: int
    count: int
    torch_refused: str | None
    torch_threads: int | Undefined  # PyTorch's intra-op threads there: some reductions split
    seconds: float
    channels: tuple[RankChannel, ...]


@dataclass(frozen=True)
class DistributedRunResult:
    """``run --ranks K`` / ``--rank-sizes``: one training step of a batch split over ranks."""

    # A document of its own beside run's (its schema: run-ranks.schema.json)
    command: ClassVar[str] = "run-ranks"
    verdict_statuses: ClassVar[tuple[str, ...]] = ("agrees", "differs")

    # agrees: every check within rounding (SyncBatchNorm = the full batch, each rank = batch
    # norm of its block, buffers as by hand); differs: one is not (the summary names it)
    verdict: Verdict
    input: InputInfo
    settings: Settings
    torch_version: str | Undefined
    ranks: int
    rank_sizes: tuple[int, ...]
    launcher: str
    checks: tuple[RegimeCheck, ...]
    channels: tuple[RegimeChannel, ...]
    buffers: tuple[BufferChannel, ...]
    rank_reports: tuple[RankReport, ...]
    verified: str  # what was run for real here, what was emulated


@dataclass(frozen=True)
class RegimeValue:
    """The element under one regime: the statistics that normalize it, its output (float64
    reference, and the value computed as that regime does in the dtype), and the channel's
    running buffers after the step under it."""

    regime: str
    count: int
    mean: Number
    var_biased: Number
    inv_std: Number
    reference: Number
    torch: Number
    abs_error: Number  # |torch - reference|
    ulp_error_at_scale: Number
    shift: Number  # |reference - the full batch's reference| / output_scale
    running_mean: Number
    running_var: Number


@dataclass(frozen=True)
class DistributedExplainResult:
    """``explain --ranks``: one element of a batch split over ranks, derived under each regime,
    with the rank holding it (``rank``, its sample ``local_index``) and where that rank's
    statistics differ from the pooled ones."""

    # A document of its own beside explain's (its schema: explain-ranks.schema.json)
    command: ClassVar[str] = "explain-ranks"
    verdict_statuses: ClassVar[tuple[str, ...]] = ("within-rounding", "differs")

    # within-rounding: the pooled statistics are the full batch's and each regime's computed
    # value its float64 form, to rounding; differs: one is not (the summary names it)
    verdict: Verdict
    input: InputInfo
    settings: Settings
    torch_version: str | Undefined
    ranks: int
    rank_sizes: tuple[int, ...]
    launcher: str
    index: tuple[int, ...]
    channel: int
    x: float
    rank: int
    local_index: tuple[int, ...]
    output_scale: Number
    derivation: tuple[Step, ...]
    regimes: tuple[RegimeValue, ...]
    checks: tuple[RegimeCheck, ...]
    verified: str
