"""What a correct batch norm can leave: the error bound ``check`` passes an output by (its default
tolerance) and judges a hypothesis by (the diagnosis' "within rounding" rule), per channel, from
the dtype and the data's conditioning. Derived here; docs/check.md ("Tolerance") gives it for
people, with measurements.

A correct implementation in dtype D computes in a working precision W (W = float32 for float16,
bfloat16 and float32, as every framework's CPU and GPU kernels do; float64 for float64) and rounds
its result to D. With u the unit roundoff (2**-(mantissa bits + 1)), against the float64
reference y = (x - m) / s * w + b, s = sqrt(var + eps), its output y' errs by at most

    |y' - y| <= E_stats + E_arith + R

- E_stats, its statistics' error carried to the output: with m' = m + dm and s' = s (1 + r),
  |(x - m') / s' - (x - m) / s| <= (X r + |dm| / s) / (1 - r), times |w|, where X = max |x - m| / s
  over the channel.
  - The mean is a sum of n = count values: summed one by one in W, the k-th addition rounds by up
    to u times the partial sum (k terms of size up to the values' RMS A = sqrt(m^2 + var)); taken
    as independent and uniform, those roundings give the sum an error of standard deviation
    u sqrt(n) A / 3 per value, so |dm| <= (2 sqrt(n) + 2) u A at six standard deviations (with the
    division's rounding). Blocked or pairwise sums (numpy's, PyTorch's) stay far inside. Not a
    worst-case bound: adversarial orders can exceed it; real data does not (docs/check.md).
    In eval mode the statistics are given: dm = 0.
  - The variance, by a stable method (two passes: the squared deviations from m', summed in W),
    is (var + dm^2)(1 + t), |t| <= (2 sqrt(n) + 4) u (the sum's bound as above; the subtraction,
    the square, the division); so dvar <= (2 sqrt(n) + 4) u (var + dm^2) + dm^2, and
    r <= (dvar + u (var + eps)) / (2 (var + eps)) + u (adding eps, the square root). The one-pass
    E[x^2] - E[x]^2 is not stable (its error grows with (m / std)^2): it is a mistake in the
    catalogue (naive-variance), not something the bound allows.
- E_arith, the normalization's own roundings in W, in the worse of the two forms in use:
  ((x - m') / s') w + b, or x alpha + beta with alpha = w / s', beta = b - m' alpha (PyTorch's CPU
  kernel). The latter rounds x alpha and m' alpha, each of size |w| (|m| / s + X), so it loses the
  bits |m| / s takes (the cancellation flag): E_arith <= u (3 |m| / s |w| + 2 X |w| + |b| + scale),
  scale the channel's largest |y| (or |w|).
- R, the rounding of the result to D: half a ULP of D at the scale (0 when D = W, where the last
  rounding is already in E_arith).

The bound is per channel and absolute; in ULPs of D at the channel's scale it is about
(1 + |m| / s) (3 + 2 sqrt(n) A / s) u / ulp(scale) in float32, and 0.5 ULP plus a small fraction
in float16 and bfloat16 (their working precision has 13 or 16 bits to spare).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bninspect.dtypes import float_format
from bninspect.numerics.agreement import ulp

# Standard deviations of the summation model's error the bound allows (see the module's text):
# the bound on a sum of n terms is SUM_SIGMAS * sqrt(n) / 3 = 2 sqrt(n) units of roundoff.
SUM_SIGMAS = 6.0


def working_precision(dtype: str) -> str:
    """The precision a correct implementation in ``dtype`` computes in."""
    return "float64" if dtype == "float64" else "float32"


def unit_roundoff(dtype: str) -> float:
    """u = 2**-(mantissa bits + 1): the largest relative error of one rounding to nearest."""
    return 2.0 ** -(float_format(dtype).mantissa_bits + 1)


def sum_reach(count: int, working: str) -> float:
    """The relative reach of a sum of ``count`` terms in ``working`` precision, against the
    terms' RMS: (SUM_SIGMAS sqrt(n) / 3) u."""
    return SUM_SIGMAS / 3 * math.sqrt(max(count, 1)) * unit_roundoff(working)


@dataclass(frozen=True)
class Conditioning:
    """What a channel's bound depends on, per channel (shape (C,) arrays): the mean and variance
    that normalize, the data's RMS (for the sums' error), X = max |x - mean| / sqrt(var + eps),
    and the weight and bias; ``count`` values per channel; ``from_batch``: the statistics are
    computed from the batch (train mode), not given."""

    count: int
    mean: np.ndarray
    var: np.ndarray
    eps: float
    rms: np.ndarray
    x_hat_max: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    from_batch: bool
    # Channels whose batch mean every correct implementation computes exactly (constant_exact);
    # None where the values were not looked at (then no channel is assumed exact).
    exact_mean: np.ndarray | None = None

    def only(self, c: int) -> Conditioning:
        """Channel c's conditioning alone (arrays of one value)."""
        one = slice(c, c + 1)
        return Conditioning(
            self.count, self.mean[one], self.var[one], self.eps, self.rms[one],
            self.x_hat_max[one], self.weight[one], self.bias[one], self.from_batch,
            None if self.exact_mean is None else self.exact_mean[one],
        )  # fmt: skip


def constant_exact(low: np.ndarray, high: np.ndarray, count: int, dtype: str) -> np.ndarray:
    """Per channel: every value is the same number c, and every sum of up to ``count`` copies
    of c is exact in the working precision (count * M < 2**p, c = M * 2**k with M odd, p the
    precision's significand bits), so a sum in any order, and then the mean, is exactly c. The
    deviations x - mean are then exactly 0 and y = bias whatever the variance: without this, a
    constant channel far from 0 had an unbounded tolerance (|mean| / std is infinite) and any
    output passed."""
    bits = float_format(working_precision(dtype)).mantissa_bits + 1
    exact = np.zeros(len(low), dtype=bool)
    for c, (a, b) in enumerate(zip(np.asarray(low, float), np.asarray(high, float), strict=True)):
        if a != b or not math.isfinite(a):
            continue
        mantissa = abs(int(math.frexp(a)[0] * 2**53))
        odd = mantissa >> max((mantissa & -mantissa).bit_length() - 1, 0) if mantissa else 0
        exact[c] = count * odd < 2**bits
    return exact


@dataclass(frozen=True)
class Bound:
    """The error a correct implementation can leave, per channel (absolute, shape (C,)), and its
    parts: from the statistics, from the normalization's arithmetic, from rounding to the dtype."""

    total: np.ndarray
    statistics: np.ndarray
    arithmetic: np.ndarray
    rounding: np.ndarray


def statistics_errors(cond: Conditioning, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """(|dm|, dvar): how far the mean and var + eps a correct implementation in ``dtype``
    normalizes with can be from the reference's (the module's derivation), the statistics held
    in ``dtype`` (as PyTorch's module holds them in its parameters' dtype) where it is not the
    working precision."""
    working = working_precision(dtype)
    u = unit_roundoff(working)
    held = unit_roundoff(dtype) if dtype != working else 0.0
    var_eps = cond.var + cond.eps
    with np.errstate(invalid="ignore", over="ignore"):
        if cond.from_batch:
            # The mean held in the dtype may be the one the deviations are taken from (PyTorch's
            # float16 module on strided input is): its rounding enters the variance as dm^2.
            dm = (sum_reach(cond.count, working) + 2 * u) * cond.rms + held * np.abs(cond.mean)
            if cond.exact_mean is not None:
                dm = np.where(cond.exact_mean, 0.0, dm)
            dvar = (sum_reach(cond.count, working) + 4 * u) * (cond.var + dm * dm) + dm * dm
        else:
            dm = held * np.abs(cond.mean)
            dvar = np.zeros_like(cond.var)
        dvar = dvar + (u + 2 * held) * var_eps
    return dm, dvar


def channel_bound(
    cond: Conditioning,
    scale: np.ndarray,
    dtype: str,
    statistics: tuple[np.ndarray, np.ndarray] | None = None,
) -> Bound:
    """Per channel, the largest |y' - y| a correct implementation in ``dtype`` can leave, at
    output ``scale`` (the channel's largest |y|, or |w|). NaN where the statistics are not
    finite (only an exact agreement matches there); inf where the spread is below what the
    dtype's sums resolve (sqrt(var + eps - dvar) is 0: a correct output can be anything).
    ``statistics``: (|dm|, dvar) of a way of computing the statistics other than one pass over
    the batch (SyncBatchNorm's pooling, distributed/bounds.py), instead of statistics_errors."""
    working = working_precision(dtype)
    u = unit_roundoff(working)
    held = unit_roundoff(dtype) if dtype != working else 0.0
    dm, dvar = statistics if statistics is not None else statistics_errors(cond, dtype)
    w, b, x_hat = np.abs(cond.weight), np.abs(cond.bias), cond.x_hat_max
    scale = np.asarray(scale, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        s = np.sqrt(cond.var + cond.eps)
        s_low = np.sqrt(np.maximum(cond.var + cond.eps - dvar, 0.0)) * (1 - u)
        mean_to_std = np.where(cond.mean == 0, 0.0, np.abs(cond.mean) / s)
        # |(x - m') / s' - (x - m) / s| <= X s |1 / s' - 1 / s| + |dm| / s', s' >= s_low
        spread_part = np.where((x_hat == 0) | (s == s_low), 0.0, x_hat * (s / s_low - 1))
        mean_part = np.where(dm == 0, 0.0, dm / s_low)
        statistics = np.where(w == 0, 0.0, w * (spread_part + mean_part))
        # A mean held in the dtype is off by its rounding, unless it is exact (a constant
        # channel's mean is one of its values).
        held_mean = (
            mean_to_std if cond.exact_mean is None else np.where(cond.exact_mean, 0, mean_to_std)
        )
        arithmetic = u * (3 * mean_to_std * w + 2 * x_hat * w + b + scale) + held * (
            held_mean * w + x_hat * w + b
        )
        before = statistics + arithmetic
        rounding = np.zeros_like(before) if dtype == working else 0.5 * ulp(scale + before, dtype)
        total = before + rounding
    total = np.where(np.isnan(total), np.nan, total)
    return Bound(total, statistics, arithmetic, rounding)


def in_ulps(bound: np.ndarray, scale: np.ndarray, dtype: str) -> np.ndarray:
    """``bound`` in ULPs of ``dtype`` at ``scale`` (per channel); NaN stays NaN."""
    scale = np.asarray(scale, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return np.where(scale > 0, bound / ulp(scale, dtype), np.where(bound == 0, 0.0, np.inf))


def channel_extremes(x: np.ndarray, chunks) -> tuple[np.ndarray, np.ndarray]:
    """Per channel, the smallest and largest finite value of x (N, C, ...), chunk by chunk of
    channels (``chunks``: slices of axis 1); +inf/-inf where a channel has none."""
    channels = x.shape[1]
    low, high = np.full(channels, np.inf), np.full(channels, -np.inf)
    for s in chunks:
        part = np.moveaxis(np.asarray(x[:, s]), 1, 0).reshape(s.stop - s.start, -1)
        with np.errstate(invalid="ignore", over="ignore"):
            wide = part.astype(np.float64)
            finite = np.isfinite(wide)
            low[s] = np.where(finite, wide, np.inf).min(axis=1, initial=np.inf)
            high[s] = np.where(finite, wide, -np.inf).max(axis=1, initial=-np.inf)
    return low, high


def conditioning(
    *,
    count: int,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float,
    data_mean: np.ndarray,
    data_var: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    from_batch: bool,
    dtype: str | None = None,
) -> Conditioning:
    """The conditioning of each channel from its statistics and extremes: ``mean``/``var``
    normalize, ``data_mean``/``data_var`` (biased) describe the values summed; with the
    ``dtype`` the values are in, which channels' means are exact (constant_exact)."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        s = np.sqrt(var + eps)
        reach = np.maximum(np.abs(high - mean), np.abs(low - mean))
        reach = np.where(np.isfinite(low) & np.isfinite(high), reach, 0.0)
        x_hat_max = np.where(reach == 0, 0.0, reach / s)
        rms = np.sqrt(data_mean * data_mean + data_var)
    exact = None if dtype is None else constant_exact(low, high, count, dtype)
    return Conditioning(
        count, np.asarray(mean, float), np.asarray(var, float), eps, rms, x_hat_max,
        np.asarray(weight, float), np.asarray(bias, float), from_batch, exact,
    )  # fmt: skip


def output_conditioning(inspection, max_reference: np.ndarray) -> Conditioning:
    """The conditioning of each channel of an inspection's (last) batch from the largest
    |reference output| per channel, which run has from its comparison, without another pass
    over the data: |y - b| = |x_hat| |w| bounds X = max |x_hat| by (max |y| + |b|) / |w| from
    above, so the bound can only grow."""
    stats, forward, params = inspection.stats, inspection.forward, inspection.params
    weight, bias = np.abs(params.weight), np.abs(params.bias)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        x_hat_max = np.where(weight == 0, 0.0, (np.asarray(max_reference) + bias) / weight)
        rms = np.sqrt(stats.mean * stats.mean + stats.var_biased)
    return Conditioning(
        stats.count, np.asarray(forward.mean, float), np.asarray(forward.var, float),
        inspection.settings.eps, rms, x_hat_max, np.asarray(params.weight, float),
        np.asarray(params.bias, float), inspection.settings.mode == "train",
    )  # fmt: skip


def inspection_conditioning(inspection) -> Conditioning:
    """The conditioning of each channel of an inspection's (last) batch."""
    from bninspect.check.compare import channel_chunks

    x, stats, forward, params = (
        inspection.batch,
        inspection.stats,
        inspection.forward,
        inspection.params,
    )
    low, high = channel_extremes(x, channel_chunks(x.shape))
    return conditioning(
        count=stats.count,
        mean=forward.mean,
        var=forward.var,
        eps=inspection.settings.eps,
        data_mean=stats.mean,
        data_var=stats.var_biased,
        low=low,
        high=high,
        weight=params.weight,
        bias=params.bias,
        from_batch=inspection.settings.mode == "train",
        dtype=inspection.tensor.info.dtype,
    )


class Judge:
    """Judges candidate outputs against theirs by what a correct implementation can leave: per
    channel, the largest |theirs - candidate| in ULPs of the precision at the candidate's scale,
    beside the bound (channel_bound at that scale, in the same ULPs)."""

    def __init__(self, cond: Conditioning, weight: np.ndarray, dtype: str):
        self.cond, self.weight, self.dtype = cond, weight, dtype

    def measure(
        self, theirs: np.ndarray, candidate: np.ndarray, precision: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(errors, limits) per channel, both in ULPs of ``precision`` (default the input's
        dtype) at the candidate's scale; a NaN limit (statistics not finite) is 0."""
        from bninspect.check.compare import scaled_errors_and_scales

        precision = precision or self.dtype
        errors, scales = scaled_errors_and_scales(theirs, candidate, self.weight, precision)
        limits = in_ulps(channel_bound(self.cond, scales, precision).total, scales, precision)
        return errors, np.where(np.isnan(limits), 0.0, limits)

    def fits(
        self, theirs: np.ndarray, candidate: np.ndarray, precision: str | None = None
    ) -> np.ndarray:
        """Per channel, whether the candidate explains theirs to within the bound."""
        errors, limits = self.measure(theirs, candidate, precision)
        return errors <= limits
