"""Measure check's derived tolerance (bninspect/check/tolerance.py) and print the tables of
docs/check.md ("Tolerance"):

1. correct outputs (PyTorch's module and the independent implementations of
   tests/independent_bn.py) across dtypes and offsets: the largest error at the channel's scale
   (ULPs of the dtype) and the largest ratio error / bound over the channels (below 1: passes);
2. every catalogue mistake, written here, across dtypes, offsets and channel sizes: the margin
   by which it fails (the largest error / bound over the channels; above 1: fails).

Usage: .venv/bin/python scripts/tolerance_sweep.py [--shape 8,16,16,16] [--seeds 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from independent_bn import IMPLEMENTATIONS  # noqa: E402

from bninspect.check.compare import reference_output  # noqa: E402
from bninspect.check.tolerance import Judge, inspection_conditioning  # noqa: E402

from helpers import inspect_array  # noqa: E402

DTYPES = {
    "float32": np.float32,
    "float64": np.float64,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
}
OFFSETS = [0.0, 1e1, 1e2, 1e3, 1e4]
TORCH_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def data(shape, dtype, offset, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale + offset).astype(DTYPES[dtype])
    w = rng.uniform(0.5, 2.0, shape[1]).astype(DTYPES[dtype]).astype(np.float64)
    b = rng.uniform(-1.0, 1.0, shape[1]).astype(DTYPES[dtype]).astype(np.float64)
    return x, w, b


def pytorch(x, w, b, dtype=None):
    """PyTorch's functional batch norm in ``dtype`` (default x's), train mode."""
    t = TORCH_DTYPES[dtype or x.dtype.name]
    tensor = torch.from_numpy(np.asarray(x, np.float64)).to(t)
    y = torch.nn.functional.batch_norm(
        tensor, None, None, torch.tensor(w).to(t), torch.tensor(b).to(t), training=True, eps=1e-5
    )
    return y.double().numpy()


def measure(x, w, b, y, precision=None):
    """(largest error in ULPs at scale, largest error / bound) over the channels."""
    inspection = inspect_array(x, weight=w, bias=b)
    dtype = x.dtype.name
    judge = Judge(inspection_conditioning(inspection), inspection.params.weight, dtype)
    errors, limits = judge.measure(
        np.asarray(y, np.float64), reference_output(inspection), precision
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(errors == 0, 0.0, errors / limits)
    return float(errors.max()), float(ratios.max()), float(limits.max())


def mistaken(name, x, w, b):
    """The output of an implementation with mistake ``name`` (float64, or PyTorch in a lower
    precision), None where it does not apply."""
    wide = x.astype(np.float64)
    nd = x.ndim
    axes = (0, *range(2, nd))
    shaped = (1, -1, *[1] * (nd - 2))
    W, B = w.reshape(shaped), b.reshape(shaped)

    def norm(v, m, var, eps=1e-5, weight=W, bias=B, outside=False):
        d = np.sqrt(var) + eps if outside else np.sqrt(var + eps)
        return (v - m) / d * weight + bias

    m, var = wide.mean(axis=axes, keepdims=True), wide.var(axis=axes, keepdims=True)
    if name == "unbiased-variance":
        return norm(wide, m, wide.var(axis=axes, keepdims=True, ddof=1))
    if name == "eps-outside-sqrt":
        return norm(wide, m, var, outside=True)
    if name == "no-eps":
        return norm(wide, m, var, eps=0.0)
    if name == "other-eps":
        return norm(wide, m, var, eps=1e-3)
    if name == "channels-last":
        last = tuple(range(nd - 1))
        return norm(wide, wide.mean(axis=last, keepdims=True), wide.var(axis=last, keepdims=True))
    if name == "per-sample":
        space = tuple(range(2, nd))
        return norm(wide, wide.mean(axis=space, keepdims=True), wide.var(axis=space, keepdims=True))
    if name == "per-layer":
        rest = tuple(range(1, nd))
        return norm(wide, wide.mean(axis=rest, keepdims=True), wide.var(axis=rest, keepdims=True))
    if name == "batch-axis-only":
        return norm(wide, wide.mean(axis=0, keepdims=True), wide.var(axis=0, keepdims=True))
    if name == "other-statistics":
        return norm(wide, 0.0, 1.0)  # the untrained running statistics in train mode
    if name == "no-affine":
        return norm(wide, m, var, weight=1.0, bias=0.0)
    if name == "weight-bias-swapped":
        return norm(wide, m, var, weight=B, bias=W)
    if name == "weight-before-normalizing":
        s = wide * W
        return norm(
            s, s.mean(axis=axes, keepdims=True), s.var(axis=axes, keepdims=True), weight=1.0
        )
    if name == "naive-variance":
        t = np.float32 if x.dtype != np.float64 else np.float64
        v = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1).astype(t)
        n = t(v.shape[1])
        mean = np.cumsum(v, axis=1, dtype=t)[:, -1] / n
        var1 = np.cumsum(v * v, axis=1, dtype=t)[:, -1] / n - mean * mean
        with np.errstate(invalid="ignore"):  # a negative variance: NaN, as such code gives
            y = (v - mean[:, None]) / np.sqrt(var1 + t(1e-5))[:, None] * w[:, None] + b[:, None]
        return np.moveaxis(y.reshape(x.shape[1], x.shape[0], *x.shape[2:]), 0, 1)
    if name in ("float16", "bfloat16"):
        if x.dtype.name in ("float16", "bfloat16") or x.dtype.name == name:
            return None
        return pytorch(x, w, b, dtype=name)
    raise AssertionError(name)


MISTAKES = [
    "unbiased-variance",
    "eps-outside-sqrt",
    "no-eps",
    "other-eps",
    "channels-last",
    "per-sample",
    "per-layer",
    "batch-axis-only",
    "other-statistics",
    "no-affine",
    "weight-bias-swapped",
    "weight-before-normalizing",
    "naive-variance",
    "float16",
    "bfloat16",
]


def correct_table(shape, seeds):
    names = ["PyTorch", *IMPLEMENTATIONS]
    short = ["torch", "pairws", "C loop", "C a*x+b", "NHWC", "Welford", "ORT"]
    print(f"Correct outputs, shape {'x'.join(map(str, shape))}: largest error in ULPs at the")
    print("channel's scale over the seeds, and the largest error / bound (< 1 passes)")
    print(f"{'dtype':9}{'offset':>7}{'bound':>9} " + "".join(f"{s:>9}" for s in short), "ratio")
    for dtype in DTYPES:
        for offset in OFFSETS:
            errors, ratios, bounds = {n: 0.0 for n in names}, [], []
            for seed in range(seeds):
                x, w, b = data(shape, dtype, offset, seed)
                for name in names:
                    if name == "onnxruntime" and dtype == "float64":
                        continue
                    make = pytorch if name == "PyTorch" else IMPLEMENTATIONS[name]
                    error, ratio, bound = measure(x, w, b, make(x, w, b))
                    errors[name] = max(errors[name], error)
                    ratios.append(ratio)
                    bounds.append(bound)
            cells = "".join(
                f"{'-' if n == 'onnxruntime' and dtype == 'float64' else f'{errors[n]:.3g}':>9}"
                for n in names
            )
            bound = max(bounds)
            print(f"{dtype:9}{offset:>7g}{bound:>9.3g} {cells} {max(ratios):.3g}")
    print()


def mistakes_table(cases, seeds):
    print("Catalogue mistakes: the margin by which each fails, the largest error / bound over")
    print("the channels (min over the seeds; > 1 fails; - where the mistake does not apply)")
    header = "".join(f"{label:>12}" for label, *_ in cases)
    print(f"{'mistake':26}{header}")
    for name in MISTAKES:
        cells = []
        for _, shape, dtype, offset, scale in cases:
            margins = []
            for seed in range(seeds):
                x, w, b = data(shape, dtype, offset, seed, scale)
                y = mistaken(name, x, w, b)
                if y is None:
                    break
                margins.append(measure(x, w, b, y.astype(DTYPES[dtype]))[1])
            cells.append(f"{min(margins):>12.3g}" if margins else f"{'-':>12}")
        print(f"{name:26}{''.join(cells)}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="8,16,16,16")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    correct_table(shape, args.seeds)
    small, large = (4, 8, 5, 6), shape
    cases = [(f"f32 {o:g}", small, "float32", o, 1.0) for o in OFFSETS]
    cases += [(f"f32 {o:g} L", large, "float32", o, 1.0) for o in (0.0, 1e2, 1e4)]
    cases += [(f"{d} 0", small, d, 0.0, 1.0) for d in ("float64", "float16", "bfloat16")]
    cases += [("f32 s.003", small, "float32", 0.0, 0.003)]
    print(f"small: {'x'.join(map(str, small))} (120 values per channel); L: the shape above")
    mistakes_table(cases, args.seeds)


if __name__ == "__main__":
    main()
