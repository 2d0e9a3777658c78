"""The C kernels against the plain numpy formulas they must reproduce, and their block merging."""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bninspect.dtypes import FORMATS
from bninspect.numerics import _kernels, kernels
from bninspect.numerics.agreement import elementwise_errors
from bninspect.numerics.reference import channel_statistics, channel_values, normalize

from strategies import cancelling_tensors, tensors


def independent_moments(x):
    """Count, exact sum (math.fsum), sum of |x|, and m2 straight from numpy, per channel."""
    rows = [channel_values(x, c) for c in range(x.shape[1])]
    return [
        (v.size, math.fsum(v), np.abs(v).sum(), v.mean(), ((v - v.mean()) ** 2).sum()) for v in rows
    ]


@pytest.mark.parametrize("dtype", list(FORMATS))
@given(x=tensors(dtype=np.float64), block=st.sampled_from([4, 64, 1000, 1 << 20]))
def test_moments_match_numpy_for_every_dtype_and_block_size(dtype, x, block):
    x = x.astype(FORMATS[dtype].numpy)
    got = kernels.moments(x, dtype, block_bytes=block)
    for c, (count, exact_total, magnitude, mean, m2) in enumerate(independent_moments(x)):
        assert got.count[c] == count
        # Compensated sums: within a few float64 ULPs of sum |x|, whatever the cancellation.
        assert abs(got.total[c] - exact_total) <= 4 * 2.0**-52 * magnitude
        np.testing.assert_allclose(got.m2[c], m2, rtol=1e-10, atol=1e-12 * count * mean**2)


@pytest.mark.parametrize("dtype", list(FORMATS))
@given(data=st.data(), block=st.sampled_from([4, 64, 4096, 1 << 23]))
def test_the_sum_is_within_the_error_bound_the_kernel_gives(dtype, data, block):
    """total + total_lo is within total_err of the exact sum: the bound that decides which
    channels reference.channel_statistics recomputes exactly must hold, on values that cancel
    too, through the Python merges of blocks. Where the values cancel (shift 0) the bound is
    tiny, so the sum is exact to about a ULP."""
    drawn = np.float32 if dtype == "bfloat16" else FORMATS[dtype].numpy
    x = data.draw(st.one_of(tensors(dtype=drawn), cancelling_tensors(drawn)))
    x = x.astype(FORMATS[dtype].numpy)
    got = kernels.moments(x, dtype, block_bytes=block)
    for c in range(x.shape[1]):
        exact = sum(map(Fraction, channel_values(x, c).tolist()), Fraction(0))
        error = abs(Fraction(got.total[c]) + Fraction(got.total_lo[c]) - exact)
        assert error <= Fraction(got.total_err[c]), (c, float(error), got.total_err[c])


def hostile_channel(pattern: str, n: int, seed: int) -> np.ndarray:
    """Values that defeat a poorly chosen shift in the one-pass sums: a big offset (the first
    chunk's shift of 0 is far off), a trend (every chunk's mean moves past the last), one huge
    spike, a constant, blocks of alternating level, and a mean near the spread."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(n)
    return {
        "offset": 1e4 + noise,
        "trend": np.linspace(-50.0, 50.0, n) + noise,
        "spike": np.where(np.arange(n) == n // 3, 1e7, noise),
        "constant": np.full(n, 3.25),
        "levels": np.where((np.arange(n) // 2048) % 2 == 0, 1e3, -1e3) + noise,
        "mean-near-spread": 1.0 + noise,
    }[pattern]


@pytest.mark.parametrize(
    "pattern", ["offset", "trend", "spike", "constant", "levels", "mean-near-spread"]
)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["one long run", "many short runs"])
@settings(max_examples=12, deadline=None)  # exact sums over thousands of values are slow
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(2, 9000),
    block=st.sampled_from([4096, 1 << 23]),
)
def test_moments_of_long_hostile_channels_match_exact_rationals(
    pattern, dtype, layout, seed, n, block
):
    values = hostile_channel(pattern, n, seed).astype(dtype)
    # (1, 1, n) streams chunks straight from the array; (n, 1, 1) gathers rows into a buffer.
    # Small blocks make kernels.merge_moments join the kernel's results, large ones the kernel.
    x = values.reshape(1, 1, n) if layout == "one long run" else values.reshape(n, 1, 1)
    got = kernels.moments(x, dtype, block_bytes=block)
    exact = [Fraction(float(v)) for v in values]
    total = sum(exact)
    mean = total / n
    m2 = sum((v - mean) ** 2 for v in exact)
    magnitude = float(np.abs(values.astype(np.float64)).sum())
    assert abs(Fraction(got.total[0]) - total) <= Fraction(4 * 2.0**-52) * Fraction(magnitude)
    error = abs(Fraction(got.total[0]) + Fraction(got.total_lo[0]) - total)
    assert error <= Fraction(got.total_err[0])  # the bound the kernel gives holds
    assert abs(Fraction(got.m2[0]) + Fraction(got.m2_lo[0]) - m2) <= Fraction(4 * 2.0**-52) * m2


@pytest.mark.parametrize("n", [1000, 2048, 3000, 9000])
def test_huge_float64_values_whose_squares_overflow_keep_their_variance(n):
    # x^2 overflows beyond ~1e154, and the sum of squares of 2048 values beyond ~3e152; the
    # squared deviations (~1e300 each) do not, so m2 is finite and must be right.
    values = 1e153 + 1e150 * np.random.default_rng(n).standard_normal(n)
    got = kernels.moments(values.reshape(1, 1, n), "float64")
    exact = [Fraction(float(v)) for v in values]
    mean = sum(exact) / n
    m2 = sum((v - mean) ** 2 for v in exact)
    assert abs(Fraction(got.m2[0]) - m2) <= Fraction(8 * 2.0**-52) * m2


@pytest.mark.parametrize("block", [4096, 1 << 23])
def test_a_huge_constant_channel_has_zero_variance(block):
    # Merging with an empty side must not multiply inf by 0 (a NaN variance).
    got = kernels.moments(np.full((40, 2, 3000), 1.5e300), "float64", block_bytes=block)
    np.testing.assert_array_equal(got.m2, [0.0, 0.0])
    np.testing.assert_array_equal(got.mean, [1.5e300, 1.5e300])


def test_regions_cover_the_array_exactly_once():
    for shape, block in [((5, 3, 7), 8), ((1, 2, 10000), 400), ((3, 4, 1), 12), ((2, 1, 9), 4)]:
        N, C, S = shape
        seen = np.zeros(shape, dtype=int)
        for r in kernels.regions(N, C, S, 4, block):
            seen[r.n0 : r.n1, r.c0 : r.c1, r.s0 : r.s1] += 1
        np.testing.assert_array_equal(seen, 1)


def test_non_finite_values_are_counted_and_left_out():
    x = np.arange(40, dtype=np.float32).reshape(2, 2, 10)
    x[0, 0, 3] = np.nan
    x[1, 0, 4] = np.inf
    x[1, 1, 0] = -np.inf
    got = kernels.moments(x, "float32", block_bytes=16)
    np.testing.assert_array_equal(got.nan, [1, 0])
    np.testing.assert_array_equal(got.posinf, [1, 0])
    np.testing.assert_array_equal(got.neginf, [0, 1])
    finite = [v[np.isfinite(v)] for v in (channel_values(x, 0), channel_values(x, 1))]
    np.testing.assert_array_equal(got.count, [f.size for f in finite])
    np.testing.assert_allclose(got.mean, [f.mean() for f in finite], rtol=1e-15)
    stats = channel_statistics(x)
    assert np.isnan(stats.total[0]) and stats.total[1] == -np.inf and np.isnan(stats.m2[1])


@pytest.mark.parametrize("dtype", list(FORMATS))
@given(x=tensors(dtype=np.float64), data=st.data())
def test_output_errors_match_numpy_bit_for_bit(dtype, x, data):
    x = x.astype(FORMATS[dtype].numpy)
    channels = x.shape[1]
    mean = np.array(data.draw(st.lists(st.floats(-5, 5), min_size=channels, max_size=channels)))
    std = np.array(data.draw(st.lists(st.floats(0, 5), min_size=channels, max_size=channels)))
    weight = np.array(data.draw(st.lists(st.floats(-2, 2), min_size=channels, max_size=channels)))
    bias = np.array(data.draw(st.lists(st.floats(-2, 2), min_size=channels, max_size=channels)))
    y = (x.astype(np.float64) * data.draw(st.sampled_from([0.5, -1.0, 1e-3]))).astype(x.dtype)
    got = kernels.output_errors(x, y, dtype, mean, std, weight, bias)
    for c in range(channels):
        reference = normalize(channel_values(x, c), mean[c], std[c], weight[c], bias[c])
        abs_error, ulp_error = elementwise_errors(channel_values(y, c), reference, dtype)
        assert got.max_abs[c] == abs_error.max()
        assert got.max_ulp[c] == ulp_error.max()
        finite = reference[np.isfinite(reference)]
        assert got.max_reference[c] == (np.abs(finite).max() if finite.size else 0.0)
        flat = np.arange(x.size).reshape(x.shape)[:, c].reshape(-1)
        # The first element with the largest ULP error; none (-1) when every error is 0.
        expected = flat[np.argmax(ulp_error)] if ulp_error.max() > 0 else -1
        assert got.argmax_ulp[c] == expected


def test_output_errors_of_non_finite_pairs():
    x = np.array([[[0.0, 1.0, 2.0, 3.0, 4.0]]], dtype=np.float32)
    y = np.array([[[np.nan, np.inf, 5.0, np.nan, 0.25]]], dtype=np.float32)
    got = kernels.output_errors(
        x, y, "float32", np.array([np.nan]), np.ones(1), np.ones(1), np.zeros(1)
    )
    assert got.max_abs[0] == np.inf  # a number where the reference is NaN is a disagreement
    x[0, 0, 1:] = np.nan
    got = kernels.output_errors(
        x, x.copy(), "float32", np.zeros(1), np.ones(1), np.ones(1), np.zeros(1)
    )
    assert got.max_abs[0] == 0.0 and got.max_ulp[0] == 0.0


def test_float64_subnormal_ulps_do_not_overflow():
    x = np.zeros((1, 1, 3))
    y = np.array([[[5e-324, 1e-310, 0.0]]])
    got = kernels.output_errors(x, y, "float64", np.zeros(1), np.ones(1), np.ones(1), np.zeros(1))
    assert got.max_ulp[0] == 1e-310 / 5e-324  # ULPs of 2**-1074 at a zero reference


@given(
    first=st.integers(0, 2 * 5000 - 1),
    second=st.integers(0, 2 * 5000 - 1),
    dtype=st.sampled_from(list(FORMATS)),
)
def test_the_first_of_equal_worst_errors_is_named_across_chunks(first, second, dtype):
    # Channels of 10000 values span many of the kernel's 1024-value chunks; two elements get
    # the same, largest error, and the first in memory order must be the one named.
    form = FORMATS[dtype]
    x = np.full((2, 1, 5000), 1.0, form.numpy)  # reference 1 everywhere (mean 0, std 1)
    y = x.copy()
    y.reshape(-1)[[first, second]] = 1.5
    got = kernels.output_errors(x, y, dtype, np.zeros(1), np.ones(1), np.ones(1), np.zeros(1))
    reference = np.ones(x.size)
    _, ulp_error = elementwise_errors(y.reshape(-1), reference, dtype)
    assert got.max_ulp[0] == ulp_error.max()
    assert got.argmax_ulp[0] == min(first, second)


@pytest.mark.skipif(not _kernels.use_wide(True), reason="this CPU has no AVX-512")
@given(
    dtype=st.sampled_from(list(FORMATS)),
    size=st.integers(1, 3000),
    seed=st.integers(0, 2**32 - 1),
    offset=st.sampled_from([0.0, 1.0, -300.0, 1e4]),
)
def test_the_8_lane_sums_give_the_4_lane_bits(dtype, size, seed, offset):
    # Lengths around the 8-, 64- and 2048-value steps, offsets that take the shifted and the
    # second-pass paths: the AVX-512 build must not make the reference depend on the CPU.
    x = np.random.default_rng(seed).standard_normal((2, 3, size)) * 2 + offset
    x = x.astype(FORMATS[dtype].numpy)
    try:
        wide = kernels.moments(x, dtype)
        _kernels.use_wide(False)
        narrow = kernels.moments(x, dtype)
    finally:
        _kernels.use_wide(True)
    for field in dataclasses.fields(kernels.Moments):
        a, b = getattr(wide, field.name), getattr(narrow, field.name)
        assert a.tobytes() == b.tobytes(), field.name
