"""Measure the backward's derived bound (bninspect/grad/tolerance.py) and print the tables of
docs/grad.md ("The bound"):

1. correct backwards (PyTorch's autograd and the independent ones of tests/independent_grad.py)
   across dtypes and offsets: the largest dx error in ULPs at dx's scale, the largest bound,
   and the largest ratio error / bound over the channels and the three gradients (below 1:
   passes);
2. every catalogue mistake, written in tests/independent_grad.py (float64, rounded to the
   dtype), across offsets, channel sizes and dtypes: the margin by which it fails (the largest
   error / bound over the channels and gradients, min over the seeds; above 1: check fails it).

``--before`` also prints the mistakes' margins under the rule this bound replaced (4 ULPs of
the dtype at the scale |w| k (|dy| + sum|dy| / M + xi sum|dy xi| / M), xi = (|x| + |mean|) k),
for comparison.

``--wide SEEDS`` also runs the correct backwards over 6 shapes (ranks 2 to 5, 20 to 8192 values
per channel), 7 offsets, every dtype and both modes, and prints the largest fractions used.

Usage: .venv/bin/python scripts/grad_tolerance_sweep.py [--seeds 3] [--before] [--wide 6]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from independent_grad import (  # noqa: E402
    CORRECT,
    compact_batch_axis_only,
    compact_train_formula_in_eval,
    mistaken,
)

from bninspect.grad.backward import inspect_backward  # noqa: E402
from bninspect.grad.check import TheirGradient, diagnose, measure  # noqa: E402
from bninspect.grad.variants import CATALOGUE  # noqa: E402
from bninspect.numerics.agreement import ulp  # noqa: E402
from bninspect.results.grad import GradOutputInfo  # noqa: E402

from helpers import inspect_array  # noqa: E402

DTYPES = {
    "float32": np.float32,
    "float64": np.float64,
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
}
NAMES = ("grad_input", "grad_weight", "grad_bias")
SMALL, LARGE = (8, 3, 4, 4), (8, 16, 16, 16)
OLD_ROUNDING_ULPS = 4.0


SHORT = {"f64": "float64", "f32": "float32", "f16": "float16", "bf16": "bfloat16"}


def data(shape, dtype, offset, seed):
    """x standard normal + offset, dy standard normal, weight in [0.5, 2] with random signs,
    running statistics near the data's (a trained layer's), all in the dtype."""
    rng = np.random.default_rng(seed)
    t = DTYPES[SHORT.get(dtype, dtype)]
    x = (rng.standard_normal(shape) + offset).astype(t)
    dy = rng.standard_normal(shape).astype(t)
    C = shape[1]
    w = (rng.uniform(0.5, 2.0, C) * rng.choice([-1, 1], C)).astype(t).astype(np.float64)
    rm = (offset + rng.uniform(-0.5, 0.5, C)).astype(t).astype(np.float64)
    rv = rng.uniform(0.5, 2.0, C).astype(t).astype(np.float64)
    return x, dy, w, rm, rv


def pass_of(x, dy, w, rm, rv, mode):
    """The reference backward with its bounds, and PyTorch's autograd, for one pass."""
    inspection = inspect_array(x, weight=w, running_mean=rm, running_var=rv, mode=mode)
    info = GradOutputInfo("file", None, None, "dy.npy", "0" * 64, x.dtype.name)
    return inspect_backward(inspection, dy, info)


def margin(backward, gradients) -> float:
    """The largest error / bound over the channels and the gradients given."""
    return max(
        float(measure(g, backward.reference_of(n), n, backward.bounds).over_bound.max())
        for n, g in zip(NAMES, gradients, strict=True)
    )


def old_margin(backward, x, gradients) -> float:
    """The same under the rule this bound replaced: 4 ULPs at the (|x| + |mean|) k scale."""
    ref = backward.reference
    nd = x.ndim
    axes = (0, *range(2, nd))
    shaped = (1, -1, *[1] * (nd - 2))
    k = ref.inv_std.reshape(shaped)
    dy = np.asarray(backward.dy, np.float64)
    xi = (np.abs(x.astype(np.float64)) + np.abs(ref.mean.reshape(shaped))) * k
    abs_dy = np.abs(dy)
    M = ref.count
    if ref.train:
        terms = np.abs(ref.weight.reshape(shaped)) * k * (
            abs_dy
            + abs_dy.sum(axis=axes, keepdims=True) / M
            + xi * (abs_dy * xi).sum(axis=axes, keepdims=True) / M
        )
    else:
        terms = np.abs(ref.weight.reshape(shaped) * k * dy)
    scales = {
        "grad_input": terms.max(axis=axes),
        "grad_weight": (abs_dy * xi).sum(axis=axes),
        "grad_bias": abs_dy.sum(axis=axes),
    }
    worst = 0.0
    for n, g in zip(NAMES, gradients, strict=True):
        error = np.abs(np.asarray(g, np.float64) - backward.reference_of(n))
        if error.ndim > 1:
            error = error.max(axis=axes)
        limit = OLD_ROUNDING_ULPS * ulp(scales[n], backward.dtype)
        worst = max(worst, float((error / limit).max()))
    return worst


def correct_table(seeds):
    names = ["autograd", *CORRECT]
    short = ["torch", "pairws", "C loop", "a*x+b", "staged"]
    offsets = [0.0, 1e1, 1e2, 1e3, 1e4]
    print(f"Correct backwards, shape {'x'.join(map(str, LARGE))}: the fraction of the bound each")
    print("uses (largest error / bound over the seeds, channels, dx, dweight and dbias; below 1")
    print("passes), and dx's bound in ULPs of the dtype at dx's scale (largest over the channels")
    print("and seeds; inf: the data's spread is below what the dtype's statistics resolve, and")
    print("any dx and dweight pass)")
    header = f"{'dtype':9}{'mode':>6}{'offset':>7}{'dx bound':>10} "
    print(header + "".join(f"{s:>8}" for s in short))
    overall = 0.0
    for dtype in DTYPES:
        for mode in ("train", "eval"):
            for offset in offsets:
                used, bounds = dict.fromkeys(names, 0.0), []
                for seed in range(seeds):
                    x, dy, w, rm, rv = data(LARGE, dtype, offset, seed)
                    backward = pass_of(x, dy, w, rm, rv, mode)
                    bounds.append(float(np.nanmax(backward.bound_ulps_of("grad_input"))))
                    for name in names:
                        if name == "autograd":
                            got = tuple(backward.torch_of(n) for n in NAMES)
                        else:
                            got = CORRECT[name](x, dy, w, mode == "train", rm, rv)
                        used[name] = max(used[name], margin(backward, got))
                cells = "".join(f"{used[n]:>8.3g}" for n in names)
                overall = max(overall, *used.values())
                print(f"{dtype:9}{mode:>6}{offset:>7g}{max(bounds):>10.3g} {cells}")
    print(f"largest fraction of the bound used by a correct backward: {overall:.3g}")
    print()


def written(name, x, dy, w, rm, rv):
    """(gradients, mode) of the written mistake ``name`` (or its compact form), None where it
    does not apply."""
    if name == "train-formula-in-eval (compact)":
        return compact_train_formula_in_eval(x, dy, w, rm, rv), "eval"
    if name == "batch-axis-only (compact)":
        return compact_batch_axis_only(x, dy, w), "train"
    found = mistaken(name, x, dy, w, rm, rv)
    return None if found is None else (found[:3], found[3])


def named(inspection, backward, gradients, name: str) -> bool:
    """Whether check's diagnosis names mistake ``name`` first for every gradient it makes
    wrong."""
    theirs = [TheirGradient(n, np.asarray(g, np.float64), n, "0" * 64, backward.dtype)
              for n, g in zip(NAMES, gradients, strict=True)]  # fmt: skip
    diagnosis = diagnose(inspection, backward, theirs)
    base = name.split(" ")[0]
    wrong = [n for n, v in diagnosis.stated_over_bound.items() if v > 1]
    return all(diagnosis.best[n] == base for n in wrong)


def mistakes_table(cases, seeds, before: bool):
    rule = "the rule before (4 ULPs at the xi scale)" if before else "the bound"
    print(f"Catalogue mistakes: the margin by which each fails under {rule}, the largest")
    print("error / bound over the channels and gradients (min over the seeds; > 1 fails)")
    if not before:
        print("*: on some seed it fails but the diagnosis names another mistake first")
    names = [m.name for m in CATALOGUE]
    names += ["train-formula-in-eval (compact)", "batch-axis-only (compact)"]
    print(f"{'mistake':32}" + "".join(f"{label:>9}" for label, *_ in cases))
    backwards = {}  # one pass per case, seed and mode
    for name in names:
        cells = []
        for label, shape, dtype, offset in cases:
            margins, unnamed = [], False
            for seed in range(seeds):
                x, dy, w, rm, rv = data(shape, dtype, offset, seed)
                with np.errstate(all="ignore"):  # no-eps on a channel of one value: NaN
                    found = written(name, x, dy, w, rm, rv)
                if found is None:
                    break
                gradients, mode = found
                key = (label, seed, mode)
                if key not in backwards:
                    inspection = inspect_array(x, weight=w, running_mean=rm, running_var=rv,
                                               mode=mode)  # fmt: skip
                    backwards[key] = (inspection, pass_of(x, dy, w, rm, rv, mode))
                inspection, backward = backwards[key]
                if before:
                    margins.append(old_margin(backward, x, gradients))
                    continue
                margins.append(margin(backward, gradients))
                if margins[-1] > 1 and not named(inspection, backward, gradients, name):
                    unnamed = True
            mark = "*" if unnamed else " "
            cells.append(f"{min(margins):>8.3g}{mark}" if margins else f"{'-':>8} ")
        print(f"{name:32}{''.join(cells)}")
    print()


def wide(seeds: int) -> None:
    """Correct backwards over many shapes (ranks 2 to 5, 20 to 8192 values per channel),
    offsets, dtypes and both modes: the configurations using the largest fraction of the
    bound."""
    shapes = ((8, 16, 16, 16), (32, 8, 8, 8), (2, 4, 64, 64), (64, 16), (4, 8, 5), (2, 3, 2, 2, 2))
    used = {}
    for dtype in DTYPES:
        for shape in shapes:
            for offset in (0.0, 1.0, 3.0, 10.0, 30.0, 100.0, 1000.0):
                for mode in ("train", "eval"):
                    for seed in range(seeds):
                        x, dy, w, rm, rv = data(shape, dtype, offset, seed)
                        backward = pass_of(x, dy, w, rm, rv, mode)
                        runs = {"autograd": tuple(backward.torch_of(n) for n in NAMES)}
                        for name, correct in CORRECT.items():
                            runs[name] = correct(x, dy, w, mode == "train", rm, rv)
                        for name, got in runs.items():
                            key = (dtype, "x".join(map(str, shape)), offset, mode, name)
                            used[key] = max(used.get(key, 0.0), margin(backward, got))
    print(f"Correct backwards, {len(used)} configurations x {seeds} seeds: the largest fractions")
    print("of the bound used (error / bound over the seeds, channels and gradients)")
    for key, value in sorted(used.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {value:.3g}  {' '.join(map(str, key))}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--before", action="store_true", help="also the rule this replaced")
    parser.add_argument("--wide", type=int, metavar="SEEDS", default=0,
                        help="also correct backwards over many shapes, with this many seeds")
    args = parser.parse_args()
    if args.wide:
        wide(args.wide)
    correct_table(args.seeds)
    offsets = (0.0, 10.0, 30.0, 100.0, 300.0, 1e3, 1e4)
    small = "x".join(map(str, SMALL))
    print(f"Columns: offset of the data; shape {small} (128 values per channel),")
    print(f"L: {'x'.join(map(str, LARGE))} (2048 values per channel)")
    for dtype in ("f32", "f64", "f16", "bf16"):
        cases = [(f"{o:g}", SMALL, dtype, o) for o in offsets]
        cases += [(f"{o:g}L", LARGE, dtype, o) for o in (0.0, 300.0)]
        print(f"{SHORT[dtype]}:")
        mistakes_table(cases, args.seeds, before=False)
        if args.before:
            mistakes_table(cases, args.seeds, before=True)


if __name__ == "__main__":
    main()
