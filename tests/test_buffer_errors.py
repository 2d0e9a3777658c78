"""PyTorch's running mean against the reference at its update's scale: where the old running mean
and the batch's mean cancel, the buffer ends near 0 and an ULP count at its own value explodes,
while the error at the scale of the update's terms stays at rounding level."""

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
    batch_mean = values.mean(axis=1)
    after = (1 - batch_weight) * OLD_MEAN + batch_weight * batch_mean
    rms = np.sqrt((values * values).mean(axis=1))  # the size of the values summed
    theirs = _torch_running_mean(x, batch_weight)
    for c, channel in enumerate(doc["channels"]):
        scale = max(abs(after[c]), (1 - batch_weight) * OLD_MEAN, batch_weight * rms[c])
        assert channel["running_mean_scale"] == pytest.approx(scale, rel=1e-12)
        error = abs(theirs[c] - after[c])
        assert channel["running_mean_abs_error"] == pytest.approx(error, rel=1e-6, abs=1e-300)
        at_scale = error / _float32_ulp(scale)
        assert channel["running_mean_scaled_error"] == pytest.approx(at_scale, rel=1e-6)
        assert at_scale <= 4  # PyTorch's float32 update is good to rounding at the scale
    cancelling = doc["channels"][0]
    assert abs(after[0]) < 1e-3 * OLD_MEAN  # the update did cancel
    assert cancelling["running_mean_ulp_error"] > 50 * max(
        cancelling["running_mean_scaled_error"], 0.01
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
        rms = np.sqrt((values * values).mean(axis=1))
        for c, channel in enumerate(record["channels"]):
            scale = max(abs(after[c]), 0.9 * abs(before[c]), 0.1 * rms[c])
            assert channel["running_mean_scale"] == pytest.approx(scale, rel=1e-12)
            expected = channel["running_mean_abs_error"] / _float32_ulp(scale)
            assert channel["running_mean_scaled_error"] == pytest.approx(expected, rel=1e-12)
        before = after


def test_eval_mode_buffers_are_their_own_scale(cli, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, _cancelling_batch())
    doc = cli.json("run", "--input", path, "--mode", "eval", "--running-mean", "0.3,-0.1")
    for channel, given in zip(doc["channels"], (0.3, -0.1), strict=True):
        assert channel["running_mean_scale"] == float(np.float32(abs(given)))
        # eval mode leaves the buffer as PyTorch and the reference both hold it
        assert channel["running_mean_scaled_error"] == 0
