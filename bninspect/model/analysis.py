"""From what the runs measured to what the report says: each layer's flags, the cause of a gap
named from the layer's own evidence, population statistics over several batches, and the
verdict. Pure numpy: nothing here runs torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from bninspect.dtypes import float_format
from bninspect.model.spec import GAP_THRESHOLD  # noqa: F401 (where it is defined, below the CLI)
from bninspect.numerics.kernels import Moments, empty_moments, merge_moments
from bninspect.numerics.reference import statistics_from_moments

NOISE = 4.0
PYTORCH_EPS, PYTORCH_MOMENTUM = 1e-5, 0.1
# Fewer values per channel than this make the batch variance's relative standard error
# sqrt(2 / (n - 1)) exceed a quarter.
FEW_VALUES = 32
FLOAT16_MAX = 65504.0
DEAD_WEIGHT = 1e-3  # |weight| below this share of the layer's median |weight|

LEGEND = {
    "nan-buffers": "running_mean or running_var holds NaN or Inf: eval mode outputs NaN there",
    "var-tiny": "running_var below eps in some channel: eval mode divides by about sqrt(eps), "
    "and folding multiplies the conv weights by |weight| / sqrt(running_var + eps)",
    "huge": "a running buffer beyond float16's range (65504): a half-precision export overflows",
    "untrained": "never updated: num_batches_tracked 0, running_mean 0, running_var 1 (the "
    "initial values)",
    "frozen": "momentum 0: training never moves the running buffers",
    "cumulative": "momentum None: the buffers are the plain average of every batch since the "
    "start, the first as heavy as the last (stale once the weights have moved)",
    "keras-momentum": "momentum above 0.5 gives each new batch that weight in PyTorch; a "
    "Keras/TensorFlow momentum (the old value's weight, 0.99) ported as is? Use 1 - it",
    "eps": "eps is not PyTorch's default 1e-5 (1e-3 is Keras's and TensorFlow's: a ported model?)",
    "dead": "weight near zero in some channel: it outputs its bias alone",
    "one-value": "one value per channel: train mode raises 'Expected more than 1 value per "
    "channel when training'; feed more than one sample, or keep this layer in eval mode",
    "few-values": f"fewer than {FEW_VALUES} values per channel: the batch statistics are noisy",
    "repeated": "the module runs more than once per forward: its buffers update that many "
    "times per training step",
    "double-counted": "num_batches_tracked a multiple of the other layers': updated more than "
    "once per step, as gradient checkpointing's recomputed forward does",
    "no-running-stats": "track_running_stats=False: eval mode normalizes with the batch's own "
    "statistics",
    "eval-in-train": "in eval mode inside a model in train mode (frozen batch norm)",
}


@dataclass(frozen=True)
class LayerEvidence:
    """Per channel, float64 (C,): what drives the layer's train/eval gap."""

    mean_drift: np.ndarray  # (mean - running_mean) / sqrt(running_var + eps)
    var_ratio: np.ndarray  # (var_biased + eps) / (running_var + eps)


def gap_limit(count: int | None, threshold: float) -> float:
    """The gap a layer must reach to count as diverging: ``threshold``, or NOISE / sqrt(count)
    where the batch's own sampling noise reaches further."""
    if not count:
        return threshold
    return max(threshold, NOISE / math.sqrt(count))


def evidence(mean, var_biased, running_mean, running_var, eps) -> LayerEvidence:
    with np.errstate(all="ignore"):
        std = np.sqrt(running_var + eps)
        return LayerEvidence((mean - running_mean) / std, (var_biased + eps) / (running_var + eps))


def worst_index(values: np.ndarray, how=np.abs) -> int:
    """The channel where ``how(values)`` is largest, NaN counted as largest."""
    measure = how(values)
    measure = np.where(np.isnan(measure), np.inf, measure)
    return int(np.argmax(measure))


def log_distance(ratio: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.abs(np.log(ratio))


def is_default_buffers(running_mean, running_var) -> bool:
    return bool(np.all(running_mean == 0) and np.all(running_var == 1))


def layer_flags(
    *,
    eps: float,
    momentum: float | None,
    track: bool,
    layer_mode: str,
    model_mode: str,
    num_batches_tracked: int | None,
    typical_batches: int | None,
    calls: int,
    weight: np.ndarray,
    affine: bool,
    running_mean: np.ndarray | None,
    running_var: np.ndarray | None,
    count: int | None,
) -> tuple[str, ...]:
    """The codes of LEGEND that apply to a layer."""
    flags = []
    if running_mean is not None and running_var is not None:
        with np.errstate(invalid="ignore"):
            finite = np.all(np.isfinite(running_mean)) and np.all(np.isfinite(running_var))
            if not finite:
                flags.append("nan-buffers")
            elif np.any(running_var < eps):
                flags.append("var-tiny")
            if finite and (
                np.any(np.abs(running_mean) > FLOAT16_MAX) or np.any(running_var > FLOAT16_MAX)
            ):
                flags.append("huge")
        if num_batches_tracked == 0 and is_default_buffers(running_mean, running_var):
            flags.append("untrained")
    if not track:
        flags.append("no-running-stats")
    if momentum == 0:
        flags.append("frozen")
    elif momentum is None and track:
        flags.append("cumulative")
    elif momentum is not None and momentum > 0.5:
        flags.append("keras-momentum")
    if eps != PYTORCH_EPS:
        flags.append("eps")
    if affine:
        magnitude = np.abs(weight)
        median = float(np.median(magnitude)) if magnitude.size else 0.0
        if np.any(magnitude <= DEAD_WEIGHT * median) or np.any(magnitude == 0):
            flags.append("dead")
    if count == 1:
        flags.append("one-value")
    elif count is not None and count < FEW_VALUES:
        flags.append("few-values")
    if calls > 1:
        flags.append("repeated")
    if (
        num_batches_tracked
        and typical_batches
        and num_batches_tracked != typical_batches
        and num_batches_tracked % typical_batches == 0
    ):
        flags.append("double-counted")
    if layer_mode == "eval" and model_mode == "train":
        flags.append("eval-in-train")
    return tuple(flags)


def typical_batches(counts: list[int | None]) -> int | None:
    """The most common positive num_batches_tracked of the layers (the smallest on a tie)."""
    positive = [c for c in counts if c]
    if not positive:
        return None
    values, times = np.unique(positive, return_counts=True)
    return int(values[np.argmax(times)])


def _num(value: float) -> str:
    return f"{value:.3g}"


def nonfinite_words(values: np.ndarray) -> str:
    """What a vector holds that is not a number: 'NaN', 'Inf' or 'NaN and Inf'."""
    with np.errstate(invalid="ignore"):
        kinds = [w for w, hit in (("NaN", np.isnan(values).any()), ("Inf", np.isinf(values).any()))
                 if hit]  # fmt: skip
    return " and ".join(kinds)


def nonfinite_cause(running_mean, running_var, channel: int | None = None) -> str:
    """'running_var holds NaN (channel 3): eval mode outputs NaN there'."""
    bad = [
        (name, nonfinite_words(v))
        for name, v in (("running_mean", running_mean), ("running_var", running_var))
        if v is not None and not np.all(np.isfinite(v))
    ]
    if len(bad) == 2 and bad[0][1] == bad[1][1]:
        held = f"running_mean and running_var hold {bad[0][1]}"
    else:
        held = " and ".join(f"{name} holds {words}" for name, words in bad)
    where = f" (channel {channel})" if channel is not None else ""
    return f"{held}{where}: eval mode outputs NaN there"


def name_cause(
    *,
    flags: tuple[str, ...],
    max_gap: float,
    max_own_gap: float | None,
    channel: int,
    count: int | None,
    mean: np.ndarray,
    var_biased: np.ndarray,
    running_mean: np.ndarray | None,
    running_var: np.ndarray | None,
    eps: float,
    ev: LayerEvidence | None,
    num_batches_tracked: int | None,
    threshold: float,
) -> str:
    """Why the layer's two runs part, from its own evidence, most specific first. The part
    before the first ': ' names the cause in a few words (the verdict quotes it); the rest is
    the evidence."""
    c = channel
    if "nan-buffers" in flags:
        bad = [
            i
            for v in (running_mean, running_var)
            if v is not None
            for i in np.flatnonzero(~np.isfinite(v))
        ]
        return nonfinite_cause(running_mean, running_var, int(min(bad)) if bad else None)
    if "one-value" in flags:
        return (
            "one value per channel, which PyTorch refuses in train mode: feed 2 or more "
            "samples per batch (DataLoader drop_last=True), or keep this layer in eval mode"
        )
    if max_own_gap is not None and max_own_gap < threshold <= max_gap:
        return f"carried from earlier layers: on the same input its own gap is {_num(max_own_gap)}"
    batch = f"the batch has mean {_num(mean[c])} and variance {_num(var_biased[c])} (channel {c})"
    if "untrained" in flags:
        return (
            f"untrained buffers: num_batches_tracked 0, running_mean 0, running_var 1, but {batch}"
        )
    if (
        "frozen" in flags
        and running_mean is not None
        and is_default_buffers(running_mean, running_var)
    ):
        return (
            f"momentum 0 froze the buffers: at their initial values over {num_batches_tracked} "
            f"batches, but {batch}"
        )
    if "few-values" in flags:
        return f"{count} values per channel: the batch statistics are noisy"
    if ev is None or running_var is None:
        return "the batch's statistics differ from what eval mode uses"
    with np.errstate(all="ignore"):
        eps_share_eval = eps / (running_var[c] + eps)
        eps_share_train = eps / (var_biased[c] + eps)
    if max(eps_share_eval, eps_share_train) > 0.5:
        return (
            f"eps {eps:g} sets the normalizer: running_var {_num(running_var[c])}, batch "
            f"variance {_num(var_biased[c])} (channel {c})"
        )
    drift, ratio = float(ev.mean_drift[c]), float(ev.var_ratio[c])
    mean_part = abs(drift)
    var_part = 2 * abs(1 - math.sqrt(ratio)) if ratio >= 0 else math.inf
    extra = ""
    if "double-counted" in flags or "repeated" in flags:
        extra = "; the buffers are updated more than once per step"
    if "keras-momentum" in flags:
        extra += "; the momentum looks like Keras's meaning"
    if mean_part >= var_part:
        return (
            f"mean drift in channel {c}: the batch mean is {_num(drift)} running std from "
            f"running_mean{extra}"
        )
    return (
        f"variance drift in channel {c}: the batch variance is {_num(ratio)}x running_var "
        f"(with eps){extra}"
    )


def short_cause(cause: str) -> str:
    """The cause in a few words: name_cause's text before its first ': '."""
    return cause.split(": ", 1)[0]


# --- population statistics over several batches -------------------------------------------


@dataclass
class PopulationAccumulator:
    """One layer's statistics over batches: Chan-merged float64 moments (exact pooling), the
    sums update_bn averages, and fvcore's precise-BN estimator run as it runs (in the buffers'
    dtype, its own update order)."""

    channels: int
    dtype: str
    moments: Moments = field(init=False)
    count: int = 0
    batches: int = 0
    sum_means: np.ndarray = field(init=False)
    sum_unbiased: np.ndarray = field(init=False)
    precise_mean: np.ndarray = field(init=False)
    precise_square_mean: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        d = float_format(self.dtype).numpy
        self.moments = empty_moments(self.channels)
        self.sum_means = np.zeros(self.channels)
        self.sum_unbiased = np.zeros(self.channels)
        self.precise_mean = np.zeros(self.channels, dtype=d)
        self.precise_square_mean = np.zeros(self.channels, dtype=d)

    def add(self, moments: Moments, mean: np.ndarray, var_unbiased: np.ndarray, count: int):
        self.moments = merge_moments(self.moments, moments)
        self.count += count
        self.batches += 1
        self.sum_means += mean
        with np.errstate(invalid="ignore"):
            self.sum_unbiased += var_unbiased
        # fvcore.nn.precise_bn._PopulationVarianceEstimator.update, on the buffers PyTorch
        # stores with momentum 1 (the batch mean, the unbiased variance, in the buffers' dtype)
        d = self.precise_mean.dtype
        with np.errstate(all="ignore"):
            batch_mean, batch_var = mean.astype(d), var_unbiased.astype(d)
            square_mean = batch_mean * batch_mean + batch_var * d.type((count - 1) / count)
            share = d.type(count / self.count)
            self.precise_mean = self.precise_mean + (batch_mean - self.precise_mean) * share
            self.precise_square_mean = (
                self.precise_square_mean + (square_mean - self.precise_square_mean) * share
            )

    def choices(
        self, running_mean, running_var, eps
    ) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
        """(name, how, mean, var) of each choice, the exact pooled one first."""
        pooled = statistics_from_moments(self.moments, self.count)
        with np.errstate(all="ignore"):
            precise_var = (self.precise_square_mean - self.precise_mean * self.precise_mean).astype(
                np.float64
            )
        rows = [
            (
                "pooled (exact)",
                "mean and biased variance of every value of every batch (float64, Chan's merge)",
                pooled.mean,
                pooled.var_biased,
            )
        ]
        if running_mean is not None:
            rows.append(("running buffers", "as stored", running_mean, running_var))
        rows.append(
            (
                "update_bn",
                "torch.optim.swa_utils.update_bn: equal-weight average of the batches' means "
                "and unbiased variances",
                self.sum_means / self.batches,
                self.sum_unbiased / self.batches,
            )
        )
        rows.append(
            (
                "precise_bn",
                "fvcore's update_bn_stats: count-weighted mean and E[x^2] - mean^2, in "
                f"{self.dtype}",
                self.precise_mean.astype(np.float64),
                precise_var,
            )
        )
        return rows


def output_move(mean, var, mean_choice, var_choice, eps) -> np.ndarray:
    """How far normalizing with (mean_choice, var_choice) instead of the population's own
    (mean, var) moves the output, RMS over the population, in output standard deviations:
    sqrt(var (1/s' - 1/s)**2 + ((mean - mean') / s')**2), s = sqrt(var + eps)."""
    with np.errstate(all="ignore"):
        s, s_choice = np.sqrt(var + eps), np.sqrt(var_choice + eps)
        return np.sqrt(
            var * (1 / s_choice - 1 / s) ** 2 + ((mean - mean_choice) / s_choice) ** 2
        )  # NaN where a choice holds NaN: shown as NaN, never as an infinite move
