"""ULPs and error measures against values derived by hand from the IEEE formats."""

from __future__ import annotations

import numpy as np
import pytest

from bninspect.numerics.agreement import (
    compare_value,
    elementwise_errors,
    max_errors,
    round_to_dtype,
    ulp,
)
from bninspect.results.common import Undefined


@pytest.mark.parametrize(
    ("value", "dtype", "expected"),
    [
        (1.0, "float32", 2.0**-23),
        (1.5, "float32", 2.0**-23),
        (-2.0, "float32", 2.0**-22),
        (0.75, "float16", 2.0**-11),
        (1.0, "bfloat16", 2.0**-7),
        (1.0, "float64", 2.0**-52),
        (0.0, "float32", 2.0**-149),  # the smallest subnormal spacing
        (1e-40, "float32", 2.0**-149),  # a float32 subnormal
        (0.0, "float16", 2.0**-24),
    ],
)
def test_ulp_by_hand(value, dtype, expected):
    assert ulp(value, dtype) == expected


def test_ulp_matches_numpy_spacing_for_numpy_dtypes():
    values = np.random.default_rng(1).standard_normal(1000) * 10.0 ** np.arange(-20, 20, 0.04)
    for dtype in ("float16", "float32", "float64"):
        with np.errstate(over="ignore"):  # out-of-range values become inf, filtered below
            rounded = values.astype(dtype)
        # numpy's spacing is to the next number away from zero: the same as ours except at exact
        # powers of two, where ours (the spacing below) is half; standard normals avoid those.
        finite = np.isfinite(rounded) & (np.abs(rounded) > np.finfo(dtype).tiny)
        np.testing.assert_array_equal(
            ulp(rounded[finite], dtype), np.abs(np.spacing(rounded[finite])).astype(np.float64)
        )


def test_errors_of_non_finite_values():
    actual = np.array([np.nan, np.inf, np.inf, 1.0, np.nan, 1.0])
    reference = np.array([np.nan, np.inf, -np.inf, np.nan, 2.0, 1.0 + 2.0**-23])
    abs_error, ulp_error = elementwise_errors(actual, reference, "float32")
    np.testing.assert_array_equal(abs_error, [0.0, 0.0, np.inf, np.inf, np.inf, 2.0**-23])
    np.testing.assert_array_equal(ulp_error, [0.0, 0.0, np.inf, np.inf, np.inf, 1.0])


def test_max_errors_of_nothing_is_undefined():
    max_abs, max_ulp = max_errors(np.array([]), np.array([]), "float32")
    assert isinstance(max_abs, Undefined) and isinstance(max_ulp, Undefined)


def test_round_to_dtype_is_round_to_nearest_even():
    assert round_to_dtype(1.0 + 2.0**-24, "float32") == 1.0  # a tie: to even
    assert round_to_dtype(1.0 + 3 * 2.0**-24, "float32") == 1.0 + 2.0**-22
    assert round_to_dtype(1e39, "float32") == np.inf


def test_compare_value_correctly_rounded():
    reference = 1.0 + 2.0**-25  # rounds to 1.0 in float32
    exact = compare_value("y", reference, 1.0, "float32", 1.0)
    assert exact.correctly_rounded and exact.ulp_error == 0.25
    assert exact.torch_hex == "0x1.0000000000000p+0"
    off_by_one = compare_value("y", reference, 1.0 + 2.0**-23, "float32", 1.0)
    assert not off_by_one.correctly_rounded
    assert off_by_one.abs_error == 2.0**-23 - 2.0**-25


def test_compare_value_counts_at_the_given_scale():
    # y = 2**-10 + 2**-30 beside PyTorch's 2**-10: 2**-30 apart, which is 2**-30 / 2**-33 = 8
    # float32 ULPs at y (ULP 2**-33 in [2**-10, 2**-9)), and 2**-30 / 2**-23 = 1/128 ULP at a
    # channel scale of 1.5 (ULP 2**-23 in [1, 2))
    compared = compare_value("y", 2.0**-10 + 2.0**-30, 2.0**-10, "float32", 1.5)
    assert compared.ulp_error == 8.0
    assert compared.ulp_error_at_scale == 2.0**-7 and compared.scale == 1.5
    # no scale (weight 0 and y 0, or a NaN buffer): an error cannot be counted, an agreement can
    assert isinstance(
        compare_value("y", 0.0, 2.0**-30, "float32", 0.0).ulp_error_at_scale, Undefined
    )
    assert compare_value("y", 0.0, 0.0, "float32", 0.0).ulp_error_at_scale == 0
    assert compare_value("running_mean", np.nan, np.nan, "float32", np.nan).ulp_error_at_scale == 0
