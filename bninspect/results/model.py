"""The result of ``bninspect model``: every batch norm of a network in forward order, its
settings, its batch against its running buffers, the buffers' health, the train/eval gap, and
optionally population statistics over several batches and conv/linear + BN folding.

Gaps are relative: max |y_train - y_eval| over a channel divided by the channel's
``output_scale`` (max(|largest train-mode output|, |weight|), agreement.channel_scale), so 0.1
reads "a tenth of the channel's output scale"; the layer's ``max_gap`` is the largest over its
channels. ``gap`` compares the two runs of the whole network at this layer (earlier layers'
gaps carry into it); ``own_gap`` runs this layer alone in both modes on the same input (the
train run's), which its own statistics explain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bninspect.results.common import Number, Undefined, Verdict


@dataclass(frozen=True)
class ModelSource:
    """Where the network came from and what loading it did."""

    model: str | None  # "module:callable" as given
    kwargs: dict[str, str]  # the callable's keyword arguments, each as Python writes it (repr)
    weights: str | None  # the state_dict file
    program: str | None  # the torch.export .pt2 file
    checkpoint: tuple[str, ...]  # what was recognised: wrapper key, "module." prefix, ...
    loaded_tensors: int  # tensors loaded from --weights (0 without)
    dtype: str  # of the network's floating parameters, e.g. "float32"
    mode: str | Undefined  # "train" or "eval": the network's mode as given (the runs are on
    # copies); undefined for --weights alone (a state_dict has no mode)
    torch_version: str
    other_norms: tuple[str, ...]  # "name (GroupNorm)": normalizations that are not batch norm


@dataclass(frozen=True)
class BatchSource:
    """The batches fed: ``batches`` of them, the first of ``shape``."""

    source: str  # "generated", "file" or "directory"
    paths: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str  # as fed to the network (converted to its dtype)
    batches: int
    seed: int | None
    notices: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChannelDetail:
    """One channel of one layer (``--layer``): the batch against the buffers, and the gap."""

    channel: int
    mean: Number  # of the layer's input in the train-mode run, float64
    var_biased: Number
    var_unbiased: Number
    running_mean: Number
    running_var: Number
    weight: Number
    bias: Number
    mean_drift: Number  # (mean - running_mean) / sqrt(running_var + eps)
    var_ratio: Number  # (var_biased + eps) / (running_var + eps)
    output_scale: Number
    own_gap: Number
    gap: Number
    flags: tuple[str, ...]


@dataclass(frozen=True)
class PopulationChoice:
    """One choice of the statistics eval mode normalizes with, against the exact pooled ones:
    how far it moves the layer's output (RMS over the population, in output standard deviations
    |weight|: sqrt(var (1/s' - 1/s)**2 + ((mean - mean') / s')**2), s = sqrt(var + eps))."""

    name: str  # "running buffers", "pooled (exact)", "update_bn", "precise_bn"
    how: str
    max_output_move: Number  # over channels
    worst_channel: int | Undefined
    mean: tuple[float, ...] | Undefined  # per channel, with --layer
    var: tuple[float, ...] | Undefined


@dataclass(frozen=True)
class PopulationReport:
    """Population statistics of the layer's input over every batch (train-mode forward, as
    update_bn and precise BN run it): the exact pooled moments (float64, Chan's merge of each
    batch's), and the equal-weight averages update_bn and precise BN store."""

    batches: int
    count: int  # values per channel over all batches
    choices: tuple[PopulationChoice, ...]


@dataclass(frozen=True)
class FoldChannel:
    channel: int
    folded_ulp_error_at_scale: float
    unfolded_ulp_error_at_scale: float
    running_var: float
    fold_scale: float  # |weight| / sqrt(running_var + eps): what multiplies the conv weights


@dataclass(frozen=True)
class FoldDtype:
    """Folded against unfolded in one dtype, both against the float64 unfolded result on the
    same input, in ULPs of the dtype at each channel's output scale (max |y|)."""

    dtype: str
    unfolded_ulp_error_at_scale: Number  # max over channels: ordinary rounding
    folded_ulp_error_at_scale: Number  # weights folded in float64, rounded to the dtype
    fuse_conv_bn_eval_ulp_error_at_scale: Number  # torch.nn.utils.fusion, folding in the dtype
    costly: bool  # folding costs more than twice ordinary rounding (and over 2 ULP)
    worst: tuple[FoldChannel, ...]  # the channels that make the folded error


@dataclass(frozen=True)
class FoldReport:
    """A conv or linear layer folded into the batch norm that follows it."""

    producer: str  # the conv/linear layer's name
    producer_kind: str  # "Conv2d", "Linear", ...
    float64_abs_error: Number  # folded vs unfolded, both float64: the algebra's own rounding
    dtypes: tuple[FoldDtype, ...]


@dataclass(frozen=True)
class DumpRecord:
    """Where --dump-dir wrote the layer's tensors, and the commands that reproduce it."""

    folder: str
    files: tuple[str, ...]
    commands: tuple[str, ...]
    reproducible: bool  # False where bninspect run cannot take the buffers (NaN, Inf)
    note: str | None = None


@dataclass(frozen=True)
class LayerReport:
    """One batch-norm call in forward order (a module called twice has two)."""

    index: int  # 0-based position in forward order
    name: str
    call: int  # 1 unless the module runs more than once per forward
    module: str  # "BatchNorm2d", "SyncBatchNorm", ...
    channels: int
    eps: Number  # undefined for --weights alone
    momentum: Number  # undefined for None (cumulative average)
    affine: bool
    track_running_stats: bool
    mode: str | Undefined  # the layer's mode as given; undefined for --weights alone
    num_batches_tracked: int | Undefined
    count: int | Undefined  # values per channel in the batch
    max_mean_drift: Number  # max |mean - running_mean| / sqrt(running_var + eps)
    worst_var_ratio: Number  # the (var_biased + eps) / (running_var + eps) furthest from 1
    gap_limit: Number  # max(threshold, 4 / sqrt(count)): the gap at which the layer diverges
    max_gap: Number  # whole network: the two runs at this layer
    max_own_gap: Number  # this layer alone, same input, both modes
    worst_channel: int | Undefined  # where the own gap (or drift) is largest
    flags: tuple[str, ...]  # codes of ModelResult.flag_legend
    cause: str | None  # why it parts, from the evidence above (divergent layers)
    details: tuple[ChannelDetail, ...] | Undefined  # per channel, with --layer
    population: PopulationReport | Undefined
    fold: FoldReport | Undefined
    dump: DumpRecord | Undefined


@dataclass(frozen=True)
class FirstDivergence:
    """The first layer (forward order) whose gap passes the threshold, and why."""

    index: int
    name: str
    max_gap: Number
    max_own_gap: Number
    gap_limit: Number
    cause: str


@dataclass(frozen=True)
class ModelResult:
    """Everything ``bninspect model`` reports. ``verdict.status``: "ok" (no gap over the
    threshold, buffers healthy), "warnings" (no gap over it, but flags raised), "diverges"
    (a layer's gap passes it), "no-batchnorm" (nothing to inspect)."""

    command: ClassVar[str] = "model"
    verdict_statuses: ClassVar[tuple[str, ...]] = ("ok", "warnings", "diverges", "no-batchnorm")

    verdict: Verdict
    source: ModelSource
    batches: BatchSource | Undefined  # undefined for --weights alone
    gap_threshold: float
    first_divergence: FirstDivergence | Undefined
    output_gap: Number  # the network's output, train-mode BN run vs eval, at its scale
    layers: tuple[LayerReport, ...]
    flag_legend: dict[str, str]
    unpaired: tuple[str, ...] | Undefined  # --fold: batch norms with no conv/linear before
    pairing: str | Undefined  # --fold: "torch.fx" or "exported graph"
    dump_dir: str | Undefined
    notices: tuple[str, ...]
