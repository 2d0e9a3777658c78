"""What a correct computation can leave in each regime of a batch split over ranks: the
allowances ``run --ranks`` and ``explain --ranks`` judge by, each derived for the data it
covers (a rank's block for what a rank computes alone, the full batch for what is pooled) from
check's derivations (check/tolerance.py for outputs and statistics, check/buffers.py for the
running buffers), never a fixed count of ULPs. Pure numpy on per-channel vectors.

- A rank alone is one batch norm of its block: check's output bound and buffer bound with the
  block's count, statistics and conditioning (X from the block's largest |reference output|,
  as ``run`` takes it from the full batch's).
- The pooled float64 statistics (every rank's moments merged by counts) and the full batch's
  (one process) are two float64 computations of the same N values' mean and variance: they
  differ by at most the sum of what each can leave, statistics_errors in float64 over N values.
- SyncBatchNorm (syncbn.py: CUDA's formulas, in the accumulation type A, unit roundoff u; the
  working precision of tolerance.py) computes its statistics in three stages, and its pooled
  mean and variance err by at most the sum of theirs:
  1. each rank k's mean and var over its n_k values, within statistics_errors of its block
     (|dm_k|, dvar_k), sent as invstd = 1 / sqrt(var + eps) rounded to A;
  2. each rank's variance rebuilt as (1 / invstd)^2 - eps, times its count: the rounding of
     invstd to A, of 1 / invstd, of the square, of eps to A, of the subtraction and of the
     product are six roundings of at most u relative to var_k + eps (the square doubles two of
     them): |error| <= dvar_k (1 + 8u) + 8u (var_k + eps) per value;
  3. the rows merged in rank order by Chan's update over the K ranks holding values: each step
     rounds the running mean by at most 4u of the largest |mean_k| (M), so the pooled mean errs
     by sum n_k / N |dm_k| + 4 K u M; each between-rank term w_k delta_k^2 (w_k =
     n n_k / (n + n_k), delta_k = mean - mean_k of the merge so far) errs by
     w_k (2 |delta_k| E + E^2) + 6u w_k delta_k^2, E = 2 max |dm_k| + 4 K u M the error of a
     delta; as sum w_k delta_k^2 <= N var and sum w_k <= N, Cauchy-Schwarz gives
     sum w_k |delta_k| <= N sqrt(var), so over N these add 2 E sqrt(var) + E^2 + 6u var; the
     K additions to m2 and the division by N add (2K + 1) u var.
  Normalizing then adds eps (u (var + eps), and eps's own rounding to A, u eps) and takes
  1 / sqrt (1.5u relative, of which check's bound carries u: the other half is u (var + eps)
  in the variance). The output bound is check's, with these statistics' errors; the running
  buffers' is check's update bound with them (the variance's times N / (N - 1), plus the
  division's rounding).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bninspect.check.buffers import stored_variance_error, update_bound
from bninspect.check.tolerance import (
    Conditioning,
    channel_bound,
    statistics_errors,
    unit_roundoff,
    working_precision,
)
from bninspect.numerics.reference import ChannelStatistics


def block_conditioning(
    stats: ChannelStatistics,
    max_reference: np.ndarray | None,
    weight: np.ndarray,
    bias: np.ndarray,
    eps: float,
) -> Conditioning:
    """The conditioning of one block (a rank's, or the full batch) normalized with its own
    statistics in train mode, X = max |x_hat| taken from the block's largest |reference
    output| as tolerance.output_conditioning does: |y - b| = |x_hat| |w|, so
    X <= (max |y| + |b|) / |w| (0 without an output, where only the statistics matter)."""
    weight = np.asarray(weight, float)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        if max_reference is None:
            x_hat_max = np.zeros_like(stats.mean)
        else:
            reach = np.asarray(max_reference, float) + np.abs(bias)
            x_hat_max = np.where(weight == 0, 0.0, reach / np.abs(weight))
        rms = np.sqrt(stats.mean * stats.mean + stats.var_biased)
    return Conditioning(
        stats.count, np.asarray(stats.mean, float), np.asarray(stats.var_biased, float), eps,
        rms, x_hat_max, weight, np.asarray(bias, float), True,
    )  # fmt: skip


def in_ulps_of(error: np.ndarray, scale: np.ndarray, dtype: str) -> np.ndarray:
    """An absolute allowance in ULPs of ``dtype`` at ``scale``; NaN (statistics not finite:
    only an exact agreement) as 0, and any allowance at a scale of 0 as unlimited."""
    from bninspect.numerics.agreement import ulp

    scale = np.abs(np.asarray(scale, float))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        out = np.where(scale > 0, error / ulp(scale, dtype), np.where(error > 0, np.inf, 0.0))
    return np.nan_to_num(out, nan=0.0, posinf=np.inf)


def pooled_room(full: Conditioning) -> tuple[np.ndarray, np.ndarray]:
    """(mean, variance) allowance, absolute, between the pooled float64 statistics and the full
    batch's from one process: what each of the two float64 computations of the N values can
    leave, added (the variance's without eps, which neither adds)."""
    dm, dvar = statistics_errors(dataclasses.replace(full, eps=0.0), "float64")
    return 2 * dm, 2 * dvar


def rank_output_bound(cond: Conditioning, scale: np.ndarray, dtype: str) -> np.ndarray:
    """What PyTorch's module can leave on one rank's block, absolute, at that block's output
    ``scale``: check's bound for that block."""
    return channel_bound(cond, scale, dtype).total


def rank_buffer_bounds(
    stats: ChannelStatistics | None,
    take: float,
    new_mean: np.ndarray,
    new_var: np.ndarray,
    dtype: str,
) -> tuple[np.ndarray, np.ndarray]:
    """What a correct update of one rank's buffers from its own block can leave, absolute:
    check's update bound with the block's statistics (its count's Bessel factor). An empty
    rank folds nothing in: its buffers may only round."""
    if stats is None:
        zero = np.zeros_like(new_mean)
        return (
            update_bound(0.0, zero, new_mean, zero, dtype),
            update_bound(0.0, zero, new_var, zero, dtype),
        )
    ones, zeros = np.ones_like(stats.mean), np.zeros_like(stats.mean)
    dm, dvar = statistics_errors(block_conditioning(stats, None, ones, zeros, 0.0), dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        var_unbiased = stats.var_unbiased if stats.count > 1 else stats.var_biased
        return (
            update_bound(take, stats.mean, new_mean, dm, dtype),
            update_bound(
                take, var_unbiased, new_var, stored_variance_error(dvar, stats.count), dtype
            ),
        )


def sync_statistics_errors(
    ranks: list[ChannelStatistics | None], full: ChannelStatistics, eps: float, dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    """(|dm|, dvar): how far SyncBatchNorm's pooled mean and biased variance can be from the
    full batch's (the module's stages 1 to 3), absolute. Its statistics are computed and held
    in the accumulation type, so each rank's are judged as that type's."""
    accumulation = working_precision(dtype)
    u = unit_roundoff(accumulation)
    held = [r for r in ranks if r is not None]
    k = len(held)
    var = np.abs(np.asarray(full.var_biased, float))
    ones, zeros = np.ones_like(var), np.zeros_like(var)
    with np.errstate(invalid="ignore", over="ignore"):
        mean_sum, round_trip = np.zeros_like(var), np.zeros_like(var)
        dm_max, largest_mean = np.zeros_like(var), np.zeros_like(var)
        for stats in held:
            dm_k, dvar_k = statistics_errors(
                block_conditioning(stats, None, ones, zeros, 0.0), accumulation
            )
            share = stats.count / full.count
            var_k = np.abs(stats.var_biased)
            mean_sum = mean_sum + share * dm_k
            round_trip = round_trip + share * (dvar_k * (1 + 8 * u) + 8 * u * (var_k + eps))
            dm_max = np.maximum(dm_max, dm_k)
            largest_mean = np.maximum(largest_mean, np.abs(stats.mean))
        merge_mean = 4 * k * u * largest_mean
        delta = 2 * dm_max + merge_mean
        between = 2 * delta * np.sqrt(var) + delta * delta + 6 * u * var
        return mean_sum + merge_mean, round_trip + between + (2 * k + 1) * u * var


def sync_normalizer_errors(
    sync_errors: tuple[np.ndarray, np.ndarray], var: np.ndarray, eps: float, dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    """(|dm|, d(var + eps)) of what SyncBatchNorm normalizes with: the pooled statistics'
    errors, then eps added (u (var + eps)), eps rounded to the accumulation type (u eps) and
    the half of 1 / sqrt's 1.5u that check's bound does not carry (u (var + eps))."""
    u = unit_roundoff(working_precision(dtype))
    dm, dvar = sync_errors
    var_eps = np.abs(np.asarray(var, float)) + eps
    with np.errstate(invalid="ignore", over="ignore"):
        return dm, dvar + 2 * u * var_eps + u * eps


def sync_output_bound(
    full: Conditioning, normalizer: tuple[np.ndarray, np.ndarray], scale: np.ndarray, dtype: str
) -> np.ndarray:
    """What SyncBatchNorm's output can leave, absolute, at the full batch's output ``scale``:
    check's bound over the full batch with the errors of what SyncBatchNorm normalizes with
    (sync_normalizer_errors)."""
    return channel_bound(full, scale, dtype, statistics=normalizer).total


def sync_buffer_bounds(
    sync_errors: tuple[np.ndarray, np.ndarray],
    full: ChannelStatistics,
    take: float,
    new_mean: np.ndarray,
    new_var: np.ndarray,
    dtype: str,
) -> tuple[np.ndarray, np.ndarray]:
    """What SyncBatchNorm's update of the running buffers can leave, absolute: check's update
    bound with the pooled statistics' errors, the variance's carried through the global
    count's Bessel factor (and that division's rounding)."""
    u = unit_roundoff(working_precision(dtype))
    dm, dvar = sync_errors
    with np.errstate(invalid="ignore", over="ignore"):
        unbiased = full.var_unbiased if full.count > 1 else full.var_biased
        dvar_stored = stored_variance_error(dvar, full.count) + u * np.abs(unbiased)
        return (
            update_bound(take, full.mean, new_mean, dm, dtype),
            update_bound(take, unbiased, new_var, dvar_stored, dtype),
        )
