"""bninspect check: for every mistake in the catalogue, an output with that mistake written here,
independently of the diagnosing code, must be named first; correct outputs pass and name
nothing; exit codes, JSON shape, bad inputs, and explain --against."""

from __future__ import annotations

import json
import re

import ml_dtypes
import numpy as np
import pytest
import torch

from bninspect.check.variants import CATALOGUE

# The layer's parameters as the float32 module holds them (0.1 is not a float32 number).
W = np.array([0.5, 2.0, -1.5], dtype=np.float32).astype(np.float64)
B = np.array([0.1, -0.3, 0.7], dtype=np.float32).astype(np.float64)
RUNNING_MEAN, RUNNING_VAR = np.array([0.2, -0.1, 0.4]), np.array([1.5, 0.8, 2.0])
LAYER = [
    "--weight",
    "0.5,2,-1.5",
    "--bias",
    "0.1,-0.3,0.7",
    "--running-mean",
    "0.2,-0.1,0.4",
    "--running-var",
    "1.5,0.8,2",
]
AXES = (0, 2, 3)


def make_input(scale=1.0, offset=0.0, seed=0):
    rng = np.random.default_rng(seed)
    x = (
        rng.standard_normal((4, 3, 5, 6)) * scale
        + offset
        + np.array([0, 1, -2])[None, :, None, None]
    )
    return x.astype(np.float32)


def per_channel(v):
    return np.asarray(v, dtype=np.float64).reshape(1, -1, 1, 1)


def norm(x, mean, var, eps=1e-5, w=W, b=B, outside=False):
    x = x.astype(np.float64)
    denominator = np.sqrt(var) + eps if outside else np.sqrt(var + eps)
    return (x - mean) / denominator * per_channel(w) + per_channel(b)


def stats(x, axes=AXES, ddof=0):
    x = x.astype(np.float64)
    return x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True, ddof=ddof)


def correct(x):
    return norm(x, *stats(x))


def naive_float32(x, order):
    """A user's one-pass batch norm, every step in float32: mean and E[x^2] summed per channel
    in ``order`` ("pairwise": numpy's sums over a channel's values; "running": one running sum,
    as a C loop; "axes": np.mean over the batch and spatial axes at once), var = E[x^2] - mean^2.
    """
    n = np.float32(x.size // x.shape[1])
    if order == "axes":
        mean = x.mean(axis=AXES, keepdims=True, dtype=np.float32)
        var = (x * x).mean(axis=AXES, keepdims=True, dtype=np.float32) - mean * mean
    else:
        means, variances = [], []
        for c in range(x.shape[1]):
            v = np.ascontiguousarray(x[:, c]).reshape(-1)
            if order == "pairwise":
                total, squares = v.sum(dtype=np.float32), (v * v).sum(dtype=np.float32)
            else:  # cumsum adds one value at a time, in order
                total = np.cumsum(v, dtype=np.float32)[-1]
                squares = np.cumsum(v * v, dtype=np.float32)[-1]
            means.append(total / n)
            variances.append(squares / n - means[-1] * means[-1])
        mean = np.array(means, dtype=np.float32).reshape(1, -1, 1, 1)
        var = np.array(variances, dtype=np.float32).reshape(1, -1, 1, 1)
    w32, b32 = (per_channel(v).astype(np.float32) for v in (W, B))
    return (x - mean) / np.sqrt(var + np.float32(1e-5)) * w32 + b32


def in_low_precision(x, dtype):
    """PyTorch's own BatchNorm2d run in float16/bfloat16, its output widened to float32."""
    module = torch.nn.BatchNorm2d(3, dtype=dtype)
    with torch.no_grad():
        module.weight.copy_(torch.tensor(W))
        module.bias.copy_(torch.tensor(B))
        module.running_mean.copy_(torch.tensor(RUNNING_MEAN))
        module.running_var.copy_(torch.tensor(RUNNING_VAR))
        return module(torch.from_numpy(x).to(dtype)).float().numpy()


def mistaken(name, x):
    """The output of an implementation with mistake ``name``, on x, in train mode."""
    mean, var = stats(x)
    if name == "unbiased-variance":
        return norm(x, mean, stats(x, ddof=1)[1])
    if name == "eps-outside-sqrt":
        return norm(x, mean, var, outside=True)
    if name == "no-eps":
        return norm(x, mean, var, eps=0.0)
    if name == "channels-last":
        return norm(x, *stats(x, axes=(0, 1, 2)))
    if name == "per-sample":
        return norm(x, *stats(x, axes=(2, 3)))
    if name == "per-layer":
        return norm(x, *stats(x, axes=(1, 2, 3)))
    if name == "batch-axis-only":
        return norm(x, *stats(x, axes=(0,)))
    if name == "other-statistics":
        return norm(x, per_channel(RUNNING_MEAN), per_channel(RUNNING_VAR))
    if name == "no-affine":
        return norm(x, mean, var, w=np.ones(3), b=np.zeros(3))
    if name == "weight-bias-swapped":
        return norm(x, mean, var, w=B, b=W)
    if name == "weight-before-normalizing":
        scaled = x.astype(np.float64) * per_channel(W)
        return norm(scaled, *stats(scaled), w=np.ones(3))
    if name in ("float16", "bfloat16"):
        return in_low_precision(x, getattr(torch, name))
    raise AssertionError(name)


SIMPLE = [
    "unbiased-variance",
    "eps-outside-sqrt",
    "no-eps",
    "channels-last",
    "per-sample",
    "per-layer",
    "batch-axis-only",
    "other-statistics",
    "no-affine",
    "weight-bias-swapped",
    "weight-before-normalizing",
    "float16",
    "bfloat16",
]


def run_check(cli, tmp_path, x, y, *args, code=3):
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.asarray(y, dtype=np.float32))
    result = cli(
        "check",
        "--input",
        tmp_path / "x.npy",
        "--output",
        tmp_path / "y.npy",
        *LAYER,
        *args,
        "--json",
        code=code,
    )
    return json.loads(result.stdout)


@pytest.mark.parametrize("name", SIMPLE)
def test_each_mistake_is_named_first(cli, tmp_path, name):
    x = make_input(scale=0.1 if name in ("no-eps", "eps-outside-sqrt") else 1.0)
    doc = run_check(cli, tmp_path, x, mistaken(name, x))
    first = doc["diagnosis"]["hypotheses"][0]
    assert (first["name"], first["explains"]) == (name, True), doc["diagnosis"]
    assert doc["diagnosis"]["explained"] is True and not doc["passed"]
    assert all(c["explained_by"] == name for c in doc["channels"])


@pytest.mark.parametrize("order", ["pairwise", "running", "axes"])
@pytest.mark.parametrize("offset", [300.0, 1000.0])
def test_naive_variance_is_named_in_any_summation_order(cli, tmp_path, order, offset):
    """Cancellation makes the naive result depend on the order of summation, so it cannot be
    reproduced bit for bit: it is recognised by its signature."""
    x = make_input(offset=offset)
    y = naive_float32(x, order)
    assert np.all(np.isfinite(y))
    doc = run_check(cli, tmp_path, x, y)
    assert doc["max_ulp_error_at_scale"] > 1000  # far beyond rounding
    first = doc["diagnosis"]["hypotheses"][0]
    assert (first["name"], first["explains"], first["fitted"]) == ("naive-variance", True, True)
    assert re.search(
        r"variance off by [-+][\d.e-]+ relative .* at \|mean\|/std \d", first["detail"]
    )
    assert all(c["explained_by"] == "naive-variance" for c in doc["channels"])


def test_a_specific_mistake_ranks_before_the_naive_variance_that_also_fits(cli, tmp_path):
    """At offset 300 cancellation could move the variance by far more than N/(N-1), so the
    fitted naive-variance explains an unbiased-variance output too; the specific one is named."""
    x = make_input(offset=300.0)
    doc = run_check(cli, tmp_path, x, mistaken("unbiased-variance", x))
    hypotheses = doc["diagnosis"]["hypotheses"]
    assert (hypotheses[0]["name"], hypotheses[0]["fitted"]) == ("unbiased-variance", False)
    naive = next(h for h in hypotheses if h["name"] == "naive-variance")
    assert naive["explains"]  # else this test would prove nothing
    assert all(c["explained_by"] == "unbiased-variance" for c in doc["channels"])


def test_a_variance_error_beyond_cancellation_is_not_the_naive_variance(cli, tmp_path):
    """Zero-mean data: one-pass cancellation cannot move the variance by 1%."""
    x = (np.random.default_rng(4).standard_normal((4, 3, 5, 6))).astype(np.float32)
    mean, var = stats(x)
    signs = np.array([1.0, -1.0, 1.0]).reshape(1, -1, 1, 1)
    doc = run_check(cli, tmp_path, x, norm(x, mean, var * (1 + 0.01 * signs)))
    naive = next(h for h in doc["diagnosis"]["hypotheses"] if h["name"] == "naive-variance")
    assert not naive["explains"] and naive["max_ulp_error_at_scale"] > 100
    assert not doc["diagnosis"]["explained"]


def test_a_float32_two_pass_with_running_sums_passes_and_is_not_the_naive_variance(cli, tmp_path):
    """A two-pass float32 implementation summing one value at a time, at offset 1000: its mean
    errs by hundreds of ULPs at the channel's scale, as every such correct implementation may
    (the derived tolerance allows it), and the one-pass formula is not what happened."""
    x = make_input(offset=1000.0)
    y = np.empty(x.shape, dtype=np.float32)
    for c in range(3):
        v = np.ascontiguousarray(x[:, c])
        mean = np.cumsum(v.reshape(-1), dtype=np.float32)[-1] / np.float32(v.size)
        d = v - mean
        var = np.cumsum((d * d).reshape(-1), dtype=np.float32)[-1] / np.float32(v.size)
        y[:, c] = d / np.sqrt(var + np.float32(1e-5)) * np.float32(W[c]) + np.float32(B[c])
    doc = run_check(cli, tmp_path, x, y, code=0)
    assert (
        doc["max_ulp_error_at_scale"] > 4
    )  # the mean's error shows: more than the old fixed 4 ULP
    assert doc["max_ulp_error_at_scale"] < doc["max_bound_ulps"]
    naive = next(h for h in doc["diagnosis"]["hypotheses"] if h["name"] == "naive-variance")
    assert not naive["explains"]
    assert doc["diagnosis"]["conclusion"].startswith("PASS: matches the stated settings")


@pytest.mark.parametrize(
    ("eps", "named"),
    [
        (1e-3, "eps 0.001, Keras' and TensorFlow's default, instead of the stated 1e-05"),
        (
            1.001e-5,
            "eps 1.001e-05, TensorFlow fused batch norm's floor, instead of the stated 1e-05",
        ),
        (1.0004e-5, "eps 1.0004e-05 instead of the stated 1e-05"),  # no default: the estimate
    ],
)
def test_another_eps_is_estimated_per_channel_and_named(cli, tmp_path, eps, named):
    x = make_input(scale=0.003)  # variance ~1e-5: eps shapes the output
    doc = run_check(cli, tmp_path, x, norm(x, *stats(x), eps=eps))
    first = doc["diagnosis"]["hypotheses"][0]
    assert first["name"] == "other-eps" and first["explains"] and first["fitted"], doc["diagnosis"]
    assert first["detail"].startswith(named + "; estimated ")
    # One number per channel, near the eps used: close enough to tell 1.0004e-5 from 1e-5.
    np.testing.assert_allclose(first["eps_per_channel"], [eps] * 3, rtol=2e-5)


def test_an_eps_per_channel_is_no_one_eps(cli, tmp_path):
    """A layer has one eps: an output whose channels need different ones is not explained by
    other-eps, and the estimates say why."""
    x = make_input(scale=0.003)
    mean, var = stats(x)
    eps = per_channel([1e-3, 1e-3, 1e-4])
    doc = run_check(cli, tmp_path, x, norm(x, mean, var, eps=eps))
    other = next(h for h in doc["diagnosis"]["hypotheses"] if h["name"] == "other-eps")
    assert not other["explains"]
    np.testing.assert_allclose(other["eps_per_channel"], [1e-3, 1e-3, 1e-4], rtol=1e-4)
    assert "estimated per channel 0.0001 to 0.001" in other["detail"]


def test_channels_last_with_weight_and_bias_on_the_last_axis(cli, tmp_path):
    """A whole channels-last (NHWC) implementation run on NCHW data whose last axis has C
    entries: statistics and weight and bias along the last axis."""
    x = make_input()[:, :, :, :3]  # (4, 3, 5, 3)
    wide = x.astype(np.float64)
    mean, var = wide.mean(axis=(0, 1, 2)), wide.var(axis=(0, 1, 2))  # shape (3,), last axis
    y = (wide - mean) / np.sqrt(var + 1e-5) * W + B
    doc = run_check(cli, tmp_path, x, y)
    first = doc["diagnosis"]["hypotheses"][0]
    assert (first["name"], first["explains"]) == ("channels-last", True), doc["diagnosis"]
    assert first["detail"] == "weight and bias along the last axis too"
    doc = run_check(cli, tmp_path, x, mistaken("channels-last", x))  # weight on axis 1
    first = doc["diagnosis"]["hypotheses"][0]
    assert (first["name"], first["detail"]) == ("channels-last", "weight and bias along axis 1")


def test_untrained_running_statistics_in_eval_mode(cli, tmp_path):
    x = make_input()
    y = norm(x, per_channel(np.zeros(3)), per_channel(np.ones(3)))
    doc = run_check(cli, tmp_path, x, y, "--mode", "eval")
    assert doc["diagnosis"]["hypotheses"][0]["name"] == "untrained-running"


def test_batch_statistics_in_eval_mode(cli, tmp_path):
    x = make_input()
    doc = run_check(cli, tmp_path, x, correct(x), "--mode", "eval")
    first = doc["diagnosis"]["hypotheses"][0]
    assert (first["name"], first["detail"]) == ("other-statistics", "batch statistics in eval mode")


def test_every_catalogued_mistake_has_a_test():
    tested = set(SIMPLE) | {"naive-variance", "other-eps", "untrained-running"}  # tests below
    # in test_distributed_check.py
    tested |= {"per-rank-statistics", "averaged-variances", "equal-weight-variances"}
    assert {v.name for v in CATALOGUE} == tested


@pytest.mark.parametrize("source", ["torch", "float64"])
def test_a_correct_output_passes_and_names_nothing(cli, tmp_path, source):
    x = make_input()
    if source == "torch":
        module = torch.nn.BatchNorm2d(3)
        with torch.no_grad():
            module.weight.copy_(torch.tensor(W))
            module.bias.copy_(torch.tensor(B))
        y = module(torch.from_numpy(x)).detach().numpy()
    else:
        y = correct(x)
    doc = run_check(cli, tmp_path, x, y, code=0)
    assert doc["passed"] and doc["mismatches"] == 0
    assert not doc["diagnosis"]["explained"]
    assert not any(h["explains"] for h in doc["diagnosis"]["hypotheses"])
    assert doc["diagnosis"]["conclusion"].startswith("PASS: matches the stated settings")
    assert doc["diagnosis"]["detail"].startswith("your output matches the stated settings")
    assert all(c["explained_by"] == "stated settings" for c in doc["channels"])


def test_no_known_variant_says_so(cli, tmp_path):
    x = make_input()
    y = correct(x) + np.random.default_rng(9).standard_normal(x.shape) * 1e-3
    doc = run_check(cli, tmp_path, x, y)
    assert not doc["diagnosis"]["explained"]
    assert doc["diagnosis"]["conclusion"].startswith("FAIL: no known mistake explains it:")
    assert doc["suggested"] is None  # beyond what a correct implementation leaves: no line
    assert "would hide a mistake" in doc["null_reasons"]["/suggested"]
    assert all(c["pattern"] == "noise" for c in doc["channels"])
    assert doc["null_reasons"]["/channels/0/explained_by"] == "no known variant fits this channel"
    np.save(tmp_path / "y.npy", y.astype(np.float32))
    out = cli(
        "check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", *LAYER, code=3
    ).stdout
    assert "n/a explained by: no known variant fits this channel" in out


def test_error_patterns_scale_and_shift(cli, tmp_path):
    x = make_input()
    y = correct(x)
    y[:, 0] *= 1.01
    y[:, 1] += 0.02
    doc = run_check(cli, tmp_path, x, y)
    channels = doc["channels"]
    assert channels[0]["pattern"] == "scale" and abs(channels[0]["factor"] - 1.01) < 1e-5
    assert channels[1]["pattern"] == "shift" and abs(channels[1]["offset"] - 0.02) < 1e-5
    assert channels[2]["pattern"] == "exact" and channels[2]["mismatches"] == 0


def test_report_numbers_by_hand(cli, tmp_path):
    x = make_input()
    y = correct(x).astype(np.float32)
    y[1, 2, 3, 4] += 0.5
    y[0, 0, 0, 0] = np.nan
    doc = run_check(cli, tmp_path, x, y, "--top", "2")
    assert doc["mismatches"] == 2 and doc["elements"] == x.size
    worst = doc["worst"]
    assert [w["index"] for w in worst] == [[0, 0, 0, 0], [1, 2, 3, 4]]  # NaN: infinite error
    reference = correct(x)[1, 2, 3, 4]
    assert worst[1]["reference"] == pytest.approx(reference, rel=1e-12)
    assert abs(worst[1]["abs_error"] - 0.5) < 1e-6
    assert doc["channels"][0]["non_finite"] == 1
    assert doc["suggested"] is None  # a NaN never matches
    assert doc["null_reasons"]["/suggested"].startswith("an element is NaN")


def test_tolerances_and_exit_codes(cli, tmp_path):
    """Without --atol/--rtol the tolerance is derived per channel (rtol 0); one given, the other
    is torch.testing's default; both given, both."""
    x = make_input()
    y = correct(x) + 2e-5
    doc = run_check(cli, tmp_path, x, y)
    tolerance = doc["tolerance"]
    assert tolerance["source"].startswith("derived from float32 and the data's conditioning")
    assert tolerance["rtol"] == 0.0 and len(tolerance["per_channel_atol"]) == 3
    assert tolerance["atol"] == max(tolerance["per_channel_atol"]) < 2e-5
    given = run_check(cli, tmp_path, x, y, "--atol", "3e-5", code=0)
    assert given["tolerance"] == {
        "atol": 3e-5,
        "rtol": 1.3e-6,
        "source": "atol given, the other torch.testing's default for float32",
        "per_channel_atol": None,
        "allow_nonfinite_mismatch": False,
    }
    assert run_check(cli, tmp_path, x, y, "--rtol", "0.001", code=3)["mismatches"] > 0
    both = run_check(cli, tmp_path, x, y, "--atol", "1e-4", "--rtol", "0", code=0)
    assert both["tolerance"]["source"] == "given"


def torch_batchnorm(x, eval_mode=False):
    """PyTorch's own BatchNorm2d output for x with the test layer: what a user has at hand."""
    module = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        module.weight.copy_(torch.tensor(W))
        module.bias.copy_(torch.tensor(B))
        module.running_mean.copy_(torch.tensor(RUNNING_MEAN))
        module.running_var.copy_(torch.tensor(RUNNING_VAR))
        return module.eval()(torch.from_numpy(x)) if eval_mode else module(torch.from_numpy(x))


def pasted(line: str) -> dict:
    """The keyword arguments of the printed assert_close line, as Python reads them."""
    call = line.removeprefix("torch.testing.assert_close(torch.from_numpy(mine), expected, ")
    return eval(f"dict({call.removesuffix(')')})")  # noqa: S307 (our own output)


def c_loop_float32(x):
    """A correct float32 two-pass implementation summing one value at a time."""
    from independent_bn import two_pass

    return two_pass(x, W, B, order="sequential")


ASSERT_CLOSE_CASES = {  # name: (output from x, the dtype it is saved in, the input's offset)
    "torch": (lambda x: torch_batchnorm(x).detach().numpy(), np.float32, 0.0),
    "torch at 300": (lambda x: torch_batchnorm(x).detach().numpy(), np.float32, 300.0),
    "C loop at 300": (c_loop_float32, np.float32, 300.0),
    "float64 file": (lambda x: torch_batchnorm(x).detach().numpy(), np.float64, 0.0),
}
STRICT = ["--atol", "1e-08", "--rtol", "1e-08"]


@pytest.mark.parametrize("case", list(ASSERT_CLOSE_CASES))
@pytest.mark.parametrize("scale", [1.0, 0.01])
def test_the_printed_assert_close_line_passes_when_pasted(cli, tmp_path, case, scale):
    """A correct output failing a strict given tolerance (its error is at the level of
    rounding) gets an assert_close line; pasted as printed, with expected PyTorch's output
    (and with the reference rounded to float32), torch.testing.assert_close passes; so does
    the rtol it offers with atol kept."""
    make, dtype, offset = ASSERT_CLOSE_CASES[case]
    x = make_input(scale=scale, offset=offset * scale)
    y = make(x)
    mine = np.asarray(y).astype(dtype)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", mine)
    args = ["check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", *LAYER]
    doc = json.loads(cli(*args, *STRICT, "--json", code=3).stdout)
    assert doc["max_ulp_error_at_scale"] <= doc["max_bound_ulps"]  # at the level of rounding
    assert doc["diagnosis"]["conclusion"].startswith("FAIL under the given tolerance, though")
    suggested = doc["suggested"]
    given = pasted(suggested["assert_close"])
    assert given["atol"] == suggested["atol"] and given["rtol"] == 1e-8
    rounded_reference = torch.from_numpy(correct(x)).float()
    for expected in (torch_batchnorm(x), rounded_reference):
        torch.testing.assert_close(torch.from_numpy(mine), expected, **given)
        kept = {**given, "atol": 1e-8, "rtol": suggested["rtol"]}
        torch.testing.assert_close(torch.from_numpy(mine), expected, **kept)
    for option, other in (("--atol", "--rtol"), ("--rtol", "--atol")):  # check itself passes
        value = repr(suggested[option.removeprefix("--")])
        cli(*args, option, value, other, "1e-08", code=0)
    assert ("check_dtype=False" in suggested["assert_close"]) == (dtype != np.float32)


@pytest.mark.parametrize(
    ("make", "offset"),
    [
        (lambda x: mistaken("unbiased-variance", x), 0.0),
        (lambda x: mistaken("no-eps", x), 0.0),
        (lambda x: mistaken("float16", x), 0.0),
        (lambda x: naive_float32(x, "running"), 300.0),
    ],
)
def test_a_named_mistake_gets_no_tolerance_but_its_fix(cli, tmp_path, make, offset):
    """For a named mistake the result says to fix it, not to loosen the test."""
    x = make_input(scale=0.1 if offset == 0 else 1.0, offset=offset)
    doc = run_check(cli, tmp_path, x, make(x))
    assert doc["diagnosis"]["explained"]
    assert doc["diagnosis"]["conclusion"].startswith("FAIL: ")
    assert doc["diagnosis"]["conclusion"].endswith("; fix that, not the tolerance")
    assert doc["suggested"] is None
    assert doc["null_reasons"]["/suggested"].endswith(
        "a tolerance that passes it would hide the mistake"
    )


def test_assert_close_line_with_nan_channels(cli, tmp_path):
    """NaN in the input makes a channel NaN in PyTorch's output and yours: the line says
    equal_nan=True, and passes."""
    x = make_input()
    x[0, 1, 0, 0] = np.nan
    y = torch_batchnorm(x).detach().numpy()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y.astype(np.float32))
    args = ["check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", *LAYER]
    doc = json.loads(cli(*args, "--atol", "0", "--rtol", "0", "--json", code=3).stdout)
    given = pasted(doc["suggested"]["assert_close"])
    assert given["equal_nan"] is True
    expected = torch_batchnorm(x)
    torch.testing.assert_close(torch.from_numpy(y.astype(np.float32)), expected, **given)


def test_json_shape(cli, tmp_path):
    """The fields are the schema's (conftest validates every document against
    check.schema.json); here, what they hold."""
    x = make_input()
    doc = run_check(cli, tmp_path, x, mistaken("no-affine", x))
    assert doc["command"] == "check" and doc["verdict"]["status"] == "fail"
    assert (
        doc["worst_by_abs_error"]["abs_error"]
        == doc["max_abs_error"]
        == doc["worst"][0]["abs_error"]
    )
    assert doc["max_ulp_error_at_scale"] == max(
        c["max_ulp_error_at_scale"] for c in doc["channels"]
    )
    assert doc["suggested"] is None  # a named mistake: fix it
    assert sum(b["count"] for b in doc["histogram"]) == x.size
    assert doc["torch_max_ulp_error_at_scale"] < 4


def test_table(cli, tmp_path):
    x = make_input()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", mistaken("unbiased-variance", x).astype(np.float32))
    args = ["check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", *LAYER]
    out = cli(*args, code=3).stdout
    verdict = " ".join(out.split("\n\n")[0].split())
    assert (
        "FAIL: normalizes with the unbiased variance (divides by N - 1) on all 3 channels; fix "
        "that, not the tolerance"
    ) in verdict
    assert re.search(r"\d+ of 360 elements beyond the derived tolerance \(docs/check.md\)", verdict)
    assert "Known mistakes that explain it" in out and "--verbose lists the" in out
    verbose = cli(*args, "--verbose", code=3).stdout
    assert "Known mistakes tried" in verbose and "no assert_close line: " in verbose
    assert "assert_close(" not in out and "assert_close(" not in verbose


def test_output_of_another_shape_names_the_transposition(cli, tmp_path):
    x = make_input()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", correct(x).transpose(0, 2, 3, 1).astype(np.float32))
    message = cli.error(
        "check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", code=1
    )
    assert message == (
        f"--output {tmp_path / 'y.npy'}: shape 4x5x6x3 but the input is 4x3x5x6; batch norm "
        "keeps the shape; it looks like the input transposed by (0, 2, 3, 1) (channels last): "
        "numpy.transpose(y, (0, 3, 1, 2)) brings it back"
    )
    np.save(tmp_path / "y.npy", np.zeros((4, 3, 5, 7), dtype=np.float32))
    assert cli.error(
        "check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", code=1
    ).endswith("batch norm keeps the shape")


def test_an_output_of_another_dtype_is_compared_with_a_notice(cli, tmp_path):
    x = make_input()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", correct(x))  # float64
    result = cli("check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", *LAYER)
    assert "Notice: --output is float64, the input float32: both are compared as float64" in (
        result.stderr
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [],
            "check needs --input: the tensor your batch norm was given, as .npy (a generated "
            "tensor can be saved first with bninspect run --save-input x.npy)",
        ),
        (["--input", "{x}", "--atol", "-1"], "--atol -1: must be a finite number >= 0"),
    ],
)
def test_check_refusals(cli, tmp_path, args, message):
    np.save(tmp_path / "x.npy", make_input())
    args = [a.format(x=tmp_path / "x.npy") for a in args]
    assert cli.error("check", *args, "--output", tmp_path / "y.npy", code=2) == message


@pytest.mark.parametrize("option", ["--steps", "--batch-size", "--save-output", "--shape"])
def test_check_takes_no_steps_files_or_generated_tensor(cli, tmp_path, option):
    """check compares one forward pass of a given input: it has no such options at all."""
    np.save(tmp_path / "x.npy", make_input())
    message = cli.error(
        "check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", option, "2",
        code=2,
    )  # fmt: skip
    assert message.startswith(f"No such option: {option}")
    assert message.endswith("see 'bninspect check --help'")


def test_pickled_or_foreign_output_is_refused(cli, tmp_path):
    np.save(tmp_path / "x.npy", make_input())
    np.save(tmp_path / "y.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert "holds Python objects (a pickle)" in cli.error(
        "check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", code=1
    )
    (tmp_path / "y.npy").write_text("1,2,3")
    assert "not a .npy file" in cli.error(
        "check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", code=1
    )


def test_nan_in_input_and_output(cli, tmp_path):
    x = make_input()
    x[0, 1, 0, 0] = np.nan
    y = correct(x)  # channel 1 all NaN, as batch norm makes it
    doc = run_check(cli, tmp_path, x, y, code=0)
    assert doc["passed"] and doc["channels"][1]["non_finite"] == 0


def channel_rows(out: str) -> dict[int, str]:
    """The per-channel table's rows of check's table output, by channel (one line each at the
    tests' 200 columns)."""
    table = out[out.index("Your output vs the reference, per channel") :]
    table = table[: table.index("\n\n")] if "\n\n" in table else table
    rows = re.findall(r"^ *(\d+) (.*)$", table, flags=re.M)
    return {int(c): f" {row} " for c, row in rows}


def test_nan_in_input_and_output_table(cli, tmp_path):
    """The table, not only the JSON, survives a channel without a finite pair, and a channel
    whose finite pairs match but which holds a NaN of yours is not simply 'exact'."""
    x = make_input()
    x[0, 1, 0, 0] = np.nan
    y = correct(x)  # channel 1 all NaN, as batch norm makes it
    y[2, 2, 1, 1] = np.nan  # where the reference is finite
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y.astype(np.float32))
    args = ["check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", *LAYER]
    rows = channel_rows(cli(*args, code=3).stdout)
    assert "not finite" in rows[1]
    assert "exact where finite" in rows[2]
    assert " exact " in rows[0] and "where finite" not in rows[0]
    doc = run_check(cli, tmp_path, x, y)
    assert [c["pattern"] for c in doc["channels"]] == ["exact", "not finite", "exact where finite"]
    assert doc["channels"][2]["non_finite"] == 1


def test_explain_against_names_the_unbiased_variance(cli, tmp_path):
    x = make_input()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", mistaken("unbiased-variance", x).astype(np.float32))
    args = [
        "explain",
        "--input",
        tmp_path / "x.npy",
        *LAYER,
        "--index",
        "1,2,3,4",
        "--against",
        tmp_path / "y.npy",
    ]
    against = cli.json(*args)["against"]
    assert against["theirs"] == float(np.float32(mistaken("unbiased-variance", x)[1, 2, 3, 4]))
    assert against["conclusion"].startswith("your value is what the unbiased variance gives")
    implied = {step["name"]: step for step in against["implied"]}
    count = 4 * 5 * 6
    np.testing.assert_allclose(
        implied["var"]["implied"], implied["var"]["reference"] * count / (count - 1), rtol=1e-4
    )
    assert "your value is what the unbiased variance gives" in cli(*args).stdout


W2 = np.array([0.5, 2.0], dtype=np.float32).astype(np.float64)
B2 = np.array([0.1, -0.3], dtype=np.float32).astype(np.float64)
AGAINST = {  # mistake: (its output, written here, from x; the verdict's start)
    "unbiased": (
        lambda x: norm(x, stats(x)[0], stats(x, ddof=1)[1], w=W2, b=B2),
        "your value is what the unbiased variance gives (divide by N - 1)",
    ),
    "eps outside": (
        lambda x: norm(x, *stats(x), w=W2, b=B2, outside=True),
        "your value is what eps outside the square root gives",
    ),
    "no eps": (
        lambda x: norm(x, *stats(x), eps=0.0, w=W2, b=B2),
        "your value is what leaving eps out gives",
    ),
    "keras eps": (
        lambda x: norm(x, *stats(x), eps=1e-3, w=W2, b=B2),
        "your value is what eps 0.001 (Keras' and TensorFlow's default) gives instead of the "
        "stated 1e-05",
    ),
    "running statistics": (
        lambda x: norm(x, per_channel([0.2, -0.1]), per_channel([1.5, 0.8]), w=W2, b=B2),
        "your value is what the running statistics give",
    ),
    "no affine": (
        lambda x: norm(x, *stats(x), w=np.ones(2), b=np.zeros(2)),
        "your value is what leaving out weight and bias gives",
    ),
    "swapped": (
        lambda x: norm(x, *stats(x), w=B2, b=W2),
        "your value is what swapping weight and bias gives",
    ),
    "none known": (
        lambda x: norm(x, *stats(x), w=W2 * 1.05, b=B2),
        "the numbers part before x_hat: your value needs var = ",
    ),
}


@pytest.mark.parametrize("mistake", list(AGAINST))
@pytest.mark.parametrize("shape", [(2, 2, 2, 3), (64, 2, 32, 32)])  # 12 or 65536 per channel
def test_explain_against_names_the_mistake(cli, tmp_path, mistake, shape):
    """With 65536 values per channel N/(N-1) is 1 + 1.5e-5: the mistakes are told apart by
    the element's ULPs at the channel's scale, as check does, not by a loose relative gap."""
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    make, verdict = AGAINST[mistake]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", make(x).astype(np.float32))
    channel = x[:, 1].astype(np.float64)  # the element farthest from its channel's mean
    far = np.unravel_index(np.argmax(np.abs(channel - channel.mean())), channel.shape)
    index = ",".join(map(str, (far[0], 1, *far[1:])))
    against = cli.json(
        "explain",
        "--input",
        tmp_path / "x.npy",
        "--weight",
        "0.5,2",
        "--bias",
        "0.1,-0.3",
        "--running-mean",
        "0.2,-0.1",
        "--running-var",
        "1.5,0.8",
        "--index",
        index,
        "--against",
        tmp_path / "y.npy",
    )["against"]
    if shape[0] == 64 and mistake in ("unbiased", "eps outside", "no eps"):
        # 65536 values per channel: these mistakes move y by less than a correct float32 sum of
        # that many values can (check.tolerance), so they read as rounding, named as alike
        assert against["conclusion"].startswith("your value matches the reference to rounding")
        name = {"unbiased": "unbiased variance", "eps outside": "eps outside the square root"}
        assert f"matches the known mistake '{name.get(mistake, mistake)}'" in against["conclusion"]
    else:
        assert against["conclusion"].startswith(verdict), against


def test_explain_against_a_correct_output(cli, tmp_path):
    x = make_input()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", correct(x).astype(np.float32))
    doc = cli.json(
        "explain",
        "--input",
        tmp_path / "x.npy",
        *LAYER,
        "--index",
        "0,0,0,0",
        "--against",
        tmp_path / "y.npy",
    )
    assert doc["against"]["conclusion"].startswith("your value matches the reference to rounding")


def test_against_of_another_shape(cli, tmp_path):
    np.save(tmp_path / "x.npy", make_input())
    np.save(tmp_path / "y.npy", np.zeros((4, 3), dtype=np.float32))
    assert "batch norm keeps the shape" in cli.error(
        "explain",
        "--input",
        tmp_path / "x.npy",
        "--index",
        "0,0,0,0",
        "--against",
        tmp_path / "y.npy",
        code=1,
    )


def test_low_precision_variants_need_numbers_of_that_dtype(cli, tmp_path):
    """A float32 output that is not made of float16 numbers is not 'computed in float16'."""
    x = make_input()
    doc = run_check(cli, tmp_path, x, mistaken("unbiased-variance", x))
    names = {h["name"] for h in doc["diagnosis"]["hypotheses"]}
    assert "float16" not in names and "bfloat16" not in names
    assert ml_dtypes.bfloat16  # the dtype the bfloat16 variant rounds to


def test_table_shows_the_fitted_pattern(cli, tmp_path):
    x = make_input()
    y = correct(x)
    y[:, 0] = y[:, 0] * 1.1 + 0.2  # both parts of the error comparable
    y[:, 1] += 0.02
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y.astype(np.float32))
    out = cli(
        "check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", *LAYER, code=3
    ).stdout
    assert "scale x1.1, shift +0.2" in out and "shift +0.02" in out


def test_a_scale_factor_near_1_shows_the_digits_that_part_it_from_1(cli, tmp_path):
    x = make_input()
    y = correct(x)
    y[:, 1] *= 1 + 3e-6  # 3e-6 at |y| up to 6: ~50 ULPs, a real scale error
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y.astype(np.float32))
    out = cli(
        "check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", *LAYER, code=3
    ).stdout
    assert re.search(r"scale x1\.00000[23]\d* ", channel_rows(out)[1]), channel_rows(out)[1]


@pytest.mark.parametrize(
    "case", ["unbiased", "naive at 300", "keras eps", "nan and shift", "5-D weight first"]
)
def test_check_tables_fit_80_columns(cli, tmp_path, monkeypatch, case):
    """Nothing is cut (no ellipsis) and no line is wider than an 80-column terminal."""
    monkeypatch.setenv("COLUMNS", "80")
    x = make_input(offset=300.0 if case == "naive at 300" else 0.0)
    if case == "unbiased":
        y = mistaken("unbiased-variance", x)
    elif case == "naive at 300":
        y = naive_float32(x, "running")
    elif case == "keras eps":
        x = make_input(scale=0.003)
        y = norm(x, *stats(x), eps=1e-3)
    elif case == "nan and shift":
        y = correct(x) * 1.1 + 0.2
        y[0, 0, 0, 0] = np.nan
    else:
        x = np.random.default_rng(2).standard_normal((2, 3, 4, 5, 6)).astype(np.float32) * 100
        wide = x.astype(np.float64) * W.reshape(1, -1, 1, 1, 1)
        axes = (0, 2, 3, 4)
        mean, var = wide.mean(axis=axes, keepdims=True), wide.var(axis=axes, keepdims=True)
        y = (wide - mean) / np.sqrt(var + 1e-5) + B.reshape(1, -1, 1, 1, 1)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.asarray(y, dtype=np.float32))
    args = ["check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", *LAYER]
    for detail in ([], ["--verbose"]):
        out = cli(*args, *detail, code=3).stdout
        assert "Known mistakes" in out or (not detail and "--verbose lists the" in out)
        assert "…" not in out
        assert max(len(line) for line in out.splitlines()) <= 80, out
