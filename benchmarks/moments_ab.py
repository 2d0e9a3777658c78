"""The statistics kernel against another build of it, in one process: CPU time per value of
_kernels.moments over the regions kernels.moments makes, one thread (CPU time is steadier than
wall time on a shared machine), and kernels.moments' wall-clock GB/s on two threads.

    PYTHONPATH=. python benchmarks/moments_ab.py OTHER.so [--rounds 21] [--cases big,relu]

OTHER.so is another checkout's bninspect/_kernels*.so (built there with `python setup.py
build_ext --inplace`); its output may have fewer fields (HEAD before the error bounds had 8).
The builds alternate round by round and the best round counts. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import importlib.util
import time

import numpy as np

from bninspect.numerics import kernels

CASES = {  # name: (shape, dtype, transform of standard normals)
    "big": ((4, 256, 128, 128), np.float32, lambda z: z),
    "offset": ((4, 256, 128, 128), np.float32, lambda z: z + 3),
    "relu": ((4, 256, 128, 128), np.float32, lambda z: np.maximum(z, 0)),
    "big64": ((4, 256, 128, 128), np.float64, lambda z: z),
    "maps16": ((8, 256, 16, 16), np.float32, lambda z: z),
    "maps8": ((16, 64, 8, 8), np.float32, lambda z: z),
    "rows32": ((32, 65536), np.float32, lambda z: z),
    "rows8": ((8, 262144), np.float32, lambda z: z + 1),
    "rows32f64": ((32, 65536), np.float64, lambda z: z),
}


def load(path: str):
    spec = importlib.util.spec_from_file_location("_kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fields_of(module) -> int:
    """How many per-channel fields the build's moments() writes."""
    x = np.zeros((1, 1, 1), dtype=np.float32)
    for fields in range(1, 32):
        try:
            module.moments(x, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, np.empty((1, fields)))
            return fields
        except ValueError:
            continue
    raise ValueError("no field count fits")


def cpu_ns_per_value(module, fields: int, x: np.ndarray) -> float:
    code = {np.float32: 0, np.float64: 1}[x.dtype.type]
    N, C = x.shape[:2]
    S = x.size // (N * C)
    regions = list(kernels.regions(N, C, S, x.itemsize, kernels.block_bytes_for(x.nbytes)))
    outs = [np.empty((r.c1 - r.c0, fields)) for r in regions]
    repeats = max(1, int(2e6 // x.size))
    start = time.process_time()
    for _ in range(repeats):
        for r, out in zip(regions, outs, strict=True):
            module.moments(x, code, N, C, S, r.n0, r.n1, r.c0, r.c1, r.s0, r.s1, out)
    return (time.process_time() - start) / repeats / x.size * 1e9


class Adapted:
    """Another build behind this checkout's output width, for kernels.moments."""

    def __init__(self, module, fields: int) -> None:
        self.module, self.fields = module, fields

    def moments(self, buf, code, N, C, S, n0, n1, c0, c1, s0, s1, out):
        part = np.empty((c1 - c0, self.fields))
        self.module.moments(buf, code, N, C, S, n0, n1, c0, c1, s0, s1, part)
        out[:] = 0.0
        out[:, : self.fields] = part


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    mine, other = kernels._kernels, load(args.other)
    builds = {"other": (other, fields_of(other)), "this": (mine, fields_of(mine))}
    rng = np.random.default_rng(0)
    for name in args.cases.split(","):
        shape, dtype, transform = CASES[name]
        x = np.ascontiguousarray(transform(rng.standard_normal(shape)).astype(dtype))
        best = {label: np.inf for label in builds}
        wall = {label: 0.0 for label in builds}
        for _ in range(args.rounds):
            for label, (module, fields) in builds.items():
                best[label] = min(best[label], cpu_ns_per_value(module, fields, x))
                if x.nbytes >= 1 << 26:  # the benchmark shape: two threads, wall clock
                    kernels._kernels = module if label == "this" else Adapted(module, fields)
                    start = time.perf_counter()
                    kernels.moments(x, x.dtype.name)
                    wall[label] = max(wall[label], x.nbytes / (time.perf_counter() - start) / 1e9)
                    kernels._kernels = mine
        change = best["this"] / best["other"] - 1
        line = (
            f"{name:10s} {str(shape):20s} {np.dtype(dtype).name:8s} one thread: other "
            f"{best['other']:.3f}, this {best['this']:.3f} ns/value ({change:+.1%})"
        )
        if wall["this"]:
            line += f"; two threads: other {wall['other']:.2f}, this {wall['this']:.2f} GB/s"
        print(line, flush=True)


if __name__ == "__main__":
    main()
