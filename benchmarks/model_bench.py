"""`bninspect model` against the forward passes it is built on, side by side in one run.

    python benchmarks/model_bench.py [--repeats 5] [--shape 8,1,128,128]

MONAI's DenseNet121 (random initialization, seed 0, 121 BatchNorm2d) on a standard-normal
batch. Baseline: one train-mode forward plus one eval-mode forward of the same model, without
autograd (torch.no_grad), on copies. Measured: the inspection of the loaded network on the
same batch (both modes in lockstep, every layer's float64 statistics, gaps and flags, the
result object), then the same through the command line (python -m bninspect model ... --json,
including interpreter start-up, importing torch and MONAI, building the network). The two
are timed alternately, and medians are printed with their ratio; target: the inspection takes
at most 3x the baseline. OMP_WAIT_POLICY=PASSIVE, as `bninspect model` sets it: with OpenMP's
default spinning, the sequential baseline itself took 4x longer on the loaded 2-core machine.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# As the command line sets it before torch loads: OpenMP threads sleep when a loop ends.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402, TID253 (a benchmark of torch)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shape", default="8,1,128,128")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))

    from monai.networks.nets import DenseNet121

    from bninspect.model.inspect import inspect_network
    from bninspect.model.network import ModuleNetwork
    from bninspect.results.model import BatchSource

    from model_helpers import BASE

    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2)
    x = torch.randn(*shape)
    train_copy, eval_copy = copy.deepcopy(net).train(), copy.deepcopy(net).eval()
    source = BatchSource("generated", (), shape, "float32", 1, 0)

    def baseline() -> None:
        with torch.no_grad():
            train_copy(x)
            eval_copy(x)

    def inspection() -> None:
        inspect_network(BASE, ModuleNetwork(net), [x], source)

    baseline(), inspection()  # warm-up: first calls allocate and pick kernels
    plain, inspected = [], []
    for _ in range(args.repeats):
        for runner, times in ((baseline, plain), (inspection, inspected)):
            start = time.perf_counter()
            runner()
            times.append(time.perf_counter() - start)
    command = [
        sys.executable, "-m", "bninspect", "model", "--model", "monai.networks.nets:DenseNet121",
        "--kwargs", "spatial_dims=2,in_channels=1,out_channels=2", "--shape", args.shape, "--json",
    ]  # fmt: skip
    cli = []
    for _ in range(max(1, args.repeats // 2)):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
        cli.append(time.perf_counter() - start)
    base, mine = statistics.median(plain), statistics.median(inspected)
    # Each inspection against the forwards timed just before it: the other users' load drifts
    # over a run, and the two of a pair see about the same.
    paired = statistics.median(m / b for b, m in zip(plain, inspected, strict=True))
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"DenseNet121 on {args.shape} float32, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.repeats} repeats (medians), "
          f"load average {load} on {os.cpu_count()} cores")
    print(f"  train-mode + eval-mode forward (no_grad)  {base:8.3f} s")
    print(f"  bninspect model, the inspection           {mine:8.3f} s   ratio {mine / base:.2f}x"
          f" (median of paired ratios {paired:.2f}x)")
    print(f"  bninspect model, the whole command line   {statistics.median(cli):8.3f} s   "
          "(start-up, imports, building the network included)")
    print("  target: the inspection at most 3x the two forwards")


if __name__ == "__main__":
    main()
