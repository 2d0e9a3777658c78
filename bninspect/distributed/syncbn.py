"""SyncBatchNorm's forward pass on CPU tensors, step by step as PyTorch computes it on CUDA.

``torch.nn.SyncBatchNorm`` refuses CPU tensors ("SyncBatchNorm expected input tensor to be on
GPU"), and the three operators its forward calls (``torch.batch_norm_stats``,
``torch.batch_norm_gather_stats_with_counts``, ``torch.batch_norm_elemt``) have CUDA kernels
only. This module follows ``torch/nn/modules/_functions.py`` (SyncBatchNorm.forward) and the
kernels of ``aten/src/ATen/native/cuda/Normalization.cuh`` in the same precision and order:

1. each rank: its shard's mean and invstd = 1 / sqrt(var_biased + eps) in the accumulation
   type (float32 for float16, bfloat16 and float32 input; float64 for float64), and its count,
   concatenated as [mean, invstd, count] (zeros on an empty rank);
2. all_gather of that row from every rank (gloo: a list of tensors, as SyncBatchNorm does for
   gloo); ranks with count 0 are dropped;
3. ``batch_norm_reduce_statistics_kernel``: the rows merged in rank order, recovering each
   rank's variance as (1 / invstd)^2 - eps, with counts in the layer's dtype (SyncBatchNorm
   casts them to running_mean's dtype, pytorch#98332: float16 counts round above 2048 and
   overflow above 65504, pytorch#70901); the running buffers take the pooled mean and the
   pooled variance with the global count's Bessel factor, var_n / (n - 1);
4. ``batch_norm_transform_input_kernel``: y = weight * (x - mean) * invstd + bias in the
   accumulation type, rounded to the input's.

What differs from a GPU: step 1 uses torch.var_mean where CUDA runs a Welford kernel, and CUDA
may fuse multiply-adds; both change the last bits only. Only the module exists to run torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

INT_MAX = 2**31 - 1
# What "the accumulation type" is for each input dtype (at::acc_type<scalar_t, /*is_cuda=*/true>)
ACCUMULATION = {
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
    torch.float32: torch.float32,
    torch.float64: torch.float64,
}


def local_statistics(shard: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_norm_stats: the shard's per-channel mean and invstd in the accumulation type.
    invstd is 1 / sqrt(var + eps) with var + eps formed in double (CUDA's InvStd functor adds
    a double epsilon), eps first rounded to the accumulation type as the kernel receives it."""
    acc = ACCUMULATION[shard.dtype]
    dims = [0, *range(2, shard.dim())]
    var, mean = torch.var_mean(shard.to(acc), dim=dims, correction=0)
    eps_acc = torch.tensor(eps, dtype=acc).to(torch.float64)
    invstd = (1.0 / torch.sqrt(var.to(torch.float64) + eps_acc)).to(acc)
    return mean, invstd


def combined_row(shard: torch.Tensor, eps: float) -> torch.Tensor:
    """What each rank contributes to the all_gather: [mean (C), invstd (C), count], in the
    accumulation type; zeros for an empty shard, as SyncBatchNorm sends."""
    acc, channels = ACCUMULATION[shard.dtype], shard.shape[1]
    if shard.numel() == 0:
        return torch.zeros(2 * channels + 1, dtype=acc)
    mean, invstd = local_statistics(shard, eps)
    count = torch.full((1,), shard.numel() // channels, dtype=acc)
    return torch.cat([mean, invstd, count])


@dataclass(frozen=True)
class Gathered:
    """What batch_norm_gather_stats_with_counts returns and updates, per channel: the pooled
    mean and invstd (accumulation type), and the running buffers after the step (layer dtype)."""

    mean: torch.Tensor
    invstd: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor


def gather_statistics(
    rows: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    momentum: float,
    eps: float,
) -> Gathered:
    """batch_norm_reduce_statistics_kernel over ``rows`` (world, 2C + 1) as all_gather gave
    them, in rank order: empty ranks dropped, counts cast to the buffers' dtype, then every
    operation in the kernel's order and types. Each channel is independent; the tensors here
    hold all channels at once."""
    channels = (rows.shape[1] - 1) // 2
    acc = rows.dtype
    rows = rows[rows[:, -1] >= 1]  # SyncBatchNorm's mask: ranks with values
    counts = rows[:, -1].to(running_mean.dtype)  # as SyncBatchNorm casts them
    eps_acc = torch.tensor(eps, dtype=acc)
    avg = torch.zeros(channels, dtype=acc)
    var_n = torch.zeros(channels, dtype=acc)
    n = 0  # index_t: an integer
    for row, count_value in zip(rows, counts, strict=True):
        count = count_value.to(acc)  # scalar_t read into arithmetic with accscalar_t operands
        m, invstd = row[:channels], row[channels : 2 * channels]
        v = 1.0 / invstd
        v = (v * v - eps_acc) * count
        # 1.0 / (n + count): a double literal divided, then stored as accscalar_t
        factor = torch.tensor(1.0 / float(n + count), dtype=torch.float64).to(acc)
        difference = avg - m
        var_n = var_n + (v + difference * difference * n * count * factor)
        avg = n * factor * avg + count * factor * m
        # index_t n += count: summed in the count's float type and truncated; an infinite
        # count (a float16 one past 65504) saturates, as CUDA's conversion to int does
        total = float(n + count)
        n = int(total) if math.isfinite(total) else INT_MAX
    mean = avg
    invstd = 1.0 / torch.sqrt(var_n / n + eps_acc)
    momentum_acc = torch.tensor(momentum, dtype=acc)
    layer = running_mean.dtype
    new_mean = ((1 - momentum_acc) * running_mean.to(acc) + momentum_acc * avg).to(layer)
    unbiased = var_n / (n - 1)
    new_var = ((1 - momentum_acc) * running_var.to(acc) + momentum_acc * unbiased).to(layer)
    return Gathered(mean, invstd, new_mean, new_var)


def transform(
    shard: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
) -> torch.Tensor:
    """batch_norm_elemt in train mode: gamma * (x - mean) * invstd + beta in the accumulation
    type, rounded to the input's dtype."""
    acc = mean.dtype
    shape = (1, -1) + (1,) * (shard.dim() - 2)
    gamma, beta = weight.to(acc).reshape(shape), bias.to(acc).reshape(shape)
    y = gamma * (shard.to(acc) - mean.reshape(shape)) * invstd.reshape(shape) + beta
    return y.to(shard.dtype)


def sync_batch_norm(
    shard: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    momentum: float,
    eps: float,
    all_gather: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, Gathered]:
    """One rank's SyncBatchNorm forward in train mode: its output for ``shard`` and the pooled
    statistics. ``all_gather`` takes this rank's row and returns every rank's, stacked
    (world, 2C + 1), in rank order."""
    rows = all_gather(combined_row(shard, eps))
    gathered = gather_statistics(rows, running_mean, running_var, momentum, eps)
    if shard.numel() == 0:
        return torch.empty_like(shard), gathered
    return transform(shard, weight, bias, gathered.mean, gathered.invstd), gathered
