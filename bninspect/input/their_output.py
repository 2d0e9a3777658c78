"""The output someone else's batch norm produced, loaded for ``check`` and ``explain --against``:
vetted like the input, and matched to the input's shape (or told why it does not match)."""

from __future__ import annotations

import hashlib
import itertools
import math
from pathlib import Path

import numpy as np

from bninspect.errors import BnInspectError
from bninspect.input.memory import CHECK_CHANNEL_BYTES, check_bytes, check_fits
from bninspect.input.npy_files import NpyHeader, opened_npy, read_data, read_element
from bninspect.input.tensor import refuse_non_numeric
from bninspect.results.check import OutputInfo
from bninspect.text import shape as shape_text


def transposition_hint(
    theirs: tuple[int, ...], ours: tuple[int, ...], channel_axis: int = 1
) -> str:
    """If ``theirs`` holds ``ours``'s sizes in another order, say which transposition it looks
    like and how to undo it; else ''. ``ours`` has its channels on ``channel_axis``."""
    if sorted(theirs) != sorted(ours) or theirs == ours:
        return ""
    rank = len(ours)
    # the likeliest mix-up: the channels moved last (or, from the last axis, to axis 1)
    target, what = (1, " (channels on axis 1)") if channel_axis == rank - 1 else (rank - 1, "")
    likeliest = [a for a in range(rank) if a != channel_axis]
    likeliest.insert(target, channel_axis)
    likeliest = tuple(likeliest)
    what = what or " (channels last)"
    orders = [
        p
        for p in itertools.permutations(range(rank))
        if tuple(ours[a] for a in p) == theirs and p != tuple(range(rank))
    ]
    order = likeliest if likeliest in orders else orders[0]
    back = tuple(int(i) for i in np.argsort(order))
    what = what if order == likeliest else ""
    return (
        f"; it looks like the input transposed by {order}{what}: "
        f"numpy.transpose(y, {back}) brings it back"
    )


ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def check_memory(shape: tuple[int, ...], dtype: str, input_path: Path | None) -> None:
    """Refuse, before any work, a ``check`` whose arrays (memory.check_bytes) will not fit."""
    what = f"--input {input_path}" if input_path is not None else f"--shape {shape_text(shape)}"
    check_fits(
        check_bytes(tuple(shape), ITEMSIZE[dtype]),
        f"check on {what} ({shape_text(shape)} {dtype})",
        "check a slice: save the first samples of the input and of your output (x[:n]) as "
        "smaller .npy files and check those",
    )


def check_need(shape: tuple[int, ...], dtype: str, top: int = 0) -> int:
    """What ``check``'s own arrays (memory.check_bytes) and its ``top`` worst elements add to
    a run's memory (memory.run_need counts the input and PyTorch's output)."""
    itemsize = ITEMSIZE[dtype]
    arrays = check_bytes(tuple(shape), itemsize, top=top) - 2 * math.prod(shape) * itemsize
    return arrays + shape[1] * CHECK_CHANNEL_BYTES



def _matching(option: str, path: Path, input_shape: tuple[int, ...], channel_axis: int = 1):
    """A header check: refuse a dtype that is not real numbers, or a shape other than the
    input's (with both shapes and a transposition hint); ``input_shape`` in the user's layout,
    channels on ``channel_axis``."""

    def check(header: NpyHeader) -> None:
        if header.dtype.kind not in "fiub":
            refuse_non_numeric(option, header.dtype, path)
        if header.shape != tuple(input_shape):
            raise BnInspectError(
                f"{option} {path}: shape {shape_text(header.shape)} but the input is "
                f"{shape_text(input_shape)}; batch norm keeps the shape"
                f"{transposition_hint(header.shape, tuple(input_shape), channel_axis)}"
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
    path: Path, option: str, input_shape: tuple[int, ...], input_dtype: str, channel_axis: int = 1
) -> tuple[np.ndarray, OutputInfo]:
    """Their output as float64 (exact for every float and integer dtype it may hold) and what
    it was; the header is checked (``_matching``) before anything is read. ``input_shape`` is
    in the user's layout, channels on ``channel_axis`` (non-negative), as the file must be; the
    values come back as the core sees them, channels on axis 1 (a view)."""
    with opened_npy(path, option) as (file, header):
        _matching(option, path, input_shape, channel_axis)(header)
        digest = hashlib.sha256()
        values = read_data(file, header, digest.update, np.dtype(np.float64))
    info = OutputInfo(
        str(path), digest.hexdigest(), header.shape, header.dtype.name,
        _notices(option, header, input_dtype),
    )
    return np.moveaxis(values, channel_axis, 1), info


def load_element(
    path: Path,
    option: str,
    input_shape: tuple[int, ...],
    input_dtype: str,
    index: tuple[int, ...],
    channel_axis: int = 1,
) -> tuple[float, OutputInfo]:
    """Their output's element at ``index`` (as float64) and what the file is, in bounded
    memory (npy_files.read_element): explain --against needs one value. ``input_shape`` and
    ``index`` are in the user's layout (the file's), channels on ``channel_axis``."""
    value, header, sha256 = read_element(
        path, option, index, _matching(option, path, input_shape, channel_axis)
    )
    info = OutputInfo(
        str(path), sha256, header.shape, header.dtype.name, _notices(option, header, input_dtype)
    )
    return value, info
