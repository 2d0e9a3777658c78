"""Batch statistics of a batch split over data-parallel ranks, in float64: each rank's own
(what DDP without SyncBatchNorm normalizes with), the ranks' pooled by counts (what
SyncBatchNorm normalizes with: the full batch's), and the per-rank variances averaged instead
of pooled (common mistakes: by count, or plainly with equal weights). Pure numpy; nothing here
knows about processes.

A split is a tuple of rank sizes: samples (rows of axis 0) per rank, in rank order, each rank
holding a contiguous block, as a batch split across ranks is fed. Ranks may be empty.
"""

from __future__ import annotations

import numpy as np

from bninspect.numerics import kernels
from bninspect.numerics.kernels import Moments
from bninspect.numerics.reference import ChannelStatistics, statistics_from_moments


def even_sizes(samples: int, ranks: int) -> tuple[int, ...]:
    """``samples`` split over ``ranks`` as evenly as can be, the first ranks one larger
    (numpy.array_split's sizes)."""
    share, extra = divmod(samples, ranks)
    return tuple(share + (rank < extra) for rank in range(ranks))


def shard_bounds(sizes: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """(first, end) rows of each rank's block."""
    ends = np.cumsum((0, *sizes))
    return tuple((int(ends[r]), int(ends[r + 1])) for r in range(len(sizes)))


def rank_of_sample(sizes: tuple[int, ...], sample: int) -> int:
    """The rank holding row ``sample`` (empty ranks hold none)."""
    for rank, (first, end) in enumerate(shard_bounds(sizes)):
        if first <= sample < end:
            return rank
    raise ValueError(f"sample {sample} is beyond the {sum(sizes)} rows split as {sizes}")


def values_per_channel(shape: tuple[int, ...], rows: int) -> int:
    """Values per channel in ``rows`` samples of an array of ``shape`` (N, C, ...)."""
    return rows * int(np.prod(shape[2:], dtype=np.int64))


def moments_of(x: np.ndarray) -> Moments:
    """The kernel's per-channel moments of ``x`` (N, C, ...), or empty ones for no rows."""
    if x.shape[0] == 0 or x.size == 0:
        return kernels.empty_moments(x.shape[1])
    return kernels.moments(x, x.dtype.name)


def statistics_of(moments: Moments, count: int) -> ChannelStatistics | None:
    """Statistics from moments over ``count`` values per channel (None for none), as the
    full batch's are made from its moments (reference.statistics_from_moments)."""
    return statistics_from_moments(moments, count) if count else None


def rank_moments(x: np.ndarray, sizes: tuple[int, ...]) -> list[Moments]:
    """Each rank's moments of its block of ``x``."""
    return [moments_of(x[first:end]) for first, end in shard_bounds(sizes)]


def rank_statistics(x: np.ndarray, sizes: tuple[int, ...]) -> list[ChannelStatistics | None]:
    """Each rank's own batch statistics of its block of ``x`` (N, C, ...); None for an empty
    rank."""
    return [
        statistics_of(m, values_per_channel(x.shape, end - first))
        for m, (first, end) in zip(rank_moments(x, sizes), shard_bounds(sizes), strict=True)
    ]


def pooled_moments(parts: list[Moments]) -> Moments:
    """The moments of the union of the ranks' values, merged in rank order by Chan et al.'s
    pairwise update (kernels.merge_moments: counts weigh the means, and the spread of the
    rank means adds n_a n_b / n (mean_b - mean_a)^2 to m2). Empty ranks add nothing."""
    total = kernels.empty_moments(len(parts[0].mean))
    for part in parts:
        total = kernels.merge_moments(total, part)
    return total


def pooled_statistics(parts: list[Moments]) -> ChannelStatistics:
    """What SyncBatchNorm normalizes with: the ranks' statistics pooled by counts, equal to the
    full batch's to rounding. Needs at least one value per channel in some rank."""
    merged = pooled_moments(parts)
    every = merged.count + merged.nan + merged.posinf + merged.neginf  # the same per channel
    count = int(every[0])
    return statistics_from_moments(merged, count)


def averaged_variance(ranks: list[ChannelStatistics | None]) -> np.ndarray:
    """The per-rank biased variances averaged, weighted by counts (on equal ranks, the plain
    average all_reduce(var) / K gives): the sum of the ranks' m2 over N. Pooling also counts
    the spread of the rank means, sum n_r (mean_r - mean)^2 / N, which this leaves out."""
    held = [r for r in ranks if r is not None]
    return sum(r.m2 for r in held) / sum(r.count for r in held)


def equal_weight_variance(ranks: list[ChannelStatistics | None]) -> np.ndarray:
    """The plain average of the per-rank biased variances, each rank weighted alike whatever
    its count (all_reduce(var) / K over the K ranks holding values; an empty rank has no
    variance to send). Besides the spread of the rank means, it also loses the counts: on
    uneven ranks a small rank's variance weighs as much as a large one's."""
    held = [r for r in ranks if r is not None]
    return sum(r.var_biased for r in held) / len(held)
