"""Health flags on hand-built channels, and the run table's legend."""

from __future__ import annotations

import numpy as np
import pytest

from bninspect.numerics.health import EPS_SHARE_LIMIT, cancellation_limit, channel_health
from bninspect.report.run import build_run_result

from helpers import inspect_array


def flags_of(x, **layer):
    return [c.flags for c in build_run_result(inspect_array(x, **layer)).channels]


def test_flags_on_hand_built_channels():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6, 8)).astype(np.float32)
    x[:, 0] = 7.0  # constant
    x[:, 1] += 1e5  # |mean| / std ~ 1e5: cancellation
    x[0, 2, 3] = np.nan
    x[1, 3, 0] = np.inf
    x[:, 4] *= 1e-3  # variance ~1e-6, below eps = 1e-5: eps dominates
    flags = flags_of(x)
    assert flags[0] == ("constant", "eps", "cancel")  # 7 / sqrt(1e-5) = 2214 > 203 as well
    assert flags[1] == ("cancel",)
    assert flags[2] == ("nan",)
    assert flags[3] == ("inf",)
    assert flags[4] == ("eps",)
    assert flags[5] == ()


def test_float16_overflow_risk_only_for_float16():
    x = np.linspace(-200, 200, 32).reshape(4, 1, 8)  # mean 0, sum of squares 4.5e5 > 65504
    assert flags_of(x.astype(np.float16)) == [("fp16-overflow",)]
    assert flags_of(x.astype(np.float32)) == [()]


def test_measures_by_hand():
    health = channel_health(
        count=10,
        batch_mean=3.0,
        batch_m2=40.0,
        nan=0,
        inf=0,
        mean=3.0,
        var=4.0,
        eps=1.0,
        dtype="float32",
    )
    assert health.eps_share == 1.0 / 5.0
    assert health.mean_to_std == 3.0 / np.sqrt(5.0)
    assert health.bits_lost == np.log2(3.0 / np.sqrt(5.0))
    assert health.sum_of_squares == 40.0 + 10 * 9.0
    assert health.flags == ("eps",)


def test_thresholds_are_strict():
    at_limit = channel_health(
        count=4,
        batch_mean=0.0,
        batch_m2=4.0,
        nan=0,
        inf=0,
        mean=0.0,
        var=(1 - EPS_SHARE_LIMIT) / EPS_SHARE_LIMIT,
        eps=1.0,
        dtype="float32",
    )
    assert "eps" not in at_limit.flags
    assert cancellation_limit("float32") == pytest.approx(2.0 ** (23 / 3), rel=1e-15)
    mean = 2.0**9
    cancel = channel_health(
        count=4,
        batch_mean=mean,
        batch_m2=4.0,
        nan=0,
        inf=0,
        mean=mean,
        var=1.0,
        eps=0.0,
        dtype="float32",
    )
    assert cancel.flags == ("cancel",) and cancel.bits_lost == 9.0
    assert channel_health(
        count=4,
        batch_mean=8.0,
        batch_m2=4.0,
        nan=0,
        inf=0,
        mean=8.0,
        var=1.0,
        eps=0.0,
        dtype="bfloat16",
    ).flags == ("cancel",)  # 3 of 7 bits


def test_table_legend_and_json(cli, tmp_path):
    path = tmp_path / "x.npy"
    x = np.random.default_rng(1).standard_normal((2, 2, 4)).astype(np.float32)
    x[:, 1] = 2.0
    np.save(path, x)
    doc = cli.json("run", "--input", path)
    assert doc["channels"][1]["flags"] == ["constant", "eps", "cancel"]
    assert set(doc["flag_legend"]) == {"constant", "eps", "cancel"}
    table = cli("run", "--input", path).stdout
    assert "flag constant" in table and "variance 0: every output equals the bias" in table


def test_constant_legend_in_eval_mode_does_not_promise_the_bias(cli, tmp_path):
    """Found by review: in eval mode a constant channel's output is (2 - 0) / sqrt(1 + eps)."""
    path = tmp_path / "x.npy"
    x = np.random.default_rng(1).standard_normal((2, 2, 4)).astype(np.float32)
    x[:, 1] = 2.0
    np.save(path, x)
    doc = cli.json("run", "--input", path, "--mode", "eval")
    assert "constant" in doc["channels"][1]["flags"]
    assert "not the bias" in doc["flag_legend"]["constant"]
    explained = cli.json("explain", "--input", path, "--mode", "eval", "--index", "0,1,0")
    assert explained["y"]["reference"] == pytest.approx(2 / np.sqrt(1 + 1e-5), rel=1e-12)


def test_the_cancel_legend_gives_the_limit_of_the_input_dtype(cli, tmp_path):
    """Found by review: the legend said float32's 203 on a float16 run, whose limit is 10.1
    (2**(10 / 3))."""
    path = tmp_path / "x.npy"
    x = np.array([[[-1.0, 1.0]], [[-1.0, 1.0]]], dtype=np.float16) + np.float16(20)  # 20 / 1
    np.save(path, x.reshape(2, 1, 2))
    doc = cli.json("run", "--input", path)
    assert doc["channels"][0]["flags"] == ["cancel"]
    assert "(float16: 10.1)" in doc["flag_legend"]["cancel"]
    assert "203" not in doc["flag_legend"]["cancel"]
