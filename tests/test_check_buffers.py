"""check --their-running-mean/--their-running-var/--their-num-batches-tracked: their buffers after
the pass against the reference's update, each known buffer mistake made by an implementation
written here (or by a real one: PyTorch's module, onnxruntime) and named."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest
import torch
from test_check import LAYER, RUNNING_MEAN, RUNNING_VAR, make_input, torch_batchnorm
from test_onnx_peer import onnx_batchnorm, run_session

MOMENTUM = 0.1


def batch_statistics(x):
    wide = x.astype(np.float64)
    axes = (0, 2, 3)
    return wide.mean(axis=axes), wide.var(axis=axes), wide.var(axis=axes, ddof=1)


def pytorch_buffers(x, momentum=MOMENTUM):
    """PyTorch's own module after one training pass: its running_mean, running_var and
    num_batches_tracked."""
    module = torch.nn.BatchNorm2d(3, momentum=momentum)
    with torch.no_grad():
        module.running_mean.copy_(torch.tensor(RUNNING_MEAN))
        module.running_var.copy_(torch.tensor(RUNNING_VAR))
        module(torch.from_numpy(x))
    return (
        module.running_mean.numpy().copy(),
        module.running_var.numpy().copy(),
        int(module.num_batches_tracked),
    )


def onnxruntime_buffers(x):
    """onnxruntime's BatchNormalization in training mode with the same number as momentum, in
    ONNX's meaning (the old value's weight) and its biased variance: Keras'/ONNX's convention."""
    session = onnx_batchnorm(4, 3, 1e-5, MOMENTUM, training=True)
    _, mean, var = run_session(session, x, np.ones(3), np.zeros(3), RUNNING_MEAN, RUNNING_VAR)
    return mean, var


def mistaken_buffers(name, x):
    """(running_mean, running_var) as an implementation with the buffer mistake ``name``
    leaves them, in float32."""
    mean, biased, unbiased = batch_statistics(x)
    m, old_mean, old_var = MOMENTUM, RUNNING_MEAN, RUNNING_VAR
    if name == "biased-variance-stored":
        pair = ((1 - m) * old_mean + m * mean, (1 - m) * old_var + m * biased)
    elif name == "momentum-flipped":
        pair = (m * old_mean + (1 - m) * mean, m * old_var + (1 - m) * unbiased)
    elif name == "keras-onnx-convention":
        pair = onnxruntime_buffers(x)
    elif name == "caffe-sums":
        pair = ((1 - m) * old_mean + mean, (1 - m) * old_var + unbiased)
    elif name == "cumulative-average":
        pair = pytorch_buffers(x, momentum=None)[:2]
    elif name == "not-updated":
        pair = (old_mean, old_var)
    else:
        raise AssertionError(name)
    return tuple(np.asarray(v, dtype=np.float32) for v in pair)


def run_check(cli, tmp_path, x, mean, var, *args, code):
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", torch_batchnorm(x).detach().numpy())
    np.save(tmp_path / "rm.npy", mean)
    np.save(tmp_path / "rv.npy", var)
    result = cli(
        "check",
        "--input",
        tmp_path / "x.npy",
        "--output",
        tmp_path / "y.npy",
        *LAYER,
        "--their-running-mean",
        tmp_path / "rm.npy",
        "--their-running-var",
        tmp_path / "rv.npy",
        *args,
        "--json",
        code=code,
    )
    return json.loads(result.stdout)


@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_pytorchs_own_buffers_pass(cli, tmp_path, offset):
    x = make_input(offset=offset)
    mean, var, tracked = pytorch_buffers(x)
    doc = run_check(
        cli, tmp_path, x, mean, var, "--their-num-batches-tracked", str(tracked), code=0
    )
    buffers = doc["buffers"]
    assert buffers["passed"] and doc["passed"]
    assert [b["name"] for b in buffers["buffers"]] == ["running_mean", "running_var"]
    assert buffers["num_batches_tracked"] == {
        "reference": tracked,
        "theirs": tracked,
        "passed": True,
        "detail": f"theirs {tracked}, the reference's {tracked}",
    }
    assert type(buffers["num_batches_tracked"]["reference"]) is int
    assert not any(h["explains"] for h in buffers["hypotheses"])


@pytest.mark.parametrize(
    "name",
    [
        "biased-variance-stored",
        "momentum-flipped",
        "keras-onnx-convention",
        "caffe-sums",
        "cumulative-average",
        "not-updated",
    ],
)
def test_each_buffer_mistake_is_named(cli, tmp_path, name):
    x = make_input()
    mean, var = mistaken_buffers(name, x)
    doc = run_check(cli, tmp_path, x, mean, var, code=3)
    buffers = doc["buffers"]
    assert not buffers["passed"] and not doc["passed"]
    first = buffers["hypotheses"][0]
    assert (first["name"], first["explains"]) == (name, True), buffers
    summary = doc["diagnosis"]["conclusion"]
    assert summary.startswith(f"FAIL: your running buffers: {first['description']}; ")
    assert "; your output matches the stated settings on all 3 channels" in summary
    assert doc["verdict"] == {"status": "fail", "summary": [summary, doc["verdict"]["summary"][1]]}


def test_a_wrong_num_batches_tracked_fails(cli, tmp_path):
    x = make_input()
    mean, var, tracked = pytorch_buffers(x)
    doc = run_check(cli, tmp_path, x, mean, var, "--their-num-batches-tracked", "0", code=3)
    tracked_row = doc["buffers"]["num_batches_tracked"]
    assert (tracked_row["reference"], tracked_row["theirs"]) == (1, 0)
    assert not tracked_row["passed"]
    assert tracked_row["detail"] == "theirs 0, the reference's 1 (each training pass adds 1)"


def test_a_buffer_of_the_wrong_size_is_refused(cli, tmp_path):
    x = make_input()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", x)
    np.save(tmp_path / "rm.npy", np.zeros(4, dtype=np.float32))
    message = cli.error(
        "check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy",
        "--their-running-mean", tmp_path / "rm.npy", code=1,
    )  # fmt: skip
    assert message == (
        f"--their-running-mean {tmp_path / 'rm.npy'}: shape 4, but the input has 3 channels; "
        "give one value per channel"
    )


def test_one_channels_buffer_mistake_is_named_on_that_channel(cli, tmp_path):
    """Channel 1 alone stores the biased variance (the others PyTorch's update): no one mistake
    explains all three channels, so the buffers are named per channel, as the output is."""
    x = make_input()
    mean, var, _ = pytorch_buffers(x)
    _, biased, _ = batch_statistics(x)
    var = var.copy()
    var[1] = np.float32((1 - MOMENTUM) * RUNNING_VAR[1] + MOMENTUM * biased[1])
    doc = run_check(cli, tmp_path, x, mean, var, code=3)
    buffers = doc["buffers"]
    assert not buffers["passed"] and buffers["explained"]
    assert [(g["name"], g["channels"]) for g in buffers["groups"]] == [
        ("biased-variance-stored", [1]),
        ("stated settings", [0, 2]),
    ]
    assert buffers["conclusion"] == (
        "your running buffers: stores the biased variance in running_var on channel 1; "
        "channels 0 and 2 match the stated update"
    )
    by_name = {b["name"]: b for b in buffers["buffers"]}
    assert by_name["running_var"]["explained_by"] == "biased-variance-stored on channel 1"
    assert by_name["running_mean"]["passed"]
    biased_stored = next(h for h in buffers["hypotheses"] if h["name"] == "biased-variance-stored")
    assert not biased_stored["explains"]  # not on channels 0 and 2


def test_no_assert_close_line_when_the_buffers_are_wrong(cli, tmp_path):
    """PyTorch's own output passes, but the running_var is the biased variance's: an
    assert_close line on the output would pass the wrong buffers, so none is given."""
    x = make_input()
    mean, var = mistaken_buffers("biased-variance-stored", x)
    doc = run_check(cli, tmp_path, x, mean, var, code=3)
    assert doc["suggested"] is None
    assert doc["null_reasons"]["/suggested"] == (
        "your running buffers: stores the biased variance in running_var: fix that; an "
        "assert_close line on the output would pass the wrong buffers"
    )
    out = cli(
        "check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy", *LAYER,
        "--their-running-mean", tmp_path / "rm.npy", "--their-running-var", tmp_path / "rv.npy",
        code=3,
    ).stdout  # fmt: skip
    assert "torch.testing.assert_close(" not in out


def bf16(values):
    """Rounded to bfloat16, as float64."""
    return np.asarray(values, dtype=np.float64).astype(ml_dtypes.bfloat16).astype(np.float64)


def test_a_bfloat16_buffer_mistake_on_one_channel_is_named_within_the_bound(cli, tmp_path):
    """bfloat16 data saved as float32 (.npy holds no bfloat16), checked with --dtype bfloat16:
    PyTorch's own module in bfloat16, but channel 2's running_var updated with the biased
    variance, rounded step by step in bfloat16 as the module does. It is named on channel 2
    alone (the others match the stated update and not the mistake)."""
    rng = np.random.default_rng(11)
    # std 3 and 8 values per channel: the biased variance is 1/7 below the unbiased, which
    # moves running_var by ~0.13, ~16 bfloat16 ULPs: every channel can tell the two apart.
    x = (rng.standard_normal((2, 4, 2, 2)) * 3).astype(ml_dtypes.bfloat16).astype(np.float32)
    module = torch.nn.BatchNorm2d(4).to(torch.bfloat16)
    with torch.no_grad():
        y = module(torch.from_numpy(x).to(torch.bfloat16)).float().numpy()
    mean = module.running_mean.float().numpy()
    var = module.running_var.float().numpy().copy()
    biased = x.astype(np.float64)[:, 2].var()
    var[2] = bf16(bf16(1.0 * (1 - MOMENTUM)) + bf16(bf16(biased) * MOMENTUM))
    for name, value in (("x", x), ("y", y), ("rm", mean), ("rv", var)):
        np.save(tmp_path / f"{name}.npy", value)
    doc = json.loads(
        cli(
            "check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy",
            "--dtype", "bfloat16", "--their-running-mean", tmp_path / "rm.npy",
            "--their-running-var", tmp_path / "rv.npy", "--json", code=3,
        ).stdout
    )  # fmt: skip
    buffers = doc["buffers"]
    assert [(g["name"], g["channels"]) for g in buffers["groups"]] == [
        ("biased-variance-stored", [2]),
        ("stated settings", [0, 1, 3]),
    ]
    by_name = {b["name"]: b for b in buffers["buffers"]}
    assert by_name["running_var"]["explained_by"] == "biased-variance-stored on channel 2"
    assert doc["passed"] is False and doc["suggested"] is None
