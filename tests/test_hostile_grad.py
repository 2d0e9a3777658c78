"""Hostile values through the backward (issue 14, item 9, for --grad): NaN, infinities and
values near the dtype's largest, in x or in dy, never crash the emulation of PyTorch's
backward (grad/cpu_backward.py) or the exact derivation (explain --grad's sums): overflow and
NaN are results, said in words, as the forward's --precision does."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strategies import hostile_tensors

GRAD_COMMANDS = [
    ["run", "--grad"],
    ["explain", "--index", "0,0", "--grad"],
    ["explain", "--index", "0,0", "--grad", "--precision"],
    ["explain", "--index", "-1,-1", "--grad", "--precision"],
    ["explain", "--index", "0,-1", "--grad", "--precision", "--mode", "eval"],
]


def _clean(result, note: str) -> None:
    assert "internal error" not in result.stderr, note
    assert "Warning" not in result.stderr, note
    if result.exit_code != 0:
        assert result.exit_code in (1, 2) and result.stdout == "", note
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, note


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    x=hostile_tensors(),
    hostile_dy=st.booleans(),
    data=st.data(),
    command=st.sampled_from(GRAD_COMMANDS),
    as_json=st.booleans(),
)
def test_extreme_values_through_the_backward(cli, tmp_path, x, hostile_dy, data, command,
                                             as_json):  # fmt: skip
    """Exit 0 or one clean error line; never an internal error or a warning; the JSON
    parses (no NaN literals: non-finite values are null with a reason)."""
    path = tmp_path / "x.npy"
    np.save(path, x)
    args = [a if "," not in a else ",".join([a] + ["0"] * (x.ndim - 2)) for a in command]
    args += ["--input", str(path)] + ["--json"] * as_json
    if hostile_dy:  # dy of the same shape and dtype, drawn the same way
        dy = data.draw(hostile_tensors().filter(lambda t: t.dtype == x.dtype))
        dy = np.resize(dy, x.shape).astype(x.dtype)
        np.save(tmp_path / "dy.npy", dy)
        args += ["--grad-output", str(tmp_path / "dy.npy")]
    result = cli.runner.invoke(cli.app, args, prog_name="bninspect")
    note = f"{args}\n{x!r}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    _clean(result, note)
    if as_json and result.exit_code == 0:
        import json

        json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))


def _signs(shape, value, dtype) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (np.where(rng.random(shape) < 0.5, -1.0, 1.0) * value).astype(dtype)


def _with(value, where) -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32)
    x[where] = value
    return x


@pytest.mark.parametrize(
    ("x", "index", "reason"),
    [  # each ended in "internal error" (OverflowError / ValueError from Fraction or fsum)
        (_signs((2, 3, 4, 5), 3.4e38, np.float32), "1,2,3,4",
         "PyTorch's float32 backward for this element overflows: dotp = "),
        (_signs((2, 3, 4, 5), 1.7e308, np.float64), "1,2,3,4",
         "PyTorch's float64 backward for this element overflows: dotp = "),
        (np.full((2, 3, 4, 5), np.nan, np.float32), "1,2,3,4",
         "channel 2's x holds NaN or an infinity, which PyTorch's float32 backward carries"),
        (_with(np.nan, (1, 2, 3, 4)), "1,2,3,4",
         "channel 2's x holds NaN or an infinity, which PyTorch's float32 backward carries"),
        (_with(np.inf, (0, 1, 0, 0)), "0,1,0,0",
         "channel 1's x holds NaN or an infinity, which PyTorch's float32 backward carries"),
    ],
)  # fmt: skip
def test_grad_precision_reports_what_left_the_finite_numbers(cli, tmp_path, x, index, reason):
    path = tmp_path / "x.npy"
    np.save(path, x)
    doc = cli.json("explain", "--input", path, "--index", index, "--grad", "--precision")
    assert doc["grad"]["precision"] is None
    found = doc["null_reasons"]["/grad/precision"]
    assert found.startswith(reason), found
    assert found.endswith(
        ("so there are no finite bits to attribute to each step",)
    ), found


def test_grad_precision_with_a_hostile_grad_output(cli, tmp_path):
    """dy near float32's largest, x ordinary: the sums of dy overflow in PyTorch's arithmetic."""
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "dy.npy", _signs(x.shape, 3.4e38, np.float32))
    doc = cli.json("explain", "--input", tmp_path / "x.npy", "--index", "1,2,3,4", "--grad",
                   "--precision", "--grad-output", tmp_path / "dy.npy")  # fmt: skip
    assert doc["grad"]["precision"] is None
    assert "PyTorch's float32 backward for this element overflows: " in (
        doc["null_reasons"]["/grad/precision"])  # fmt: skip


def test_rounded_sum_is_ieee_beyond_fsum():
    """math.fsum raises on an overflowing partial sum and on inf - inf; rounded_sum gives what
    IEEE arithmetic on the exact sum would: checked against exact rationals."""
    from fractions import Fraction

    from bninspect.numerics.reference import rounded_sum

    big = float(np.finfo(np.float64).max)
    assert rounded_sum([big, big, -big]) == big  # partial sums overflow; the sum does not
    assert rounded_sum([big, big]) == np.inf and rounded_sum([-big, -big]) == -np.inf
    assert np.isnan(rounded_sum([np.inf, -np.inf, 1.0])) and np.isnan(rounded_sum([np.nan]))
    assert rounded_sum([np.inf, 1.0]) == np.inf
    values = [0.1, 1e308, -1e308, 3.0]
    assert rounded_sum(values) == float(sum(map(Fraction, values)))


def test_exact_arithmetic_meets_infinities_as_ieee_does():
    """Found by the property test above: dy of 1.8e308 times x of 1.8e308 is an exact product
    beyond float64's range, which Python's Fraction + inf turned into "OverflowError: integer
    division result too large for a float". Finite (any size) + inf = inf, nonzero * inf = inf,
    0 * inf = NaN, as IEEE."""
    from fractions import Fraction

    from bninspect.pytorch.cpu_emulation import fused, plus, times

    huge = Fraction(10) ** 400
    assert plus(huge, -np.inf) == -np.inf and plus(-huge, np.inf) == np.inf
    assert times(Fraction(1, 10**400), np.inf) == np.inf  # not 0 * inf
    assert np.isnan(times(Fraction(0), np.inf)) and np.isnan(plus(huge, np.nan))
    assert plus(huge, -huge) == 0 and times(huge, huge) == huge**2  # exact while finite
    big = float(np.finfo(np.float64).max)
    assert fused(big, big, -np.inf, "float64", True) == -np.inf
    assert np.isnan(fused(0.0, np.inf, 1.0, "float32", False))
