"""The one fit check's estimate (memory.run_need, with each command's own) against what a run
really holds (issue 14, item 2): the peak resident memory of a real process, from the moment
of the check to the end, is within the estimate, and the estimate not far above it.

Each case runs in a fresh interpreter (tests/memory_probe.py: torch is not yet imported when
the check runs, as in real use), two at a time, each under an address-space limit."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
MiB = 1 << 20


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


def probe(args, cwd) -> dict:
    """Run bninspect with ``args`` under memory_probe; its record (need, rss_at_check, peak)."""
    out = os.path.join(cwd, f"probe-{abs(hash(tuple(args)))}.json")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(HERE), "COLUMNS": "100"}
    done = subprocess.run(
        [sys.executable, os.path.join(HERE, "memory_probe.py"), out, *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=300, env=env,
        preexec_fn=_limit_memory,
    )
    assert done.returncode in (0, 3), done.stderr
    with open(out) as f:
        record = json.load(f)
    os.unlink(out)
    return record


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("memory")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 64, 64, 64)).astype(np.float32)  # 32 MiB
    np.save(folder / "x32.npy", x)
    np.save(folder / "x16.npy", x.astype(np.float16))
    np.save(folder / "y16.npy", (x * 1.01).astype(np.float16))
    np.save(folder / "y32.npy", x * 1.01)
    return folder


# The cases the issue found under-counted (explain --against on float16, a generated --shape,
# many --steps, --top), and the other kinds of terms: a conversion with saves, a memory map,
# many channels.
CASES = [
    ["run", "--shape", "32,64,64,64", "--dtype", "float16", "--offset", "1", "--scale", "2"],
    ["run", "--input", "x16.npy", "--dtype", "bfloat16", "--save-input", "in.npy",
     "--save-output", "out.npy", "--force", "--batch-size", "8"],
    ["explain", "--input", "x16.npy", "--index", "0,0,0,0", "--against", "y16.npy", "--json"],
    ["check", "--input", "x32.npy", "--output", "y32.npy", "--top", "20000", "--json"],
    ["run", "--shape", "2,20000,2", "--json"],
    ["run", "--shape", "2,300,4", "--steps", "200", "--json"],
]


def test_the_estimate_holds_what_runs_hold(inputs):
    """Peak growth <= estimate <= 2.5 x growth + 64 MiB, for inputs, conversions, saves, many
    channels, many steps, the three commands; the figures are printed (pytest -s)."""
    with ThreadPoolExecutor(2) as pool:
        records = list(pool.map(lambda args: probe(args, inputs), CASES))
    failures = []
    for args, record in zip(CASES, records, strict=True):
        growth = record["peak"] - record["rss_at_check"]
        need = record["need"]
        line = f"{' '.join(args):<100} estimate {need / MiB:7.1f} MiB  held {growth / MiB:7.1f}"
        print(line)
        if not growth <= need <= 2.5 * growth + 64 * MiB:
            failures.append(line)
    assert not failures, "\n".join(failures)
