"""check's diagnosis named per channel and judged against the bound: a mistake in one channel is
named on that channel, not on all of them by a fitted mistake's freedom; the closest unexplained
mistake is the one that leaves least against the bound; a passing output that a known mistake
fits markedly better says so; bfloat16 data saved as float32 is pointed to --dtype; the largest
error is told with its own channel's scale; -q prints the verdict's two lines. Every mistaken
output is written here in numpy, independently of the catalogue."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
import torch
from test_tolerance import checked

AXES = (0, 2, 3)


def batchnorm(x, var_of=None, eps=1e-5, weight=None, bias=None):
    """(x - mean) / sqrt(var + eps) * w + b in float64 over AXES; ``var_of(c, wide)`` gives
    channel c's variance where a mistake changes it (default: the biased variance)."""
    wide = x.astype(np.float64)
    channels = x.shape[1]
    mean = wide.mean(axis=AXES, keepdims=True)
    var = wide.var(axis=AXES, keepdims=True)
    if var_of is not None:
        for c in range(channels):
            var[:, c] = var_of(c, wide[:, c])
    w = np.ones(channels) if weight is None else weight
    b = np.zeros(channels) if bias is None else bias
    return (wide - mean) / np.sqrt(var + eps) * w.reshape(1, -1, 1, 1) + b.reshape(1, -1, 1, 1)


def ulp32(value: float) -> float:
    """float32's spacing at |value| (numpy's own, independent of bninspect's ulp)."""
    return float(np.spacing(np.float32(abs(value))))


def test_one_channel_with_the_unbiased_variance_is_named_on_it_not_by_a_fitted_mistake():
    """At offset 100 the fitted naive-variance mistake can move every channel's variance as
    far as one-pass cancellation reaches, so it fitted all 16 channels and was named on all of
    them; channel 3 alone divides by N - 1, and the diagnosis must say exactly that."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8, 16, 4, 4)) + 100).astype(np.float32)
    y = batchnorm(x, lambda c, v: v.var(ddof=1) if c == 3 else v.var()).astype(np.float32)
    result = checked(x, y)
    assert not result.passed and result.diagnosis.explained
    assert [(g.name, g.channels) for g in result.diagnosis.groups] == [
        ("unbiased-variance", (3,)),
        ("stated settings", (0, 1, 2, *range(4, 16))),
    ]
    assert [c.explained_by for c in result.channels] == [
        "unbiased-variance" if c == 3 else "stated settings" for c in range(16)
    ]
    assert result.diagnosis.conclusion == (
        "FAIL: normalizes with the unbiased variance (divides by N - 1) on channel 3; "
        "channels 0-2 and 4-15 match the stated settings; fix that, not the tolerance"
    )
    naive = next(h for h in result.diagnosis.hypotheses if h.name == "naive-variance")
    assert not naive.explains and "by its freedom" in naive.detail


@pytest.mark.parametrize("offset", [0.0, 10.0, 100.0, 300.0])
@pytest.mark.parametrize("channel", [0, 5])
def test_one_channels_unbiased_variance_is_named_there_at_every_offset(offset, channel):
    rng = np.random.default_rng(int(offset) + channel)
    x = (rng.standard_normal((8, 6, 4, 4)) + offset).astype(np.float32)
    y = batchnorm(x, lambda c, v: v.var(ddof=1) if c == channel else v.var()).astype(np.float32)
    result = checked(x, y)
    assert not result.passed
    assert [(g.name, g.channels) for g in result.diagnosis.groups] == [
        ("unbiased-variance", (channel,)),
        ("stated settings", tuple(c for c in range(6) if c != channel)),
    ], result.diagnosis.conclusion


def test_the_real_naive_variance_is_still_named_on_every_channel():
    """The one-pass variance in float32 at offset 300 (every channel moved by cancellation, no
    specific mistake fits them): the fitted mistake keeps its place."""
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((4, 6, 5, 6)) + 300).astype(np.float32)
    n = np.float32(x.size // x.shape[1])
    mean = x.sum(axis=AXES, keepdims=True, dtype=np.float32) / n
    var = (x * x).sum(axis=AXES, keepdims=True, dtype=np.float32) / n - mean * mean
    y = (x - mean) / np.sqrt(var + np.float32(1e-5))
    result = checked(x, y)
    assert not result.passed
    first = result.diagnosis.hypotheses[0]
    assert (first.name, first.explains) == ("naive-variance", True), result.diagnosis.conclusion


def test_the_closest_is_the_least_error_against_the_bound():
    """eps 0.01 where 1e-5 is stated, with noise of a few bounds on top, so nothing explains it:
    the closest is another eps (it leaves the noise), not eps outside the root, which is
    specific but leaves almost all the stated settings' error."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 5, 6)).astype(np.float32)
    y = batchnorm(x, eps=1e-2)
    y += rng.standard_normal(y.shape) * 3e-6  # a few float32 ULPs at scale ~3, ~0.4% of its error
    result = checked(x, y.astype(np.float32))
    assert not result.passed and not result.diagnosis.explained
    ratios = {h.name: h.max_over_bound for h in result.diagnosis.hypotheses}
    stated = max(c.max_ulp_error_at_scale / c.bound_ulps for c in result.channels)
    assert ratios["eps-outside-sqrt"] < stated  # closer than the stated settings, barely
    assert 1 < ratios["other-eps"] < ratios["eps-outside-sqrt"] / 10
    assert "the closest, other-eps, leaves" in result.diagnosis.conclusion
    unexplained = [h.max_over_bound for h in result.diagnosis.hypotheses if not h.explains]
    assert unexplained[0] == ratios["other-eps"]


def test_a_pass_that_a_mistake_fits_markedly_better_says_so_in_a_note(cli, tmp_path):
    """eps left out (float64 output) on data of std 3: within the bound (0.39 of it), but the
    no-eps mistake leaves nothing: one note line says so; the verdict stays PASS."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 3, 5, 6)) * 3).astype(np.float32)
    y = batchnorm(x, eps=0.0)
    result = checked(x, y)
    stated = max(c.max_ulp_error_at_scale / c.bound_ulps for c in result.channels)
    assert result.passed and 0.25 <= stated <= 1  # the premise: a fair share of the bound
    note = result.diagnosis.note
    assert note == f"no-eps fits it markedly better: 0 of the bound left, against {stated:.2g}"
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    out = cli("check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy").stdout
    assert out.startswith("PASS: ")
    assert [line for line in out.splitlines() if line.startswith("note: ")] == [f"note: {note}"]
    doc = json.loads(
        cli("check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", "--json").stdout
    )
    assert doc["diagnosis"]["note"] == note


def test_a_correct_output_gets_no_note():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((4, 3, 5, 6)) * 3).astype(np.float32)
    with torch.no_grad():
        y = torch.nn.BatchNorm2d(3)(torch.from_numpy(x)).numpy()
    result = checked(x, y)
    assert result.passed and result.diagnosis.note.reason  # Undefined: no note


def bfloat16_run(seed=5):
    """PyTorch's BatchNorm2d in bfloat16 on bfloat16 data, both saved as float32."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((4, 3, 5, 6)).astype(ml_dtypes.bfloat16).astype(np.float32)
    with torch.no_grad():
        module = torch.nn.BatchNorm2d(3).to(torch.bfloat16)
        y = module(torch.from_numpy(x).to(torch.bfloat16)).float().numpy()
    return x, y


def test_bfloat16_data_saved_as_float32_points_to_dtype(cli, tmp_path):
    x, y = bfloat16_run()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    args = ("check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    result = cli(*args, code=3)
    assert "give --dtype bfloat16" in result.stderr
    assert (
        "every value of the input and of your output is exactly representable in bfloat16"
        in result.stderr
    )
    # With --dtype it passes, and nothing points there.
    passed = cli(*args, "--dtype", "bfloat16")
    assert "--dtype bfloat16 to judge" not in passed.stderr


def test_float32_output_of_bfloat16_values_only_in_the_input_gets_no_hint(cli, tmp_path):
    x, _ = bfloat16_run()
    y = batchnorm(x).astype(np.float32)  # a float32 batch norm on bfloat16 data: correct
    y[0, 0, 0, 0] += 1e-3  # and one element off, so it fails
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    result = cli("check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", code=3)
    assert "--dtype" not in result.stderr


def test_the_largest_error_is_told_with_its_own_channels_scale(cli, tmp_path):
    """Channel 0 has weight 100 (scale ~300), channel 2 weight 1: a larger |err| on channel 0
    is fewer ULPs at its scale than a smaller one on channel 2. The line names the element, its
    channel and its own ULPs; the worst-elements table's ULP column is at each element's
    channel's scale, as numpy's spacing gives it."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 3, 5, 6)).astype(np.float32)
    weight = np.array([100.0, 1.0, 1.0])
    reference = batchnorm(x, weight=weight)
    y = reference.copy()
    y[1, 0, 2, 3] += 2e-4  # 2e-4 / ulp32(~300) = ~7 ULP
    y[2, 2, 1, 1] += 1e-4  # 1e-4 / ulp32(~3) = ~400 ULP
    y = y.astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    args = ("check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    args += ("--weight", "100,1,1")
    doc = json.loads(cli(*args, "--json", code=3).stdout)
    scales = [max(np.abs(reference[:, c]).max(), abs(weight[c])) for c in range(3)]
    for e in doc["worst"]:
        c = e["index"][1]
        expected = abs(y[tuple(e["index"])] - reference[tuple(e["index"])]) / ulp32(scales[c])
        np.testing.assert_allclose(e["ulp_error_at_scale"], expected, rtol=1e-9)
    largest = doc["worst_by_abs_error"]
    assert largest["index"] == [1, 0, 2, 3]
    out = cli(*args, code=3).stdout
    line = next(line for line in out.splitlines() if line.startswith("largest |err|"))
    own = abs(float(y[1, 0, 2, 3]) - reference[1, 0, 2, 3]) / ulp32(scales[0])
    assert "at [1, 0, 2, 3]" in line  # the test terminal is 200 wide: one line
    assert line.endswith(f"(channel 0: {own:.5g} ULP of float32 at its scale)")
    other = abs(float(y[2, 2, 1, 1]) - reference[2, 2, 1, 1]) / ulp32(scales[2])
    assert f"worst channel at its scale: 2, {other:.5g} ULP" in " ".join(out.split())


def test_quiet_prints_at_most_two_lines(cli, tmp_path):
    """-q: the verdict alone, its two lines unwrapped however long (here 150 characters)."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((8, 16, 4, 4)) + 100).astype(np.float32)
    y = batchnorm(x, lambda c, v: v.var(ddof=1) if c == 3 else v.var()).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    args = ("check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    result = cli.runner.invoke(cli.app, [str(a) for a in (*args, "-q")], env={"COLUMNS": "80"})
    assert result.exit_code == 3
    lines = result.stdout.splitlines()
    verdict = json.loads(cli(*args, "--json", code=3).stdout)["verdict"]["summary"]
    assert lines == verdict and len(lines) <= 2
