"""The backward pass: the float64 reference against exact rationals and torch.autograd.gradcheck,
autograd against the reference over ranks, dtypes and modes, and run/explain --grad through the
CLI (JSON fields, the derivation's terms, bad input, error paths without torch)."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal, getcontext
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bninspect.check.tolerance import channel_extremes, conditioning
from bninspect.grad.backward import channel_errors_at_scale
from bninspect.grad.reference import reference_backward
from bninspect.grad.tolerance import gradient_bounds
from bninspect.input.parameters import LayerParameters
from bninspect.pytorch.autograd import run_backward

from strategies import shapes

ROOT = Path(__file__).resolve().parent.parent
ARTICLE = ["--input", "samples/article.npy", "--weight", "0.5653,0.0322"]


def float64_statistics(x: np.ndarray, train: bool, rm=None, rv=None, eps=1e-5):
    """(mean, std) per channel, in float64, as the layer normalizes with."""
    axes = (0, *range(2, x.ndim))
    x = x.astype(np.float64)
    if train:
        mean = x.mean(axis=axes)
        var = ((x - mean.reshape((1, -1) + (1,) * (x.ndim - 2))) ** 2).mean(axis=axes)
    else:
        mean, var = np.asarray(rm, np.float64), np.asarray(rv, np.float64)
    return mean, np.sqrt(var + eps)


# --- the reference against exact rationals ---------------------------------------------------


def exact_backward(x: np.ndarray, dy: np.ndarray, w: np.ndarray, eps: Fraction, train: bool,
                   rm=None, rv=None):  # fmt: skip
    """dx, dweight, dbias in rational arithmetic, the square root to 60 digits: the textbook
    chain rule through mean and variance written out, element by element."""
    getcontext().prec = 60
    C = x.shape[1]
    dx = np.empty(x.shape, dtype=object)
    dw, db = [], []
    for c in range(C):
        xs = [Fraction(float(v)) for v in np.asarray(x[:, c], np.float64).reshape(-1)]
        gs = [Fraction(float(v)) for v in np.asarray(dy[:, c], np.float64).reshape(-1)]
        M = len(xs)
        if train:
            mean = sum(xs, Fraction(0)) / M
            var = sum(((v - mean) ** 2 for v in xs), Fraction(0)) / M
        else:
            mean, var = Fraction(float(rm[c])), Fraction(float(rv[c]))
        v_eps = var + eps
        root = Decimal(v_eps.numerator) / Decimal(v_eps.denominator)
        inv = 1 / Fraction(root.sqrt())
        wc = Fraction(float(w[c]))
        x_hat = [(v - mean) * inv for v in xs]
        dx_hat = [g * wc for g in gs]
        if train:  # through the graph: d var, d mean, then the three paths
            dvar = sum((d * (v - mean) for d, v in zip(dx_hat, xs, strict=True)), Fraction(0)) * (
                Fraction(-1, 2) * inv**3
            )
            dmean = -inv * sum(dx_hat, Fraction(0))  # + dvar * mean(-2 (x - mean)) = 0
            values = [
                d * inv + dvar * 2 * (v - mean) / M + dmean / M
                for d, v in zip(dx_hat, xs, strict=True)
            ]
        else:
            values = [d * inv for d in dx_hat]
        dx[:, c] = np.array(values, dtype=object).reshape(dx[:, c].shape)
        dw.append(sum((g * h for g, h in zip(gs, x_hat, strict=True)), Fraction(0)))
        db.append(sum(gs, Fraction(0)))
    return dx, dw, db


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(3, 2), (2, 2, 3), (2, 3, 2, 2), (2, 1, 2, 2, 2)])
def test_reference_against_exact_rationals(shape, train):
    rng = np.random.default_rng(len(shape) + train)
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    C = shape[1]
    w = rng.uniform(-2, 2, C).astype(np.float32)
    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    mean, std = float64_statistics(x, train, rm, rv)
    ref = reference_backward(x, dy, mean, std, w.astype(np.float64), train)
    exact_dx, exact_dw, exact_db = exact_backward(x, dy, w, Fraction(1e-5), train, rm, rv)
    # Within a few float64 ULPs of each gradient's scale (the reference's mean and std are
    # float64 roundings of the exact ones; every later step rounds a few times more).
    for c in range(C):
        unit = float(np.spacing(ref.input_scale[c]))
        pairs = zip(ref.grad_input[:, c].reshape(-1), exact_dx[:, c].reshape(-1), strict=True)
        errors = [abs(Fraction(float(a)) - e) for a, e in pairs]
        assert max(errors) <= 16 * Fraction(unit), (c, float(max(errors)) / unit)
        assert abs(Fraction(float(ref.grad_weight[c])) - exact_dw[c]) <= 16 * Fraction(
            float(np.spacing(ref.weight_scale[c])))  # fmt: skip
        assert Fraction(float(ref.grad_bias[c])) == Fraction(float(exact_db[c]))  # fsum: exact


# --- the reference against torch.autograd.gradcheck -----------------------------------------


def _reference_function(train: bool, rm: np.ndarray, rv: np.ndarray, eps: float):
    """batch norm as a torch.autograd.Function whose forward and backward are the numpy
    reference's: gradcheck compares that backward with finite differences of that forward."""

    class Reference(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, b):
            xn = x.detach().numpy()
            mean, std = float64_statistics(xn, train, rm, rv, eps)
            ctx.save_for_backward(x, w)
            ctx.stats = (mean, std)
            shape = (1, -1) + (1,) * (xn.ndim - 2)
            y = (xn - mean.reshape(shape)) / std.reshape(shape) * w.detach().numpy().reshape(
                shape) + b.detach().numpy().reshape(shape)  # fmt: skip
            return torch.from_numpy(y)

        @staticmethod
        def backward(ctx, dy):
            x, w = ctx.saved_tensors
            mean, std = ctx.stats
            ref = reference_backward(x.numpy(), dy.numpy(), mean, std, w.numpy(), train)
            return (torch.from_numpy(ref.grad_input), torch.from_numpy(ref.grad_weight),
                    torch.from_numpy(ref.grad_bias))  # fmt: skip

    return Reference.apply


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("shape", [(4, 2), (2, 3, 3), (2, 2, 2, 3)])
def test_reference_passes_gradcheck(shape, train):
    rng = np.random.default_rng(7)
    C = shape[1]
    x = torch.from_numpy(rng.standard_normal(shape)).requires_grad_(True)
    w = torch.from_numpy(rng.uniform(0.5, 2, C)).requires_grad_(True)
    b = torch.from_numpy(rng.standard_normal(C)).requires_grad_(True)
    fn = _reference_function(train, rng.standard_normal(C), rng.uniform(0.5, 2, C), 1e-5)
    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_a_wrong_backward_fails_gradcheck():
    """The gradcheck test can fail: the train forward with the eval backward must not pass."""
    rng = np.random.default_rng(8)
    x = torch.from_numpy(rng.standard_normal((4, 2, 3))).requires_grad_(True)
    w = torch.from_numpy(rng.uniform(0.5, 2, 2)).requires_grad_(True)
    b = torch.from_numpy(rng.standard_normal(2)).requires_grad_(True)
    from torch.autograd.gradcheck import GradcheckError

    with pytest.raises(GradcheckError):
        torch.autograd.gradcheck(_Mixed.apply, (x, w, b), eps=1e-6, atol=1e-6, rtol=1e-5)


class _Mixed(torch.autograd.Function):
    """The train-mode forward with the eval-mode dx: the mistake gradcheck must catch."""

    @staticmethod
    def forward(ctx, x, w, b):
        xn = x.detach().numpy()
        mean, std = float64_statistics(xn, True)
        ctx.save_for_backward(x, w)
        ctx.stats = (mean, std)
        shape = (1, -1, 1)
        return torch.from_numpy((xn - mean.reshape(shape)) / std.reshape(shape)
                                * w.detach().numpy().reshape(shape)
                                + b.detach().numpy().reshape(shape))  # fmt: skip

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        mean, std = ctx.stats
        ref = reference_backward(x.numpy(), dy.numpy(), mean, std, w.numpy(), False)
        return (torch.from_numpy(ref.grad_input), torch.from_numpy(ref.grad_weight),
                torch.from_numpy(ref.grad_bias))  # fmt: skip


# --- autograd against the reference ----------------------------------------------------------

DTYPES = ["float64", "float32", "float16", "bfloat16"]


def forward_conditioning(x, mean, var, params, train, eps=1e-5):
    """The forward's conditioning of x's channels, as check's bound takes it."""
    axes = (0, *range(2, x.ndim))
    wide = x.astype(np.float64)
    low, high = channel_extremes(x, [slice(0, x.shape[1])])
    return conditioning(
        count=x.size // x.shape[1], mean=mean, var=var, eps=eps, data_mean=wide.mean(axis=axes),
        data_var=wide.var(axis=axes), low=low, high=high, weight=params.weight,
        bias=params.bias, from_batch=train,
    )  # fmt: skip


@settings(max_examples=40)
@given(
    shape=shapes(),
    dtype=st.sampled_from(DTYPES),
    train=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    offset=st.sampled_from([0.0, 0.5, 3.0, 30.0, 300.0, 1000.0, 1e4]),
    scale=st.sampled_from([0.01, 1.0, 10.0]),
)
def test_autograd_within_rounding_of_the_reference(shape, dtype, train, seed, offset, scale):
    """PyTorch's autograd, in every dtype, rank 2 to 5, train and eval, data at |mean| / std up
    to 1e6: on every channel, dx, dweight and dbias within what a correct backward in the dtype
    can leave (grad/tolerance.py)."""
    from bninspect.dtypes import float_format

    numpy_dtype = float_format(dtype).numpy
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore"):
        x = (rng.standard_normal(shape) * scale + offset).astype(np.float32).astype(numpy_dtype)
        dy = rng.standard_normal(shape).astype(np.float32).astype(numpy_dtype)
    C = shape[1]

    def in_dtype(values):
        return np.asarray(values, np.float32).astype(numpy_dtype).astype(np.float64)

    params = LayerParameters(
        in_dtype(rng.uniform(-2, 2, C)), in_dtype(rng.standard_normal(C)),
        in_dtype(rng.standard_normal(C) * scale + offset), in_dtype(rng.uniform(0.1, 3, C)),
    )  # fmt: skip
    module = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}[len(shape)]
    got = run_backward(x, dy, module, params, 1e-5, True, train)
    mean, std = float64_statistics(x, train, params.running_mean, params.running_var)
    ref = reference_backward(x, dy, mean, std, params.weight, train)
    cond = forward_conditioning(x, mean, std**2 - 1e-5, params, train)
    bounds = gradient_bounds(ref, cond, dtype)
    for name in ("grad_input", "grad_weight", "grad_bias"):
        abs_error, at_scale = channel_errors_at_scale(
            getattr(got, name), getattr(ref, name), bounds.scales[name], dtype
        )
        assert np.all(abs_error <= bounds.total(name)), (name, abs_error, bounds.total(name))
        assert not np.isnan(at_scale).any()


def test_dx_is_counted_at_its_own_scale_far_from_zero(cli, tmp_path):
    """run --grad --offset 300: dx's scale is the size of dx's terms (at most a few times the
    largest |dx|), not ((|x| + |mean|) / std)^2 times it, where autograd's error read 7e-05
    ULP; its error reads in ULPs of dx itself, beside a bound that grows with |mean| / std."""
    doc = cli.json("run", "--shape", "8,3,4,4", "--offset", "300", "--grad", "--save-input",
                   tmp_path / "x.npy")  # fmt: skip
    x = np.load(tmp_path / "x.npy")
    dy = np.random.default_rng([0, 5]).standard_normal(x.shape, dtype=np.float32)
    for c, channel in enumerate(doc["grad"]["channels"]):
        xc, gc = x[:, c].astype(np.float64), dy[:, c].astype(np.float64)
        x_hat = (xc - xc.mean()) / np.sqrt(xc.var() + 1e-5)
        dx = (gc - gc.mean() - x_hat * (gc * x_hat).mean()) / np.sqrt(xc.var() + 1e-5)
        largest = np.abs(dx).max()
        assert largest <= channel["grad_input_scale"] <= 3 * largest
        assert 0.5 < channel["grad_input_ulp_error_at_scale"] <= channel["grad_input_bound_ulps"]
    assert doc["grad"]["verdict"]["status"] == "agrees"


# --- the CLI -----------------------------------------------------------------------------------


def test_run_grad_json_on_the_article(cli):
    doc = cli.json("run", *ARTICLE, "--grad")
    grad = doc["grad"]
    assert list(grad)[0] == "verdict" and grad["verdict"]["status"] == "agrees"
    assert grad["grad_output"] == {
        "source": "generated", "seed": 0, "stream": 5, "path": None, "sha256": None,
        "dtype": "float32", "notices": [],
    }  # fmt: skip
    x = np.load(ROOT / "samples/article.npy").astype(np.float64)
    dy = np.random.default_rng([0, 5]).standard_normal(x.shape, dtype=np.float32)
    for c, channel in enumerate(grad["channels"]):
        assert channel["count"] == 12
        np.testing.assert_allclose(channel["sum_grad_output"], dy[:, c].astype(np.float64).sum(),
                                   rtol=1e-14)  # fmt: skip
        x_hat = (x[:, c] - x[:, c].mean()) / np.sqrt(x[:, c].var() + 1e-5)
        np.testing.assert_allclose(channel["grad_weight"], (dy[:, c] * x_hat).sum(), rtol=1e-12)
        assert channel["grad_bias"] == channel["sum_grad_output"]
        assert channel["grad_input_ulp_error_at_scale"] <= channel["grad_input_bound_ulps"]
    assert set(grad["cs231n"]) == {"grad_input", "grad_weight", "grad_bias"}
    assert grad["cs231n"]["grad_input"]["rel_error"] > 0


def test_run_without_grad_has_no_gradients(cli):
    doc = cli.json("run", *ARTICLE)
    assert doc["grad"] is None and doc["null_reasons"]["/grad"] == "not asked for: --grad"


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_explain_grad_terms_add_up(cli, mode):
    doc = cli.json("explain", *ARTICLE, "--index", "0,1,2,3", "--grad", "--mode", mode)
    grad = doc["grad"]
    dx = grad["comparisons"][0]
    assert dx["name"] == "grad_input[0, 1, 2, 3]"
    names = [s["name"] for s in grad["derivation"]]
    if mode == "train":
        assert names == ["x_hat", "dx_hat", "dvar", "dmean", "dx", "dweight", "dbias"]
        terms = grad["terms"]
        assert [t["name"] for t in terms] == ["direct", "through the variance", "through the mean"]
        for t in terms:  # the staged and the compact derivation agree term by term
            np.testing.assert_allclose(t["staged"], t["compact"], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(sum(t["compact"] for t in terms), dx["reference"], rtol=1e-12)
    else:
        assert names == ["x_hat", "dx_hat", "dx", "dweight", "dbias"]
        assert grad["terms"] == []
        x_hat_step = grad["derivation"][0]
        assert x_hat_step["value"] == grad["x_hat"]
    assert grad["verdict"]["status"] in ("exact", "within-rounding")
    assert dx["ulp_error_at_scale"] <= dx["bound_ulps"]


def test_explain_grad_precision_reproduces_autograd(cli):
    doc = cli.json("explain", *ARTICLE, "--index", "0,0,1,2", "--grad", "--precision")
    precision = doc["grad"]["precision"]
    assert precision["bit_exact"] is True
    dx, dweight, dbias = doc["grad"]["comparisons"]
    assert precision["emulated"]["grad_input"] == dx["torch"]
    assert precision["torch"] == precision["emulated"]
    assert precision["torch"]["grad_weight"] == dweight["torch"]
    steps = {step["name"]: step for step in precision["emulation"]}
    assert steps["dx"]["torch"] == precision["emulated"]["grad_input"]
    assert steps["dbias"]["reference"] == dbias["reference"]


def test_explain_grad_precision_refuses_half(cli):
    doc = cli.json("explain", "--index", "0,0,0,0", "--grad", "--precision", "--dtype", "float16")
    assert doc["grad"]["precision"] is None
    assert "does not emulate" in doc["null_reasons"]["/grad/precision"]


def test_grad_output_file_is_used(cli, tmp_path):
    x = np.load(ROOT / "samples/article.npy")
    dy = np.ones_like(x)
    np.save(tmp_path / "dy.npy", dy)
    doc = cli.json("run", *ARTICLE, "--grad", "--grad-output", tmp_path / "dy.npy")
    grad = doc["grad"]
    assert grad["grad_output"]["source"] == "file"
    # dy = 1 everywhere: dbias = M, dweight = sum x_hat = 0, dx = 0 in train mode
    assert [c["grad_bias"] for c in grad["channels"]] == [12.0, 12.0]
    assert all(abs(c["grad_weight"]) < 1e-12 for c in grad["channels"])


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda x: np.ones((1, 2, 4, 3), np.float32), ["1x2x4x3", "1x2x3x4"]),
        (lambda x: np.ones(x.shape, np.float64), ["float64", "float32"]),
        (lambda x: np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, 1).astype(
            np.float32), ["NaN", "[0, 0, 1, 1]"]),  # fmt: skip
    ],
)
def test_bad_grad_output(cli, tmp_path, make, words):
    x = np.load(ROOT / "samples/article.npy")
    np.save(tmp_path / "dy.npy", make(x))
    message = cli.error("run", *ARTICLE, "--grad", "--grad-output", tmp_path / "dy.npy", code=1)
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--grad-output", "dy.npy"],
        ["run", "--grad", "--steps", "2"],
        ["explain", "--index", "0,0,0,0", "--grad-output", "dy.npy"],
        ["run", "--grad", "--stats-only", "--input", "samples/article.npy"],
    ],
)
def test_grad_usage_errors(cli, args):
    cli.error(*args, code=2)


NO_TORCH = (
    "import sys; sys.modules['torch'] = None; sys.modules['ml_dtypes'] = None\n"
    "from bninspect.cli.main import main\n"
    "sys.argv = ['bninspect', *sys.argv[1:]]\n"
    "main()\n"
)


def test_grad_errors_need_no_torch(tmp_path):
    """A dy of the wrong shape, and their dweight of the wrong shape, are refused before torch
    is imported (importing it fails in this subprocess)."""
    np.save(tmp_path / "dy.npy", np.ones((2, 2), np.float32))
    np.save(tmp_path / "dx.npy", np.ones((1, 2, 3, 4), np.float32))
    np.save(tmp_path / "dw.npy", np.ones((2, 1), np.float32))
    np.save(tmp_path / "good_dy.npy", np.ones((1, 2, 3, 4), np.float32))
    for args in (
        ["run", *ARTICLE, "--grad", "--grad-output", tmp_path / "dy.npy"],
        ["check", "--input", "samples/article.npy", "--grad-output", tmp_path / "good_dy.npy",
         "--grad-input", tmp_path / "dx.npy", "--grad-weight", tmp_path / "dw.npy"],
    ):  # fmt: skip
        result = subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)],
                                capture_output=True, text=True, cwd=ROOT, timeout=60)  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr


# --- --precision: the emulated kernel against autograd, every element -------------------------


@pytest.mark.skipif(
    torch.backends.cpu.get_cpu_capability() != "AVX512",
    reason="the emulation's fused operations were measured on the AVX512 kernel",
)
@pytest.mark.parametrize(
    ("dtype", "shape", "train"),
    [
        ("float32", (3, 2, 5, 7), True),
        ("float32", (3, 2, 5, 7), False),
        ("float64", (2, 3, 11), True),
        ("float64", (2, 2, 3, 3, 2), False),
        ("float32", (7, 3), True),
        ("float64", (7, 3), False),
    ],
)
def test_emulated_backward_reproduces_autograd(dtype, shape, train):
    from bninspect.grad.cpu_backward import emulate_channel_backward, emulate_grad_input

    rng = np.random.default_rng(11)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[1]
    w = rng.uniform(-2, 2, C).astype(dtype)
    rm, rv = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    module = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
              5: torch.nn.BatchNorm3d}[len(shape)](C).to(getattr(torch, dtype))  # fmt: skip
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(w))
        module.running_mean.copy_(torch.from_numpy(rm))
        module.running_var.copy_(torch.from_numpy(rv))
    module.train(train)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    module(xt).backward(torch.from_numpy(dy))
    _, saved_mean, saved_invstd = torch.ops.aten.native_batch_norm(
        torch.from_numpy(x), torch.from_numpy(w), None, None, None, True, 0.1, 1e-5
    )
    image = x.size // (shape[0] * C)
    for c in range(C):
        xc, dyc = x[:, c].reshape(shape[0], image), dy[:, c].reshape(shape[0], image)
        mean = float(saved_mean[c]) if train else float(rm[c])
        channel = emulate_channel_backward(
            xc, dyc, dtype, mean, float(saved_invstd[c]), train, float(rv[c]), 1e-5,
            torch.get_num_threads(),
        )  # fmt: skip
        emulated = [
            emulate_grad_input(float(a), float(g), channel, float(w[c]), train, dtype)
            for a, g in zip(xc.reshape(-1), dyc.reshape(-1), strict=True)
        ]
        np.testing.assert_array_equal(emulated, xt.grad.numpy()[:, c].reshape(-1))
        assert channel.grad_weight == float(module.weight.grad[c])
        assert channel.grad_bias == float(module.bias.grad[c])


def test_run_grad_says_when_nothing_can_be_told_apart(cli):
    """float16 at offset 1e4 with spread 2: a few values 8 apart (float16's ULP there), the
    spread is below what float16's statistics resolve, and the backward's verdict says any dx
    and dweight agree there rather than reading as a plain agreement."""
    doc = cli.json("run", "--shape", "8,3,4,4", "--dtype", "float16", "--offset", "10000",
                   "--scale", "2", "--grad")  # fmt: skip
    summary = " ".join(doc["grad"]["verdict"]["summary"])
    assert "on 3 of 3 channels the data's spread is below what float16's statistics" in summary
    assert all(c["grad_input_bound_ulps"] is None for c in doc["grad"]["channels"])
