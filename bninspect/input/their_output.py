"""The output someone else's batch norm produced, loaded for ``check`` and ``explain --against``:
vetted like the input, and matched to the input's shape (or told why it does not match)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from bninspect.errors import BnInspectError
from bninspect.input.memory import check_bytes, check_fits
from bninspect.input.npy_files import read_array, read_header, sha256_of
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


def load_output(
    path: Path, option: str, input_shape: tuple[int, ...], input_dtype: str, channel_axis: int = 1
) -> tuple[np.ndarray, OutputInfo]:
    """Their output as float64 (exact for every float and integer dtype it may hold) and what
    it was; refuses a shape other than the input's with both shapes and a transposition hint.
    ``input_shape`` is in the user's layout, channels on ``channel_axis`` (non-negative), as
    the file must be; the values come back as the core sees them, channels on axis 1 (a
    view)."""
    header = read_header(path, option)
    if header.dtype.kind not in "fiub":
        refuse_non_numeric(option, header.dtype, path)
    if header.shape != tuple(input_shape):
        raise BnInspectError(
            f"{option} {path}: shape {shape_text(header.shape)} but the input is "
            f"{shape_text(input_shape)}; batch norm keeps the shape"
            f"{transposition_hint(header.shape, tuple(input_shape), channel_axis)}"
        )
    array = read_array(path, option)
    notices = ()
    if header.dtype.name != input_dtype:
        notices = (
            f"{option} is {header.dtype.name}, the input {input_dtype}: both are compared as "
            f"float64 values (exactly), and ULPs are {input_dtype}'s",
        )
    with np.errstate(over="ignore"):
        values = array.astype(np.float64)
    info = OutputInfo(str(path), sha256_of(path), header.shape, header.dtype.name, notices)
    return np.moveaxis(values, channel_axis, 1), info
