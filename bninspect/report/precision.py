"""``explain --precision``: where the bits of PyTorch's output went.

Walks PyTorch's CPU computation of one element (torch_cpu_emulation) beside the exact values,
and measures each step's effect on y: y recomputed exactly from PyTorch's rounded values up to
that step, minus the same with one step fewer. The effects add up to PyTorch's total error.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from bninspect.numerics.agreement import output_scale, ulp
from bninspect.numerics.reference import channel_values, normalize
from bninspect.pytorch.cpu_emulation import claim, emulate_channel, emulate_output, how_steps
from bninspect.pytorch.inspection import Inspection
from bninspect.results.explain import PrecisionReport, PrecisionStep

_FMA_CAPABLE = ("AVX2", "AVX512", "AVX512_BF16", "AVX512_VNNI", "AMX", "ZVECTOR", "SVE256")


def _sqrt(value: Fraction) -> Fraction:
    """A square root exact enough for effects measured in float32/float64 ULPs (float64)."""
    return Fraction(float(np.sqrt(float(value))))


def precision_report(inspection: Inspection, index: tuple[int, ...]) -> PrecisionReport:
    """PyTorch's arithmetic for output[index], step by step, beside the exact values."""
    c, x_arr = index[1], inspection.batch
    dtype = inspection.tensor.info.dtype
    settings, params, stats = inspection.settings, inspection.params, inspection.stats
    torch_run, forward = inspection.torch_run, inspection.forward
    train = settings.mode == "train"
    fma = torch_run.cpu_capability in _FMA_CAPABLE
    values = x_arr[:, c].reshape(-1)
    image_size = x_arr.size // (x_arr.shape[0] * x_arr.shape[1])
    w, b, eps = float(params.weight[c]), float(params.bias[c]), settings.eps
    emulated = emulate_channel(
        values,
        dtype,
        w,
        b,
        eps,
        train,
        float(forward.before.running_mean[c]),  # the buffers this batch met (eval mode)
        float(forward.before.running_var[c]),
        image_size,
        torch_run.num_threads,
        fma,
    )
    x = float(x_arr[index])
    y_emulated = emulate_output(x, emulated, dtype, fma)
    y_torch = float(torch_run.output[index])
    scale_values = normalize(channel_values(x_arr, c), forward.mean[c], forward.std[c], w, b)
    scale = output_scale(scale_values, w)
    unit = float(ulp(scale, dtype))

    X, W, B, E = Fraction(x), Fraction(w), Fraction(b), Fraction(eps)
    y_exact = Fraction(float(normalize(x, forward.mean[c], forward.std[c], w, b)))
    mean_exact = Fraction(float(forward.mean[c]))
    var_exact = Fraction(float(forward.var[c]))
    mean_t = Fraction(emulated.mean)
    how = how_steps(dtype, emulated.path, fma)
    rows = []  # (name, how, PyTorch's value, exact value, y with PyTorch's values so far)
    if train:
        n = values.size
        # about the mean PyTorch's deviations are taken from (float32 for float16/bfloat16)
        centre = Fraction(emulated.centre)
        var_sum_exact = Fraction(float(stats.m2[c])) + n * (mean_exact - centre) ** 2
        var_sum_t, var_t = Fraction(emulated.var_sum), Fraction(emulated.var)
        rows += [
            (
                "mean",
                how["mean"],
                emulated.mean,
                mean_exact,
                (X - mean_t) * W / _sqrt(var_exact + E) + B,
            ),
            (
                "var_sum",
                how["var_sum"],
                emulated.var_sum,
                var_sum_exact,
                (X - mean_t) * W / _sqrt(var_sum_t / n + E) + B,
            ),
            (
                "var",
                how["var"],
                emulated.var,
                var_exact,
                (X - mean_t) * W / _sqrt(var_t + E) + B,
            ),
        ]
    invstd_exact = 1 / _sqrt(var_exact + E)
    invstd_t, alpha_t, beta_t = (
        Fraction(v) for v in (emulated.invstd, emulated.alpha, emulated.beta)
    )
    rows += [
        ("invstd", how["invstd"], emulated.invstd, invstd_exact, (X - mean_t) * W * invstd_t + B),
        (
            "alpha",
            how["alpha"],
            emulated.alpha,
            W * invstd_exact,
            (X - mean_t) * alpha_t + B,
        ),
        (
            "beta",
            how["beta"],
            emulated.beta,
            B - mean_exact * W * invstd_exact,
            X * alpha_t + beta_t,
        ),
        (
            "y",
            how["y"],
            y_emulated,
            y_exact,
            Fraction(y_emulated),
        ),
    ]
    previous = y_exact
    steps = []
    for name, how, value, exact, y_so_far in rows:
        effect = float(y_so_far - previous) / unit if unit else float("nan")
        steps.append(PrecisionStep(name, how, float(value), float(exact), effect))
        previous = y_so_far
    exact_match = y_emulated == y_torch or (np.isnan(y_emulated) and np.isnan(y_torch))
    difference = 0.0 if exact_match else (y_emulated - y_torch) / float(ulp(y_torch, dtype))
    return PrecisionReport(
        path=emulated.path,
        claim=claim(dtype, emulated.path),
        cpu_capability=torch_run.cpu_capability,
        threads=torch_run.num_threads,
        fma=fma,
        scale=scale,
        emulation=tuple(steps),
        emulated=y_emulated,
        torch=y_torch,
        bit_exact=bool(exact_match),
        difference_ulps=float(difference),
    )
