"""How far the float64 reference's statistics are from exact rational arithmetic, in float64 ULPs
of the exact values: named cases (the review's cancelling channels among them) and a random sweep
of small ordinary and cancelling tensors.

    PYTHONPATH=. python benchmarks/reference_accuracy.py [--trials 1500] [--seed 0]

Run it with PYTHONPATH at another checkout to compare. A measurement, not a test: it prints the
worst errors per case and never fails (tests/test_reference.py holds the bounds).
"""

from __future__ import annotations

import argparse
import math
from fractions import Fraction

import numpy as np

from bninspect.numerics.reference import channel_statistics


def exact_sum(values: np.ndarray) -> Fraction:
    """The exact sum: math.fsum and the correctly rounded rest."""
    high = math.fsum(values)
    return Fraction(high) + Fraction(math.fsum(np.concatenate([values, [-high]])))


def ulps_off(got: float, exact: Fraction) -> float:
    if not math.isfinite(got):
        return math.inf
    spacing = float(np.spacing(abs(float(exact)))) or 2.0**-1074
    ratio = abs(Fraction(float(got)) - exact) / Fraction(spacing)
    return float(ratio) if ratio < 1e300 else math.inf


def worst_errors(x: np.ndarray, with_m2: bool = True) -> tuple[float, float, float]:
    """The worst (mean, m2, var_biased) errors over the channels of x, in ULPs."""
    stats = channel_statistics(x)
    worst = [0.0, 0.0, 0.0]
    for c in range(x.shape[1]):
        v = np.asarray(x[:, c], dtype=np.float64).reshape(-1)
        mean = exact_sum(v) / v.size
        errors = [ulps_off(stats.mean[c], mean), 0.0, 0.0]
        if with_m2:
            m = Fraction(float(mean))  # m2 = sum (v - m)^2 - n (mean - m)^2, exactly
            m2 = sum((Fraction(a) - m) ** 2 for a in v.tolist()) - v.size * (mean - m) ** 2
            errors[1:] = ulps_off(stats.m2[c], m2), ulps_off(stats.var_biased[c], m2 / v.size)
        worst = [max(a, b) for a, b in zip(worst, errors, strict=True)]
    return worst[0], worst[1], worst[2]


def named_cases(rng: np.random.Generator) -> dict[str, np.ndarray]:
    cancel = np.concatenate([np.full((5, 3, 10), 1e16), np.full((5, 3, 10), -1e16)])
    normals = rng.standard_normal((1, 3, 10))
    z = rng.standard_normal((8, 64, 32, 32))
    return {
        "review: +-1e16 and 10 normals, f64": np.concatenate([cancel, normals]),
        "review: the same in float32": np.concatenate([cancel, normals]).astype(np.float32),
        "+-6e4 and 10 normals, float16": np.concatenate(
            [np.full((5, 3, 10), 6e4), np.full((5, 3, 10), -6e4), normals]
        ).astype(np.float16),
        "+-1e3 and 10 normals, float64": np.concatenate([cancel * 1e-13, normals]),
        "1e8 + 1e-3 N(0,1), float64": rng.standard_normal((7, 3, 33)) * 1e-3 + 1e8,
        "trend 1e6 i + N(0,1), float64": np.arange(693.0).reshape(7, 3, 33) * 1e6
        + rng.standard_normal((7, 3, 33)),
        "1% spikes of 1e15, float64": np.where(
            rng.random((7, 3, 33)) < 0.01, 1e15, rng.standard_normal((7, 3, 33))
        ),
        "3e6 + N(0,1), float32": (rng.standard_normal((64, 2, 100)) + 3e6).astype(np.float32),
        "N(0,1) (8,64,32,32), float64": z,
        "N(0,1) (8,64,32,32), float32": z.astype(np.float32),
        "N(0,1) (8,64,32,32), float16": z.astype(np.float16),
        "relu N(0,1) (8,64,32,32), float64": np.maximum(z, 0),
    }


def random_tensor(rng: np.random.Generator) -> tuple[str, np.ndarray] | None:
    """A small tensor like tests/strategies.py's: ordinary, or with +-big pairs cancelling."""
    dtype = [np.float64, np.float32, np.float16][rng.integers(3)]
    kind = ["ordinary", "cancelling"][rng.integers(2)]
    shape = [int(a) for a in rng.integers(1, 5, size=rng.integers(2, 5))]
    if np.prod(shape) // shape[1] < 2:
        shape[0] = 2
    x = rng.standard_normal(shape)
    if kind == "ordinary":
        x = x * 10.0 ** rng.integers(-3, 4) + [0, 0.5, -3, 100, 1e4][rng.integers(5)]
    else:
        top = {np.float16: 4, np.float32: 30, np.float64: 150}[dtype]
        big = min(10.0 ** rng.integers(2, top + 1), 6e4 if dtype == np.float16 else np.inf)
        x *= 10.0 ** rng.integers(-8, 2)
        channels = np.moveaxis(x, 1, 0).reshape(shape[1], -1)
        for channel in channels:
            k = rng.integers(0, channel.size // 2 + 1)
            where = rng.permutation(channel.size)
            channel[where[:k]], channel[where[k : 2 * k]] = big, -big
        x = np.moveaxis(channels.reshape(shape[1], shape[0], *shape[2:]), 0, 1)
    with np.errstate(over="ignore"):
        x = np.ascontiguousarray(x.astype(dtype))
    return (f"random {kind} {np.dtype(dtype).name}", x) if np.isfinite(x).all() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"{'case':40s} {'mean':>10s} {'m2':>10s} {'var':>10s}   worst float64 ULPs")
    for name, x in named_cases(rng).items():
        mean, m2, var = worst_errors(x, with_m2=x.size < 100_000)
        shown = [
            f"{e:10.3g}" if x.size < 100_000 or i == 0 else f"{'-':>10s}"
            for i, e in enumerate((mean, m2, var))
        ]
        print(f"{name:40s} {' '.join(shown)}")
    sweep: dict[str, list[float]] = {}
    for _ in range(args.trials):
        drawn = random_tensor(rng)
        if drawn is not None:
            name, x = drawn
            seen = sweep.get(name, [0.0] * 3)
            sweep[name] = [max(a, b) for a, b in zip(seen, worst_errors(x), strict=True)]
    for name, (mean, m2, var) in sorted(sweep.items()):
        print(f"{name:40s} {mean:10.3g} {m2:10.3g} {var:10.3g}")


if __name__ == "__main__":
    main()
