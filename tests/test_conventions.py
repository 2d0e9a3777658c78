"""Each framework's rules against values derived by hand, and properties across conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bninspect.conventions.card import build_card, translate_momentum
from bninspect.conventions.rules import (
    CAFFE,
    CONVENTIONS,
    KERAS,
    PADDLE,
    PYTORCH,
    RULES,
    TF_FUSED,
    batch_weight,
    effective_eps,
    momentum_for,
    scale_factor_weights,
)
from bninspect.numerics.reference import channel_statistics, forward_output, reference_forward
from bninspect.numerics.running import initial_state

from hand_derived import BIASED, ONE_STEP, SMALL
from helpers import inspect_array
from strategies import batched_tensors, conventions, tensors


def one_pass(x, convention, momentum=None, train=True, running=(0.0, 1.0), eps=None):
    channels = x.shape[1]
    before = initial_state(np.full(channels, running[0]), np.full(channels, running[1]))
    momentum = convention.momentum_default if momentum is None else momentum
    eps = convention.eps_default if eps is None else eps
    return reference_forward(channel_statistics(x), before, eps, momentum, train, convention)


@pytest.mark.parametrize("name", list(CONVENTIONS))
def test_one_training_step_by_hand(name):
    convention = CONVENTIONS[name]
    forward = one_pass(SMALL, convention)
    expected_mean, expected_var = ONE_STEP[name]
    np.testing.assert_allclose(forward.running_mean, [expected_mean], rtol=1e-15)
    np.testing.assert_allclose(forward.running_var, [expected_var], rtol=1e-15)
    # Every framework normalizes with the biased variance: x = 1 gives -1.5 / sqrt(5/4 + eps).
    y = forward_output(forward, 1.0, 0, 1.0, 0.0)
    assert y == pytest.approx(-1.5 / math.sqrt(BIASED + convention.eps_default), rel=1e-15)


def test_defaults_by_hand():
    defaults = {name: (c.momentum_default, c.eps_default) for name, c in CONVENTIONS.items()}
    assert defaults == {
        "pytorch": (0.1, 1e-5),
        "keras": (0.99, 1e-3),
        "tf-fused": (1.0, 1e-3),
        "onnx": (0.9, 1e-5),
        "flax": (0.99, 1e-5),
        "caffe": (0.999, 1e-5),
        "mxnet": (0.9, 1e-5),
        "paddle": (0.9, 1e-5),
    }


def test_pytorch_defaults_are_torchs_own():
    module = torch.nn.BatchNorm2d(3)
    assert (module.momentum, module.eps) == (PYTORCH.momentum_default, PYTORCH.eps_default)


# One value per channel, (N=1, C=2) holding 5 and 7, train mode: the variance is 0, so the
# output is the bias wherever the layer normalizes; the stored variance is 0 too (TensorFlow
# and Caffe divide by max(N - 1, 1)). Paddle copies x through and leaves its statistics.
ONE_VALUE = np.array([[5.0, 7.0]], dtype=np.float32)


@pytest.mark.parametrize(
    ("name", "running_mean", "running_var"),
    [
        ("keras", [0.05, 0.07], [0.99, 0.99]),
        ("tf-fused", [5.0, 7.0], [0.0, 0.0]),
        ("onnx", [0.5, 0.7], [0.9, 0.9]),
        ("caffe", [5 / 1.999, 7 / 1.999], [0.999 / 1.999] * 2),
    ],
)
def test_one_value_per_channel_normalizes_to_the_bias(name, running_mean, running_var):
    forward = one_pass(ONE_VALUE, CONVENTIONS[name])
    assert [forward_output(forward, v, c, 2.0, 0.25) for c, v in enumerate((5.0, 7.0))] == [
        0.25,
        0.25,
    ]
    np.testing.assert_allclose(forward.running_mean, running_mean, rtol=1e-15)
    np.testing.assert_allclose(forward.running_var, running_var, rtol=1e-15, atol=0)


def test_paddle_passes_one_value_per_channel_through():
    forward = one_pass(ONE_VALUE, PADDLE)
    assert forward.passes_through
    assert forward_output(forward, 5.0, 0, 2.0, 0.25) == 5.0
    np.testing.assert_array_equal(forward.running_mean, [0.0, 0.0])
    np.testing.assert_array_equal(forward.running_var, [1.0, 1.0])
    assert forward.update.after.num_batches_tracked == 1 and forward.update.batch_weight == 0


def test_caffe_sums_and_scale_factor_over_two_steps_by_hand():
    # f = 0.5. Step 1, batch (1, 3): mean 2, unbiased var 2; s = 0.5 * 1 + 1 = 1.5,
    # sums 2 + 0.5 * 0 = 2 and 2 + 0.5 * 1 = 2.5, statistics 4/3 and 5/3.
    # Step 2, batch (2, 6): mean 4, unbiased var 8; s = 0.5 * 1.5 + 1 = 1.75,
    # sums 4 + 0.5 * 2 = 5 and 8 + 0.5 * 2.5 = 9.25, statistics 20/7 and 37/7.
    state = initial_state(np.zeros(1), np.ones(1))
    updates = []
    for batch in ([[1.0], [3.0]], [[2.0], [6.0]]):
        stats = channel_statistics(np.array(batch, dtype=np.float32))
        forward = reference_forward(stats, state, 1e-5, 0.5, True, CAFFE)
        updates.append(forward.update)
        state = forward.update.after
    first, second = (u.after for u in updates)
    assert (first.scale_factor, second.scale_factor) == (1.5, 1.75)
    np.testing.assert_allclose([first.stored_mean[0], first.stored_var[0]], [2.0, 2.5])
    np.testing.assert_allclose([second.stored_mean[0], second.stored_var[0]], [5.0, 9.25])
    np.testing.assert_allclose([second.running_mean[0], second.running_var[0]], [20 / 7, 37 / 7])
    np.testing.assert_allclose([u.batch_weight for u in updates], [2 / 3, 4 / 7])


def test_caffe_batch_weights_by_hand():
    # f = 0.5 from scale factor 1: s = 1.5, 1.75, 1.875, weights 2/3, 4/7, 8/15 (as the
    # two-step test above); from a fresh layer (s = 0): s = 1, 1.5, weights 1, 2/3.
    np.testing.assert_allclose(scale_factor_weights(0.5, 3), [2 / 3, 4 / 7, 8 / 15], rtol=1e-15)
    np.testing.assert_allclose(scale_factor_weights(0.5, 2, 0.0), [1.0, 2 / 3], rtol=1e-15)
    # The steady state: s = 1 / (1 - f), the batch weighs 1 - f.
    assert scale_factor_weights(0.9, 500)[-1] == pytest.approx(0.1, rel=1e-12)
    assert scale_factor_weights(0.0, 3) == [1.0, 1.0, 1.0]


def test_caffe_scale_factor_zero_means_statistics_zero():
    # Caffe's inference: scale_factor == 0 ? 0 : 1 / scale_factor.
    from bninspect.numerics.running import RunningState

    state = RunningState(np.array([3.0]), np.array([2.0]), 0.0, 0)
    assert state.running_mean[0] == 0.0 and state.running_var[0] == 0.0


@pytest.mark.parametrize(
    ("eps", "used", "noticed"),
    [
        (1e-5, 1.001e-5, True),
        (0.0, 1.001e-5, True),
        (1.001e-5, 1.001e-5, False),
        (1e-3, 1e-3, False),
    ],
)
def test_tensorflow_raises_eps_to_its_floor(eps, used, noticed):
    value, notice = effective_eps(TF_FUSED, eps)
    assert value == used and (notice is not None) == noticed
    assert effective_eps(KERAS, eps) == (eps, None)


def test_cumulative_average_is_the_mean_of_the_batch_means():
    # momentum None: step k weighs the batch 1/k, so after K steps running_mean is the plain
    # average of the K batch means, whatever the layer held before.
    x = np.random.default_rng(4).standard_normal((12, 2, 3)).astype(np.float32)
    state = initial_state(np.full(2, 5.0), np.full(2, 9.0))
    for k in range(4):
        stats = channel_statistics(x[3 * k : 3 * k + 3])
        state = reference_forward(stats, state, 1e-5, None, True, PYTORCH).update.after
    batch_means = x.reshape(4, 3, 2, 3).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_allclose(state.running_mean, batch_means.mean(axis=0), rtol=1e-13)


def test_every_rule_of_every_convention_has_a_source():
    for convention in CONVENTIONS.values():
        assert set(convention.sources) == set(RULES), convention.name
        assert all(text.strip() for text in convention.sources.values())
        assert set(convention.unverified) <= set(RULES)
    card = build_card()
    statuses = {c.name: {f.rule: f.status for f in c.facts} for c in card.conventions}
    assert set(statuses["pytorch"].values()) == {"checked"}
    assert set(statuses["onnx"].values()) == {"checked"}
    assert statuses["mxnet"]["one_value"] == "unverified"
    assert statuses["keras"]["stores"] == "source"


@given(momentum=st.floats(0, 1), source=conventions(), target=conventions())
def test_momentum_translation_round_trips(momentum, source, target):
    there = momentum_for(target, batch_weight(source, momentum))
    back = momentum_for(source, batch_weight(target, there))
    assert back == pytest.approx(momentum, abs=1e-15)


def test_momentum_translation_examples():
    to_keras = {e.convention: e.momentum for e in translate_momentum(0.1, PYTORCH).equivalents}
    assert to_keras["keras"] == 0.9 and to_keras["tf-fused"] == 0.1 and to_keras["caffe"] == 0.9
    from_keras = {e.convention: e.momentum for e in translate_momentum(0.99, KERAS).equivalents}
    assert from_keras["pytorch"] == 0.01 and from_keras["flax"] == 0.99


@given(x=tensors(), convention=conventions(), data=st.data())
def test_eval_output_is_the_same_in_every_convention(x, convention, data):
    # Eval mode uses the running statistics: with equal buffers and eps, every framework's
    # formula is the same (Caffe's scale factor is 1 for given statistics).
    channels = x.shape[1]
    running_mean = data.draw(st.floats(-3, 3))
    running_var = data.draw(st.floats(0, 4))
    eps = data.draw(st.sampled_from([1e-3, 1e-5]))
    evaluated = one_pass(x, convention, train=False, running=(running_mean, running_var), eps=eps)
    pytorch = one_pass(x, PYTORCH, train=False, running=(running_mean, running_var), eps=eps)
    for c in range(channels):
        values = x[:, c].reshape(-1)
        np.testing.assert_array_equal(
            forward_output(evaluated, values, c, 1.5, -0.5),
            forward_output(pytorch, values, c, 1.5, -0.5),
        )


@given(batched=batched_tensors(), convention=conventions(), weight=st.floats(0.01, 1))
def test_running_mean_follows_the_same_weights_in_every_convention(batched, convention, weight):
    # Translated to the same batch weight, every rule but Caffe's (whose weight changes every
    # step) gives PyTorch's running mean; the variance differs only in N vs N - 1.
    x, size = batched
    if convention is CAFFE:
        return
    momentum = momentum_for(convention, weight)
    states = {}
    for rules, m in ((convention, momentum), (PYTORCH, weight)):
        state = initial_state(np.zeros(x.shape[1]), np.ones(x.shape[1]))
        for k in range(x.shape[0] // size):
            stats = channel_statistics(x[k * size : (k + 1) * size])
            state = reference_forward(stats, state, 1e-5, m, True, rules).update.after
        states[rules.name] = state
    np.testing.assert_allclose(
        states[convention.name].running_mean, states["pytorch"].running_mean, rtol=1e-9, atol=1e-12
    )
    if convention.stores == "unbiased":
        np.testing.assert_allclose(
            states[convention.name].running_var, states["pytorch"].running_var, rtol=1e-9
        )


@given(batched=batched_tensors(), f=st.floats(0, 1))
def test_caffe_running_statistics_are_a_normalized_weighted_sum(batched, f):
    # Unrolled, Caffe's rule from scale factor 1 gives statistic_K =
    # (f^K * start + sum_k f^(K-k) * batch_k) / (f^K + sum_k f^(K-k)): computed here directly.
    x, size = batched
    steps = x.shape[0] // size
    state = initial_state(np.full(x.shape[1], 0.5), np.ones(x.shape[1]))
    means = []
    for k in range(steps):
        stats = channel_statistics(x[k * size : (k + 1) * size])
        means.append(stats.mean)
        state = reference_forward(stats, state, 1e-5, f, True, CAFFE).update.after
    weights = np.array([f ** (steps - 1 - k) for k in range(steps)])
    expected = (f**steps * 0.5 + weights @ np.array(means)) / (f**steps + weights.sum())
    np.testing.assert_allclose(state.running_mean, expected, rtol=1e-9, atol=1e-12)


@given(x=tensors(max_rank=4), convention=conventions())
def test_train_output_is_the_same_in_every_convention_and_pytorchs(x, convention):
    # Every framework normalizes with the batch mean and biased variance: PyTorch's module,
    # run beside any convention, agrees with that convention's output to rounding.
    inspection = inspect_array(x, eps=1e-3, convention=convention)
    forward = inspection.forward
    for c in range(x.shape[1]):
        values = x[:, c].reshape(-1).astype(np.float64)
        y = forward_output(forward, values, c, 1.0, 0.0)
        # PyTorch's x * alpha + beta rounds in float32 at the scale of |x| and |mean| over std.
        scale = (np.abs(values).max() + abs(forward.mean[c])) / forward.std[c]
        np.testing.assert_allclose(
            inspection.torch_run.output[:, c].reshape(-1), y, rtol=0, atol=8 * 2.0**-23 * scale
        )
