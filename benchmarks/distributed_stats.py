"""Population statistics of many files over ranks: ``run --stats-only --input 'PATTERN'`` with
``--ranks 1`` and ``--ranks 2`` side by side (and one process without --ranks, for scale).

    python benchmarks/distributed_stats.py [--repeats 5] [--files 8] [--mib 256] [--cold]

Writes --files float32 .npy shards of --mib MiB each (shape (16, 64, 256, 256) at 256 MiB) into
a temporary directory, runs every case --repeats times, interleaved, each in a fresh process,
and deletes the shards at the end. Prints per case the median of:

- ``statistics``: rank 0's seconds from its first file to the merged result (every rank's
  streaming and the gathers: the part ranks can speed up), from the run's JSON;
- ``wall``: the whole command, start-up included (Python, numpy, and in every rank torch);
- ``peak RSS``: the largest resident set of any process of the run (ru_maxrss over the
  command and the ranks it waited for).

Target (issue 17): --ranks 2 at least 1.6x as fast as --ranks 1, memory per rank bounded as for
one process. By default the page cache is warm (each shard read once before timing); --cold
drops each shard's cached pages before every run (posix_fadvise DONTNEED: this script's own
files only), so the disk is read each time. Machines here are shared: the load average is
printed before and after; read medians and ratios, not single runs. This measures; it never
fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, "-m", "bninspect", "run", "--stats-only", "--json", "--input"]


def write_shards(folder: Path, files: int, mib: int) -> list[Path]:
    """float32 standard normal shards of (16, 64, S, S) values, about ``mib`` MiB each,
    written sample by sample (as numpy.save writes: the page cache then holds large folios)."""
    side = int(round((mib * 2**20 / (16 * 64 * 4)) ** 0.5))
    rng = np.random.default_rng(0)
    paths = []
    for k in range(files):
        path = folder / f"shard{k:02d}.npy"
        shape = (16, 64, side, side)
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f4", "fortran_order": False, "shape": shape}
            )
            for _ in range(shape[0]):
                f.write(rng.standard_normal(shape[1:], dtype=np.float32).tobytes())
        paths.append(path)
    return paths


def read_through(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb") as f:
            while f.read(64 << 20):
                pass


def drop_cache(paths: list[Path]) -> None:
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(arguments: list[str], environment: dict[str, str]) -> tuple[float, float, float]:
    """(statistics seconds, wall seconds, peak RSS bytes) of one fresh command. It runs under
    a small wrapper process, whose RUSAGE_CHILDREN (the largest resident set of every process
    it waited for, the ranks' included) then covers this command alone. The wall time includes
    the wrapper's start (~0.05 s), the same for every case."""
    wrapper = (
        "import json, resource, subprocess, sys\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True)\n"
        "sys.stderr.buffer.write(done.stderr)\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
        "print(json.dumps({'out': done.stdout.decode(), 'rss': rss, 'code': done.returncode}))\n"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *arguments],
        capture_output=True,
        cwd=ROOT,
        env=environment,
    )
    wall = time.perf_counter() - start
    report = json.loads(done.stdout)
    if report["code"] != 0:
        raise SystemExit(f"failed: {' '.join(arguments)}\n{done.stderr.decode()}")
    return json.loads(report["out"])["seconds"], wall, float(report["rss"])


def _baseline_rss(environment: dict[str, str]) -> float:
    """Peak RSS of a process that imports what a rank imports and does nothing: what every
    rank holds before it reads a byte."""
    code = (
        "import resource, bninspect.distributed.group, bninspect.distributed.population\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=environment
    )
    return float(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--cold", action="store_true", help="drop the shards' cached pages")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the shards")
    options = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bninspect-shards-", dir=options.dir))
    try:
        began = time.perf_counter()
        paths = write_shards(folder, options.files, options.mib)
        total = sum(p.stat().st_size for p in paths)
        print(
            f"wrote {len(paths)} shards of {paths[0].stat().st_size / 2**20:.0f} MiB "
            f"({total / 2**30:.2f} GiB) in {time.perf_counter() - began:.1f} s to {folder}"
        )
        pattern = str(folder / "shard*.npy")
        environment = dict(os.environ)
        cases = {
            "one process": COMMAND + [pattern],
            "--ranks 1": COMMAND + [pattern, "--ranks", "1"],
            "--ranks 2": COMMAND + [pattern, "--ranks", "2"],
        }
        one_thread = {**environment, "BNINSPECT_KERNEL_THREADS": "1"}
        read_through(paths)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
        print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in cases}
        results["--ranks 1, one thread"] = []
        for _ in range(options.repeats):
            for name, arguments in [*cases.items(), ("--ranks 1, one thread", cases["--ranks 1"])]:
                if options.cold:
                    drop_cache(paths)
                env = one_thread if name.endswith("one thread") else environment
                results[name].append(measure(arguments, env))
        print(f"load average after:  {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        print(
            f"{'page cache':<11} {'cold' if options.cold else 'warm'}; medians of "
            f"{options.repeats} runs, interleaved"
        )
        print(f"{'case':<24} {'statistics s':>12} {'GB/s':>6} {'wall s':>7} {'peak RSS MiB':>13}")
        medians = {}
        for name, runs in results.items():
            stats_s = statistics.median(r[0] for r in runs)
            wall = statistics.median(r[1] for r in runs)
            rss = statistics.median(r[2] for r in runs)
            medians[name] = (stats_s, wall, rss)
            print(
                f"{name:<24} {stats_s:>12.3f} {total / stats_s / 1e9:>6.1f} {wall:>7.2f} "
                f"{rss / 2**20:>13.0f}"
            )
        one, two = medians["--ranks 1"], medians["--ranks 2"]
        print(
            f"--ranks 2 vs --ranks 1: statistics {one[0] / two[0]:.2f}x as fast, "
            f"whole command {one[1] / two[1]:.2f}x (target: 1.6x)"
        )
        single = medians["--ranks 1, one thread"]
        print(
            f"--ranks 2 vs one rank on one thread: statistics {single[0] / two[0]:.2f}x "
            "(the scaling per rank)"
        )
        baseline = _baseline_rss(environment)
        print(
            f"peak RSS, largest process: --ranks 2 {two[2] / 2**20:.0f} MiB, --ranks 1 "
            f"{one[2] / 2**20:.0f} MiB, one process {medians['one process'][2] / 2**20:.0f} MiB; "
            f"a process that only imports torch.distributed: {baseline / 2**20:.0f} MiB"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"removed {folder}")


if __name__ == "__main__":
    main()
