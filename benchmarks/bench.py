"""Measure bninspect's speed and memory targets against plain baselines, side by side.

    python benchmarks/bench.py [--repeats 5] [--gib 1.0] [--data bench-data]

Builds its data (a float32 .npy of about --gib GiB, shape (64, 256, 128, 128) at 1 GiB) once,
warms the page cache, then runs every case --repeats times, interleaved with its baseline, each
in a fresh process, and prints the median wall time and peak resident memory (ru_maxrss of the
child) with their ratios. Machines here are shared and noisy: read medians and ratios, not
single runs. This is a measurement, not a test: it prints figures and never fails.

Targets (issue 3):
  1. ``bninspect --help`` under 0.25 s, and no torch import;
  2. ``run --input big.npy``: at most 1.3x the wall time of ``np.load`` +
     ``torch.nn.functional.batch_norm`` on the same file, peak memory at most 2.2x the input;
  3. ``run --stats-only``: at least 10 GB/s with a warm page cache on 2 threads, peak memory
     under 200 MB whatever the file size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BNINSPECT = [sys.executable, "-m", "bninspect"]

BASELINE_RUN = """
import sys, numpy as np, torch
x = np.load(sys.argv[1])
c = x.shape[1]
torch.nn.functional.batch_norm(torch.from_numpy(x), torch.zeros(c), torch.ones(c), training=True)
"""
BASELINE_STATS = """
import sys, time, numpy as np, torch
x = torch.from_numpy(np.load(sys.argv[1]))
dims = [0] + list(range(2, x.ndim))
start = time.perf_counter()
torch.var_mean(x, dim=dims, correction=0)
print(x.numel() * x.element_size() / (time.perf_counter() - start) / 1e9)
"""
STREAMING = """
import sys, time
from pathlib import Path
from bninspect.pytorch.inspection import prepare, run_inspection
from bninspect.input.parsing import parse_vector_spec
from bninspect.input.request import InspectRequest, VECTOR_OPTIONS
defaults = dict(zip(VECTOR_OPTIONS, ("ones", "zeros", "zeros", "ones")))
vectors = {option: parse_vector_spec(option, text) for option, text in defaults.items()}
request = InspectRequest(None, 0, Path(sys.argv[1]), 1e-5, 0.1, True, "train", vectors,
                         stats_only=True)
prepared = prepare(request)
start = time.perf_counter()
run_inspection(prepared)  # --stats-only: the streamed statistics, no torch
print(prepared.tensor.array.nbytes / (time.perf_counter() - start) / 1e9)
"""


def measure(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in bytes, and stdout of one fresh child process."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    out = child.stdout.read().decode()
    child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"failed ({status}): {' '.join(command)}")
    return wall, usage.ru_maxrss * 1024.0, out


# Written sample by sample with write(), as numpy.save writes: through a memmap, Linux would
# cache the file in 4 KiB pages instead of the large folios a saved or read file gets.
BUILD = """
import sys, numpy as np
path, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
shape = (n, 256, 128, 128)
with open(path, "wb") as f:
    np.lib.format.write_array_header_1_0(
        f, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    for i in range(n):
        f.write(rng.standard_normal(shape[1:], dtype=np.float32).tobytes())
"""


def build(data: Path, gib: float) -> Path:
    """A standard-normal float32 .npy of about ``gib`` GiB (N = 64 * gib, C = 256, 128 x 128),
    written by a child process: Linux charges a parent's peak memory to children it spawns
    afterwards (vfork), which would falsify every later measurement."""
    path = data / f"bench-{gib:g}GiB.npy"
    if not path.exists():
        data.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-c", BUILD, str(path), str(max(1, round(64 * gib)))], check=True
        )
    with path.open("rb") as f:
        # Drop the file from the page cache, then read it back in small reads (see above), so
        # the cache holds it as a fresh read leaves it, whatever happened to it before (an old
        # memmap-written copy in 4 KiB pages, or pages the kernel reclaimed).
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        while f.read(1 << 20):
            pass
    return path


def median_of(runs: list[tuple[float, float, str]]) -> tuple[float, float]:
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--data", type=Path, default=ROOT / "bench-data")
    args = parser.parse_args()
    path = build(args.data, args.gib)
    size = path.stat().st_size
    print(
        f"input {path.name}: {size / 2**30:.2f} GiB; {os.cpu_count()} CPUs; "
        f"medians of {args.repeats} runs\n"
    )

    helps = [measure(BNINSPECT + ["--help"]) for _ in range(max(15, args.repeats))]  # cheap
    no_torch = measure(
        [
            sys.executable,
            "-c",
            "import sys; sys.modules['torch'] = None; "
            "sys.argv = ['bninspect', '--help']; from bninspect.cli.main import main; "
            "main()",
        ]
    )
    print(
        f"1. bninspect --help: {median_of(helps)[0]:.3f} s (target < 0.25 s); "
        f"runs with torch unimportable: {'yes' if 'Usage' in no_torch[2] else 'NO'}"
    )

    ours, base = [], []
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        base.append(measure([sys.executable, "-c", BASELINE_RUN, str(path)]))
        ours.append(measure(BNINSPECT + ["run", "--input", str(path), "--json"]))
    (our_wall, our_rss), (base_wall, base_rss) = median_of(ours), median_of(base)
    print(
        f"2. run --input: {our_wall:.2f} s vs baseline {base_wall:.2f} s = "
        f"{our_wall / base_wall:.2f}x (target <= 1.3x); peak memory {our_rss / 2**30:.2f} GiB "
        f"= {our_rss / size:.2f}x the input (target <= 2.2x; the baseline itself "
        f"{base_rss / size:.2f}x)"
    )

    streams = [measure([sys.executable, "-c", STREAMING, str(path)]) for _ in range(args.repeats)]
    rates = [float(r[2]) for r in streams]
    whole = [
        measure(BNINSPECT + ["run", "--input", str(path), "--stats-only", "--json"])
        for _ in range(args.repeats)
    ]
    var_means = [
        float(measure([sys.executable, "-c", BASELINE_STATS, str(path)])[2])
        for _ in range(max(1, args.repeats // 2))
    ]
    whole_wall, whole_rss = median_of(whole)
    print(
        f"3. run --stats-only: statistics at {statistics.median(rates):.1f} GB/s (target >= 10; "
        f"torch.var_mean {statistics.median(var_means):.1f} GB/s); whole command "
        f"{whole_wall:.2f} s = {size / whole_wall / 1e9:.1f} GB/s including start-up; peak "
        f"memory {whole_rss / 2**20:.0f} MiB (target < 200 MiB)"
    )


if __name__ == "__main__":
    main()
