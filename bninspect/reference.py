"""The independent float64 reference: batch statistics and the normalized output, from the
textbook formulas, in numpy. Pure functions; nothing here knows about PyTorch.

Shapes: ``x`` is (N, C, *spatial) with channels on axis 1; per-channel arrays are (C,).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bninspect import kernels
from bninspect.conventions import PYTORCH, Convention
from bninspect.kernels import Moments, Progress
from bninspect.running import RunningState, StepUpdate, advance, variance_of


@dataclass(frozen=True)
class ChannelStatistics:
    """Batch statistics per channel, in float64; every array has shape (C,).

    ``count`` is the number of values per channel (N times the spatial sizes); ``m2`` is the sum
    of squared deviations from the mean, so var_biased = m2 / count and
    var_unbiased = m2 / (count - 1).
    """

    count: int
    total: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    nan_count: np.ndarray
    posinf_count: np.ndarray
    neginf_count: np.ndarray

    @property
    def var_biased(self) -> np.ndarray:
        """Divide by N: the variance batch norm normalizes with in train mode."""
        return self.m2 / self.count

    @property
    def var_unbiased(self) -> np.ndarray:
        """Divide by N - 1 (Bessel): what PyTorch writes into running_var. NaN when N is 1."""
        if self.count == 1:
            return np.full_like(self.m2, np.nan)
        return self.m2 / (self.count - 1)


def channel_values(x: np.ndarray, channel: int) -> np.ndarray:
    """All values of one channel, flattened, as a float64 copy of shape (count,)."""
    return np.asarray(x[:, channel], dtype=np.float64).reshape(-1)


def statistics_from_moments(moments: Moments, count: int) -> ChannelStatistics:
    """ChannelStatistics from the moments of the finite values, with IEEE semantics for the
    rest: a NaN, or both infinities, make the sum NaN; one infinity makes it that infinity; any
    non-finite value makes m2 NaN."""
    nan, posinf, neginf = (
        a.astype(np.int64) for a in (moments.nan, moments.posinf, moments.neginf)
    )
    total = np.where(
        (nan > 0) | ((posinf > 0) & (neginf > 0)),
        np.nan,
        np.where(posinf > 0, np.inf, np.where(neginf > 0, -np.inf, moments.total)),
    )
    m2 = np.where(nan + posinf + neginf > 0, np.nan, moments.m2)
    # The mean is sum / count, so that a derivation's "mean = sum / count" holds to the bit;
    # the sum is compensated, so this is as accurate as Chan's running mean.
    return ChannelStatistics(count, total, total / count, m2, nan, posinf, neginf)


def channel_statistics(
    x: np.ndarray, progress: Progress | None = None, after_block: Callable | None = None
) -> ChannelStatistics:
    """Per-channel count, sum, mean and m2 of ``x`` (N, C, ...) in float64, in one pass of the C
    kernel (compensated shifted sums per L1-sized chunk, chunks merged by Chan's formula: a few
    float64 ULPs from exact). NaN and Inf propagate into their channel's statistics and are
    counted."""
    moments = kernels.moments(x, x.dtype.name, progress, after_block=after_block)
    return statistics_from_moments(moments, x.size // x.shape[1])


def normalize(
    x: np.ndarray | float, mean: float, std: float, weight: float, bias: float
) -> np.ndarray | float:
    """y = (x - mean) / std * weight + bias in float64, with std = sqrt(var + eps).

    The same operations in the same order for one element as for a whole channel, so a single
    element's derivation reproduces the channel's reference bit for bit. Where std is 0 (a
    constant channel with eps = 0), x_hat takes its limit as eps -> 0+: 0 where x == mean.
    """
    # std == 0 is handled just below; NaN statistics propagate to a NaN output, and a tiny std
    # overflows to inf, on purpose.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        deviation = np.subtract(x, mean, dtype=np.float64)
        x_hat = deviation / std
        if std == 0:
            x_hat = np.where(deviation == 0, 0.0, x_hat)
        return x_hat * weight + bias


def std_of(var: np.ndarray | float, eps: float) -> np.ndarray | float:
    """sqrt(var + eps): eps sits inside the square root, as in every framework's formula."""
    with np.errstate(invalid="ignore"):  # a NaN variance stays NaN
        return np.sqrt(np.add(var, eps, dtype=np.float64))


@dataclass(frozen=True)
class ReferenceForward:
    """What the reference layer uses and produces per channel; every array has shape (C,).

    ``mean`` and ``var`` are what normalizes: the batch mean and biased variance in train mode,
    the running statistics in eval mode. ``running_mean``/``running_var`` are the statistics eval
    mode would use after the pass: updated by the convention's rule in train mode, unchanged in
    eval mode. ``before`` is the running state the pass started from, ``update`` the training
    step (None in eval mode). ``passes_through``: the layer copied x to y (Paddle, one value per
    channel).
    """

    mean: np.ndarray
    var: np.ndarray
    std: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray
    before: RunningState
    update: StepUpdate | None
    passes_through: bool = False


def reference_forward(
    stats: ChannelStatistics,
    before: RunningState,
    eps: float,
    momentum: float | None,
    train: bool,
    convention: Convention = PYTORCH,
) -> ReferenceForward:
    """The per-channel quantities of one forward pass under ``convention``, from the batch
    statistics and the running state before it; in train mode the running state advances by
    the convention's rule (``momentum`` in its meaning; None: PyTorch's cumulative average)."""
    if not train:
        return ReferenceForward(
            mean=before.running_mean,
            var=before.running_var,
            std=std_of(before.running_var, eps),
            running_mean=before.running_mean,
            running_var=before.running_var,
            before=before,
            update=None,
        )
    with np.errstate(invalid="ignore"):  # NaN statistics stay NaN
        update = advance(before, stats.mean, stats.m2, stats.count, convention, momentum)
        var = variance_of(stats.m2, stats.count, convention.normalizes)
        return ReferenceForward(
            mean=stats.mean,
            var=var,
            std=std_of(var, eps),
            running_mean=update.after.running_mean,
            running_var=update.after.running_var,
            before=before,
            update=update,
            passes_through=stats.count == 1 and convention.one_value == "pass_through",
        )


def forward_output(
    forward: ReferenceForward, x: np.ndarray | float, c: int, weight: float, bias: float
) -> np.ndarray | float:
    """The layer's output for values ``x`` of channel ``c``: normalized, or x itself where the
    layer passes its input through."""
    if forward.passes_through:
        return np.asarray(x, dtype=np.float64) if np.ndim(x) else float(x)
    return normalize(x, forward.mean[c], forward.std[c], weight, bias)
