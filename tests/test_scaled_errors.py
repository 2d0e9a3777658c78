"""Errors counted at a scale, not only at each value's own magnitude. The running mean at its
update's scale: where the old running mean and the batch's mean cancel, the buffer ends near 0
and an ULP count at its own value explodes, while the error at the scale of the update's terms
stays at rounding level. explain's y at the channel's scale, as run counts it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# The module holds its buffers in float32, and the reference starts from the same values.
OLD_MEAN = float(np.float32(0.3))


def _cancelling_batch() -> np.ndarray:
    """Two channels of 16x8x8 float32 values. Channel 0 has mean -2.7, so that
    0.9 * 0.3 + 0.1 * (-2.7) nearly cancels; channel 1 has mean 1 and no cancellation."""
    rng = np.random.default_rng(7)
    noise = rng.standard_normal((16, 2, 8, 8))
    noise -= noise.mean(axis=(0, 2, 3), keepdims=True)
    return (noise + np.array([-2.7, 1.0]).reshape(1, 2, 1, 1)).astype(np.float32)


def _float32_ulp(value: float) -> float:
    return float(np.spacing(np.float32(abs(value))))


def _update_scale(after, old, weight, values, sum_unit_ratio=2.0**-29):
    """By hand: the largest of |after|, (1 - w) |old| and w times the batch mean's size, which
    is |mean|, or the RMS of the values in units of the sum's type where that is larger
    (float32 is summed in float64: 2**-52 / 2**-23; float64 in float64: 1)."""
    rms = np.sqrt(np.mean(values * values))
    batch_size = max(abs(values.mean()), sum_unit_ratio * rms)
    return max(abs(after), (1 - weight) * abs(old), weight * batch_size)


def _torch_running_mean(x: np.ndarray, momentum: float) -> np.ndarray:
    module = torch.nn.BatchNorm2d(2, momentum=momentum)
    module.running_mean.fill_(OLD_MEAN)
    module.train()(torch.from_numpy(x))
    return module.running_mean.double().numpy()


@pytest.mark.parametrize(
    ("convention", "momentum", "batch_weight"), [("pytorch", "0.1", 0.1), ("keras", "0.9", 0.1)]
)
def test_running_mean_error_is_counted_at_the_update_scale(
    cli, tmp_path, convention, momentum, batch_weight
):
    x = _cancelling_batch()
    path = tmp_path / "x.npy"
    np.save(path, x)
    doc = cli.json(
        "run", "--input", path, "--running-mean", f"{OLD_MEAN},{OLD_MEAN}",
        "--convention", convention, "--momentum", momentum,
    )  # fmt: skip
    values = x.astype(np.float64).transpose(1, 0, 2, 3).reshape(2, -1)
    after = (1 - batch_weight) * OLD_MEAN + batch_weight * values.mean(axis=1)
    theirs = _torch_running_mean(x, batch_weight)
    for c, channel in enumerate(doc["channels"]):
        scale = _update_scale(after[c], OLD_MEAN, batch_weight, values[c])
        assert channel["running_mean_scale"] == pytest.approx(scale, rel=1e-12)
        error = abs(theirs[c] - after[c])
        assert channel["running_mean_abs_error"] == pytest.approx(error, rel=1e-6, abs=1e-300)
        at_scale = error / _float32_ulp(scale)
        assert channel["running_mean_ulp_error_at_scale"] == pytest.approx(at_scale, rel=1e-6)
        assert at_scale <= 4  # PyTorch's float32 update is good to rounding at the scale
    cancelling = doc["channels"][0]
    assert abs(after[0]) < 1e-3 * OLD_MEAN  # the update did cancel
    assert cancelling["running_mean_ulp_error"] > 50 * max(
        cancelling["running_mean_ulp_error_at_scale"], 0.01
    )


def test_each_step_counts_at_its_own_update_scale(cli, tmp_path):
    x = np.concatenate([_cancelling_batch(), _cancelling_batch() + np.float32(1)])
    path = tmp_path / "x.npy"
    np.save(path, x)
    doc = cli.json("run", "--input", path, "--batch-size", "16", "--running-mean", "0.3,0.3")
    before = np.full(2, OLD_MEAN)
    for record in doc["running_history"]:
        batch = x[record["first_sample"] : record["first_sample"] + 16].astype(np.float64)
        values = batch.transpose(1, 0, 2, 3).reshape(2, -1)
        after = 0.9 * before + 0.1 * values.mean(axis=1)
        for c, channel in enumerate(record["channels"]):
            scale = _update_scale(after[c], before[c], 0.1, values[c])
            assert channel["running_mean_scale"] == pytest.approx(scale, rel=1e-12)
            expected = channel["running_mean_abs_error"] / _float32_ulp(scale)
            assert channel["running_mean_ulp_error_at_scale"] == pytest.approx(expected, rel=1e-12)
        before = after


def test_eval_mode_buffers_are_their_own_scale(cli, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, _cancelling_batch())
    doc = cli.json("run", "--input", path, "--mode", "eval", "--running-mean", "0.3,-0.1")
    for channel, given in zip(doc["channels"], (0.3, -0.1), strict=True):
        assert channel["running_mean_scale"] == float(np.float32(abs(given)))
        # eval mode leaves the buffer as PyTorch and the reference both hold it
        assert channel["running_mean_ulp_error_at_scale"] == 0


def test_explain_counts_the_buffers_as_run_does(cli, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, _cancelling_batch())
    common = ("--input", path, "--running-mean", f"{OLD_MEAN},{OLD_MEAN}")
    ran = cli.json("run", *common)["channels"][0]
    explained = cli.json("explain", *common, "--index", "3,0,2,5")
    mean, var = explained["running_buffers"]
    assert mean["scale"] == ran["running_mean_scale"]
    assert mean["ulp_error_at_scale"] == ran["running_mean_ulp_error_at_scale"]
    assert mean["ulp_error"] == ran["running_mean_ulp_error"]
    assert var["scale"] == ran["running_var"] and var["ulp_error_at_scale"] == var["ulp_error"]


def test_explain_counts_y_at_the_channels_scale(cli, tmp_path):
    path = tmp_path / "x.npy"
    cli("run", "--shape", "4,2,8,8", "--offset", "100", "--seed", "3", "--save-input", path)
    x = np.load(path)
    values = x[:, 0].astype(np.float64)
    y = (values - values.mean()) / np.sqrt(values.var() + 1e-5)  # weight 1, bias 0
    n, h, w = np.unravel_index(np.argmin(np.abs(y)), y.shape)  # the element nearest y = 0
    doc = cli.json("explain", "--input", path, "--index", f"{n},0,{h},{w}")
    scale = np.abs(y).max()  # above the weight, 1
    assert doc["y"]["scale"] == pytest.approx(scale, rel=1e-12)
    ran = torch.nn.functional.batch_norm(
        torch.from_numpy(x), torch.zeros(2), torch.ones(2), training=True
    )
    error = abs(float(ran[n, 0, h, w]) - y[n, h, w])
    assert doc["y"]["abs_error"] == pytest.approx(error, rel=1e-6)
    assert doc["y"]["ulp_error_at_scale"] == pytest.approx(error / _float32_ulp(scale), rel=1e-6)
    assert doc["y"]["ulp_error"] == pytest.approx(error / _float32_ulp(y[n, h, w]), rel=1e-6)
    # x * alpha + beta cancels at an offset of 100 std: near y = 0 the own-value count explodes
    assert doc["y"]["ulp_error"] > 100 * doc["y"]["ulp_error_at_scale"] > 0


def test_a_zero_mean_batch_is_not_counted_at_its_spread(cli, tmp_path):
    """float32 is summed in float64 and its mean rounded once, so a mean near 0 carries an error
    at its own size, not at the values' spread: nothing cancels, and the count stays own-value."""
    x = np.random.default_rng(5).standard_normal((64, 3, 16, 16)).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    for channel in cli.json("run", "--input", path)["channels"]:
        assert channel["running_mean_scale"] == pytest.approx(abs(channel["running_mean"]))
        assert channel["running_mean_ulp_error_at_scale"] == channel["running_mean_ulp_error"]


def test_float64_input_counts_the_spread_its_sum_errs_at(cli, tmp_path):
    x = np.random.default_rng(5).standard_normal((16, 2, 8, 8))  # float64, mean near 0
    path = tmp_path / "x.npy"
    np.save(path, x)
    doc = cli.json("run", "--input", path)
    for c, channel in enumerate(doc["channels"]):
        values = x[:, c].reshape(-1)
        after = 0.1 * values.mean()
        scale = _update_scale(after, 0.0, 0.1, values, sum_unit_ratio=1.0)
        assert scale == pytest.approx(0.1 * np.sqrt(np.mean(values * values)))  # the RMS term
        assert channel["running_mean_scale"] == pytest.approx(scale, rel=1e-12)


def test_the_scale_is_the_references_own_without_pytorch(cli, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, _cancelling_batch())
    common = ("--input", path, "--running-mean", f"{OLD_MEAN},{OLD_MEAN}")
    doc = cli.json("run", *common, "--stats-only")
    for channel, step in zip(doc["channels"], doc["running_history"][0]["channels"], strict=True):
        assert channel["running_mean_scale"] == step["running_mean_scale"] > 0
        assert channel["running_mean_ulp_error_at_scale"] is None


def test_a_non_finite_running_mean_is_its_own_scale(cli, tmp_path):
    x = _cancelling_batch()
    x[0, 0, 0, 0], x[1, 1, 0, 0] = np.nan, np.inf
    path = tmp_path / "x.npy"
    np.save(path, x)
    doc = cli.json("run", "--input", path)
    reasons = doc["null_reasons"]
    for c, kind in ((0, "NaN"), (1, "+Infinity")):
        assert doc["channels"][c]["running_mean_scale"] is None
        assert reasons[f"/channels/{c}/running_mean_scale"].startswith(kind)
        assert reasons[f"/channels/{c}/running_mean"].startswith(kind)
        assert (
            doc["channels"][c]["running_mean_ulp_error_at_scale"] == 0
        )  # PyTorch agrees: same value


def test_explain_agrees_with_run_on_a_nan_channel(cli, tmp_path):
    x = _cancelling_batch()
    x[0, 0, 0, 0] = np.nan
    path = tmp_path / "x.npy"
    np.save(path, x)
    ran = cli.json("run", "--input", path)["channels"][0]
    explained = cli.json("explain", "--input", path, "--index", "1,0,0,0")
    mean, var = explained["running_buffers"]
    assert (
        ran["running_mean_ulp_error_at_scale"] == mean["ulp_error_at_scale"] == 0
    )  # NaN beside NaN
    assert var["ulp_error_at_scale"] == ran["running_var_ulp_error_at_scale"] == 0
