"""Hostile values (issue 14, items 9 and 11): NaN, infinities, the dtype's largest and smallest
numbers through every command never raise a Python RuntimeWarning (pytest makes each an
error, which the command line reports as an internal error) and never crash the emulation:
overflow is a result, said in words."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strategies import hostile_tensors

COMMANDS = [
    ["run"],
    ["run", "--var-method"],
    ["run", "--stats-only"],
    ["run", "--mode", "eval", "--running-var", "0,1"],
    ["explain", "--index", "0,0", "--precision"],
    ["explain", "--index", "-1,1", "--precision", "--mode", "eval"],
    ["check", "--output", "{x}"],
    ["explain", "--index", "0,1", "--against", "{x}"],
]


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x=hostile_tensors(), command=st.sampled_from(COMMANDS), as_json=st.booleans())
def test_extreme_values_give_results_not_warnings(cli, tmp_path, x, command, as_json):
    """Exit 0 (3: check's output failing is a result too) or one clean error line (a value
    that does not fit a vector, eps that PyTorch refuses...); never an internal error."""
    path = tmp_path / "x.npy"
    np.save(path, x)
    index = [a for a in command if "," in a and a[0] in "-0"]
    if index:  # an index of the drawn tensor's rank
        command = [a if a not in index else ",".join([a] + ["0"] * (x.ndim - 2)) for a in command]
    args = [a.format(x=path) for a in command] + ["--input", path] + ["--json"] * as_json
    if "--running-var" in args and x.shape[1] != 2:
        args[args.index("--running-var") + 1] = ",".join(["1"] * x.shape[1])
    result = cli.runner.invoke(cli.app, [str(a) for a in args], prog_name="bninspect")
    note = f"{args}\n{x!r}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "internal error" not in result.stderr, note
    assert "Warning" not in result.stderr, note
    if result.exit_code not in (0, 3):
        assert result.exit_code in (1, 2) and result.stdout == "", note
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, note


def _near_the_largest(low: float) -> np.ndarray:
    """Channels of float32 values at 3e38 but one at ``low``: PyTorch's output is finite, its
    float32 sum of squared deviations is not."""
    x = np.full((2, 2, 2, 2), 3.0e38, np.float32)
    x[0, :, 0, 0] = low
    return x


@pytest.mark.parametrize(
    ("x", "dtype", "step"),
    [
        (_near_the_largest(-3.0e38), "float32", "var_sum = inf"),
        (_near_the_largest(-3.3e38), "float32", "var_sum = inf"),
    ],
)
def test_precision_near_the_largest_value_reports_the_overflow(cli, tmp_path, x, dtype, step):
    """It used to end in "internal error (OverflowError: cannot convert Infinity to integer
    ratio)"; PyTorch's own sum of squares overflows there, and the report says so."""
    path = tmp_path / "x.npy"
    np.save(path, x)
    doc = cli.json(
        "explain", "--input", path, "--index", "0,0,0,0", "--precision", "--dtype", dtype
    )
    assert doc["precision"] is None
    reason = doc["null_reasons"]["/precision"]
    assert reason.startswith(f"PyTorch's {dtype} arithmetic for this element overflows: {step}")
    assert "so there are no finite bits to attribute to each step" in reason


def test_rounding_overflows_as_ieee_does():
    """The emulation's rounding: beyond the largest number by half an ULP or more is
    infinity (IEEE round to nearest), below it the largest number; NaN and infinities stay."""
    from fractions import Fraction

    from bninspect.pytorch.cpu_emulation import divide, round_to

    largest = float(np.finfo(np.float32).max)
    half_ulp = Fraction(2) ** (127 - 24)  # float32's ULP at its largest is 2**104
    assert round_to(Fraction(largest) + half_ulp, "float32") == np.inf
    assert round_to(Fraction(largest) + half_ulp - 1, "float32") == largest
    assert round_to(-(Fraction(largest) + half_ulp), "float32") == -np.inf
    assert round_to(Fraction(10) ** 400, "float64") == np.inf  # beyond float64's range too
    assert round_to(float("inf"), "float32") == np.inf
    assert np.isnan(round_to(float("nan"), "bfloat16"))
    assert round_to(Fraction(65520), "float16") == np.inf  # float16: max 65504, ULP 32
    assert round_to(Fraction(65519), "float16") == 65504.0
    assert divide(1, Fraction(0)) == np.inf and np.isnan(divide(0, 0))


def test_precision_refuses_what_would_take_minutes(server, tmp_path):
    """One value per image: the emulation walks each value in Python (about 0.1 ms each);
    10**7 of them used to run for hours. Refused before any work (in its own process, with
    a time limit)."""
    result = server.run(
        ["explain", "--shape", "10000000,2", "--index", "0,0", "--precision"], tmp_path,
        timeout=30,
    )
    assert (result["status"], result["code"], result["stdout"]) == ("exit", 2, "")
    assert result["stderr"] == "Error: " + (
        "--precision redoes PyTorch's arithmetic for one value per image in Python, one value "
        "at a time (about 0.1 ms each): the channel's 10000000 values would take about 17 "
        "minutes; explain a batch of at most 200000 samples (--batch-size, or a slice of the "
        "input)\n"
    )
