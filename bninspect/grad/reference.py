"""The float64 reference backward of batch normalization, from the textbook formulas. Pure numpy;
nothing here knows about PyTorch.

With M values per channel, x_hat = (x - mean) * inv_std and dy the gradient of the loss with
respect to the output:

    dbias   = sum dy
    dweight = sum dy * x_hat
    dx      = weight * inv_std / M * (M * dy - sum dy - x_hat * sum(dy * x_hat))   train mode
    dx      = weight * inv_std * dy                                               eval mode

(in eval mode the running statistics are constants, so the paths through the mean and the
variance vanish). Sums over every axis but the channel are correctly rounded (math.fsum).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def per_channel(values: np.ndarray, ndim: int) -> np.ndarray:
    """Per-channel values (C,) shaped to broadcast over (N, C, ...)."""
    return np.asarray(values, dtype=np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def channel_sums(values: np.ndarray) -> np.ndarray:
    """Per channel, the correctly rounded sum over every axis but 1 (math.fsum), shape (C,);
    NaN where a value is NaN or both infinities meet, an infinity where one does."""
    sums = np.empty(values.shape[1])
    for c in range(values.shape[1]):
        channel = np.asarray(values[:, c], dtype=np.float64).reshape(-1)
        finite = np.isfinite(channel)
        if finite.all():
            sums[c] = math.fsum(channel)
        else:
            with np.errstate(invalid="ignore"):
                sums[c] = float(np.sum(channel[~finite]))  # NaN, or the infinity
    return sums


@dataclass(frozen=True)
class ReferenceBackward:
    """The reference gradients of one pass, float64. Per-channel arrays have shape (C,),
    elementwise ones the batch's (N, C, ...).

    ``input_scale``, ``weight_scale`` and ``bias_scale`` are the magnitudes each gradient's
    error is judged at (in ULPs of the dtype, as the forward's output at the channel's scale):
    the size of the terms each gradient is the sum of, so that a scale never collapses where
    the terms cancel (dx of an element near the mean, dx = 0 for a constant dy):

    - dx: |weight| * inv_std * T, T = max over the channel of |dy| + |sum dy| / M
      + |x_hat| * |sum(dy * x_hat)| / M, the three terms' sizes (eval mode: T = max |dy|);
    - dweight: sum |dy * x_hat|;  dbias: sum |dy|.

    ``input_terms`` (T), ``grad_output_rms``, ``grad_output_x_hat_rms`` (RMS of dy and of
    dy * x_hat over the channel), ``sum_abs_grad_output`` and ``sum_abs_grad_output_x_hat``
    feed the bound on what a correct backward can leave (grad/tolerance.py).
    """

    train: bool
    count: int  # M: values per channel
    mean: np.ndarray  # what normalizes: the batch mean (train) or running mean (eval)
    inv_std: np.ndarray  # 1 / sqrt(var + eps), var as normalizes
    weight: np.ndarray  # ones without affine
    x_hat: np.ndarray
    sum_grad_output: np.ndarray  # sum dy
    sum_grad_output_x_hat: np.ndarray  # sum dy * x_hat
    grad_input: np.ndarray
    grad_weight: np.ndarray
    grad_bias: np.ndarray
    input_scale: np.ndarray
    weight_scale: np.ndarray
    bias_scale: np.ndarray
    input_terms: np.ndarray  # T: dx's terms' size over |weight| * inv_std
    grad_output_rms: np.ndarray
    grad_output_x_hat_rms: np.ndarray
    sum_abs_grad_output: np.ndarray  # sum |dy|
    sum_abs_grad_output_x_hat: np.ndarray  # sum |dy * x_hat|
    passes_through: bool = False  # the layer copies x to y (Paddle, one value per channel)


def normalized_input(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """x_hat = (x - mean) / std in float64, as the forward reference computes it (0 where a
    constant channel with eps 0 divides 0 by 0)."""
    ndim = x.ndim
    std_b = per_channel(std, ndim)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        deviation = np.subtract(x, per_channel(mean, ndim), dtype=np.float64)
        x_hat = deviation / std_b
        return np.where((std_b == 0) & (deviation == 0), 0.0, x_hat)


def reference_backward(
    x: np.ndarray,
    dy: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    weight: np.ndarray,
    train: bool,
    passes_through: bool = False,
) -> ReferenceBackward:
    """The gradients of y = (x - mean) / std * weight + bias for the loss whose gradient with
    respect to y is ``dy`` (the batch's shape), with ``mean`` and ``std`` (C,) what the layer
    normalized with: batch statistics in train mode, running ones in eval mode."""
    ndim, count = x.ndim, x.size // max(x.shape[1], 1)
    dy = np.asarray(dy, dtype=np.float64)
    std = np.asarray(std, dtype=np.float64)
    with np.errstate(divide="ignore"):
        inv_std = 1.0 / std
    x_hat = normalized_input(x, mean, std)
    with np.errstate(invalid="ignore", over="ignore"):
        sum_dy = channel_sums(dy)
        sum_dy_x_hat = channel_sums(dy * x_hat)
        w, k = per_channel(weight, ndim), per_channel(inv_std, ndim)
        abs_dy = np.abs(dy)
        abs_dy_x_hat = np.abs(dy * x_hat)
        sum_abs_dy = channel_sums(abs_dy)
        sum_abs_dy_x_hat = channel_sums(abs_dy_x_hat)
        rms_dy = np.sqrt(channel_sums(dy * dy) / count)
        rms_dy_x_hat = np.sqrt(channel_sums(abs_dy_x_hat * abs_dy_x_hat) / count)
        axes = (0, *range(2, ndim))
        if passes_through:  # y = x: dx = dy, and weight and bias play no part
            grad_input = dy.copy()
            terms = abs_dy
        elif train:
            grad_input = (w * k / count) * (
                count * dy - per_channel(sum_dy, ndim) - x_hat * per_channel(sum_dy_x_hat, ndim)
            )
            terms = (
                abs_dy
                + per_channel(np.abs(sum_dy), ndim) / count
                + np.abs(x_hat) * per_channel(np.abs(sum_dy_x_hat), ndim) / count
            )
        else:
            grad_input = w * k * dy
            terms = abs_dy
        input_terms = np.max(np.nan_to_num(terms, nan=0.0), axis=axes, initial=0.0)
        if passes_through:
            input_scale = input_terms
        else:
            input_scale = np.abs(np.asarray(weight, dtype=np.float64)) * inv_std * input_terms
            input_scale = np.where(input_terms == 0, 0.0, input_scale)  # 0 * inf: no scale
        weight_scale = sum_abs_dy_x_hat
        bias_scale = sum_abs_dy
    zeros = np.zeros_like(sum_dy)
    return ReferenceBackward(
        train=train,
        count=count,
        mean=np.asarray(mean, dtype=np.float64),
        inv_std=inv_std,
        weight=np.asarray(weight, dtype=np.float64),
        x_hat=x_hat,
        sum_grad_output=sum_dy,
        sum_grad_output_x_hat=sum_dy_x_hat,
        grad_input=grad_input,
        grad_weight=zeros if passes_through else sum_dy_x_hat,
        grad_bias=zeros if passes_through else sum_dy,
        input_scale=input_scale,
        weight_scale=weight_scale,
        bias_scale=bias_scale,
        input_terms=input_terms,
        grad_output_rms=rms_dy,
        grad_output_x_hat_rms=rms_dy_x_hat,
        sum_abs_grad_output=sum_abs_dy,
        sum_abs_grad_output_x_hat=sum_abs_dy_x_hat,
        passes_through=passes_through,
    )
