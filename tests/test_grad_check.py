"""bninspect check --grad-input: for every backward mistake in the catalogue, gradients with that
mistake written here (a staged backward through the graph, independently of the compact
formulas the diagnosis uses) must be named; a correct float64 and float32 backward passes and
names nothing."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from independent_grad import (
    CORRECT,
    compact_batch_axis_only,
    compact_train_formula_in_eval,
    staged,
)
from independent_grad import mistaken as written_mistake

from bninspect.dtypes import float_format
from bninspect.grad.variants import CATALOGUE
from bninspect.results.common import Undefined

W = np.array([0.5, 2.0, -1.5], dtype=np.float32).astype(np.float64)
RM, RV = np.array([0.2, -0.1, 0.4]), np.array([1.5, 0.8, 2.0])
LAYER = ["--weight", "0.5,2,-1.5", "--running-mean", "0.2,-0.1,0.4", "--running-var", "1.5,0.8,2"]


def mistaken(name: str, x, dy):
    """(dx, dweight, dbias, mode) of a backward with mistake ``name`` (float64 arithmetic)."""
    return written_mistake(name, x, dy, W, RM, RV)


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
    wrong = [g for g, v in diagnosis["stated_over_bound"].items() if v is None or v > 1]
    assert wrong, diagnosis
    for gradient in wrong:  # named first for every gradient it made wrong
        assert diagnosis["explained_by"][gradient] == name, (gradient, diagnosis["conclusion"])
    assert diagnosis["explained"] is True
    assert name in doc["verdict"]["summary"][1] or any(
        m.description in doc["verdict"]["summary"][1] for m in CATALOGUE if m.name == name
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_a_correct_backward_passes_and_names_nothing(cli, tmp_path, dtype, mode):
    x, dy = make(dtype, seed=3)
    dx, dw, db = staged(x, dy, W, mode == "train", RM, RV, t=np.float64)
    paths = save(tmp_path, dtype, x, dy, dx, dw, db)
    doc = check(cli, paths, mode, 0)
    assert doc["verdict"]["status"] == "pass" and doc["passed"] is True
    assert all(h["explains"] == [] for h in doc["diagnosis"]["hypotheses"])
    assert doc["diagnosis"]["explained"] is False
    assert "nothing to explain" in doc["diagnosis"]["conclusion"]
    for g in doc["gradients"]:
        assert g["max_ulp_error_at_scale"] <= g["max_bound_ulps"]
        for channel in g["channels"]:
            assert channel["ulp_error_at_scale"] <= channel["bound_ulps"]


def _library_check(x, dy, dx, dw=None, db=None, mode="train", weight=W):
    """check --grad-input through the library (the CLI's path without files): the result."""
    from bninspect.grad.backward import inspect_backward
    from bninspect.grad.check import TheirGradient, build_grad_check
    from bninspect.results.grad import GradOutputInfo

    from helpers import inspect_array

    inspection = inspect_array(x, weight=weight, running_mean=RM, running_var=RV, mode=mode)
    info = GradOutputInfo("file", None, None, "dy.npy", "0" * 64, x.dtype.name)
    backward = inspect_backward(inspection, dy, info)
    theirs = [
        TheirGradient(name, np.asarray(values, np.float64), f"{name}.npy", "0" * 64, x.dtype.name)
        for name, values in (("grad_input", dx), ("grad_weight", dw), ("grad_bias", db))
        if values is not None
    ]
    return build_grad_check(inspection, backward, theirs, None, None, 5)


def offset_data(dtype, offset, seed=0, shape=(8, 3, 4, 4)):
    """Standard normal x plus ``offset`` (times a per-channel spread), dy standard normal."""
    rng = np.random.default_rng(seed)
    spread = np.array([1.0, 0.5, 2.0])[None, :, None, None]
    x = (rng.standard_normal(shape) * spread + offset).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, dy


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("offset", [0.0, 30.0, 300.0, 1000.0, 1e4])
def test_correct_backwards_pass_at_every_offset(dtype, offset):
    """Correct backwards written in the test, in the working precision (numpy's pairwise sums, a
    C loop's one-at-a-time sums, x_hat as x * k - m * k, Kratzert's staged graph), in train and
    eval mode: within the bound on every channel, nothing named. A float32 backward on data at
    |mean| / std 1e3 loses about 10 bits in x_hat: the bound must allow it. (In eval mode at
    offset 1e4 the running mean, 0.2, leaves x_hat near 1e4: float16's dweight overflows to inf,
    as every float16 backward's does, and agrees with the reference beyond float16's range.)"""
    x, dy = offset_data(float_format(dtype).numpy, offset, seed=int(offset) + 1)
    for mode in ("train", "eval"):
        for name, backward in CORRECT.items():
            dx, dw, db = backward(x, dy, W, mode == "train", RM, RV)
            result = _library_check(x, dy, dx, dw, db, mode)
            assert result.passed, (name, mode, result.verdict.summary)
            assert not any(h.explains for h in result.diagnosis.hypotheses), (name, mode)


def test_a_correct_float32_backward_in_float32_arithmetic_passes(cli, tmp_path):
    """A backward computed wholly in float32 (numpy's pairwise sums), not rounded from float64."""
    x, dy = make(np.float32, seed=5)
    dx, dw, db = CORRECT["compact pairwise"](x, dy, W, True, RM, RV)
    paths = save(tmp_path, np.float32, x, dy, dx, dw, db)
    doc = check(cli, paths, "train", 0)
    assert all(h["explains"] == [] for h in doc["diagnosis"]["hypotheses"])


# --- large offsets: the bound follows the data's conditioning ----------------------------------


def test_mean_term_dropped_fails_at_offset_300(cli, tmp_path):
    """The review's case: data at offset 300, dx with the mean term dropped (off by about
    sum dy / M, 2% of dx) passed as "1.958 ULP" under a scale inflated by ((|x| + |mean|) /
    std)^2. A correct float32 backward there loses ~8 bits of 24: 2% is far beyond it."""
    x, dy = offset_data(np.float32, 300.0)
    dx = written_mistake("mean-term-dropped", x, dy, W, RM, RV)[0]
    reference = staged(x, dy, W, True, RM, RV, t=np.float64)[0]
    off = np.abs(dx - reference).max() / np.abs(reference).max()
    assert 1e-3 < off < 0.2  # the mistake is a few percent of dx, not more
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "dy.npy", dy)
    np.save(tmp_path / "dx.npy", dx.astype(np.float32))
    doc = json.loads(cli("check", "--input", tmp_path / "x.npy", "--grad-output",
                         tmp_path / "dy.npy", "--grad-input", tmp_path / "dx.npy", "--weight",
                         "0.5,2,-1.5", "--json", code=3).stdout)  # fmt: skip
    assert doc["verdict"]["status"] == "fail"
    assert doc["gradients"][0]["mismatches"] > 0.9 * x.size
    assert doc["diagnosis"]["explained_by"]["grad_input"] == "mean-term-dropped"


@pytest.mark.parametrize(
    ("name", "offset"),
    [("mean-term-dropped", 150.0), ("mean-term-dropped", 1000.0),
     ("unbiased-variance-backward", 30.0), ("unbiased-variance-backward", 300.0),
     ("variance-term-dropped", 300.0), ("mean-term-sign", 1000.0)],
)  # fmt: skip
def test_mistakes_fail_and_are_named_at_large_offsets(name, offset):
    """Mistakes the review saw pass at large offsets (caught on 2 of 384 elements at offset 30,
    128 of 384 at 150, none at 300): dx off by far more than a float32 backward's rounding
    there (the mistake's own size, over |mean| / std's lost bits, is above 20 at 128 values),
    so check fails them and names them."""
    x, dy = offset_data(np.float32, offset)
    dx, dw, db, mode = written_mistake(name, x, dy, W, RM, RV)
    result = _library_check(x, dy, dx, dw, db, mode)
    assert not result.passed
    assert result.diagnosis.explained_by["grad_input"] == name, result.diagnosis.conclusion


@pytest.mark.parametrize("offset", [0.0, 30.0, 300.0])
def test_every_distinguishable_mistake_is_named(offset):
    """At each offset, every catalogue mistake (written in the test, float64, rounded to
    float32) whose gradients differ from the reference by more than twice what a correct
    backward can leave fails and is named; one within the bound passes (indistinguishable from
    rounding, as eps's mistakes are on data of variance 1 far from 0)."""
    from bninspect.grad.variants import CATALOGUE

    x, dy = offset_data(np.float32, offset, seed=7)
    named = set()
    for mistake in CATALOGUE:
        dx, dw, db, mode = written_mistake(mistake.name, x, dy, W, RM, RV)
        result = _library_check(x, dy, dx, dw, db, mode)
        stated = result.diagnosis.stated_over_bound
        if max(stated.values()) > 2:
            assert not result.passed, mistake.name
            wrong = [n for n, v in stated.items() if v > 1]
            for gradient in wrong:
                assert result.diagnosis.explained_by[gradient] == mistake.name, (
                    mistake.name, gradient, result.diagnosis.conclusion)  # fmt: skip
            named.add(mistake.name)
        elif max(stated.values()) <= 1:
            assert result.passed, mistake.name
    # eps's mistakes move dx by about eps / (2 var), 5e-6 of it on variance ~1: below a float32
    # backward's rounding away from offset 0. Every other one is far beyond it.
    assert named >= {m.name for m in CATALOGUE} - {"no-eps", "eps-outside-sqrt"}


def test_float32_bound_at_offset_300_is_a_few_bits():
    """The bound grows with |mean| / std as the bits a float32 backward loses, not more: at
    offset 300 (8 of 24 bits lost), 128 values per channel, dx's bound stays below 2**-11 of
    its scale, so a 0.1% error is never rounding."""
    x, dy = offset_data(np.float32, 300.0)
    from bninspect.grad.backward import inspect_backward
    from bninspect.results.grad import GradOutputInfo

    from helpers import inspect_array

    inspection = inspect_array(x, weight=W)
    info = GradOutputInfo("file", None, None, "dy.npy", "0" * 64, "float32")
    bounds = inspect_backward(inspection, dy, info).bounds
    for name in ("grad_input", "grad_weight"):
        relative = bounds.total(name) / bounds.scales[name]
        assert np.all(relative < 2.0**-11), (name, relative)
        assert np.all(relative > 2.0**-23 * 300), (name, relative)  # the lost bits are there


# --- the compact formula ------------------------------------------------------------------------


def test_compact_train_formula_in_eval_is_named(cli, tmp_path):
    """The review's case: the compact formula w * inv / M * (M dy - sum dy - x_hat sum(dy
    x_hat)) with the running statistics, in eval mode: not the staged backward (whose dmean
    keeps dvar * sum(x - running_mean), not 0 here), yet the same mistake."""
    x, dy = offset_data(np.float32, 0.0, seed=9)
    rm, rv = np.array([0.1, -0.2, 0.3]), np.array([0.8, 1.2, 2.0])
    dx = compact_train_formula_in_eval(x, dy, np.ones(3), rm, rv, t=np.float32)[0]
    for name, values in (("x", x), ("dy", dy), ("dx", dx.astype(np.float32))):
        np.save(tmp_path / f"{name}.npy", values)
    doc = json.loads(cli("check", "--input", tmp_path / "x.npy", "--grad-output",
                         tmp_path / "dy.npy", "--grad-input", tmp_path / "dx.npy", "--mode",
                         "eval", "--running-mean", "0.1,-0.2,0.3", "--running-var", "0.8,1.2,2",
                         "--json", code=3).stdout)  # fmt: skip
    assert doc["diagnosis"]["explained_by"]["grad_input"] == "train-formula-in-eval"
    (hypothesis,) = [h for h in doc["diagnosis"]["hypotheses"] if h["explains"]]
    assert hypothesis["form"] == "compact"
    assert "compact form" in doc["verdict"]["summary"][1]


@pytest.mark.parametrize("t", [np.float64, np.float32])
def test_compact_batch_axis_only_is_named(t):
    """CS231n's batchnorm_backward_alt applied to NCHW: sums over axis 0, N for M, with the
    channel's x_hat: named batch-axis-only (the compact form), in float64 or float32."""
    x, dy = offset_data(np.float32, 0.0, seed=4)
    dx, dw, db = compact_batch_axis_only(x, dy, W, t=t)
    result = _library_check(x, dy, dx, dw, db)
    assert not result.passed
    assert result.diagnosis.explained_by["grad_input"] == "batch-axis-only", (
        result.diagnosis.conclusion
    )
    (hypothesis,) = [h for h in result.diagnosis.hypotheses if h.explains]
    assert hypothesis.form == "compact"


def test_staged_forms_still_named_staged():
    """The staged forms of both mistakes stay recognised, as the staged form."""
    x, dy = offset_data(np.float32, 0.0, seed=4)
    for name in ("batch-axis-only", "train-formula-in-eval"):
        dx, dw, db, mode = written_mistake(name, x, dy, W, RM, RV)
        result = _library_check(x, dy, dx, dw, db, mode)
        assert result.diagnosis.explained_by["grad_input"] == name
        (hypothesis,) = [h for h in result.diagnosis.hypotheses if h.explains]
        assert hypothesis.form == "staged"


# --- NaN in their gradients ----------------------------------------------------------------------


def test_nan_in_dx_is_reported_as_nan(cli, tmp_path):
    """A dx with two NaN: the verdict says so, with where; no error reads inf, no mistake is
    ranked for them, and the finite elements (correct) are judged as such."""
    x, dy = make()
    dx, dw, db = staged(x, dy, W, True, RM, RV, t=np.float64)
    dx = dx.astype(np.float32)
    dx[1, 2, 3, 0] = dx[3, 0, 0, 1] = np.nan
    paths = save(tmp_path, np.float32, x, dy, dx, dw, db)
    result = cli("check", "--input", paths["x"], "--grad-output", paths["dy"], "--grad-input",
                 paths["dx"], *LAYER, "-q", code=3)  # fmt: skip
    first, second = result.stdout.strip().split("\n", 1)
    assert "2 NaN (first at [1, 2, 3, 0]) where the reference is finite" in first.replace(
        "\n", " ")  # fmt: skip
    assert not re.search(r"\binf\b", result.stdout) and "closest" not in result.stdout
    assert "none is ranked" in second and "match the stated formulas" in second
    doc = check(cli, paths, "train", 3)
    g = doc["gradients"][0]
    assert g["non_finite"]["theirs_only"] == 2
    assert g["non_finite"]["indices"] == [[1, 2, 3, 0], [3, 0, 0, 1]]
    assert g["max_ulp_error_at_scale"] <= g["max_bound_ulps"]  # the finite ones
    assert g["mismatches"] == 2
    assert not any(h["explains"] for h in doc["diagnosis"]["hypotheses"])
    assert all(v is not None for v in doc["diagnosis"]["stated"].values())


def test_nan_and_infinity_counted_apart_and_an_all_nan_dx(tmp_path):
    """NaN and infinities are counted apart, each with its first index; a dx of NaN only says
    there is nothing finite to judge (not that the finite ones match); the CS231n figure is
    not a number there, and says why."""
    x, dy = make()
    dx, dw, db = staged(x, dy, W, True, RM, RV, t=np.float64)
    dx = dx.astype(np.float32)
    dx[2, 1, 0, 0] = np.nan
    dx[0, 2, 1, 1] = dx[3, 0, 2, 2] = -np.inf
    result = _library_check(x, dy, dx, dw, db)
    first, second = result.verdict.summary
    assert ("1 NaN (first at [2, 1, 0, 0]) and 2 infinities (first at [0, 2, 1, 1]) where the "
            "reference is finite") in first  # fmt: skip
    assert second.endswith("the finite ones match the stated formulas within rounding")
    g = result.gradients[0]
    assert isinstance(g.cs231n.rel_error, Undefined) and "NaN" in g.cs231n.rel_error.reason
    assert all(np.isfinite(e.theirs) for e in g.worst)  # the worst of the finite ones
    nothing = np.full_like(dx, np.nan)
    result = _library_check(x, dy, nothing)
    first, second = result.verdict.summary
    assert f"{x.size} NaN (first at [0, 0, 0, 0])" in first
    assert "your dx has no finite element to judge" in second and "match" not in second


def test_nan_beside_a_mistake_still_names_the_mistake(tmp_path):
    """NaN in a few elements of a mistaken dx: the NaN are reported, and the mistake is named
    from the finite elements."""
    x, dy = make()
    dx, dw, db, mode = mistaken("mean-term-dropped", x, dy)
    dx = dx.copy()
    dx[0, 1, 2, 3] = np.nan
    result = _library_check(x, dy, dx, dw, db, mode)
    assert "1 NaN" in result.verdict.summary[0]
    assert result.diagnosis.explained_by["grad_input"] == "mean-term-dropped"
    assert "mean" in result.verdict.summary[1]


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
        (
            ["--grad-input", "{dx}", "--grad-output", "{dy}", "--grad-weight", "{dx}"],
            1,
            ["--grad-weight", "4x3x5x6", "(3,)"],
        ),  # fmt: skip
        (["--grad-input", "{dw}", "--grad-output", "{dy}"], 1, ["--grad-input", "shape 3"]),
        (
            [
                "--grad-input",
                "{dx}",
                "--grad-output",
                "{dy}",
                "--grad-weight",
                "{dw}",
                "--no-affine",
            ],
            2,
            ["--no-affine"],
        ),  # fmt: skip
        ([], 2, ["--output", "--grad-input"]),
        (
            ["--grad-input", "{dx}", "--grad-output", "{dy}", "--allow-nonfinite-mismatch"],
            2,
            ["--allow-nonfinite-mismatch", "forward"],
        ),  # fmt: skip
    ],
)
def test_check_grad_bad_input(cli, tmp_path, args, code, words):
    x, dy = make()
    dx, dw, db = staged(x, dy, W, True, RM, RV, t=np.float64)
    paths = save(tmp_path, np.float32, x, dy, dx, dw, db)
    filled = [a.format(dx=paths["dx"], dy=paths["dy"], dw=paths["dw"]) for a in args]
    message = cli.error("check", "--input", paths["x"], *filled, code=code)
    for word in words:
        assert word in message, message


def test_unresolved_spread_says_nothing_can_be_told_apart():
    """float16 data at 1e4 with a spread of 2 takes a few values in float16 (ULP 8): the
    statistics a correct float16 backward may hold leave x_hat unbounded, so any dx passes, and
    the verdict says so rather than reading as a plain pass; a hypothesis whose dx is not finite
    is never within (its over_bound is inf, not NaN). (A spread of 1 makes most channels
    constant, whose mean every correct implementation has exactly: those are resolved.)"""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8, 3, 4, 4)) * 2 + 1e4).astype(np.float16)
    assert all(len(np.unique(x[:, c])) > 1 for c in range(3))
    dy = rng.standard_normal(x.shape).astype(np.float16)
    result = _library_check(x, dy, np.zeros(x.shape))
    assert result.passed
    assert "below what float16's statistics resolve" in result.verdict.summary[0]
    assert "no mistake can be told apart" in result.verdict.summary[0]
    g = result.gradients[0]
    assert all(isinstance(c.bound_ulps, Undefined) and "any value passes" in c.bound_ulps.reason
               for c in g.channels)  # fmt: skip
    for h in result.diagnosis.hypotheses:
        assert not np.isnan(h.over_bound["grad_input"]), h.name
