"""explain --precision: the emulation of PyTorch's CPU kernel against torch itself, bit for bit
where claimed, and the attribution of y's error to steps."""

from __future__ import annotations

import dataclasses
import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bninspect.dtypes import FORMATS
from bninspect.pytorch.batchnorm import to_torch
from bninspect.pytorch.cpu_emulation import (
    CONTIGUOUS,
    EVAL,
    HALF_CONTIGUOUS,
    HALF_PER_THREAD,
    HALF_SMALL_BATCH,
    HALF_TESTED,
    PER_THREAD,
    STRIDED,
    TESTED,
    emulate_channel,
    emulate_output,
    fused,
    round_to,
)
from bninspect.report.explain import derive_element
from bninspect.report.precision import _FMA_CAPABLE, precision_report

from helpers import inspect_array
from strategies import shapes


@st.composite
def cases(draw, rank_min: int, rank_max: int, dtype: str):
    shape = draw(shapes(min_rank=rank_min, max_rank=rank_max))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * draw(st.sampled_from([1e-3, 1.0, 100.0]))
    x = (x + draw(st.sampled_from([0.0, 3.0, 1e3]))).astype(dtype)
    channels = shape[1]
    return dict(
        x=x,
        weight=rng.random(channels) * 2 - 0.5,
        bias=rng.standard_normal(channels),
        running_mean=rng.standard_normal(channels),
        running_var=rng.random(channels) + 0.1,
        mode=draw(st.sampled_from(["train", "eval"])),
    )


def every_element(case):
    inspection = inspect_array(**case)
    for index in itertools.product(*map(range, case["x"].shape)):
        yield derive_element(inspection, index, precision=True).precision


@given(data=st.data())
def test_float32_bit_exact_on_images_larger_than_one_value(data):
    """Rank 3 to 5 with spatial size > 1: PyTorch's contiguous path, claimed bit-exact."""
    case = data.draw(cases(3, 5, "float32"))
    if case["x"].size // (case["x"].shape[0] * case["x"].shape[1]) == 1:
        case["x"] = np.concatenate([case["x"], case["x"] * 0.5], axis=-1)
    for report in every_element(case):
        assert report.bit_exact, report
        assert report.path in (CONTIGUOUS, EVAL) and report.claim == TESTED


@given(data=st.data())
def test_float32_bit_exact_with_one_value_per_image_and_more_rows_than_threads(data):
    """Rank 2, N > torch's threads: per-thread partial sums, claimed bit-exact."""
    case = data.draw(cases(2, 2, "float32"))
    case["x"] = np.concatenate([case["x"]] * 3)  # N >= 6 > the 2 threads here
    for report in every_element(case):
        assert report.bit_exact, report
        assert report.path in (PER_THREAD, EVAL) and report.claim == TESTED


@given(data=st.data())
def test_float64_close_and_exact_in_eval(data):
    """float64 train mode matches in about 99.5% of channels (see the claim); where it does
    not, by a rounding of mean or invstd, which cancellation can magnify."""
    case = data.draw(cases(2, 5, "float64"))
    inspection = inspect_array(**case)
    for index in itertools.product(*map(range, case["x"].shape)):
        report = derive_element(inspection, index, precision=True).precision
        if case["mode"] == "eval":
            assert report.bit_exact, report
        c = index[1]
        values = np.abs(case["x"][:, c])
        magnitude = abs(inspection.params.weight[c]) * (
            (values.max() + abs(inspection.forward.mean[c])) / inspection.forward.std[c]
        ) + abs(inspection.params.bias[c])
        assert abs(report.emulated - report.torch) <= 4 * 2.0**-52 * magnitude, report


@given(data=st.data())
def test_effects_add_up_to_the_emulated_error(data):
    case = data.draw(cases(3, 4, "float32"))
    inspection = inspect_array(**case)
    index = (0, 0) + (0,) * (case["x"].ndim - 2)
    explained = derive_element(inspection, index, precision=True)
    report = explained.precision
    total = sum(Fraction(s.effect_on_y) for s in report.emulation)
    unit = report.emulated - explained.y.reference
    scale_ulp = 2.0 ** (np.frexp(report.scale)[1] - 1 - 23)
    assert abs(float(total) - unit / scale_ulp) <= 1e-6 * (1 + abs(float(total)))


def test_the_constant_channel_loses_its_bits_in_beta():
    x = np.full((2, 1, 4, 4), 3.0, dtype=np.float32)
    explained = derive_element(inspect_array(x, bias=[0.5]), (0, 0, 0, 0), precision=True)
    effects = {s.name: s.effect_on_y for s in explained.precision.emulation}
    # beta = 0.5 - 3 * 316.23 rounds at magnitude 948 to 2**-15 off, which is 2**8 spacings of
    # float32 at the channel's scale, |weight| = 1 (2**-23): the whole error, by hand.
    assert effects == {
        "mean": 0,
        "var_sum": 0,
        "var": 0,
        "invstd": 0,
        "alpha": 0,
        "beta": 256.0,
        "y": 0,
    }
    assert explained.precision.bit_exact and explained.y.torch == 0.500030517578125


def test_round_to_is_exact_with_ties_to_even():
    assert round_to(Fraction(1) + Fraction(1, 2**24), "float32") == 1.0
    assert round_to(Fraction(1) + Fraction(3, 2**24), "float32") == 1 + 2.0**-22
    assert round_to(Fraction(1) + Fraction(1, 2**24) + Fraction(1, 2**80), "float32") == (
        1 + 2.0**-23
    )  # just above the tie: up, which rounding via float64 would miss
    assert round_to(Fraction(1, 3), "float64") == 1 / 3


def test_explain_precision_json(cli):
    doc = cli.json("explain", "--index", "0,1,2,3", "--precision")
    precision = doc["precision"]
    assert [s["name"] for s in precision["emulation"]] == [
        "mean",
        "var_sum",
        "var",
        "invstd",
        "alpha",
        "beta",
        "y",
    ]
    assert precision["bit_exact"] is True and precision["torch"] == doc["y"]["torch"]
    assert set(precision["emulation"][0]) == {"name", "how", "torch", "reference", "effect_on_y"}
    assert cli.json("explain", "--index", "0,0,0,0")["null_reasons"]["/precision"] == (
        "not asked for: add --precision"
    )
    table = cli("explain", "--index", "0,1,2,3", "--precision").stdout
    assert "PyTorch's arithmetic" in table and "reproduces PyTorch's y bit for bit" in table


def test_non_finite_channels_have_no_precision_report(cli, tmp_path):
    """Found by review: this used to end in an internal error."""
    path = tmp_path / "x.npy"
    x = np.ones((2, 3, 4), dtype=np.float32)
    x[:, 0] = np.inf
    x[0, 1, 2] = np.nan
    np.save(path, x)
    for index in ("0,0,0", "1,1,3"):
        doc = cli.json("explain", "--input", path, "--index", index, "--precision")
        assert doc["precision"] is None
        assert doc["null_reasons"]["/precision"].startswith("the element's channel holds NaN")
    assert cli.json("explain", "--input", path, "--index", "0,2,0", "--precision")["precision"]


def test_eval_mode_division_by_zero_has_no_precision_report(cli):
    """Found by review: running_var 0 with eps 0 used to end in an internal error."""
    args = ("explain", "--mode", "eval", "--eps", "0", "--running-var", "0,1", "--precision")
    doc = cli.json(*args, "--index", "0,0,0,0")
    assert doc["precision"] is None and doc["y"]["torch"] is None  # 0 * (1 / 0): NaN
    assert doc["null_reasons"]["/precision"].startswith("sqrt(var + eps) is 0")
    table = cli(*args, "--index", "0,0,0,0").stdout
    assert "--precision: sqrt(var + eps) is 0" in table
    assert cli.json(*args, "--index", "0,1,0,0")["precision"]["bit_exact"] is True


def test_huge_values_do_not_warn(cli):
    doc = cli.json("run", "--scale", "1e300", "--dtype", "float64")
    assert doc["channels"][0]["mean"] is not None


@st.composite
def half_shapes(draw):
    """Rank 2 to 5, with images below, at and past the kernel's 16-value blocks (rank 3 up to
    40 values), and N on both sides of the thread count for one value per image (up to 100
    rows, enough for fused and unfused squares to part)."""
    rank = draw(st.integers(2, 5))
    if rank == 2:
        return (draw(st.integers(2, 100)), draw(st.integers(1, 3)))
    spatial = {3: [(1, 40)], 4: [(1, 6), (1, 20)], 5: [(1, 4)] * 3}[rank]
    shape = [draw(st.integers(1, 8)), draw(st.integers(1, 3))]
    shape += [draw(st.integers(*bounds)) for bounds in spatial]
    if int(np.prod(shape)) // shape[1] < 2:
        shape[0] = 2
    return tuple(shape)


@st.composite
def half_cases(draw):
    """A float16/bfloat16 input (offset up to 1000, spread 0.01 to 30) with unit or random
    weight, bias and running statistics, in train or eval mode."""
    dtype = draw(st.sampled_from(["float16", "bfloat16"]))
    shape = draw(half_shapes())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    offset = draw(st.sampled_from([0.0, 3.0, 100.0, 1000.0]))
    x = rng.standard_normal(shape) * draw(st.sampled_from([0.01, 1.0, 30.0])) + offset
    channels = shape[1]
    case = dict(x=x.astype(FORMATS[dtype].numpy), mode=draw(st.sampled_from(["train", "eval"])))
    if draw(st.booleans()):
        case.update(
            weight=rng.uniform(-2, 2, channels),
            bias=rng.uniform(-1, 1, channels),
            running_mean=rng.normal(offset, 1, channels),
            running_var=rng.random(channels) + 0.1,
        )
    return case


def emulated_outputs(inspection) -> np.ndarray:
    """The emulation's y for every element of the inspection's batch, shape (N, C, ...)."""
    x, params, run = inspection.batch, inspection.params, inspection.torch_run
    dtype, train = x.dtype.name, inspection.settings.mode == "train"
    fma = run.cpu_capability in _FMA_CAPABLE
    image_size = x.size // (x.shape[0] * x.shape[1])
    y = np.empty(x.shape, np.float64)
    for c in range(x.shape[1]):
        values = x[:, c].reshape(-1)
        channel = emulate_channel(
            values,
            dtype,
            params.weight[c],
            params.bias[c],
            inspection.settings.eps,
            train,
            inspection.forward.before.running_mean[c],
            inspection.forward.before.running_var[c],
            image_size,
            run.num_threads,
            fma,
        )
        outputs = [emulate_output(v, channel, dtype, fma) for v in values.tolist()]
        y[:, c] = np.reshape(outputs, y[:, c].shape)
    return y


@settings(max_examples=40)
@given(case=half_cases())
def test_float16_and_bfloat16_bit_exact_element_by_element(case):
    """The claim for float16/bfloat16: every element bit for bit, on every path."""
    inspection = inspect_array(**case)
    torch_y = inspection.torch_run.output.astype(np.float64)
    emulated = emulated_outputs(inspection)
    differ = np.argwhere(emulated != torch_y)
    assert differ.size == 0, (
        f"{len(differ)} of {torch_y.size} elements differ, first at {tuple(differ[0])}: "
        f"emulated {emulated[tuple(differ[0])]!r}, PyTorch {torch_y[tuple(differ[0])]!r}"
    )
    # and explain --precision reports it so, for one element per channel
    for c in range(case["x"].shape[1]):
        index = (case["x"].shape[0] - 1, c) + (0,) * (case["x"].ndim - 2)
        report = derive_element(inspection, index, precision=True).precision
        assert report.bit_exact and report.claim == HALF_TESTED, report
        assert report.path in (HALF_CONTIGUOUS, HALF_PER_THREAD, HALF_SMALL_BATCH, EVAL)


def _is_in(value: float, dtype: str) -> bool:
    return float(np.asarray(value).astype(FORMATS[dtype].numpy)) == value


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_steps_show_values_of_the_types_they_name(cli, dtype):
    """Found by review: bfloat16's mean showed as 100.01401 (a float32) beside "rounded to the
    dtype", and y was 8 ULP off PyTorch's -0.4921875 as the mean PyTorch uses is 100.0."""
    args = ("explain", "--shape", "64,3,16,16", "--dtype", dtype, "--offset", "100")
    doc = cli.json(*args, "--index", "1,2,0,3", "--precision")
    precision = doc["precision"]
    assert precision["bit_exact"] is True and precision["claim"] == HALF_TESTED
    steps = {s["name"]: s for s in precision["emulation"]}
    assert steps["mean"]["torch"] == 100.0 and f"rounded to {dtype}" in steps["mean"]["how"]
    stats = "bfloat16" if dtype == "bfloat16" else "float32"  # float16 keeps them in float32
    assert _is_in(steps["var_sum"]["torch"], stats) and stats in steps["var_sum"]["how"]
    assert _is_in(steps["var"]["torch"], stats) and stats in steps["var"]["how"]
    assert _is_in(steps["invstd"]["torch"], dtype) and dtype in steps["invstd"]["how"]
    for name in ("alpha", "beta"):
        assert _is_in(steps[name]["torch"], "float32") and "float32" in steps[name]["how"]
    assert _is_in(steps["y"]["torch"], dtype)
    if dtype == "bfloat16":
        assert precision["torch"] == precision["emulated"] == -0.4921875


def _torch_float32_statistics(x: np.ndarray):
    """PyTorch's float32 mean and var_sum per channel for float16/bfloat16 ``x``, seen through
    float32 parameters: the same reduction loops, but save_mean is then the float32 mean, and
    with momentum 1 running_var is var_sum / (N - 1) in float32."""
    channels = x.shape[1]
    running_var = torch.ones(channels)
    _, mean, _ = torch.ops.aten.native_batch_norm(
        to_torch(x), torch.ones(channels), torch.zeros(channels), torch.zeros(channels),
        running_var, True, 1.0, 1e-5,
    )  # fmt: skip
    return mean.numpy(), running_var.numpy()


# 60 rows of float16 at spread 30: fused and unfused squares part in most channels
_ROWS = np.random.default_rng(0).standard_normal((60, 3)) * 30 + 3


@settings(max_examples=40)
@given(case=half_cases())
@example(case=dict(x=_ROWS.astype(np.float16), mode="train"))
def test_half_sums_in_float32_match_pytorch_before_rounding(case):
    """The lane order and the fused squares, which rounding to the dtype mostly hides: the
    float32 mean (both dtypes' contiguous path, float16's all paths) and float16's float32
    var_sum, against PyTorch's own float32 values."""
    x = case["x"]
    mean, running_var = _torch_float32_statistics(x)
    threads = torch.get_num_threads()
    fma = torch.backends.cpu.get_cpu_capability() in _FMA_CAPABLE
    image_size, n = x.size // (x.shape[0] * x.shape[1]), x.size // x.shape[1]
    for c in range(x.shape[1]):
        channel = emulate_channel(
            x[:, c].reshape(-1), x.dtype.name, 1, 0, 1e-5, True, 0, 1, image_size, threads, fma
        )
        if x.dtype.name == "float16" or channel.path == HALF_CONTIGUOUS:
            assert channel.centre == mean[c], (c, channel)
        if x.dtype.name == "float16" and n > 1:
            unbiased = np.float32(channel.var_sum) / np.float32(n - 1)
            assert unbiased == running_var[c], (c, channel)


def test_bfloat16_divides_by_n_rounded_to_bfloat16():
    """N = 514 is 512 in bfloat16, and var = var_sum / 512: PyTorch's invstd shows it."""
    x = (np.random.default_rng(3).standard_normal((257, 8, 2)) * 3 + 1).astype(
        FORMATS["bfloat16"].numpy
    )
    ones = torch.ones(8, dtype=torch.bfloat16)
    _, _, invstd = torch.ops.aten.native_batch_norm(
        to_torch(x), ones, ones * 0, ones * 0, ones, True, 0.1, 1e-5
    )
    for c in range(8):
        channel = emulate_channel(
            x[:, c].reshape(-1), "bfloat16", 1, 0, 1e-5, True, 0, 1, 2, 2, True
        )
        assert channel.invstd == invstd[c].item()


def test_float16_beta_rounds_the_product_first():
    """bias - mean * alpha is never fused in the float16 kernel; the product is inexact (11
    bits times 22), and fusing it would move all 32 outputs here."""
    x = np.full((2, 1, 4, 4), 100.0, dtype=np.float16)
    inspection = inspect_array(x, weight=[-0.23706055], bias=[0.4645996])
    explained = derive_element(inspection, (0, 0, 0, 0), precision=True)
    assert explained.precision.bit_exact and explained.y.torch == 0.465087890625
    assert np.all(emulated_outputs(inspection) == inspection.torch_run.output)


def test_bfloat16_beta_is_fused_in_eval_mode():
    """The bfloat16 kernel fuses bias - mean * alpha where the CPU has FMA (hypothesis found
    this case). x equals the running mean (999.6 rounds to bfloat16 1000), so the exact y is the
    bias; mean * alpha = -3866.857... is inexact in float32, and rounding it first would leave
    beta 2.4e-4 off, 8 bfloat16 ULPs at y."""
    x = np.full((3, 1, 3), 1000.0, dtype=FORMATS["bfloat16"].numpy)
    inspection = inspect_array(
        x, mode="eval", weight=[-1.92593113], bias=[0.00672793], running_mean=[999.6038],
        running_var=[0.24903858],
    )  # fmt: skip
    torch_y = inspection.torch_run.output.astype(np.float64)
    assert np.all(emulated_outputs(inspection) == torch_y)
    explained = derive_element(inspection, (0, 0, 0), precision=True)
    assert explained.precision.bit_exact
    if inspection.torch_run.cpu_capability in _FMA_CAPABLE:  # the case tells the two apart
        params = inspection.params
        channel = emulate_channel(
            x.reshape(-1), "bfloat16", params.weight[0], params.bias[0], 1e-5, False,
            params.running_mean[0], params.running_var[0], 3, 1, True,
        )  # fmt: skip
        rounded = fused(-channel.mean, channel.alpha, params.bias[0], "float32", False)
        unfused = dataclasses.replace(channel, beta=rounded)
        assert emulate_output(1000.0, unfused, "bfloat16", True) != torch_y[0, 0, 0]


def test_a_fortran_ordered_input_is_not_claimed(cli, tmp_path):
    """PyTorch takes its strided loops for non-contiguous input: there, a float16 x equal to
    the running mean gives y = bias to the last bit, which the kernel's x * alpha + beta does not
    (beta = bias - mean * alpha is rounded at |beta| ~ 2000). explain --precision says why it
    attributes nothing there, rather than the kernel's steps."""
    path = tmp_path / "fortran.npy"
    np.save(path, np.asfortranarray(np.full((2, 3, 3), 1000.0, dtype=np.float16)))
    common = ("--mode", "eval", "--running-mean", "1000,1000,1000", "--weight", "-1.5,1.3,0.7")
    common += ("--bias", "0.0123,0.0456,0.0789", "--running-var", "0.3,0.5,0.7")
    doc = cli.json("explain", "--input", path, "--index", "0,1,0", "--precision", *common)
    assert doc["precision"] is None and doc["null_reasons"]["/precision"] == STRIDED
    assert doc["y"]["torch"] == float(np.float16(0.0456))  # the bias: x - mean = 0 exactly
    inspection = inspect_array(
        np.asfortranarray(np.full((2, 3, 3), 1000.0, np.float16)),
        mode="eval",
        running_mean=[1000] * 3,
        weight=[-1.5, 1.3, 0.7],
        bias=[0.0123, 0.0456, 0.0789],
        running_var=[0.3, 0.5, 0.7],
    )
    # the kernel's arithmetic, forced: not the bias PyTorch gives here
    assert precision_report(inspection, (0, 1, 0)).emulated != doc["y"]["torch"]
    np.save(path, np.full((2, 3, 3), 1000.0, dtype=np.float16))  # the same values, C order
    doc = cli.json("explain", "--input", path, "--index", "0,1,0", "--precision", *common)
    assert doc["precision"]["claim"] == HALF_TESTED and doc["precision"]["bit_exact"] is True
