"""Will a tensor fit? Estimates of what a run needs against what this machine has free."""

from __future__ import annotations

import math
import os

from bninspect.errors import BnInspectError
from bninspect.input.channel_groups import group_bytes_held


def available_bytes() -> int:
    """Memory the system could give us now without swapping: MemAvailable on Linux, else the
    physical total."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


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
    """Peak memory of one run: the input, PyTorch's output of the same size (or one channel
    group's input copy and output, ``by_groups``), the eval pass's output where the train/eval
    gap is measured (counted as large as the input, an upper bound), and one float64 copy of a
    channel (explain's derivation); the reference kernels work in L1-sized buffers."""
    elements = math.prod(shape)
    output = group_bytes_held(shape, itemsize) if by_groups else elements * itemsize
    output += elements * itemsize if eval_pass else 0
    return elements * itemsize + output + 8 * (elements // shape[1])


# check's whole-tensor passes go this many elements at a time (check_compare.channel_chunks).
CHECK_CHUNK_ELEMENTS = 1 << 22
# Per element, check holds their output, the reference and the absolute error in float64 and
# a mismatch flag, beside the input and PyTorch's output; the diagnosis adds one mistake's
# float64 output and its work at a time (measured at about 4 float64s per element, so 5 leave
# a margin: tests/test_check_memory.py).
CHECK_FLOAT64_PER_ELEMENT = 3 + 5
# A chunk's float64 temporaries, per element of the chunk (measured at about 6).
CHECK_CHUNK_FLOAT64 = 8


def check_bytes(
    shape: tuple[int, ...], itemsize: int, chunk_elements: int = CHECK_CHUNK_ELEMENTS
) -> int:
    """Peak memory of ``check`` on an input of ``shape`` and ``itemsize``-byte elements."""
    elements = math.prod(shape)
    per_element = 2 * itemsize + 8 * CHECK_FLOAT64_PER_ELEMENT + 1
    return elements * per_element + 8 * CHECK_CHUNK_FLOAT64 * min(elements, chunk_elements)


def check_fits(need: int, what: str, advice: str) -> None:
    """Raise a one-line error if ``need`` bytes exceed the memory available now."""
    have = available_bytes()
    if need > have:
        raise BnInspectError(
            f"{what} needs about {human_bytes(need)} but only {human_bytes(have)} is available; "
            f"{advice}"
        )
