"""check's derived tolerance (check/tolerance.py): correct outputs pass in every dtype, rank and
offset, PyTorch's and independent implementations' written in tests/independent_bn.py; the
catalogue's mistakes still fail where the data can tell them; the diagnosis judges a hypothesis
by the same bound, names pairs and mixed explanations; non-finite disagreements are mismatches."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from independent_bn import IMPLEMENTATIONS, two_pass

from bninspect.check.report import build_check_result
from bninspect.results.check import OutputInfo

from helpers import inspect_array
from strategies import shapes

DTYPES = {
    "float32": np.float32,
    "float64": np.float64,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
}
OFFSETS = [0.0, 1e1, 1e2, 1e3, 1e4]


def checked(x, y, weight=None, bias=None, mode="train", **options):
    """check's result for output y of input x (in-process: no files), default tolerance."""
    inspection = inspect_array(x, weight=weight, bias=bias, mode=mode)
    theirs = np.asarray(y).astype(np.float64)
    info = OutputInfo("y.npy", "0" * 64, theirs.shape, x.dtype.name)
    return build_check_result(inspection, theirs, info, None, None, 1, **options)


def torch_output(x, weight, bias):
    """PyTorch's own module in x's dtype, train mode."""
    module = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d}.get(
        x.ndim, torch.nn.BatchNorm3d
    )(x.shape[1])
    if x.dtype == ml_dtypes.bfloat16:  # exact: every bfloat16 is a float32
        tensor = torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(x))
    module = module.to(tensor.dtype)
    with torch.no_grad():
        module.weight.copy_(torch.tensor(weight))
        module.bias.copy_(torch.tensor(bias))
        y = module(tensor)
    return y.double().numpy()


def data(shape, dtype, offset, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale + offset).astype(DTYPES[dtype])
    channels = shape[1]
    weight = rng.uniform(0.5, 2.0, channels).astype(DTYPES[dtype]).astype(np.float64)
    bias = rng.uniform(-1.0, 1.0, channels).astype(DTYPES[dtype]).astype(np.float64)
    return x, weight, bias


@settings(max_examples=int(os.environ.get("TOLERANCE_EXAMPLES", "40")))
@given(
    shape=shapes(min_rank=2, max_rank=5, max_size=5),
    dtype=st.sampled_from(list(DTYPES)),
    offset=st.sampled_from(OFFSETS + [-3.0, -1e3]),
    scale=st.sampled_from([1e-2, 1.0, 1e2]),
    seed=st.integers(0, 2**32 - 1),
)
def test_pytorchs_own_output_passes_in_every_dtype_and_rank(shape, dtype, offset, scale, seed):
    """The issue's case: PyTorch's float16 output failed torch.testing's defaults against the
    float64 reference (its rounding to float16 plus float32 statistics)."""
    assume(dtype != "float16" or abs(offset) * scale + 10 * scale < 6e4)  # float16's range
    x, weight, bias = data(shape, dtype, offset * scale, seed, scale)
    result = checked(x, torch_output(x, weight, bias), weight, bias)
    assert result.passed, (result.diagnosis.conclusion, result.max_ulp_error_at_scale)
    assert result.diagnosis.conclusion.startswith("PASS: matches the stated settings")


def test_the_issues_float16_example_passes(cli, tmp_path):
    """bninspect run --shape 8,16,16,16 --dtype float16 --save-input/--save-output, then check:
    exit 0 (it was 3)."""
    g, t = tmp_path / "g.npy", tmp_path / "t.npy"
    cli("run", "--shape", "8,16,16,16", "--dtype", "float16", "--save-input", g,
        "--save-output", t)  # fmt: skip
    doc = json.loads(cli("check", "--input", g, "--output", t, "--json").stdout)
    assert doc["passed"] and doc["mismatches"] == 0
    assert doc["tolerance"]["source"].startswith("derived from float16")


@pytest.mark.parametrize("offset", OFFSETS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
def test_independent_correct_implementations_pass(name, dtype, offset):
    """Correct batch norms written independently (float32 loops summing one value at a time,
    numpy's pairwise sums, NHWC loops, Welford, onnxruntime) pass in every dtype at every
    offset: they lose about log2(|mean| / std) bits, as the bound allows."""
    if name == "onnxruntime" and dtype == "float64":
        pytest.skip("onnxruntime's eps attribute is float32: another eps in float64's ULPs")
    x, weight, bias = data((6, 4, 5, 6), dtype, offset)
    y = IMPLEMENTATIONS[name](x, weight, bias)
    result = checked(x, y, weight, bias)
    assert result.passed, (result.diagnosis.conclusion, result.max_ulp_error_at_scale)
    if offset >= 1e2 and dtype == "float32" and name != "onnxruntime":
        assert result.max_ulp_error_at_scale > 4  # more than the old fixed rounding allowance


def _mistaken(name, x, weight, bias):
    """The output of an implementation with mistake ``name`` in float64 (written here)."""
    wide = x.astype(np.float64)
    axes = (0, *range(2, x.ndim))
    w = weight.reshape(1, -1, *[1] * (x.ndim - 2))
    b = bias.reshape(w.shape)
    mean, var = wide.mean(axis=axes, keepdims=True), wide.var(axis=axes, keepdims=True)
    if name == "unbiased-variance":
        return (wide - mean) / np.sqrt(wide.var(axis=axes, keepdims=True, ddof=1) + 1e-5) * w + b
    if name == "eps-outside-sqrt":
        return (wide - mean) / (np.sqrt(var) + 1e-5) * w + b
    if name == "no-eps":
        return (wide - mean) / np.sqrt(var) * w + b
    if name == "per-sample":
        m, v = wide.mean(axis=(2, 3), keepdims=True), wide.var(axis=(2, 3), keepdims=True)
        return (wide - m) / np.sqrt(v + 1e-5) * w + b
    if name == "no-affine":
        return (wide - mean) / np.sqrt(var + 1e-5)
    if name == "weight-bias-swapped":
        return (wide - mean) / np.sqrt(var + 1e-5) * b + w
    if name == "other-eps":
        return (wide - mean) / np.sqrt(var + 1e-3) * w + b
    raise AssertionError(name)


MISTAKES = [
    "unbiased-variance",
    "eps-outside-sqrt",
    "no-eps",
    "per-sample",
    "no-affine",
    "weight-bias-swapped",
    "other-eps",
]


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("name", MISTAKES)
def test_mistakes_still_fail_in_every_dtype(name, dtype):
    """Each mistake moves the output by more than what a correct implementation in the dtype
    can leave, so it fails, and is named: 120 values per channel (bfloat16, whose ULP is 0.8%:
    8, where N / (N - 1) is 14%), std 0.003 for the eps mistakes (so eps matters)."""
    shape = (2, 3, 2, 2) if dtype == "bfloat16" else (4, 3, 5, 6)
    scale = 0.003 if "eps" in name else 1.0
    x, weight, bias = data(shape, dtype, 0.0, seed=1, scale=scale)
    y = _mistaken(name, x, weight, bias).astype(DTYPES[dtype])
    result = checked(x, y, weight, bias)
    assert not result.passed
    first = result.diagnosis.hypotheses[0]
    assert (first.name, first.explains) == (name, True), result.diagnosis.conclusion


@pytest.mark.parametrize("offset", [1e1, 1e2])
@pytest.mark.parametrize("name", ["unbiased-variance", "per-sample", "no-affine"])
def test_mistakes_still_fail_at_an_offset_in_float32(name, offset):
    """At |mean| / std up to 100 the unbiased variance over 120 values (a 0.4% scale) is still
    far beyond what a float32 implementation's cancellation can leave."""
    x, weight, bias = data((4, 3, 5, 6), "float32", offset, seed=2)
    y = _mistaken(name, x, weight, bias).astype(np.float32)
    result = checked(x, y, weight, bias)
    assert not result.passed
    assert result.diagnosis.hypotheses[0].name == name, result.diagnosis.conclusion


def c_loops(x, weight, bias, unbiased=False, channels_last=False, eps=1e-5):
    """A C-style float32 implementation (x float32): sums one value at a time; ``unbiased``
    divides the squared deviations by N - 1; ``channels_last`` takes statistics per index of
    the last axis (the NHWC-axes mistake), weight and bias along axis 1."""
    if channels_last:
        moved = np.ascontiguousarray(np.moveaxis(x, -1, 1))
        y = two_pass(moved, np.ones(moved.shape[1]), np.zeros(moved.shape[1]), eps=eps,
                     order="sequential", unbiased=unbiased)  # fmt: skip
        y = np.moveaxis(y, 1, -1).astype(np.float32)
        shape = (1, -1, *[1] * (x.ndim - 2))
        return y * weight.reshape(shape).astype(np.float32) + bias.reshape(shape).astype(np.float32)
    return two_pass(x, weight, bias, eps=eps, order="sequential", unbiased=unbiased)


@pytest.mark.parametrize("offset", [0.0, 1e1, 1e2])
def test_a_float32_c_loop_with_the_unbiased_variance_is_named(offset):
    """It leaves more than 4 ULP after the right hypothesis (its own float32 rounding) and
    was 'no known variant' before; judged by what a float32 implementation can leave, it is
    the unbiased variance."""
    x, weight, bias = data((8, 3, 6, 6), "float32", offset, seed=3)
    result = checked(x, c_loops(x, weight, bias, unbiased=True), weight, bias)
    assert not result.passed
    first = result.diagnosis.hypotheses[0]
    assert (first.name, first.explains) == ("unbiased-variance", True), result.diagnosis.conclusion


@pytest.mark.parametrize("offset", [0.0, 1e1, 1e2])
def test_a_float32_c_loop_with_nhwc_axes_is_named(offset):
    x, weight, bias = data((4, 3, 5, 3), "float32", offset, seed=4)
    result = checked(x, c_loops(x, weight, bias, channels_last=True), weight, bias)
    assert not result.passed
    first = result.diagnosis.hypotheses[0]
    assert (first.name, first.explains) == ("channels-last", True), result.diagnosis.conclusion


def naive_one_pass(x, weight, bias, order):
    """E[x^2] - E[x]^2 per channel in float32, summed in ``order``: "pairwise" (numpy),
    "sequential" (a C loop), "blocked" (16 lanes, then the lanes: a vectorized reduction)."""
    v = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1).astype(np.float32)
    n = np.float32(v.shape[1])
    if order == "pairwise":
        total, squares = v.sum(axis=1), (v * v).sum(axis=1)
    elif order == "sequential":
        total = np.cumsum(v, axis=1, dtype=np.float32)[:, -1]
        squares = np.cumsum(v * v, axis=1, dtype=np.float32)[:, -1]
    else:
        lanes = v.reshape(v.shape[0], -1, 16)
        total = np.cumsum(lanes, axis=1, dtype=np.float32)[:, -1].sum(axis=1)
        squares = np.cumsum(lanes * lanes, axis=1, dtype=np.float32)[:, -1].sum(axis=1)
    mean = total / n
    var = squares / n - mean * mean
    alpha = weight.astype(np.float32) / np.sqrt(var + np.float32(1e-5))
    beta = bias.astype(np.float32) - mean * alpha
    y = v * alpha[:, None] + beta[:, None]
    return np.moveaxis(y.reshape(x.shape[1], x.shape[0], *x.shape[2:]), 0, 1)


@pytest.mark.parametrize("order", ["pairwise", "sequential", "blocked"])
def test_the_naive_one_pass_variance_at_offset_100_is_named_in_any_order(order):
    """A framework's fast variance at offset 1e2 (|mean| / std ~ 100): named nothing before."""
    x, weight, bias = data((8, 3, 8, 8), "float32", 100.0, seed=5)
    result = checked(x, naive_one_pass(x, weight, bias, order), weight, bias)
    assert not result.passed
    first = result.diagnosis.hypotheses[0]
    assert (first.name, first.explains) == ("naive-variance", True), result.diagnosis.conclusion


def test_two_mistakes_at_once_are_named_as_a_pair():
    """The unbiased variance and eps outside the root together (a real implementation): neither
    alone explains it, the pair does."""
    x, weight, bias = data((4, 3, 5, 6), "float32", 0.0, seed=6, scale=0.01)
    wide = x.astype(np.float64)
    axes = (0, 2, 3)
    mean = wide.mean(axis=axes, keepdims=True)
    std_unbiased = np.sqrt(wide.var(axis=axes, keepdims=True, ddof=1))
    w, b = weight.reshape(1, -1, 1, 1), bias.reshape(1, -1, 1, 1)
    y = ((wide - mean) / (std_unbiased + 1e-5) * w + b).astype(np.float32)
    result = checked(x, y, weight, bias)
    hypotheses = {h.name: h for h in result.diagnosis.hypotheses}
    assert not hypotheses["unbiased-variance"].explains
    assert not hypotheses["eps-outside-sqrt"].explains
    first = result.diagnosis.hypotheses[0]
    assert (first.name, first.explains) == ("unbiased-variance+eps-outside-sqrt", True)
    assert result.diagnosis.conclusion == (
        "FAIL: normalizes with the unbiased variance (divides by N - 1), and puts eps outside "
        "the square root: / (sqrt(var) + eps) on all 3 channels; fix that, not the tolerance"
    )


def test_one_channel_alone_with_a_mistake_is_named_with_its_channel():
    """Channel 1 alone uses the unbiased variance: the verdict names it on channel 1 and says
    the others match, as the per-channel table does."""
    x, weight, bias = data((2, 3, 3, 4), "float32", 0.0, seed=7)  # 24 values: a 2% scale
    wide = x.astype(np.float64)
    axes = (0, 2, 3)
    mean, var = wide.mean(axis=axes, keepdims=True), wide.var(axis=axes, keepdims=True)
    var[:, 1] = wide[:, 1].var(ddof=1)
    w, b = weight.reshape(1, -1, 1, 1), bias.reshape(1, -1, 1, 1)
    y = ((wide - mean) / np.sqrt(var + 1e-5) * w + b).astype(np.float32)
    result = checked(x, y, weight, bias)
    assert not result.passed and result.diagnosis.explained
    assert [c.explained_by for c in result.channels] == [
        "stated settings",
        "unbiased-variance",
        "stated settings",
    ]
    assert result.diagnosis.conclusion == (
        "FAIL: normalizes with the unbiased variance (divides by N - 1) on channel 1; "
        "channels 0 and 2 match the stated settings; fix that, not the tolerance"
    )
    assert [(g.name, g.channels) for g in result.diagnosis.groups] == [
        ("unbiased-variance", (1,)),
        ("stated settings", (0, 2)),
    ]


def test_no_closest_variant_that_explains_less_than_the_stated_settings():
    """Noise on one channel: nothing explains it, and no 'closest' is offered that leaves more
    than the stated settings."""
    x, weight, bias = data((4, 3, 5, 6), "float32", 0.0, seed=8)
    y = _mistaken("no-affine", x, weight * 0 + 1, bias * 0)  # the correct output for w=1, b=0
    y[:, 2] += np.random.default_rng(0).standard_normal(y[:, 2].shape) * 1e-3
    result = checked(x, y.astype(np.float32), np.ones(3), np.zeros(3))
    summary = result.diagnosis.conclusion
    assert "channels 0 and 1 match the stated settings" in summary
    assert "no known mistake explains channel 2" in summary
    assert "closest" not in summary


@pytest.mark.parametrize("allow", [False, True])
def test_a_non_finite_reference_against_a_finite_output_is_a_mismatch(cli, tmp_path, allow):
    """A NaN in the input makes the channel's reference NaN; an output of finite values there
    passed before (a NaN bound turned into inf, inf <= inf)."""
    x, weight, bias = data((2, 3, 2, 2), "float32", 0.0, seed=9)
    x[0, 1, 0, 0] = np.nan
    y = torch_output(np.nan_to_num(x), np.ones(3), np.zeros(3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    args = ["check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", "--json"]
    args += ["--allow-nonfinite-mismatch"] if allow else []
    doc = json.loads(cli(*args, code=0 if allow else 3).stdout)
    non_finite = doc["non_finite"]
    assert non_finite["reference_only"] == 8 and non_finite["theirs_only"] == 0
    assert non_finite["counted"] is not allow
    assert [0, 1, 0, 0] in non_finite["indices"]
    if not allow:
        assert doc["mismatches"] == 8
        assert doc["diagnosis"]["conclusion"].startswith(
            "FAIL: 8 of 24 elements are NaN or infinite on one side only"
        )
    else:
        assert doc["passed"] and doc["mismatches"] == 0


def test_a_non_finite_output_against_a_finite_reference_is_a_mismatch(cli, tmp_path):
    x, weight, bias = data((2, 3, 2, 2), "float32", 0.0, seed=9)
    y = torch_output(x, np.ones(3), np.zeros(3)).astype(np.float32)
    y[1, 2, 1, 1] = np.inf
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    args = ["check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy"]
    doc = json.loads(cli(*args, "--atol", "1e30", "--json", code=3).stdout)
    assert doc["mismatches"] == 1 and doc["non_finite"]["theirs_only"] == 1
    doc = json.loads(
        cli(*args, "--atol", "1e30", "--allow-nonfinite-mismatch", "--json", code=0).stdout
    )
    assert doc["passed"]


def test_a_correct_output_at_an_offset_reads_exact_per_channel():
    """The per-channel pattern says "exact" within what a correct implementation can leave: a
    float32 C loop at offset 1000 (hundreds of ULPs) does not read as noise."""
    x, weight, bias = data((6, 4, 5, 6), "float32", 1e3)
    result = checked(x, two_pass(x, weight, bias, order="sequential"), weight, bias)
    assert result.passed and result.max_ulp_error_at_scale > 4
    assert [c.pattern for c in result.channels] == ["exact"] * 4
    assert all(c.max_ulp_error_at_scale <= c.bound_ulps for c in result.channels)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16"])
@pytest.mark.parametrize("value", [0.0, -3.3, 1e2, 1e4])
def test_a_constant_channel_still_fails_a_wrong_output(dtype, value):
    """A constant channel far from 0 has |mean| / std infinite: the tolerance from the sums'
    error was unbounded there and an output of all 5s passed for inputs of all 10000. Every
    sum of a few equal numbers is exact, so the mean is, x - mean is 0 and y = bias up to the
    normalization's own rounding: PyTorch's output passes, one off by 0.5 fails."""
    x = np.full((4, 3, 2, 2), value, dtype=DTYPES[dtype])
    x[:, 1] = np.asarray(-value / 2, dtype=DTYPES[dtype])  # another constant
    weight, bias = np.array([1.0, 0.5, 2.0]), np.array([0.0, 0.25, -1.0])
    torch_y = torch_output(x, weight, bias)
    assert checked(x, torch_y, weight, bias).passed
    wrong = torch_y + 0.5 * np.array([1.0, 1.0, 1.0])[None, :, None, None]
    assert not checked(x, wrong, weight, bias).passed
