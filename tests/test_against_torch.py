"""PyTorch's module against the float64 reference, and properties batch norm must have."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from bninspect.dtypes import FORMATS
from bninspect.numerics.reference import channel_values, normalize
from bninspect.report.explain import derive_element
from bninspect.report.run import build_run_result

from helpers import inspect_array
from strategies import dyadic_tensors, tensors

F32_EPS = FORMATS["float32"].eps


def reference_channel(inspection, c):
    """The float64 reference output of channel c, flattened."""
    f, p = inspection.forward, inspection.params
    return normalize(
        channel_values(inspection.tensor.array, c), f.mean[c], f.std[c], p.weight[c], p.bias[c]
    )


@pytest.mark.parametrize("dtype", list(FORMATS))
@given(x=tensors(dtype=np.float64), data=st.data())
def test_torch_output_is_within_rounding_of_the_reference(dtype, x, data):
    form = FORMATS[dtype]
    x = x.astype(form.numpy)
    channels = x.shape[1]
    # Weights that make alpha = weight / std subnormal in the dtype lose relative precision in
    # PyTorch's x * alpha by design; such layers are not what this bound is for.
    weights = st.floats(-3, 3, width=32).filter(lambda w: w == 0 or abs(w) > 1e-3)
    weight = data.draw(st.lists(weights, min_size=channels, max_size=channels))
    bias = data.draw(st.lists(st.floats(-3, 3, width=32), min_size=channels, max_size=channels))
    inspection = inspect_array(x, weight=weight, bias=bias)
    stats, forward, params = inspection.stats, inspection.forward, inspection.params
    for c, report in enumerate(build_run_result(inspection).channels):
        values = channel_values(x, c)
        assume(forward.var[c] > 1e-6 * max(1.0, float(np.max(np.abs(values)))) ** 2)
        # PyTorch computes x * alpha + beta with alpha = w / std and beta = b - mean * alpha,
        # holding mean and invstd in the dtype: each rounding is one spacing of the dtype,
        # scaled by the largest |x| and |mean| it touches.
        scale = (float(np.max(np.abs(values))) + abs(stats.mean[c])) / forward.std[c]
        magnitude = abs(params.weight[c]) * scale + abs(params.bias[c])
        tolerance = 8 * form.eps * magnitude + 2.0 ** (form.min_exponent - form.mantissa_bits)
        assert report.max_abs_error <= tolerance, (c, report)


@given(x=tensors(max_rank=4), momentum=st.sampled_from([0.0, 0.1, 0.5, 1.0]))
def test_torch_running_buffers_match_the_unbiased_update(x, momentum):
    inspection = inspect_array(x, running_mean=None, running_var=None, momentum=momentum)
    torch_run, forward = inspection.torch_run, inspection.forward
    np.testing.assert_allclose(torch_run.running_mean, forward.running_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(torch_run.running_var, forward.running_var, rtol=1e-5, atol=1e-6)
    assert torch_run.num_batches_tracked == 1


@given(x=tensors(dtype=np.float64), data=st.data())
def test_train_output_has_mean_bias_and_variance_weight_squared_shrunk_by_eps(x, data):
    channels = x.shape[1]
    weight = data.draw(st.lists(st.floats(0.1, 3), min_size=channels, max_size=channels))
    bias = data.draw(st.lists(st.floats(-3, 3), min_size=channels, max_size=channels))
    eps = data.draw(st.sampled_from([1e-8, 1e-5, 1e-3]))
    inspection = inspect_array(x, weight=weight, bias=bias, eps=eps)
    for c in range(channels):
        var = inspection.stats.var_biased[c]
        assume(var > 1e-8)
        for y, rtol in (
            (reference_channel(inspection, c), 1e-9),
            (inspection.torch_run.output[:, c].reshape(-1), 1e-6),
        ):
            np.testing.assert_allclose(y.mean(), bias[c], atol=rtol * (abs(weight[c]) + 1))
            np.testing.assert_allclose(y.var(), weight[c] ** 2 * var / (var + eps), rtol=rtol * 10)


@given(x=dyadic_tensors(), shift=st.sampled_from([1.0, -64.0, 1024.0, 0.125]))
def test_shifting_a_channel_does_not_change_its_train_output(x, shift):
    shifted = x.copy()
    shifted[:, 0] += np.float32(shift)  # exact: multiples of 1/8 well inside float32's range
    before, after = inspect_array(x), inspect_array(shifted)
    assume(before.stats.var_biased[0] > 0)
    np.testing.assert_allclose(
        reference_channel(after, 0), reference_channel(before, 0), rtol=1e-12, atol=1e-12
    )
    # PyTorch's x * alpha + beta rounds at the magnitude of |x| / std, which the shift changes.
    magnitude = max(np.abs(x[:, 0]).max(), np.abs(shifted[:, 0]).max())
    cancellation = 4 * F32_EPS * magnitude / np.sqrt(before.stats.var_biased[0] + 1e-5)
    np.testing.assert_allclose(
        after.torch_run.output[:, 0], before.torch_run.output[:, 0], rtol=0, atol=cancellation
    )
    for c in range(1, x.shape[1]):  # other channels are untouched, to the bit
        np.testing.assert_array_equal(reference_channel(after, c), reference_channel(before, c))


@given(x=tensors(max_rank=4), mode=st.sampled_from(["train", "eval"]))
def test_explain_agrees_with_run_for_every_element(x, mode):
    inspection = inspect_array(x, weight=[0.5] * x.shape[1], bias=[0.25] * x.shape[1], mode=mode)
    run = build_run_result(inspection)
    worst = np.zeros(x.shape[1])
    for index in itertools.product(*map(range, x.shape)):
        explained = derive_element(inspection, index)
        c = index[1]
        assert explained.y.torch == float(inspection.torch_run.output[index])
        steps = {step.name: step.value for step in explained.derivation}
        if mode == "train":
            assert steps["mean"] == run.channels[c].mean
            assert steps["var_biased"] == run.channels[c].var_biased
            assert steps["running_var"] == run.channels[c].running_var
        assert steps["std"] == run.channels[c].std
        # Redo the last steps in plain Python float arithmetic from the steps' own values.
        assert steps["x_hat"] == (explained.x - steps.get("mean", 0.0)) / steps["std"]
        assert steps["y"] == steps["x_hat"] * 0.5 + 0.25 == explained.y.reference
        worst[c] = max(worst[c], explained.y.abs_error)
    np.testing.assert_array_equal(worst, [ch.max_abs_error for ch in run.channels])


def test_eval_mode_uses_the_running_statistics():
    x = np.random.default_rng(3).standard_normal((4, 3, 5)).astype(np.float32)
    inspection = inspect_array(
        x,
        running_mean=[1, -2, 0.5],
        running_var=[4, 0.25, 1],
        weight=[2, 1, 1],
        bias=[0, 1, 0],
        mode="eval",
    )
    expected = (x - np.array([1, -2, 0.5])[None, :, None]) / np.sqrt(
        np.array([4, 0.25, 1])[None, :, None] + 1e-5
    ) * np.array([2, 1, 1])[None, :, None] + np.array([0, 1, 0])[None, :, None]
    np.testing.assert_allclose(inspection.torch_run.output, expected, rtol=1e-6, atol=1e-6)
    for c in range(3):
        np.testing.assert_allclose(
            reference_channel(inspection, c), expected[:, c].reshape(-1), rtol=1e-14
        )
    np.testing.assert_array_equal(inspection.torch_run.running_var, [4, 0.25, 1])


def test_module_matches_torch_functional_for_each_rank():
    for shape, name in [
        ((6, 3), "BatchNorm1d"),
        ((2, 3, 5), "BatchNorm1d"),
        ((2, 3, 2, 2), "BatchNorm2d"),
        ((2, 3, 2, 2, 2), "BatchNorm3d"),
    ]:
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        inspection = inspect_array(x)
        assert inspection.settings.module == name
        expected = torch.nn.functional.batch_norm(
            torch.from_numpy(x), torch.zeros(3), torch.ones(3), training=True, eps=1e-5
        )
        np.testing.assert_array_equal(inspection.torch_run.output, expected.numpy())
