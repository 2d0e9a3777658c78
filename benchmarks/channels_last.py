"""Measure --stats-only on channels-last data against the same data channels first.

    python benchmarks/channels_last.py [--repeats 5] [--gib 1.0] [--data bench-data]

Builds (once) the (N, 256, 128, 128) float32 file of benchmarks/bench.py and the same values
stored channels last, (N, 128, 128, 256), then runs ``run --stats-only --json`` on each in a
fresh process, interleaved, and prints the median wall time, peak resident memory (ru_maxrss
of the child) and the statistics' own rate, and whether both gave the same statistics bit for
bit. Channels last is read in place: each block of the file is gathered tile by tile into the
layout the kernel reads (no transposed copy of the file), its pages released as it goes, so
the peak memory should stay that of channels first. A measurement, not a test: it prints
figures and never fails. Machines here are shared and noisy: read medians and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BNINSPECT, ROOT, build, measure  # noqa: E402

# The same standard-normal draws as bench.py's file, sample by sample, stored channels last.
BUILD_LAST = """
import sys, numpy as np
path, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
shape = (n, 128, 128, 256)
with open(path, "wb") as f:
    np.lib.format.write_array_header_1_0(
        f, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    for i in range(n):
        sample = rng.standard_normal((256, 128, 128), dtype=np.float32)
        f.write(np.ascontiguousarray(sample.transpose(1, 2, 0)).tobytes())
"""
STREAMING = """
import sys, time
from pathlib import Path
from bninspect.cli.options import build_request
from bninspect.pytorch.inspection import prepare, run_inspection
request = build_request("run", input=Path(sys.argv[1]), channel_axis=int(sys.argv[2]))
import dataclasses
prepared = prepare(dataclasses.replace(request, stats_only=True))
start = time.perf_counter()
run_inspection(prepared)
print(prepared.tensor.array.nbytes / (time.perf_counter() - start) / 1e9)
"""


def build_last(data: Path, gib: float) -> Path:
    path = data / f"bench-{gib:g}GiB-channels-last.npy"
    if not path.exists():
        data.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-c", BUILD_LAST, str(path), str(max(1, round(64 * gib)))],
            check=True,
        )
    with path.open("rb") as f:  # into the page cache as a plain read leaves it (see bench.py)
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while f.read(1 << 20):
            pass
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--data", type=Path, default=ROOT / "bench-data")
    args = parser.parse_args()
    first, last = build(args.data, args.gib), build_last(args.data, args.gib)
    print(
        f"inputs {first.name} and {last.name}: {first.stat().st_size / 2**30:.2f} GiB each; "
        f"{os.cpu_count()} CPUs; medians of {args.repeats} runs\n"
    )
    cases = {
        "channels first": (first, []),
        "channels last": (last, ["--channel-axis", "-1"]),
    }
    runs: dict[str, list] = {name: [] for name in cases}
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved: drift in the machine's load hits both alike
        for name, (path, extra) in cases.items():
            runs[name].append(
                measure(BNINSPECT + ["run", "--input", str(path), "--stats-only", "--json", *extra])
            )
            axis = "-1" if extra else "1"
            rates[name].append(
                float(measure([sys.executable, "-c", STREAMING, str(path), axis])[2])
            )
    documents = {name: json.loads(r[-1][2]) for name, r in runs.items()}
    same = [
        {k: c[k] for k in ("mean", "var_biased", "var_unbiased", "std")}
        for c in documents["channels first"]["channels"]
    ] == [
        {k: c[k] for k in ("mean", "var_biased", "var_unbiased", "std")}
        for c in documents["channels last"]["channels"]
    ]
    for name in cases:
        walls = [r[0] for r in runs[name]]
        peaks = [r[1] for r in runs[name]]
        print(
            f"{name}: whole command {statistics.median(walls):.2f} s (min {min(walls):.2f}), "
            f"statistics at {statistics.median(rates[name]):.1f} GB/s, peak memory "
            f"{statistics.median(peaks) / 2**20:.0f} MiB (max {max(peaks) / 2**20:.0f})"
        )
    ratio = statistics.median(r[0] for r in runs["channels last"]) / statistics.median(
        r[0] for r in runs["channels first"]
    )
    print(
        f"channels last / first wall time: {ratio:.2f}x; statistics bit for bit equal: "
        f"{'yes' if same else 'NO'}"
    )


if __name__ == "__main__":
    main()
