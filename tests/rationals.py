"""Exact rational statistics to test the float64 reference against, and how close it must be."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

# How close the float64 reference's statistics must be to the exact ones, in float64 ULPs of the
# exact value (docs/precision.md): the mean is rounded once from a sum that is exact,
# error-free or within a few ULPs of itself; m2 is rounded about once more; a variance is m2 / n,
# one rounding more, which can be two ULPs where it and m2 lie at opposite ends of their binades.
MEAN_ULPS, M2_ULPS, VAR_ULPS = 1.5, 2.0, 2.5


def ulps_off(got: float, exact: Fraction) -> float:
    """|got - exact| in float64 ULPs at the exact value (its float64 spacing)."""
    spacing = float(np.spacing(abs(float(exact)))) or 2.0**-1074
    return float(abs(Fraction(float(got)) - exact) / Fraction(spacing))


def exact_statistics(x: np.ndarray) -> list[tuple[int, Fraction, Fraction]]:
    """Per channel of (N, C, ...) x: (count, mean, m2) in exact rational arithmetic."""
    result = []
    for c in range(x.shape[1]):
        values = [Fraction(float(v)) for v in np.asarray(x[:, c], dtype=np.float64).reshape(-1)]
        mean = sum(values, Fraction(0)) / len(values)
        result.append((len(values), mean, sum(((v - mean) ** 2 for v in values), Fraction(0))))
    return result


def assert_statistics_exact_to_ulps(stats, x: np.ndarray) -> None:
    """stats (a reference.ChannelStatistics of x) within MEAN_ULPS, M2_ULPS and VAR_ULPS of the
    exact values, channel by channel."""
    for c, (n, mean, m2) in enumerate(exact_statistics(x)):
        where = f"channel {c}: mean {stats.mean[c]!r}, exact {float(mean)!r}"
        assert stats.count == n
        assert ulps_off(stats.mean[c], mean) <= MEAN_ULPS, where
        assert ulps_off(stats.m2[c], m2) <= M2_ULPS, f"{where}; m2 {stats.m2[c]!r} {float(m2)!r}"
        assert ulps_off(stats.var_biased[c], m2 / n) <= VAR_ULPS, where
        if n > 1:
            assert ulps_off(stats.var_unbiased[c], m2 / (n - 1)) <= VAR_ULPS, where
