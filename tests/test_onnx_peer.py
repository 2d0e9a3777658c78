"""The ONNX convention against the real thing: BatchNormalization (opset 15) run by
onnxruntime, in inference and in training mode, step after step."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper

from bninspect.conventions.rules import ONNX, PYTORCH
from bninspect.numerics.reference import channel_statistics, forward_output, reference_forward
from bninspect.numerics.running import initial_state

from strategies import batched_tensors, tensors

INPUTS = ("X", "scale", "B", "input_mean", "input_var")


def onnx_batchnorm(rank: int, channels: int, eps: float, momentum: float, training: bool):
    """An onnxruntime session of one BatchNormalization node over float32 input of ``rank``."""
    outputs = ["Y", "running_mean", "running_var"] if training else ["Y"]
    node = helper.make_node(
        "BatchNormalization",
        list(INPUTS),
        outputs,
        epsilon=eps,
        momentum=momentum,
        training_mode=int(training),
    )
    x_shape = [None, channels] + [None] * (rank - 2)

    def value(name: str, shape: list) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    graph = helper.make_graph(
        [node],
        "batchnorm",
        [value("X", x_shape)] + [value(name, [channels]) for name in INPUTS[1:]],
        [value("Y", x_shape)] + [value(name, [channels]) for name in outputs[1:]],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8  # understood by every onnxruntime the test extra allows
    onnx.checker.check_model(model)
    return onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )


def as_float32(value: float) -> float:
    """ONNX attributes are float32: what the operator really receives."""
    return float(np.float32(value))


def run_session(session, x, weight, bias, mean, var):
    feeds = [x, weight, bias, mean, var]
    return session.run(
        None, {n: np.asarray(v, np.float32) for n, v in zip(INPUTS, feeds, strict=True)}
    )


def close_to_float32(actual, expected, scale):
    """Within a few float32 roundings of the largest magnitude involved."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=16 * 2.0**-23 * scale + 1e-30)


def test_defaults_are_the_schemas():
    schema = onnx.defs.get_schema("BatchNormalization")
    defaults = {
        k: helper.get_attribute_value(a.default_value) for k, a in schema.attributes.items()
    }
    assert defaults["momentum"] == as_float32(ONNX.momentum_default)
    assert defaults["epsilon"] == as_float32(ONNX.eps_default)
    assert schema.since_version == 15


@given(x=tensors(), data=st.data())
def test_inference_matches_onnxruntime(x, data):
    channels = x.shape[1]
    floats = st.floats(-2, 2, width=32)
    mean = np.array(data.draw(st.lists(floats, min_size=channels, max_size=channels)))
    var = np.array(
        data.draw(st.lists(st.floats(0, 4, width=32), min_size=channels, max_size=channels))
    )
    weight = np.array(data.draw(st.lists(floats, min_size=channels, max_size=channels)))
    eps = as_float32(data.draw(st.sampled_from([1e-5, 1e-3, 0.1])))
    session = onnx_batchnorm(x.ndim, channels, eps, 0.9, training=False)
    (y_onnx,) = run_session(session, x, weight, np.zeros(channels), mean, var)
    forward = reference_forward(
        channel_statistics(x), initial_state(mean, var), eps, 0.9, False, ONNX
    )
    for c in range(channels):
        values = x[:, c].reshape(-1).astype(np.float64)
        y = forward_output(forward, values, c, weight[c], 0.0)
        scale = (np.abs(values).max() + abs(mean[c])) * abs(weight[c]) / forward.std[c]
        close_to_float32(y_onnx[:, c].reshape(-1), y, scale)


@given(batched=batched_tensors(), momentum=st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]))
def test_training_steps_match_onnxruntime(batched, momentum):
    # Feed onnxruntime's running statistics back in, batch after batch, as a training loop
    # would, and compare every step with the reference under the ONNX convention.
    x, size = batched
    channels, m = x.shape[1], as_float32(momentum)
    session = onnx_batchnorm(x.ndim, channels, as_float32(1e-5), m, training=True)
    onnx_mean, onnx_var = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    state = initial_state(np.zeros(channels), np.ones(channels))
    for k in range(x.shape[0] // size):
        batch = x[k * size : (k + 1) * size]
        y_onnx, onnx_mean, onnx_var = run_session(
            session, batch, np.ones(channels), np.zeros(channels), onnx_mean, onnx_var
        )
        stats = channel_statistics(batch)
        forward = reference_forward(stats, state, as_float32(1e-5), m, True, ONNX)
        state = forward.update.after
        magnitude = np.abs(batch).max() + 1.0
        close_to_float32(onnx_mean, state.running_mean, magnitude)
        close_to_float32(onnx_var, state.running_var, magnitude**2)
        for c in range(channels):
            values = batch[:, c].reshape(-1).astype(np.float64)
            scale = (np.abs(values).max() + abs(stats.mean[c])) / forward.std[c]
            close_to_float32(
                y_onnx[:, c].reshape(-1), forward_output(forward, values, c, 1.0, 0.0), scale
            )


def test_onnxruntime_stores_the_biased_variance_not_pytorchs():
    # The channel 1, 2, 3, 4: biased 5/4, unbiased 5/3; momentum 0.5 from running_var 1.
    x = np.array([[[1.0, 2.0]], [[3.0, 4.0]]], dtype=np.float32)
    session = onnx_batchnorm(3, 1, 1e-5, 0.5, training=True)
    _, _, onnx_var = run_session(session, x, [1.0], [0.0], [0.0], [1.0])
    stats = channel_statistics(x)
    before = initial_state(np.zeros(1), np.ones(1))
    ours = reference_forward(stats, before, 1e-5, 0.5, True, ONNX).running_var
    pytorchs = reference_forward(stats, before, 1e-5, 0.5, True, PYTORCH).running_var
    np.testing.assert_allclose(onnx_var, ours, rtol=1e-7)
    np.testing.assert_allclose(ours, [0.5 + 0.5 * 5 / 4])
    assert abs(onnx_var[0] - pytorchs[0]) > 0.1


def test_one_value_per_channel_in_training():
    # The spec is silent; onnxruntime normalizes with variance 0 (y = B) and folds 0 in.
    x = np.array([[5.0, 7.0]], dtype=np.float32)
    session = onnx_batchnorm(2, 2, 1e-5, 0.9, training=True)
    y_onnx, onnx_mean, onnx_var = run_session(session, x, [2, 2], [0.25, -1], [0, 0], [1, 1])
    forward = reference_forward(
        channel_statistics(x), initial_state(np.zeros(2), np.ones(2)), 1e-5, 0.9, True, ONNX
    )
    np.testing.assert_array_equal(y_onnx, [[0.25, -1.0]])
    assert [
        forward_output(forward, v, c, 2.0, b) for c, (v, b) in enumerate([(5, 0.25), (7, -1)])
    ] == [
        0.25,
        -1.0,
    ]
    np.testing.assert_allclose(onnx_mean, forward.running_mean, rtol=1e-6)
    np.testing.assert_allclose(onnx_var, forward.running_var, rtol=1e-6)
