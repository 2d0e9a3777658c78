"""The float64 reference against hand-derived values and exact rational arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bninspect.conventions.rules import PYTORCH
from bninspect.numerics import kernels, reference
from bninspect.numerics.reference import (
    channel_statistics,
    exact_sum_needed,
    normalize,
    reference_forward,
    std_of,
)
from bninspect.numerics.running import blend, coefficients, initial_state

from rationals import assert_statistics_exact_to_ulps, exact_statistics
from strategies import cancelling_tensors, float_channels, tensors


def test_hand_derived_statistics():
    # channel 0 holds 1, 2, 3, 4: mean 2.5, squared deviations 2.25+0.25+0.25+2.25 = 5
    # channel 1 holds -1, -1, 3, 3: mean 1, squared deviations 4 * 4 = 16
    x = np.array([[[1, 2], [-1, -1]], [[3, 4], [3, 3]]], dtype=np.float32)  # (N=2, C=2, L=2)
    stats = channel_statistics(x)
    assert stats.count == 4
    np.testing.assert_array_equal(stats.total, [10.0, 4.0])
    np.testing.assert_array_equal(stats.mean, [2.5, 1.0])
    np.testing.assert_array_equal(stats.m2, [5.0, 16.0])
    np.testing.assert_array_equal(stats.var_biased, [1.25, 4.0])
    np.testing.assert_allclose(stats.var_unbiased, [5 / 3, 16 / 3], rtol=1e-15)


def test_hand_derived_output():
    # x = 1 in channel [1, 2, 3, 4]: (1 - 2.5) / sqrt(1.25 + 1e-5) * 2 + 0.5
    expected = -1.5 / math.sqrt(1.25 + 1e-5) * 2 + 0.5
    assert normalize(1.0, 2.5, std_of(1.25, 1e-5), 2.0, 0.5) == pytest.approx(expected, rel=1e-15)


def test_unbiased_variance_of_one_value_is_undefined():
    stats = channel_statistics(np.array([[5.0, 7.0]], dtype=np.float32))
    assert stats.count == 1
    np.testing.assert_array_equal(stats.var_biased, [0.0, 0.0])
    assert np.all(np.isnan(stats.var_unbiased))


def test_constant_channel_with_zero_eps_gives_bias():
    # var + eps = 0: x_hat is 0/0; the reference takes the limit eps -> 0+, which is 0.
    values = np.full(6, 3.0)
    y = normalize(values, 3.0, std_of(0.0, 0.0), 2.0, 0.25)
    np.testing.assert_array_equal(y, np.full(6, 0.25))


def test_nan_and_inf_are_counted_and_propagate_to_their_channel_only():
    x = np.zeros((2, 3, 2), dtype=np.float32)
    x[0, 0, 0] = np.nan
    x[1, 1, 1] = np.inf
    x[0, 1, 0] = -np.inf
    x[:, 2] = [[1, 2], [3, 4]]
    stats = channel_statistics(x)
    np.testing.assert_array_equal(stats.nan_count, [1, 0, 0])
    np.testing.assert_array_equal(stats.posinf_count, [0, 1, 0])
    np.testing.assert_array_equal(stats.neginf_count, [0, 1, 0])
    assert np.isnan(stats.mean[0]) and np.isnan(stats.mean[1])
    assert stats.mean[2] == 2.5 and stats.m2[2] == 5.0


def test_running_update_rule():
    keep, take = coefficients(PYTORCH, 0.1, step=1)
    np.testing.assert_allclose(
        blend(np.array([1.0, 0.0]), np.array([3.0, 2.0]), keep, take),
        [0.9 * 1.0 + 0.1 * 3.0, 0.1 * 2.0],
        rtol=1e-15,
    )


def test_forward_uses_biased_to_normalize_and_unbiased_for_the_buffer():
    x = np.array([[[1, 2], [-1, -1]], [[3, 4], [3, 3]]], dtype=np.float32)
    stats = channel_statistics(x)
    forward = reference_forward(stats, initial_state(np.zeros(2), np.ones(2)), 1e-5, 0.1, True)
    np.testing.assert_array_equal(forward.var, [1.25, 4.0])
    np.testing.assert_allclose(forward.running_var, [0.9 + 0.1 * 5 / 3, 0.9 + 0.1 * 16 / 3])
    held = initial_state(np.full(2, 7.0), np.full(2, 2.0))
    evaluated = reference_forward(stats, held, 1e-5, 0.1, train=False)
    np.testing.assert_array_equal(evaluated.mean, [7.0, 7.0])
    np.testing.assert_array_equal(evaluated.running_var, [2.0, 2.0])
    np.testing.assert_allclose(evaluated.std, np.sqrt(2.0 + 1e-5), rtol=1e-15)


DTYPES = [np.float64, np.float32, np.float16]


@pytest.mark.parametrize("dtype", DTYPES)
@given(data=st.data())
def test_statistics_match_exact_rational_arithmetic_to_an_ulp(dtype, data):
    """Mean, m2 and both variances within 1.5-2.5 float64 ULPs of the exact values: on ordinary
    tensors (offset and scaled normals), on channels of hypothesis' own floats, and on channels
    whose values cancel (the review's 50 x 1e16, 50 x -1e16 and ten normals, and the like),
    where the mean was once off by 1e16 ULPs and of the wrong sign."""
    x = data.draw(st.one_of(tensors(dtype=dtype), cancelling_tensors(dtype), float_channels(dtype)))
    assert_statistics_exact_to_ulps(channel_statistics(x), x)


def reviewed_channels(dtype) -> np.ndarray:
    """The review's case: per channel 50 values of 1e16, 50 of -1e16 and 10 standard normals."""
    rng = np.random.default_rng(4)
    big = np.concatenate([np.full((5, 3, 10), 1e16), np.full((5, 3, 10), -1e16)])
    return np.concatenate([big, rng.standard_normal((1, 3, 10))]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_values_that_cancel_get_the_correctly_rounded_mean(dtype):
    x = reviewed_channels(dtype)
    stats = channel_statistics(x)
    for c, (_, mean, m2) in enumerate(exact_statistics(x)):
        # channel 1 was -0.0015225 for +0.0106538: now the exact value, rounded once
        assert stats.mean[c] == float(mean) and stats.m2[c] == float(m2)


def test_only_channels_whose_sums_cannot_be_vouched_for_are_recomputed():
    # The review's channels cancel 1e18 of magnitude to ~1: beyond the kernel's error-free
    # sums. Ordinary data, zero-mean or not, never takes the slow exact path.
    assert exact_sum_needed(kernels.moments(reviewed_channels(np.float64), "float64")).all()
    z = np.random.default_rng(0).standard_normal((4, 32, 64, 64))
    for x in (z, z + 3, np.maximum(z, 0), z + 0.5):
        for dtype in ("float64", "float32", "float16"):
            assert not exact_sum_needed(kernels.moments(x.astype(dtype), dtype)).any()


def test_the_exact_recompute_reads_a_channel_in_pieces(monkeypatch):
    x = np.ascontiguousarray(reviewed_channels(np.float64).transpose(2, 1, 0))  # (10, 3, 11)
    pieces = []
    monkeypatch.setattr(reference, "EXACT_READ", 4)  # 11 values per row: 3 pieces per row
    stats = channel_statistics(x, after_block=pieces.append)
    exact_pieces = [r for r in pieces if r.c1 - r.c0 == 1]
    assert exact_pieces and max(r.values(11) for r in exact_pieces) <= 4
    for c in range(3):
        covered = sorted((r.n0, r.s0, r.s1) for r in exact_pieces if r.c0 == c)
        assert covered == [(n, s, min(11, s + 4)) for n in range(10) for s in range(0, 11, 4)]
    assert_statistics_exact_to_ulps(stats, x)
