"""The output someone else's batch norm produced, loaded for ``check`` and ``explain --against``:
vetted like the input, and matched to the input's shape (or told why it does not match)."""

from __future__ import annotations

import hashlib
import itertools
import math
from pathlib import Path

import numpy as np

from bninspect.errors import BnInspectError
from bninspect.input.memory import CHECK_CHANNEL_BYTES, check_bytes
from bninspect.input.npy_files import NpyHeader, opened_npy, read_data, read_element
from bninspect.input.tensor import refuse_non_numeric
from bninspect.results.check import OutputInfo
from bninspect.text import shape as shape_text


def transposition_hint(theirs: tuple[int, ...], ours: tuple[int, ...]) -> str:
    """If ``theirs`` holds ``ours``'s sizes in another order, say which transposition it looks
    like and how to undo it; else ''."""
    if sorted(theirs) != sorted(ours) or theirs == ours:
        return ""
    rank = len(ours)
    channels_last = (0, *range(2, rank), 1)
    orders = [
        p
        for p in itertools.permutations(range(rank))
        if tuple(ours[a] for a in p) == theirs and p != tuple(range(rank))
    ]
    order = channels_last if channels_last in orders else orders[0]
    back = tuple(int(i) for i in np.argsort(order))
    what = " (channels last)" if order == channels_last else ""
    return (
        f"; it looks like the input transposed by {order}{what}: "
        f"numpy.transpose(y, {back}) brings it back"
    )


ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def check_need(shape: tuple[int, ...], dtype: str, top: int = 0) -> int:
    """What ``check``'s own arrays (memory.check_bytes) and its ``top`` worst elements add to
    a run's memory (memory.run_need counts the input and PyTorch's output)."""
    itemsize = ITEMSIZE[dtype]
    arrays = check_bytes(tuple(shape), itemsize, top=top) - 2 * math.prod(shape) * itemsize
    return arrays + shape[1] * CHECK_CHANNEL_BYTES



def _matching(option: str, path: Path, input_shape: tuple[int, ...]):
    """A header check: refuse a dtype that is not real numbers, or a shape other than the
    input's (with both shapes and a transposition hint)."""

    def check(header: NpyHeader) -> None:
        if header.dtype.kind not in "fiub":
            refuse_non_numeric(option, header.dtype, path)
        if header.shape != tuple(input_shape):
            raise BnInspectError(
                f"{option} {path}: shape {shape_text(header.shape)} but the input is "
                f"{shape_text(input_shape)}; batch norm keeps the shape"
                f"{transposition_hint(header.shape, tuple(input_shape))}"
            )

    return check


def _notices(option: str, header: NpyHeader, input_dtype: str) -> tuple[str, ...]:
    if header.dtype.name == input_dtype:
        return ()
    return (
        f"{option} is {header.dtype.name}, the input {input_dtype}: both are compared as "
        f"float64 values (exactly), and ULPs are {input_dtype}'s",
    )


def load_output(
    path: Path, option: str, input_shape: tuple[int, ...], input_dtype: str
) -> tuple[np.ndarray, OutputInfo]:
    """Their output as float64 (exact for every float and integer dtype it may hold) and what
    it was; the header is checked (``_matching``) before anything is read."""
    with opened_npy(path, option) as (file, header):
        _matching(option, path, input_shape)(header)
        digest = hashlib.sha256()
        values = read_data(file, header, digest.update, np.dtype(np.float64))
    info = OutputInfo(
        str(path), digest.hexdigest(), header.shape, header.dtype.name,
        _notices(option, header, input_dtype),
    )
    return values, info


class OneElement:
    """Their output where only one element was read (explain --against): indexing gives that
    element, and any other index is an error rather than a made-up value."""

    def __init__(self, index: tuple[int, ...], value: float) -> None:
        self.index, self.value = tuple(index), value

    def __getitem__(self, index: tuple[int, ...]) -> float:
        if tuple(int(i) for i in index) != self.index:
            raise IndexError(f"only element {self.index} of their output was read")
        return self.value


def load_element(
    path: Path,
    option: str,
    input_shape: tuple[int, ...],
    input_dtype: str,
    index: tuple[int, ...],
) -> tuple[OneElement, OutputInfo]:
    """Their output's element at ``index`` (as float64) and what the file is, in bounded
    memory (npy_files.read_element): explain --against needs one value."""
    value, header, sha256 = read_element(
        path, option, index, _matching(option, path, input_shape)
    )
    info = OutputInfo(
        str(path), sha256, header.shape, header.dtype.name, _notices(option, header, input_dtype)
    )
    return OneElement(index, value), info
