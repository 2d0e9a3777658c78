"""bninspect check --grad-input: for every backward mistake in the catalogue, gradients with that
mistake written here (a staged backward through the graph, independently of the compact
formulas the diagnosis uses) must be named; a correct float64 and float32 backward passes and
names nothing."""

from __future__ import annotations

import numpy as np
import pytest

from bninspect.grad.variants import CATALOGUE

W = np.array([0.5, 2.0, -1.5], dtype=np.float32).astype(np.float64)
RM, RV = np.array([0.2, -0.1, 0.4]), np.array([1.5, 0.8, 2.0])
LAYER = ["--weight", "0.5,2,-1.5", "--running-mean", "0.2,-0.1,0.4", "--running-var", "1.5,0.8,2"]
AXES = (0, 2, 3)
EPS = 1e-5


def pc(v):
    return np.asarray(v, dtype=np.float64).reshape(1, -1, 1, 1)


def staged(x, dy, train=True, *, var_ddof=0, var_path_divisor=None, eps_at="inside",
           mean_path=1.0, var_path=True, weight_in_dx=True, axes=AXES, running=False):  # fmt: skip
    """Kratzert's staged backward through the graph, with the switches the mistakes flip:
    returns (dx, dweight, dbias) in float64."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    if train and not running:
        mu = x.mean(axis=AXES, keepdims=True)
        xmu = x - mu
        var = (xmu**2).sum(axis=AXES, keepdims=True) / (x.size // x.shape[1] - var_ddof)
    else:
        xmu, var = x - pc(RM), pc(RV)
    if eps_at == "inside":
        sqrtvar = np.sqrt(var + EPS)
    elif eps_at == "outside":
        sqrtvar = np.sqrt(var) + EPS
    else:
        sqrtvar = np.sqrt(var)
    ivar = 1.0 / sqrtvar
    xhat = xmu * ivar
    dbias = dy.sum(axis=AXES)
    dweight = (dy * xhat).sum(axis=AXES)
    dxhat = dy * (pc(W) if weight_in_dx else 1.0)
    if not train:
        return dxhat * ivar, dweight, dbias
    M = int(np.prod([x.shape[a] for a in axes]))
    divisor = M if var_path_divisor is None else var_path_divisor(M)
    divar = (dxhat * xmu).sum(axis=axes, keepdims=True)
    dxmu1 = dxhat * ivar
    dvar = -0.5 * divar * ivar**3
    dxmu2 = 2 * xmu * dvar / divisor if var_path else 0.0
    dx1 = dxmu1 + dxmu2
    dmu = -dx1.sum(axis=axes, keepdims=True) if var_path else -dxmu1.sum(axis=axes, keepdims=True)
    dx = dx1 + mean_path * dmu / M
    return dx, dweight, dbias


def mistaken(name: str, x, dy):
    """(dx, dweight, dbias, mode) of a backward with mistake ``name``."""
    if name == "mean-term-dropped":
        return (*staged(x, dy, mean_path=0.0), "train")
    if name == "variance-term-dropped":
        return (*staged(x, dy, var_path=False), "train")
    if name == "statistics-as-constants":
        return (*staged(x, dy, mean_path=0.0, var_path=False), "train")
    if name == "unbiased-variance-forward":
        return (*staged(x, dy, var_ddof=1, var_path_divisor=lambda m: m - 1), "train")
    if name == "unbiased-variance-backward":
        return (*staged(x, dy, var_path_divisor=lambda m: m - 1), "train")
    if name == "no-eps":
        return (*staged(x, dy, eps_at="none"), "train")
    if name == "eps-outside-sqrt":
        return (*staged(x, dy, eps_at="outside"), "train")
    if name == "grad-weight-divided-by-count":
        dx, dw, db = staged(x, dy)
        return dx, dw / (x.size // x.shape[1]), db, "train"
    if name == "grad-bias-divided-by-count":
        dx, dw, db = staged(x, dy)
        return dx, dw, db / (x.size // x.shape[1]), "train"
    if name == "batch-axis-only":
        return (*staged(x, dy, axes=(0,)), "train")
    if name == "x-instead-of-x-hat":
        dx, _, db = staged(x, dy)
        return dx, (dy.astype(np.float64) * x.astype(np.float64)).sum(axis=AXES), db, "train"
    if name == "train-formula-in-eval":
        return (*staged(x, dy, running=True), "eval")
    if name == "weight-left-out":
        return (*staged(x, dy, weight_in_dx=False), "train")
    if name == "mean-term-sign":
        return (*staged(x, dy, mean_path=-1.0), "train")
    raise AssertionError(f"no test implementation of {name}")


def make(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 3, 5, 6)) * np.array([1.0, 0.5, 2.0])[None, :, None, None]
    x = (x + np.array([0.0, 1.0, -2.0])[None, :, None, None]).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    return x, dy


def save(tmp_path, dtype, x, dy, dx, dw, db):
    paths = {}
    for name, array in (("x", x), ("dy", dy), ("dx", dx), ("dw", dw), ("db", db)):
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], np.asarray(array).astype(dtype))
    return paths


def check(cli, paths, mode, code, *extra):
    import json

    result = cli(
        "check", "--input", paths["x"], "--grad-output", paths["dy"], "--grad-input", paths["dx"],
        "--grad-weight", paths["dw"], "--grad-bias", paths["db"], "--mode", mode, *LAYER,
        *extra, "--json", code=code,
    )  # fmt: skip
    return json.loads(result.stdout)


def test_every_mistake_has_a_test_implementation():
    x, dy = make()
    for mistake in CATALOGUE:
        assert len(mistaken(mistake.name, x, dy)) == 4


@pytest.mark.parametrize("name", [m.name for m in CATALOGUE])
def test_each_mistake_is_named(cli, tmp_path, name):
    x, dy = make()
    dx, dw, db, mode = mistaken(name, x, dy)
    paths = save(tmp_path, np.float32, x, dy, dx, dw, db)
    doc = check(cli, paths, mode, 3)
    assert doc["verdict"]["status"] == "fail" and doc["passed"] is False
    diagnosis = doc["diagnosis"]
    wrong = [g for g, v in diagnosis["stated"].items() if v > doc["rounding_ulps"]]
    assert wrong, diagnosis
    for gradient in wrong:  # named first for every gradient it made wrong
        assert diagnosis["best"][gradient] == name, (gradient, diagnosis["summary"])
    assert diagnosis["explained"] is True
    assert name in doc["verdict"]["summary"][1] or any(
        m.description in doc["verdict"]["summary"][1] for m in CATALOGUE if m.name == name
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_correct_backward_passes_and_names_nothing(cli, tmp_path, dtype, mode):
    x, dy = make(dtype, seed=3)
    dx, dw, db = staged(x, dy, train=mode == "train")
    paths = save(tmp_path, dtype, x, dy, dx, dw, db)
    doc = check(cli, paths, mode, 0)
    assert doc["verdict"]["status"] == "pass" and doc["passed"] is True
    assert all(h["explains"] == [] for h in doc["diagnosis"]["hypotheses"])
    assert doc["diagnosis"]["explained"] is False
    assert "nothing to explain" in doc["diagnosis"]["summary"]
    for g in doc["gradients"]:
        assert g["max_ulp_error_at_scale"] <= doc["rounding_ulps"]


def test_a_correct_float32_backward_in_float32_arithmetic_passes(cli, tmp_path):
    """A backward computed wholly in float32 (numpy's pairwise sums), not rounded from float64."""
    x, dy = make(np.float32, seed=5)
    mu = x.mean(axis=AXES, keepdims=True, dtype=np.float32)
    xmu = x - mu
    var = (xmu * xmu).mean(axis=AXES, keepdims=True, dtype=np.float32)
    ivar = np.float32(1) / np.sqrt(var + np.float32(EPS))
    xhat = xmu * ivar
    M = np.float32(x.size // x.shape[1])
    w = W.astype(np.float32).reshape(1, -1, 1, 1)
    sum_dy = dy.sum(axis=AXES, keepdims=True, dtype=np.float32)
    sum_dy_xhat = (dy * xhat).sum(axis=AXES, keepdims=True, dtype=np.float32)
    dx = w * ivar / M * (M * dy - sum_dy - xhat * sum_dy_xhat)
    paths = save(tmp_path, np.float32, x, dy, dx, sum_dy_xhat.reshape(-1), sum_dy.reshape(-1))
    doc = check(cli, paths, "train", 0)
    assert all(h["explains"] == [] for h in doc["diagnosis"]["hypotheses"])


def test_check_grad_human_output_leads_with_the_verdict(cli, tmp_path):
    x, dy = make()
    dx, dw, db, mode = mistaken("statistics-as-constants", x, dy)
    paths = save(tmp_path, np.float32, x, dy, dx, dw, db)
    result = cli("check", "--input", paths["x"], "--grad-output", paths["dy"], "--grad-input",
                 paths["dx"], *LAYER, code=3)  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines[0].startswith("your dx misses the reference at 360 of 360 elements")
    assert "eval formula in train mode" in result.stdout
    assert "torch.testing.assert_close(" in result.stdout


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--grad-input", "{dx}"], 2, ["--grad-output"]),
        (["--grad-output", "{dy}"], 2, ["--grad-input"]),
        (["--grad-input", "{dx}", "--grad-output", "{dy}", "--output", "{dx}"], 2, ["one at"]),
        (["--grad-input", "{dx}", "--grad-output", "{dy}", "--grad-weight", "{dx}"], 1,
         ["--grad-weight", "4x3x5x6", "(3,)"]),  # fmt: skip
        (["--grad-input", "{dw}", "--grad-output", "{dy}"], 1, ["--grad-input", "shape 3"]),
        (["--grad-input", "{dx}", "--grad-output", "{dy}", "--grad-weight", "{dw}",
          "--no-affine"], 2, ["--no-affine"]),  # fmt: skip
        ([], 2, ["--output", "--grad-input"]),
    ],
)
def test_check_grad_bad_input(cli, tmp_path, args, code, words):
    x, dy = make()
    dx, dw, db = staged(x, dy)
    paths = save(tmp_path, np.float32, x, dy, dx, dw, db)
    filled = [a.format(dx=paths["dx"], dy=paths["dy"], dw=paths["dw"]) for a in args]
    message = cli.error("check", "--input", paths["x"], *filled, code=code)
    for word in words:
        assert word in message, message
