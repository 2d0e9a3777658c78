"""Measure how closely the float16/bfloat16 emulation (bninspect/torch_cpu_emulation.py) follows
PyTorch, element by element, over a fixed grid; the numbers behind its claim.

    python scripts/measure_half_emulation.py            # the whole grid (about 4 minutes)
    python scripts/measure_half_emulation.py --quick    # about a quarter of it
    ATEN_CPU_CAPABILITY=avx2 python scripts/measure_half_emulation.py --quick  # another kernel

The grid: both dtypes x 16 shapes of rank 2 to 5 (image sizes below, at and past the vector
blocks, (N, C, 1, 1), N on both sides of the thread count, N that bfloat16 rounds) x 4 offsets
x unit or random weight, bias and running statistics x train and eval; each x has a spread
of 0 (a constant channel), 0.01, 1 or 30 about its offset. Then eval mode with every x equal to
its channel's running mean at offsets 300 to 3000 (y is then the bias, and beta's rounding
shows: the grid above almost never has it), 64 channels of random weight, bias and variance.
PyTorch runs as bninspect runs it (torch_batchnorm.run_batchnorm: a fresh module, parameters in
the input's dtype).
"""

from __future__ import annotations

import argparse
import collections
import itertools

import numpy as np
import torch

from bninspect.dtypes import FORMATS
from bninspect.input.parameters import LayerParameters
from bninspect.numerics.agreement import ulp
from bninspect.pytorch.batchnorm import run_batchnorm
from bninspect.pytorch.cpu_emulation import emulate_channel, emulate_output
from bninspect.pytorch.inspection import MODULE_FOR_RANK

SHAPES = [
    (2, 3, 4, 4),
    (8, 5, 3),
    (16, 4, 8, 8),
    (4, 3, 17),
    (2, 2, 3, 4, 5),
    (64, 3, 16, 16),
    (3, 2, 33),
    (5, 2, 100),
    (7, 2, 31, 3),
    (40, 3),
    (9, 20),
    (300, 2),
    (2, 3),
    (7, 3, 1, 1),
    (257, 2, 2),
    (2, 17, 1),
]
OFFSETS = [0.0, 3.0, 100.0, 1000.0]
EPS = 1e-5


def case(dtype: str, shape: tuple[int, ...], offset: float, random_params: bool, seed: int):
    """(x, parameters) for one grid point, or None where float16 cannot hold x."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * rng.choice([0.0, 0.01, 1.0, 30.0]) + offset
    x = x.astype(FORMATS[dtype].numpy)
    if not np.isfinite(x.astype(np.float32)).all():
        return None
    c = shape[1]
    if random_params:
        vectors = rng.uniform(-2, 2, c), rng.uniform(-1, 1, c), rng.normal(offset, 1, c)
        vectors += (rng.random(c) + 0.1,)
    else:
        vectors = np.ones(c), np.zeros(c), np.zeros(c), np.ones(c)
    rounded = [v.astype(FORMATS[dtype].numpy).astype(np.float64) for v in vectors]
    return x, LayerParameters(*rounded)


def at_the_running_mean(dtype: str, offset: float, seed: int):
    """(x, parameters): 64 channels whose every x is the channel's running mean."""
    rng = np.random.default_rng(seed)
    c = 64
    mean = np.full(c, offset).astype(FORMATS[dtype].numpy).astype(np.float64)
    x = np.empty((2, c, 3), FORMATS[dtype].numpy)  # C-contiguous, as bninspect's input is
    x[...] = mean.reshape(1, c, 1)
    vectors = rng.uniform(-2, 2, c), rng.uniform(-1, 1, c), mean, rng.random(c) + 0.1
    rounded = [v.astype(FORMATS[dtype].numpy).astype(np.float64) for v in vectors]
    return x, LayerParameters(*rounded)


def ulps_off(x: np.ndarray, params: LayerParameters, train: bool, fma: bool) -> list[float]:
    """For every element of x, |emulated y - PyTorch's y| in ULPs of the dtype at PyTorch's y
    (as explain --precision counts them: zero has the smallest normal number's spacing)."""
    dtype = x.dtype.name
    run = run_batchnorm(x, x.shape[0], [0.1], MODULE_FOR_RANK[x.ndim], params, EPS, True, train)
    image_size = x.size // (x.shape[0] * x.shape[1])
    out = []
    for c in range(x.shape[1]):
        values = x[:, c].reshape(-1)
        channel = emulate_channel(
            values,
            dtype,
            params.weight[c],
            params.bias[c],
            EPS,
            train,
            params.running_mean[c],
            params.running_var[c],
            image_size,
            run.num_threads,
            fma,
        )
        torch_y = run.output[:, c].reshape(-1).astype(np.float64)
        for v, t in zip(values.tolist(), torch_y, strict=True):
            y = emulate_output(v, channel, dtype, fma)
            out.append(0.0 if y == t else abs(y - t) / float(ulp(t, dtype)))
    return out


def _tally(row: list, ulps: list[float]) -> None:
    row[0] += len(ulps)
    row[1] += sum(u != 0 for u in ulps)
    row[2] = max(row[2], *ulps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about a quarter of the grid")
    parser.add_argument("--fma", choices=["auto", "yes", "no"], default="auto")
    args = parser.parse_args()
    capability = torch.backends.cpu.get_cpu_capability()
    fma = {"yes": True, "no": False}.get(args.fma, capability != "DEFAULT")
    table = collections.defaultdict(lambda: [0, 0, 0.0])
    grid = itertools.product(
        ("bfloat16", "float16"), SHAPES, OFFSETS, (False, True), ("train", "eval")
    )
    for seed, (dtype, shape, offset, random_params, mode) in enumerate(grid, 1):
        if args.quick and (seed * 2654435761) % 7 > 1:  # a fixed, scattered subset
            continue
        made = case(dtype, shape, offset, random_params, seed)
        if made is None:
            continue
        ulps = ulps_off(*made, mode == "train", fma)
        kind = "one value per image" if int(np.prod(shape[2:])) == 1 else "images"
        _tally(table[dtype, mode, kind], ulps)
    cancelling = itertools.product(("bfloat16", "float16"), (300.0, 1000.0, 3000.0), range(10))
    for seed, (dtype, offset, k) in enumerate(cancelling, 1):
        if args.quick and k > 2:
            continue
        ulps = ulps_off(*at_the_running_mean(dtype, offset, seed), False, fma)
        _tally(table[dtype, "eval", "x at running mean"], ulps)
    total = bad = 0
    for (dtype, mode, kind), (n, off, worst) in sorted(table.items()):
        total, bad = total + n, bad + off
        print(
            f"{dtype:9} {mode:5} {kind:19} {n:8} elements, {off:6} differ "
            f"({100 * off / n:.2f}%), worst {worst:.3g} ULP"
        )
    print(
        f"all: {total} elements, {bad} differ; {capability} kernel, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, FMA {fma}"
    )


if __name__ == "__main__":
    main()
