"""Will a run fit? What it will hold, counted from the input's description alone (a .npy header,
--shape, the options), against what this process can still get.

Pure arithmetic on Python integers: nothing here builds anything the size of the input, its
channels or its steps, so the check can run before all of them, and a shape of 2**31 x 2**31
costs no more to refuse than 2 x 3. Every term is named for what holds the bytes; the constants
were measured (peak resident memory against the estimate: tests/test_memory_estimate.py).
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Callable
from typing import TYPE_CHECKING

from bninspect.errors import BnInspectError
from bninspect.input.channel_groups import group_bytes_held

if TYPE_CHECKING:
    from bninspect.input.tensor import PlannedInput

# Importing torch and running its first batch norm: libraries, allocator arenas and OpenMP
# threads (measured about 200 MiB of resident memory here, torch 2.13 on 2 cores).
TORCH_RUNTIME_BYTES = 256 << 20
# The reference's kernels over blocks (numerics/kernels.py): each worker's block and partial
# results, and a streamed file's pages while their block is read (measured under 30 MiB).
KERNEL_BYTES = 64 << 20
# run's report and its rendering, per channel (its statistics, errors, health, the table's or
# the JSON document's text: measured 17-21 KiB, 25 KiB with --var-method), per training step
# (its buffers and record: about 4 KiB) and per channel of each step (the JSON's per-step
# channel records: about 5 KiB).
RUN_CHANNEL_BYTES = 32 << 10
RUN_STEP_BYTES = 8 << 10
RUN_STEP_CHANNEL_BYTES = 8 << 10
# explain: the float64 copies of one channel the derivation, the output's scale, --against's
# known mistakes and --precision's emulation hold at once.
EXPLAIN_CHANNEL_FLOAT64 = 8


def available_bytes() -> int:
    """Memory this process could still get now without swapping: the least of Linux's
    MemAvailable (else the physical total), what its address-space limit (ulimit -v) leaves,
    and what its cgroup's memory limit leaves."""
    limits = [_mem_available()]
    address_limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if address_limit != resource.RLIM_INFINITY:
        limits.append(address_limit - _status_bytes("VmSize"))
    limits.append(_cgroup_room())
    return max(0, min(limit for limit in limits if limit is not None))


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _status_bytes(field: str) -> int:
    """A size from /proc/self/status (VmSize, VmRSS), or 0."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cgroup_room() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), or None without a limit."""
    try:
        with open("/proc/self/cgroup") as groups:
            line = next((g for g in groups if g.startswith("0::")), None)
        if line is None:
            return None
        folder = os.path.join("/sys/fs/cgroup", line.strip()[3:].lstrip("/"))
        with open(os.path.join(folder, "memory.max")) as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(folder, "memory.current")) as f:
            return int(limit) - int(f.read().strip())
    except (OSError, ValueError):
        return None


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if count < 1024 or unit == "PiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def run_bytes(
    shape: tuple[int, ...], itemsize: int, by_groups: bool = False, eval_pass: bool = False
) -> int:
    """The arrays of one run: the input, PyTorch's output of the same size (or one channel
    group's input copy and output, ``by_groups``), the eval pass's output where the train/eval
    gap is measured (counted as large as the input, an upper bound), and one float64 copy of a
    channel."""
    elements = math.prod(shape)
    output = group_bytes_held(shape, itemsize) if by_groups else elements * itemsize
    output += elements * itemsize if eval_pass else 0
    return elements * itemsize + output + 8 * (elements // shape[1])


def run_report_bytes(channels: int, steps: int) -> int:
    """run's report and its rendering for ``channels`` channels over ``steps`` steps."""
    per_step = RUN_STEP_BYTES + channels * RUN_STEP_CHANNEL_BYTES
    return channels * RUN_CHANNEL_BYTES + (steps * per_step if steps > 1 else 0)


def run_need(
    planned: PlannedInput,
    batch_size: int,
    steps: int,
    *,
    torch_runs: bool,
    eval_pass: bool,
    save_input: bool = False,
    save_output: bool = False,
    command: Callable[[PlannedInput, int, int], int] | None = None,
) -> int:
    """Peak bytes a run over ``planned`` (in ``steps`` batches of ``batch_size`` samples)
    holds beyond what the process holds now: the input (none if memory-mapped) and what
    obtaining it holds beside it, or later PyTorch's runtime and outputs (every step's; or one
    channel group's at a time; another layout's copy), the eval pass's output, the reference's
    kernel blocks, the
    copies saving makes (bfloat16 is saved as float32; several steps' outputs are joined),
    the reports, and ``command``'s own (e.g. check's arrays)."""
    shape, itemsize = planned.shape, _itemsize(planned.dtype)
    elements = math.prod(shape)
    channels = shape[1]
    batch = batch_size * math.prod(shape[1:])
    held = 0 if planned.mapped else elements * itemsize
    fed = batch * steps
    later = KERNEL_BYTES + 8 * (elements // max(channels, 1))
    if torch_runs:
        later += TORCH_RUNTIME_BYTES
        later += group_bytes_held(shape, itemsize) if planned.by_groups else fed * itemsize
        later += batch * itemsize if eval_pass else 0
        # Channels elsewhere than axis 1: PyTorch's output may come in another layout than
        # the input's (channels-last kernels exist for rank 4 and 5 only), copied into the
        # input's: one more output at most.
        later += fed * itemsize if planned.channel_axis != 1 else 0
    widened = 4 if planned.dtype == "bfloat16" else 0  # saved as float32
    if save_input:
        later += elements * widened
    if save_output:
        later += fed * (widened or (itemsize if steps > 1 else 0))
    if command is not None:
        later += command(planned, batch_size, steps)
    return held + max(planned.obtaining_bytes, later)


def _itemsize(dtype: str) -> int:
    return {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}[dtype]


def explain_bytes(planned: PlannedInput, batch_size: int, steps: int) -> int:
    """explain's own: float64 copies of one channel of the last batch, and the buffers of every
    step (a few float64s per channel)."""
    channel = batch_size * math.prod(planned.shape[2:])
    return 8 * EXPLAIN_CHANNEL_FLOAT64 * channel + steps * planned.shape[1] * 8 * 8


# check's whole-tensor passes go this many elements at a time (check_compare.channel_chunks).
CHECK_CHUNK_ELEMENTS = 1 << 22
# Per element, check holds their output, the reference and the absolute error in float64 and
# a mismatch flag, beside the input and PyTorch's output; the diagnosis adds one mistake's
# float64 output and its work at a time (measured at about 4 float64s per element, so 5 leave
# a margin: tests/test_check_memory.py).
CHECK_FLOAT64_PER_ELEMENT = 3 + 5
# A chunk's float64 temporaries, per element of the chunk (measured at about 6).
CHECK_CHUNK_FLOAT64 = 8
# One of the worst elements check lists (--top): its record, its table row or JSON object
# (measured about 400 bytes); and check's report per channel.
CHECK_TOP_BYTES = 1 << 10
CHECK_CHANNEL_BYTES = 32 << 10


def check_bytes(
    shape: tuple[int, ...],
    itemsize: int,
    chunk_elements: int = CHECK_CHUNK_ELEMENTS,
    top: int = 0,
) -> int:
    """Peak memory of ``check``'s arrays on an input of ``shape`` and ``itemsize``-byte
    elements, and of the ``top`` worst elements it lists (at most every element)."""
    elements = math.prod(shape)
    per_element = 2 * itemsize + 8 * CHECK_FLOAT64_PER_ELEMENT + 1
    chunk = 8 * CHECK_CHUNK_FLOAT64 * min(elements, chunk_elements)
    return elements * per_element + chunk + min(top, elements) * CHECK_TOP_BYTES


def check_fits(need: int, what: str, advice: str) -> None:
    """Raise a one-line error if ``need`` bytes exceed the memory available now."""
    have = available_bytes()
    if need > have:
        raise BnInspectError(
            f"{what} needs about {human_bytes(need)} but only {human_bytes(have)} is available; "
            f"{advice}"
        )
