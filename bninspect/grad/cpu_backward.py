"""PyTorch's CPU batch-norm backward (aten/src/ATen/native/cpu/batch_norm_kernel.cpp,
``batch_norm_cpu_backward_contiguous_impl`` and ``..._channels_last_impl``) redone for one
channel and one element, in the arithmetic it uses. Pure numpy and exact rationals; no torch.

float32 and float64 input, C-contiguous (the kernel autograd takes when input and dy are both
contiguous); float16 and bfloat16 take other kernels, not emulated here.

- image size > 1 (rank 3 to 5), per image n: sum dy and dotp = sum (x - mean) * dy over the
  image in vector lanes of the dtype (8 float32 or 4 float64 lanes, measured: the AVX512
  build's kernel matches 8 float32 lanes, not 16), the lanes reduced by vec_reduce_all
  (float32: a butterfly, lane l + lane l^4, then l^2, then l^1; float64: lane 0 + lane 1 + ...
  in order); the image's last image_size mod lanes values fused into the lanes with one
  rounding (FMA) each, the others multiplied then added; images under one vector long summed in
  order. The images' results are added in float64 (float32 input: its accumulation type).
  Then k = dotp * invstd * invstd / M in the dtype (the kernel casts dotp first) and
  grad_mean = sum / M in float64 rounded to the dtype;
  dx = ((dy - grad_mean) - (x - mean) * k) * invstd * weight in the dtype, (x - mean) * k
  fused into the subtraction; dweight = dotp * invstd and dbias = sum, rounded to the dtype.
- image size 1 (rank 2): at::parallel_for's split of the N rows over the threads; each thread
  sums dy and (x - mean) * dy (fused) row by row in the dtype; the threads' sums are added in
  float64 and rounded to the dtype; k = dotp * invstd * invstd / M and grad_mean = sum / M in
  the dtype; dweight = dotp * invstd in the dtype.
- eval mode: invstd = 1 / sqrt(running_var + eps) in float64, rounded to the dtype; dx = dy *
  invstd * weight in the dtype.

Which operations the compiler fuses was measured against torch 2.13 (tests/test_grad_precision.py
checks every element); the text above says what matched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bninspect.pytorch.cpu_emulation import (
    _thread_chunks,
    divide,
    exact,
    fused,
    plus,
    round_to,
    times,
)

LANES = {"float32": 8, "float64": 4}
MEASURED_ON = "AVX512"  # the capability whose kernel the fusions below were measured on
CONTIGUOUS = "contiguous, image size > 1: vector-lane sums per image, added in float64"
PER_ROW = "contiguous, image size 1: per-thread sums in the dtype, added in float64"


# Each operation takes its operands through ``exact``: finite ones as exact rationals, an
# infinity or NaN as the float it is, so that values near the dtype's largest, infinities and
# NaN flow through the emulation as through IEEE arithmetic (inf - inf = NaN), as they do
# through PyTorch's, instead of raising.


def _in(value: float, dtype: str) -> float:
    return round_to(exact(value), dtype)


def _add(a: float, b: float, dtype: str) -> float:
    return round_to(plus(exact(a), exact(b)), dtype)


def _sub(a: float, b: float, dtype: str) -> float:
    return round_to(plus(exact(a), -exact(b)), dtype)


def _mul(a: float, b: float, dtype: str) -> float:
    return round_to(times(exact(a), exact(b)), dtype)


def _div(a: float, count: int, dtype: str) -> float:
    """a / count in the dtype, count first converted to it (as Vec(N) and float / int64 do)."""
    return round_to(divide(exact(a), exact(_in(float(count), dtype))), dtype)


def _reduce_lanes(acc: list[float], dtype: str) -> float:
    """vec_reduce_all over a full vector: float32's butterfly, float64's lanes in order."""
    if dtype == "float32":
        v = list(acc)
        step = len(v) // 2
        while step >= 1:
            v = [_add(v[j], v[j ^ step], dtype) for j in range(len(v))]
            step //= 2
        return v[0]
    total = acc[0]
    for lane in acc[1:]:
        total = _add(total, lane, dtype)
    return total


def _image_reduce(terms_or_pairs, dtype: str, product: bool, mean: float = 0.0) -> float:
    """reduce_all (sum of dy) or map2_reduce_all (sum of (x - mean) * dy) over one image, as
    the kernel forms it; ``terms_or_pairs`` is dy, or (x, dy)."""
    L = LANES[dtype]
    if product:
        x, dy = terms_or_pairs
        deviation = [_sub(float(v), mean, dtype) for v in x]
        dy = [float(v) for v in dy]
        n = len(dy)
    else:
        dy = [float(v) for v in terms_or_pairs]
        n = len(dy)

    def mapped(i: int) -> float:
        return _mul(deviation[i], dy[i], dtype) if product else dy[i]

    if n < L:  # vec_reduce_all's slow path: lane 0 takes each value in turn
        total = mapped(0)
        for i in range(1, n):
            total = _add(total, mapped(i), dtype)
        return total
    acc = [mapped(i) for i in range(L)]
    full = n - n % L
    for start in range(L, full, L):
        acc = [_add(acc[j], mapped(start + j), dtype) for j in range(L)]
    for j in range(n - full):  # the tail: Vec::set of the lanes it covers, fused where a product
        i = full + j
        acc[j] = fused(deviation[i], dy[i], acc[j], dtype, True) if product else _add(
            acc[j], dy[i], dtype)  # fmt: skip
    return _reduce_lanes(acc, dtype)


@dataclass(frozen=True)
class EmulatedBackward:
    """PyTorch's intermediate values for one channel, as it holds them."""

    path: str
    sum_dy: float  # accumulated in float64
    dotp: float  # sum (x - mean) * dy, accumulated in float64
    mean: float  # the forward's saved mean (train), the running mean (eval)
    invstd: float
    k: float  # dotp * invstd^2 / M, in the dtype (train mode)
    grad_mean: float  # sum / M, in the dtype (train mode)
    grad_weight: float
    grad_bias: float


def emulate_channel_backward(
    x: np.ndarray,
    dy: np.ndarray,
    dtype: str,
    mean: float,
    invstd: float,
    train: bool,
    running_var: float,
    eps: float,
    threads: int,
) -> EmulatedBackward:
    """The kernel's reductions for one channel: ``x`` and ``dy`` that channel's values as
    (N, image_size) in the dtype; ``mean`` and ``invstd`` the forward's saved statistics
    (train mode; invstd is recomputed in eval) or the running mean (eval)."""
    N, image = x.shape
    M = N * image
    if not train:
        invstd = _in(float(divide(1.0, math.sqrt(running_var + eps))), dtype)
    sum_dy = dotp = 0.0
    if image > 1:
        path = CONTIGUOUS
        for n in range(N):
            sum_dy += _image_reduce(dy[n], dtype, False)
            dotp += _image_reduce((x[n], dy[n]), dtype, True, mean)
        # (scalar_t) dotp * invstd * invstd / N: the cast binds to dotp, so the rest is in
        # the dtype, N converted to it
        k = _div(_mul(_mul(_in(dotp, dtype), invstd, dtype), invstd, dtype), M, dtype)
        grad_mean = _in(sum_dy / M, dtype)  # sum / N in float64, then the dtype
        grad_weight = _in(dotp * invstd, dtype)
        grad_bias = _in(sum_dy, dtype)
    else:
        path = PER_ROW
        for chunk in _thread_chunks(np.arange(N), threads):
            s = d = 0.0
            for r in chunk:
                s = _add(s, float(dy[r, 0]), dtype)
                deviation = _sub(float(x[r, 0]), mean, dtype)
                d = fused(deviation, float(dy[r, 0]), d, dtype, True)
            sum_dy += s
            dotp += d
        sum_stored, dotp_stored = _in(sum_dy, dtype), _in(dotp, dtype)
        k = _div(_mul(_mul(dotp_stored, invstd, dtype), invstd, dtype), M, dtype)
        grad_mean = _div(sum_stored, M, dtype)
        grad_weight = _mul(dotp_stored, invstd, dtype)
        grad_bias = sum_stored
    if not train:
        k = grad_mean = math.nan
    return EmulatedBackward(
        path, sum_dy, dotp, mean, invstd, k, grad_mean, grad_weight, grad_bias
    )


def emulate_grad_input(
    x_i: float, dy_i: float, channel: EmulatedBackward, weight: float, train: bool, dtype: str
) -> float:
    """dx at one element: ((dy - grad_mean) - (x - mean) * k) * invstd * weight, the product
    fused into the subtraction (train); dy * invstd * weight (eval); each step in the dtype."""
    if train:
        deviation = _sub(x_i, channel.mean, dtype)
        centred = _sub(dy_i, channel.grad_mean, dtype)
        # fused in the contiguous kernel; the per-row kernel rounds the product first (measured)
        inner = fused(-deviation, channel.k, centred, dtype, channel.path == CONTIGUOUS)
        return _mul(_mul(inner, channel.invstd, dtype), weight, dtype)
    return _mul(_mul(dy_i, channel.invstd, dtype), weight, dtype)
