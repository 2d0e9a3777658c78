"""``explain --precision``: where the bits of PyTorch's output went.

Walks PyTorch's CPU computation of one element (torch_cpu_emulation) beside the exact values,
and measures each step's effect on y: y recomputed exactly from PyTorch's rounded values up to
that step, minus the same with one step fewer. The effects add up to PyTorch's total error.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from bninspect.numerics.agreement import output_scale, ulp
from bninspect.numerics.reference import channel_values, normalize
from bninspect.pytorch.cpu_emulation import claim, emulate_channel, emulate_output, how_steps
from bninspect.pytorch.inspection import Inspection
from bninspect.results.common import Undefined
from bninspect.results.explain import PrecisionReport, PrecisionStep

_FMA_CAPABLE = ("AVX2", "AVX512", "AVX512_BF16", "AVX512_VNNI", "AMX", "ZVECTOR", "SVE256")


def _float(value: Fraction | float) -> float:
    """The nearest float64; infinite beyond its range (a Fraction's float() raises there)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _sqrt(value: Fraction) -> Fraction:
    """A square root exact enough for effects measured in float32/float64 ULPs (float64)."""
    return Fraction(float(np.sqrt(float(value))))


def _overflowed(emulated, y_emulated: float, train: bool, how: dict[str, str]) -> str | None:
    """Where PyTorch's arithmetic for the element left the finite numbers, in words, or
    None: the first step (in order) whose emulated value is infinite or NaN."""
    names = ("mean", "var_sum", "var") if train else ()
    values = [(name, getattr(emulated, name)) for name in names]
    values += [(name, getattr(emulated, name)) for name in ("invstd", "alpha", "beta")]
    values.append(("y", y_emulated))
    for name, value in values:
        if not math.isfinite(value):
            return f"{name} = {value} ({how[name]})"
    return None


def precision_report(
    inspection: Inspection, index: tuple[int, ...]
) -> PrecisionReport | Undefined:
    """PyTorch's arithmetic for output[index], step by step, beside the exact values; where
    that arithmetic overflows (values near the dtype's largest), which step did, as the
    result: there are then no finite bits to attribute."""
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
    how = how_steps(dtype, emulated.path, fma)
    overflow = _overflowed(emulated, y_emulated, train, how)
    if overflow is not None:
        return Undefined(
            f"PyTorch's {dtype} arithmetic for this element overflows: {overflow}, beyond "
            f"{dtype}'s range (its y is {y_torch!r}, the emulation's {y_emulated!r}), so "
            "there are no finite bits to attribute to each step"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        scale_values = normalize(
            channel_values(x_arr, c), forward.mean[c], forward.std[c], w, b
        )
        y_reference = float(normalize(x, forward.mean[c], forward.std[c], w, b))
    scale = output_scale(scale_values, w)
    unit = float(ulp(scale, dtype))
    reference = {"mean": forward.mean[c], "var": forward.var[c], "y": y_reference}
    beyond = [f"{name} = {float(v)!r}" for name, v in reference.items() if not np.isfinite(v)]
    if beyond:
        return Undefined(
            f"the float64 reference for this element leaves float64's range ({', '.join(beyond)})"
            ", so there are no exact values to measure PyTorch's steps against"
        )

    X, W, B, E = Fraction(x), Fraction(w), Fraction(b), Fraction(eps)
    y_exact = Fraction(y_reference)
    mean_exact = Fraction(float(forward.mean[c]))
    var_exact = Fraction(float(forward.var[c]))
    mean_t = Fraction(emulated.mean)
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
        effect = _float(y_so_far - previous) / unit if unit else float("nan")
        steps.append(PrecisionStep(name, how, float(value), _float(exact), effect))
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
