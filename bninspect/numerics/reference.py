"""The independent float64 reference: batch statistics and the normalized output, from the
textbook formulas, in numpy. Pure functions; nothing here knows about PyTorch.

Shapes: ``x`` is (N, C, *spatial) with channels on axis 1; per-channel arrays are (C,).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np

from bninspect.conventions.rules import PYTORCH, Convention
from bninspect.numerics import kernels
from bninspect.numerics.kernels import Moments, Progress, Region, U, two_product
from bninspect.numerics.running import RunningState, StepUpdate, advance, variance_of


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
    some_nan = (nan > 0) | ((posinf > 0) & (neginf > 0))
    total = np.where(
        some_nan,
        np.nan,
        np.where(posinf > 0, np.inf, np.where(neginf > 0, -np.inf, moments.total)),
    )
    mean = np.where(nan + posinf + neginf > 0, total / count, rounded_mean(moments, count))
    m2 = np.where(nan + posinf + neginf > 0, np.nan, moments.m2 + moments.m2_lo)
    return ChannelStatistics(count, total, mean, m2, nan, posinf, neginf)


def rounded_mean(moments: Moments, count: int) -> np.ndarray:
    """(total + total_lo) / count, rounded once: within half a ULP (and u**2 of the mean) of
    the kernel's sum divided by count. The quotient's remainder total - q * count is exact
    (Dekker's product; q * count is within a ULP of total), so the correction is right."""
    with np.errstate(all="ignore"):
        q = moments.total / count
        p, e = two_product(q, float(count))
        remainder = ((moments.total - p) - e) + moments.total_lo
        refined = q + remainder / count
        usable = np.isfinite(refined) & (np.abs(q) < 2.0**990) & (np.abs(q) > 2.0**-960)
        return np.where(usable, refined, q)


# A channel's sum is recomputed exactly where the kernel's error bound exceeds this many units
# of roundoff of the sum (see exact_sum_needed).
EXACT_BEYOND = 32


def exact_sum_needed(moments: Moments) -> np.ndarray:
    """Which channels' sums, and so means, to recompute exactly: those whose finite values'
    sum the kernel cannot vouch for to within 32u of itself (u = 2**-53).

    The kernel sums each chunk of a channel around a shift and bounds the error of what it
    returns (``total + total_lo`` within ``total_err``; derived in _kernels.c, "The sums'
    accuracy"). Where the channel's mean is within half a standard deviation of 0 (the shift is
    0: the values cancel, and the sum can be far below sum |x|) its chunk sums are exact
    (float16; float32 and bfloat16 whose values span no more than float64 can hold) or
    error-free two-sums (float64, and the rest), so the bound is about (n / 64)**2 u**2 sum |x|
    per chunk of n values: below a ULP of the sum unless sum |x| exceeds ~1e12 |sum|, as with
    +-1e16 cancelling to 1. Where the mean lies beyond half a standard deviation the values
    hardly cancel: plain sums, within 6.2u sum |x - shift| <= 6.2u sqrt(2 n m2) <= 17.5u |sum|.
    So a bound above 32u |sum| means values that cancel beyond what the error-free sums can
    follow (or a mean that moved from chunk to chunk); there the exact recompute makes the
    mean the correctly rounded sum / count. Elsewhere the mean is within half a ULP plus
    total_err / count. Channels of finite values whose float64 sum overflows (values near
    float64's largest) are recomputed too: their mean may be finite. Channels with non-finite
    values are left alone: their sum is NaN or infinite whatever the finite values' sum."""
    finite = (moments.nan + moments.posinf + moments.neginf == 0) & (moments.count > 0)
    with np.errstate(invalid="ignore", over="ignore"):
        vouched = moments.total_err <= EXACT_BEYOND * U * np.abs(moments.total)
        # finite values whose float64 sum overflows: their mean may still be finite
        overflowed = ~np.isfinite(moments.total)
        return finite & (~vouched | overflowed)


# Values per read in the exact recompute: a bounded amount of memory (a Python list of floats
# of this length is ~3 MB) however long the channel.
EXACT_READ = 1 << 16


def channel_pieces(x: np.ndarray, channel: int, values: int | None = None) -> Iterator[Region]:
    """Regions of (N, C, S) covering one channel in memory order, each at most ``values``
    (default EXACT_READ) long."""
    values = values or EXACT_READ
    N, S = x.shape[0], x.size // max(x.shape[0] * x.shape[1], 1)
    if S <= values:
        rows = max(1, values // max(S, 1))
        for n in range(0, N, rows):
            yield Region(n, min(N, n + rows), channel, channel + 1, 0, S)
    else:
        for n in range(N):
            for s in range(0, S, values):
                yield Region(n, n + 1, channel, channel + 1, s, min(S, s + values))


def exact_sum(values: list[float]) -> Fraction:
    """The exact sum of finite floats. math.fsum rounds the sum correctly; subtracting what it
    returned and summing again gives the next 53 bits, until nothing is left (usually once or
    twice). Where an intermediate sum overflows, Fractions, slowly."""
    parts: list[float] = []
    try:
        while (part := math.fsum([*values, *(-p for p in parts)])) != 0:
            parts.append(part)
    except OverflowError:
        return sum(map(Fraction, values), Fraction(0))
    return sum(map(Fraction, parts), Fraction(0))


def exact_sum_of_squares(v: np.ndarray) -> Fraction:
    """sum v**2 exactly: each square as two floats (Dekker's product of Veltkamp's halves),
    their exact sum; by Fractions where a square would leave float64's range, or lose bits
    below it."""
    magnitude = np.abs(v)
    nonzero = magnitude[magnitude > 0]
    if nonzero.size and (nonzero.max() > 2.0**460 or nonzero.min() < 2.0**-460):
        return sum((Fraction(float(a)) ** 2 for a in v), Fraction(0))
    square, error = two_product(v, v)
    return exact_sum(square.tolist() + error.tolist())


def exact_channel(
    x: np.ndarray, channel: int, after_block: Callable | None = None
) -> tuple[float, float, float]:
    """(sum, mean, m2) of one channel of finite values, each the correctly rounded exact value,
    read a piece at a time (x may be a memory map; ``after_block`` is told each piece read, as
    kernels.moments tells it each block). m2 = sum x**2 - (sum x)**2 / n, exact in rationals."""
    total, squares, n = Fraction(0), Fraction(0), 0
    for r in channel_pieces(x, channel):
        rows = x[r.n0 : r.n1, channel].reshape(r.n1 - r.n0, -1)[:, r.s0 : r.s1]
        v = np.asarray(rows, dtype=np.float64).reshape(-1)
        total += exact_sum(v.tolist())
        squares += exact_sum_of_squares(v)
        n += v.size
        if after_block is not None:
            after_block(r)
    m2 = squares - total * total / n

    def rounded(q: Fraction) -> float:
        try:
            return float(q)
        except OverflowError:
            return math.inf if q > 0 else -math.inf

    return rounded(total), rounded(total / n), rounded(m2)


def channel_statistics(
    x: np.ndarray, progress: Progress | None = None, after_block: Callable | None = None
) -> ChannelStatistics:
    """Per-channel count, sum, mean and m2 of ``x`` (N, C, ...) in float64, in one pass of the C
    kernel (compensated, error-bounded shifted sums per L1-sized chunk, chunks merged by Chan's
    formula), then exactly, in Python, for the channels whose sums the kernel's error bound
    does not vouch for (exact_sum_needed: values that cancel by ~1e12 or more). NaN and Inf
    propagate into their channel's statistics and are counted."""
    moments = kernels.moments(x, x.dtype.name, progress, after_block=after_block)
    stats = statistics_from_moments(moments, x.size // x.shape[1])
    redo = np.flatnonzero(exact_sum_needed(moments))
    if redo.size == 0:
        return stats
    total, mean, m2 = stats.total.copy(), stats.mean.copy(), stats.m2.copy()
    for c in redo:
        total[c], mean[c], m2[c] = exact_channel(x, int(c), after_block)
    return replace(stats, total=total, mean=mean, m2=m2)


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
