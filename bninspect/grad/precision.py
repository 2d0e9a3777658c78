"""``explain --grad --precision``: autograd's CPU backward for one element redone in PyTorch's
own arithmetic (grad/cpu_backward.py), beside the exact values, and whether it reproduced
autograd's dx, dweight and dbias bit for bit. Claims only what was measured."""

from __future__ import annotations

import numpy as np

from bninspect.grad.backward import Backward
from bninspect.grad.cpu_backward import (
    CONTIGUOUS,
    MEASURED_ON,
    PER_ROW,
    emulate_channel_backward,
    emulate_grad_input,
)
from bninspect.pytorch.cpu_emulation import STRIDED, emulate_channel
from bninspect.pytorch.inspection import Inspection
from bninspect.results.common import Undefined
from bninspect.results.grad import GradPrecision, GradPrecisionStep, GradValues

# Measured with scripts/measure_grad_emulation.py --trials 300 --seed 1 on torch 2.13, AVX512
# kernel, 2 threads: 49,173 dx and 1,043 channels' dweight and dbias; all matched but 56 of the
# 192 float64 dx in train mode with one value per image.
BIT_EXACT = (
    "bit for bit: every sampled dx, dweight and dbias matched autograd (48,981 dx and 1,043 "
    "channels over the paths measured exact, by scripts/measure_grad_emulation.py)"
)
PER_ROW_FLOAT64_TRAIN = (
    "not bit for bit: 56 of 192 sampled float64 dx in train mode with one value per image "
    "differ by an ULP or so (cause not found); dweight and dbias matched every time"
)


def claim(dtype: str, path: str, train: bool) -> str:
    """How closely the emulation follows autograd on this dtype and path, as measured."""
    if path == PER_ROW and dtype == "float64" and train:
        return PER_ROW_FLOAT64_TRAIN
    return BIT_EXACT


def grad_precision(
    inspection: Inspection, backward: Backward, index: tuple[int, ...]
) -> GradPrecision | Undefined:
    """The emulated backward for dx[index] and its channel's dweight and dbias, or why not."""
    dtype = backward.dtype
    if backward.torch is None:
        return Undefined(f"PyTorch was not run: {backward.no_torch}")
    if dtype not in ("float32", "float64"):
        return Undefined(
            f"{dtype} takes PyTorch's reduced-precision backward kernel (float32 arithmetic "
            "inside), which bninspect does not emulate: nothing measured, nothing claimed"
        )
    if not inspection.batch.flags.c_contiguous:
        return Undefined(STRIDED)
    capability = backward.torch.cpu_capability
    if capability != MEASURED_ON:
        return Undefined(
            f"the emulation was measured against PyTorch's {MEASURED_ON} kernel; this machine's "
            f"is {capability}, whose fused operations may differ: nothing claimed"
        )
    c = index[1]
    x_all, settings, params = inspection.batch, inspection.settings, inspection.params
    forward, ref = inspection.forward, backward.reference
    train = settings.mode == "train"
    N = x_all.shape[0]
    image = x_all.size // (N * x_all.shape[1])
    threads = backward.torch.num_threads
    w = float(params.weight[c])
    forward_channel = emulate_channel(
        x_all[:, c].reshape(-1), dtype, w, float(params.bias[c]), settings.eps, train,
        float(forward.before.running_mean[c]), float(forward.before.running_var[c]), image,
        threads, True,
    )  # fmt: skip
    x_c = np.asarray(x_all[:, c]).reshape(N, image)
    dy_c = np.asarray(backward.dy[:, c]).reshape(N, image)
    channel = emulate_channel_backward(
        x_c, dy_c, dtype, forward_channel.mean, forward_channel.invstd, train,
        float(forward.before.running_var[c]), settings.eps, threads,
    )  # fmt: skip
    position = int(np.ravel_multi_index(index[2:], x_all.shape[2:])) if x_all.ndim > 2 else 0
    n = index[0]
    dx = emulate_grad_input(
        float(x_c[n, position]), float(dy_c[n, position]), channel, w, train, dtype
    )
    torch_dx = float(backward.torch.grad_input[index])
    torch_dw = backward.torch.grad_weight
    torch_db = backward.torch.grad_bias
    exact_inv = float(ref.inv_std[c])
    exact_dotp = float(ref.sum_grad_output_x_hat[c]) / exact_inv if exact_inv else float("nan")
    M = ref.count
    steps = [
        GradPrecisionStep("sum dy", f"each image's sum in vector lanes of {dtype}, added in "
                          "float64" if channel.path == CONTIGUOUS else
                          f"each thread's rows in {dtype}, the threads' sums added in float64",
                          channel.sum_dy, float(ref.sum_grad_output[c])),  # fmt: skip
        GradPrecisionStep("dotp", "sum (x - mean) * dy, summed as sum dy",
                          channel.dotp, exact_dotp),  # fmt: skip
        GradPrecisionStep("invstd", "the forward's saved invstd" if train else
                          "1 / sqrt(running_var + eps) in float64, rounded to the dtype",
                          channel.invstd, exact_inv),  # fmt: skip
    ]
    if train:
        steps += [
            GradPrecisionStep("k", f"dotp * invstd * invstd / M in {dtype}", channel.k,
                              exact_dotp * exact_inv * exact_inv / M),  # fmt: skip
            GradPrecisionStep("grad_mean", f"sum dy / M, rounded to {dtype}", channel.grad_mean,
                              float(ref.sum_grad_output[c]) / M),  # fmt: skip
        ]
    steps += [
        GradPrecisionStep(
            "dx",
            f"((dy - grad_mean) - (x - mean) * k) * invstd * weight in {dtype}"
            if train
            else f"dy * invstd * weight in {dtype}",
            dx,
            float(ref.grad_input[index]),
        ),
        GradPrecisionStep("dweight", f"dotp * invstd, rounded to {dtype}", channel.grad_weight,
                          float(ref.grad_weight[c])),  # fmt: skip
        GradPrecisionStep("dbias", f"sum dy, rounded to {dtype}", channel.grad_bias,
                          float(ref.grad_bias[c])),  # fmt: skip
    ]
    exact_match = dx == torch_dx
    if torch_dw is not None:
        exact_match = exact_match and channel.grad_weight == float(torch_dw[c])
        exact_match = exact_match and channel.grad_bias == float(torch_db[c])
    no_affine = Undefined("--no-affine: the layer has no weight or bias")
    affine = torch_dw is not None
    return GradPrecision(
        path=channel.path,
        claim=claim(dtype, channel.path, train),
        cpu_capability=capability,
        threads=threads,
        emulation=tuple(steps),
        emulated=GradValues(
            dx,
            channel.grad_weight if affine else no_affine,
            channel.grad_bias if affine else no_affine,
        ),
        torch=GradValues(
            torch_dx,
            float(torch_dw[c]) if affine else no_affine,
            float(torch_db[c]) if affine else no_affine,
        ),
        bit_exact=bool(exact_match),
    )
