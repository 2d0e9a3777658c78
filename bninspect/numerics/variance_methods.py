"""``run --var-method``: the variance computed three common ways in working precision, beside
the float64 reference, to show the classic trap of the naive one-pass formula."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from bninspect.numerics import kernels
from bninspect.numerics.kernels import Region
from bninspect.numerics.reference import ChannelStatistics
from bninspect.results.common import Number, Undefined
from bninspect.results.run import VarianceMethods


def _relative(value: float, reference: float) -> Number:
    if not np.isfinite(reference) or not np.isfinite(value):
        return Undefined("not finite")
    if reference == 0:
        return 0.0 if value == 0 else Undefined("the reference variance is 0")
    return (value - reference) / reference


# Channels are copied in groups of about this many elements (16 MiB of float32).
GROUP_ELEMENTS = 1 << 22


def _channels(
    x: np.ndarray, after_release: Callable[[Region], None] | None
) -> Iterator[tuple[int, np.ndarray]]:
    """(c, channel c's values in memory order, contiguous) for each channel of ``x`` (N, C, ...),
    read a group of channels at a time in row order, each row released once copied."""
    N, C = x.shape[0], x.shape[1]
    S = x.size // (N * C) if x.size else 0
    rows = x.reshape(N, C, S)
    step = max(1, GROUP_ELEMENTS // max(1, N * S))
    for c0 in range(0, C, step):
        c1 = min(c0 + step, C)
        group = np.empty((c1 - c0, N, S), dtype=x.dtype)
        for n in range(N):
            group[:, n] = rows[n, c0:c1]
            if after_release is not None:  # the whole row: the kernel maps the neighbours of
                after_release(Region(n, n + 1, 0, C, 0, S))  # each page read, in its folio
        for c in range(c0, c1):
            yield c, group[c - c0].reshape(-1)


def compare_variance_methods(
    x: np.ndarray, stats: ChannelStatistics, after_release: Callable[[Region], None] | None = None
) -> tuple[VarianceMethods, ...]:
    """Per channel of ``x`` (N, C, ...), in working precision (float32; float64 for float64
    input): two-pass and naive one-pass E[x^2] - E[x]^2 with numpy's pairwise sums, and Welford's
    sequential update, each against the reference biased variance. Pairwise sums keep the
    comparison about the formulas, not about summation order.

    A group of channels is copied at a time, row by row, and ``after_release`` is called with
    each row's whole region once copied (a memory-mapped input drops those pages there, so memory
    stays at one group's size whatever the file's)."""
    working = np.float64 if x.dtype == np.float64 else np.float32
    results = []
    with np.errstate(over="ignore", invalid="ignore"):  # huge values overflow float32 on purpose
        for c, channel in _channels(x, after_release):
            # Welford per channel in memory order: the channel alone gives the same updates.
            welford = kernels.welford(channel.reshape(1, 1, -1), x.dtype.name)[0, 1]
            values = channel.astype(working, copy=False)
            n = working(values.size)
            mean = values.sum(dtype=working) / n
            deviations = values - mean
            two_pass = float((deviations * deviations).sum(dtype=working) / n)
            naive = float((values * values).sum(dtype=working) / n - mean * mean)
            reference = float(stats.var_biased[c])
            results.append(
                VarianceMethods(
                    channel=c,
                    working_precision=np.dtype(working).name,
                    reference=reference,
                    two_pass=two_pass,
                    two_pass_rel_error=_relative(two_pass, reference),
                    naive=naive,
                    naive_rel_error=_relative(naive, reference),
                    welford=float(welford),
                    welford_rel_error=_relative(float(welford), reference),
                )
            )
    return tuple(results)
