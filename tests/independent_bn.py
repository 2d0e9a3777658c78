"""Correct batch norms written here, independently of bninspect, as other people write them:
float32 (float64 for float64 input) loops and numpy in several summation orders and forms, and
onnxruntime's BatchNormalization. Each returns the output in the input's dtype (bfloat16 as
ml_dtypes' bfloat16), computed in train mode with the batch's statistics."""

from __future__ import annotations

import numpy as np


def working(x: np.ndarray) -> type:
    """The precision a correct implementation computes x's dtype in."""
    return np.float64 if x.dtype == np.float64 else np.float32


def _by_channel(x: np.ndarray) -> np.ndarray:
    """x (N, C, ...) as (C, values) in memory order of each channel's values."""
    return np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)


def _back(flat: np.ndarray, like: np.ndarray) -> np.ndarray:
    shape = (like.shape[1], like.shape[0], *like.shape[2:])
    return np.moveaxis(flat.reshape(shape), 0, 1)


def _sequential(values: np.ndarray, dtype) -> np.ndarray:
    """Per row, the sum of its values added one by one in ``dtype`` (a C loop)."""
    return np.cumsum(values, axis=1, dtype=dtype)[:, -1]


def two_pass(x, weight, bias, eps=1e-5, order="sequential", form="textbook", unbiased=False):
    """Two passes per channel in the working precision: mean = sum / n, then the squared
    deviations from it summed; ``order`` "sequential" (one value at a time, as a C loop) or
    "pairwise" (numpy's sum); ``form`` "textbook" ((x - mean) / sqrt(var + eps) * w + b) or
    "alpha-beta" (x * alpha + beta, alpha = w / sqrt(var + eps), beta = b - mean * alpha)."""
    t = working(x)
    v = _by_channel(x).astype(t)
    n = t(v.shape[1])
    add = (lambda a: _sequential(a, t)) if order == "sequential" else (lambda a: a.sum(axis=1))
    mean = (add(v) / n).astype(t)
    d = v - mean[:, None]
    var = (add(d * d) / (n - 1 if unbiased else n)).astype(t)
    w, b = np.asarray(weight, t), np.asarray(bias, t)
    std = np.sqrt(var + t(eps))
    if form == "textbook":
        y = d / std[:, None] * w[:, None] + b[:, None]
    else:
        alpha = w / std
        beta = b - mean * alpha
        y = v * alpha[:, None] + beta[:, None]
    return _back(y, x).astype(x.dtype)


def channels_last_loops(x, weight, bias, eps=1e-5):
    """An NHWC implementation: the values as (N*H*W, C) rows, each channel's sums running down
    the rows in the working precision (numpy adds row after row along axis 0), then
    x * alpha + beta row by row."""
    t = working(x)
    rows = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1]).astype(t)
    n = t(rows.shape[0])
    total = np.zeros(rows.shape[1], t)
    for row in rows:
        total += row
    mean = total / n
    squares = np.zeros(rows.shape[1], t)
    for row in rows:
        d = row - mean
        squares += d * d
    var = squares / n
    alpha = np.asarray(weight, t) / np.sqrt(var + t(eps))
    beta = np.asarray(bias, t) - mean * alpha
    y = rows * alpha + beta
    shape = (x.shape[0], *x.shape[2:], x.shape[1])
    return np.moveaxis(y.reshape(shape), -1, 1).astype(x.dtype)


def welford(x, weight, bias, eps=1e-5):
    """Welford's running mean and m2, one value at a time per channel in the working precision
    (as GPU kernels accumulate), then the textbook form."""
    t = working(x)
    v = _by_channel(x).astype(t)
    mean, m2 = np.zeros(v.shape[0], t), np.zeros(v.shape[0], t)
    for k in range(v.shape[1]):
        delta = v[:, k] - mean
        mean += delta / t(k + 1)
        m2 += delta * (v[:, k] - mean)
    var = m2 / t(v.shape[1])
    std = np.sqrt(var + t(eps))
    w, b = np.asarray(weight, t), np.asarray(bias, t)
    y = (v - mean[:, None]) / std[:, None] * w[:, None] + b[:, None]
    return _back(y, x).astype(x.dtype)


def onnxruntime_batchnorm(x, weight, bias, eps=1e-5):
    """onnxruntime's BatchNormalization (opset 15) in training mode, on x as float32 (float64
    input: as float64), its output rounded to x's dtype."""

    import onnxruntime
    from onnx import TensorProto, helper

    wide = x.dtype == np.float64
    t = np.float64 if wide else np.float32
    kind = TensorProto.DOUBLE if wide else TensorProto.FLOAT
    names = ("X", "scale", "B", "input_mean", "input_var")
    channels = x.shape[1]
    node = helper.make_node(
        "BatchNormalization",
        list(names),
        ["Y", "running_mean", "running_var"],
        epsilon=eps,
        momentum=0.9,
        training_mode=1,
    )
    x_shape = [None, channels] + [None] * (x.ndim - 2)
    graph = helper.make_graph(
        [node],
        "bn",
        [helper.make_tensor_value_info("X", kind, x_shape)]
        + [helper.make_tensor_value_info(n, kind, [channels]) for n in names[1:]],
        [helper.make_tensor_value_info("Y", kind, x_shape)]
        + [helper.make_tensor_value_info(n, kind, [channels]) for n in names[3:]],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feeds = [x.astype(t), weight, bias, np.zeros(channels), np.ones(channels)]
    y = session.run(["Y"], {n: np.asarray(v, t) for n, v in zip(names, feeds, strict=True)})[0]
    return y.astype(x.dtype)


IMPLEMENTATIONS = {
    "numpy pairwise two-pass": lambda x, w, b: two_pass(x, w, b, order="pairwise"),
    "C loop two-pass": lambda x, w, b: two_pass(x, w, b, order="sequential"),
    "C loop, x*alpha+beta": lambda x, w, b: two_pass(x, w, b, form="alpha-beta"),
    "NHWC loops": channels_last_loops,
    "Welford loop": welford,
    "onnxruntime": onnxruntime_batchnorm,
}
