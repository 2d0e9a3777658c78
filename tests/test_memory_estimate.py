"""The one fit check's estimate (memory.run_need, with each command's own) against what a run
really holds (issue 14, item 2): the peak resident memory of the process, from the moment of
the check to the end, is within the estimate, and the estimate not far above it.

The arrays' terms are measured in processes forked from tests/cli_server.py, where torch is
already imported: there the estimate's term for torch's runtime (memory.TORCH_RUNTIME_BYTES) is
left out. That term is measured in a fresh interpreter, where torch loads after the check as in
real use (tests/memory_probe.py)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import numpy as np
import pytest

from bninspect.input import memory

HERE = os.path.dirname(os.path.abspath(__file__))
MiB = 1 << 20


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("memory")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 32, 64, 64)).astype(np.float32)  # 8 MiB
    np.save(folder / "x32.npy", x)
    np.save(folder / "x16.npy", x.astype(np.float16))
    np.save(folder / "y16.npy", (x * 1.01).astype(np.float16))
    np.save(folder / "y32.npy", x * 1.01)
    return folder


def within(need: int, growth: int) -> bool:
    """The estimate holds what the run held, and is not more than 2.5 times it + 64 MiB."""
    return growth <= need <= 2.5 * growth + 64 * MiB


# The cases the issue found under-counted (explain --against on float16, a generated --shape,
# many --steps, --top), and the other kinds of terms: a conversion with saves, a memory map,
# many channels.
CASES = [
    ["run", "--shape", "32,64,64,64", "--dtype", "float16", "--offset", "1", "--scale", "2"],
    ["run", "--input", "x16.npy", "--dtype", "bfloat16", "--save-input", "in.npy",
     "--save-output", "out.npy", "--force", "--batch-size", "8"],
    ["run", "--input", "x32.npy", "--stats-only", "--var-method", "--json"],
    ["explain", "--input", "x16.npy", "--index", "0,0,0,0", "--against", "y16.npy", "--json"],
    ["check", "--input", "x32.npy", "--output", "y32.npy", "--top", "20000", "--json"],
    ["run", "--shape", "2,8000,2", "--json"],
    ["run", "--shape", "2,100,4", "--steps", "100", "--json"],
]


@pytest.mark.parametrize("args", CASES, ids=lambda args: " ".join(args[:4]))
def test_the_estimate_holds_what_runs_hold(server, inputs, args):
    record_path = inputs / "record.json"
    result = server.run(args, inputs, inject="probe-memory", memory=4 << 30,
                        inject_arg={"path": str(record_path)}, timeout=120)
    assert (result["status"], result["code"]) in (("exit", 0), ("exit", 3)), result
    record = json.loads(record_path.read_text())
    growth = record["peak"] - record["rss_at_check"]
    torch_ran = "--stats-only" not in args
    need = record["need"] - memory.TORCH_RUNTIME_BYTES * torch_ran  # torch was loaded already
    print(f"{' '.join(args):<95} estimate {need / MiB:7.1f} MiB, held {growth / MiB:7.1f} MiB")
    assert within(need, growth), (need / MiB, growth / MiB)


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


def test_the_estimate_holds_torch_loading_after_the_check(tmp_path):
    """A fresh interpreter: torch's libraries, arenas and threads come after the check."""
    out = tmp_path / "record.json"
    env = {**os.environ, "PYTHONPATH": os.path.dirname(HERE)}
    done = subprocess.run(
        [sys.executable, os.path.join(HERE, "memory_probe.py"), str(out), "run", "--shape",
         "2,3,4,5", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
        preexec_fn=_limit_memory,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads(out.read_text())
    growth = record["peak"] - record["rss_at_check"]
    print(f"fresh: run --shape 2,3,4,5 --json estimate {record['need'] / MiB:.1f} MiB, held "
          f"{growth / MiB:.1f} MiB")
    assert within(record["need"], growth), (record["need"] / MiB, growth / MiB)
