"""The tensor under inspection: generated from a seed or loaded from a .npy file, then checked
and brought to a floating dtype PyTorch's batch norm runs in."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bninspect.dtypes import float_format, format_of
from bninspect.errors import BnInspectError, OptionError
from bninspect.input.channel_groups import groups_reproduce_whole
from bninspect.input.layout import resolve_axis, shape_forms, to_core_shape, to_user_shape
from bninspect.input.memory import check_fits, run_bytes
from bninspect.input.npy_files import (
    BackgroundSha256,
    map_array,
    read_array,
    read_data,
    read_header,
    sha256_of,
)
from bninspect.input.parsing import MAX_RANK, MIN_RANK
from bninspect.results.common import InputInfo, Undefined
from bninspect.text import shape as shape_text

FILE_DTYPES = ("float16", "float32", "float64")  # what a .npy can name; bfloat16 by --dtype
NOT_HASHED = Undefined(
    "not computed with --stats-only: hashing runs at about 1.4 GB/s, far slower than the "
    "statistics; run sha256sum on the file"
)
# Rows converted at a time when generating with --offset/--scale or another dtype, so the
# float64 intermediate stays small.
_GENERATE_BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class InputTensor:
    """The array as the core sees it, shape (N, C, *spatial) in one of dtypes.FORMATS (a view of
    the user's array with its channel axis moved to 1: layout.py), and where it came from
    (``info.shape`` and ``info.channel_axis`` in the user's layout).

    ``pending_sha256`` is the file's hash while a background thread still computes it (it
    overlaps the torch import); ``finished_info()`` waits for it.
    """

    array: np.ndarray
    info: InputInfo
    pending_sha256: Future | None = None

    def finished_info(self) -> InputInfo:
        if self.pending_sha256 is None:
            return self.info
        return dataclasses.replace(self.info, sha256=self.pending_sha256.result())

    def user_array(self) -> np.ndarray:
        """The array in the user's layout (channels back on their axis): the array read or
        generated, not a copy."""
        return np.moveaxis(self.array, 1, self.info.channel_axis)


@dataclass(frozen=True)
class PlannedInput:
    """An input checked from its description alone (--shape and --dtype, or a .npy header):
    its shape (the core's, channels on axis 1) and dtype (a name in dtypes.FORMATS) are known,
    and ``obtain()`` generates or reads the values, which is the slow part. ``by_groups``: its
    shape and layout let PyTorch run over channel groups, and the fit check counted on it.
    ``channel_axis``: where the user's layout has the channels (non-negative)."""

    shape: tuple[int, ...]
    dtype: str
    obtain: Callable[[], InputTensor]
    by_groups: bool = False  # PyTorch may run over channel groups (channel_groups.py)
    channel_axis: int = 1

    @property
    def user_shape(self) -> tuple[int, ...]:
        """The shape in the user's layout."""
        return to_user_shape(self.shape, self.channel_axis)


def _relayout_bytes(shape: tuple[int, ...], itemsize: int, channel_axis: int) -> int:
    """With channels elsewhere than axis 1, PyTorch's output may come in another layout than
    the input's (channels-last kernels exist for rank 4 and 5 only), and is copied into the
    input's: one more output at most."""
    return math.prod(shape) * itemsize if channel_axis != 1 else 0


def plan_generated(
    shape: tuple[int, ...],
    seed: int,
    dtype: str = "float32",
    offset: float = 0.0,
    scale: float = 1.0,
    may_group: bool = False,
    eval_pass: bool = False,
    channel_axis: int = 1,
) -> PlannedInput:
    """Check that a generated tensor of ``shape`` (the user's layout, channels on
    ``channel_axis``) fits in memory (holding one channel group of PyTorch's output at a time
    where ``may_group`` and the shape allows, and an eval pass's output too where
    ``eval_pass``: see memory.run_bytes); obtain() generates it (generate_input)."""
    form = float_format(dtype)
    shape = tuple(shape)
    axis = resolve_axis(channel_axis, len(shape), f"--shape {shape_text(shape)}")
    core = to_core_shape(shape, axis)
    elements = int(np.prod(shape))
    by_groups = may_group and axis == 1 and groups_reproduce_whole(core, True)
    check_fits(
        run_bytes(core, form.numpy.itemsize, by_groups, eval_pass)
        + _relayout_bytes(core, form.numpy.itemsize, axis)
        + elements * 4 * (dtype != "float32"),
        f"--shape {','.join(map(str, shape))} in {dtype}",
        "use a smaller --shape",
    )
    return PlannedInput(
        core,
        dtype,
        lambda: _generate(shape, seed, dtype, offset, scale, axis),
        by_groups,
        axis,
    )


def generate_input(
    shape: tuple[int, ...],
    seed: int,
    dtype: str = "float32",
    offset: float = 0.0,
    scale: float = 1.0,
    channel_axis: int = 1,
) -> InputTensor:
    """``offset + scale * z`` in ``dtype``, z standard normal float32 from
    ``numpy.random.default_rng(seed)`` drawn in ``shape`` (the user's layout). The same float32
    draws serve every dtype, so changing --dtype changes only the precision, and float32 with
    offset 0 and scale 1 is z itself."""
    return plan_generated(
        shape, seed, dtype, offset, scale, channel_axis=channel_axis
    ).obtain()


def _generate(
    shape: tuple[int, ...], seed: int, dtype: str, offset: float, scale: float, axis: int
) -> InputTensor:
    form = float_format(dtype)
    z = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    if dtype == "float32" and offset == 0.0 and scale == 1.0:
        array = z
    else:
        array = np.empty(shape, dtype=form.numpy)
        rows = max(1, _GENERATE_BLOCK_BYTES // max(1, z[0].nbytes * 2))
        with np.errstate(over="ignore"):  # a huge offset overflows float16 to inf, as asked
            for n in range(0, shape[0], rows):
                block = z[n : n + rows].astype(np.float64) * scale + offset
                array[n : n + rows] = block.astype(form.numpy)
        del z
    notices = _generated_notices(array, dtype, offset, scale)
    info = InputInfo(
        "generated", tuple(shape), dtype, seed, None, None, notices, offset, scale, axis
    )
    return InputTensor(np.moveaxis(array, axis, 1), info)


def _generated_notices(array: np.ndarray, dtype: str, offset: float, scale: float) -> tuple:
    """What --offset and --scale did that the user may not expect: values beyond the dtype's
    range (infinite), or a scale too small to move any value off one number."""
    notices = []
    with np.errstate(over="ignore", invalid="ignore"):
        infinite = int(np.count_nonzero(np.isinf(array)))
    if infinite:
        notices.append(
            f"--offset {offset:g} --scale {scale:g} go beyond {dtype}'s range: {infinite} of "
            f"{array.size} generated values are infinite"
        )
    elif scale != 0 and array.size > 1 and bool(np.all(array == array.flat[0])):
        notices.append(
            f"--scale {scale:g} is below {dtype}'s spacing at --offset {offset:g}: every "
            f"generated value is {float(array.flat[0]):g}, so each channel is constant"
        )
    return tuple(notices)


def refuse_non_numeric(option: str, dtype: np.dtype, path: Path) -> None:
    """Raise the one-line error for a .npy whose dtype is not real numbers (``option`` names
    the file in the message)."""
    kinds = {
        "c": "complex",
        "U": "string",
        "S": "bytes",
        "V": "structured or raw-bytes",
        "M": "datetime",
        "m": "timedelta",
    }
    kind = kinds.get(dtype.kind, f"'{dtype.kind}'")
    hint = (
        " (a bfloat16 array saved by numpy looks like this: save it as float32 and add "
        "--dtype bfloat16)"
        if dtype.kind == "V" and dtype.itemsize == 2
        else ""
    )
    raise BnInspectError(
        f"{option} {path}: dtype {dtype} is {kind}; batch norm needs a real numeric array "
        f"(float16, float32 or float64; integers are converted){hint}"
    )


def _conversion_for(dtype: np.dtype, wanted: str | None, path: Path) -> tuple[np.dtype, str | None]:
    """The dtype to run in for a file of ``dtype`` (``wanted`` if --dtype was given), and the
    notice to give if it changes; refuse dtypes that batch norm cannot take."""
    if dtype.kind in "fiub" and wanted is not None:
        target = float_format(wanted).numpy
        if target == dtype:
            return dtype, None
        return target, f"{dtype.name} input converted to {wanted} (--dtype)"
    if dtype.kind == "f" and dtype.name in FILE_DTYPES:
        if dtype.isnative:
            return dtype, None
        native = dtype.newbyteorder("=")
        return native, f"{dtype.str} (byte-swapped) converted to native {native.name}"
    if dtype.kind in "iub":
        return np.dtype(np.float32), (
            f"{dtype.name} input converted to float32 (batch norm needs floating point)"
        )
    if dtype.kind == "f":  # e.g. float128: PyTorch has no such dtype
        return np.dtype(np.float64), f"{dtype.name} input converted to float64"
    refuse_non_numeric("--input", dtype, path)


def _rounding_note(integers: np.ndarray, target: np.dtype) -> str:
    """What a notice should add when integers convert to floats inexactly: beyond
    2**(mantissa bits + 1) not every integer is a float32 (or float64...)."""
    if integers.dtype.kind not in "iu" or integers.size == 0:
        return ""
    bits = format_of(target).mantissa_bits + 1
    lowest, highest = int(integers.min()), int(integers.max())
    if max(-lowest, highest) <= 2**bits:
        return ""
    return (
        f"; some values (from {lowest} to {highest}) lie beyond +-2**{bits}, where not every "
        f"integer is a {target.name}: they are rounded to the nearest"
    )


def _checked_header(path: Path, channel_axis: int = 1):
    header = read_header(path, "--input")
    shape = header.shape
    if not MIN_RANK <= len(shape) <= MAX_RANK:
        raise BnInspectError(
            f"--input {path}: shape {shape} has rank {len(shape)}; batch norm takes rank 2 to 5, "
            f"{shape_forms(channel_axis)}, with channels on axis {channel_axis}"
        )
    if 0 in shape:
        raise BnInspectError(
            f"--input {path}: shape {shape} has an empty axis, so there is nothing to inspect; "
            "give an array with at least one value on every axis"
        )
    return header


def load_input(path: Path, dtype: str | None = None, channel_axis: int = 1) -> InputTensor:
    """Load a .npy tensor (never unpickling), check its rank and dtype, and convert it to
    ``dtype`` if given, or integer/boolean data to float32, with a notice. The file's SHA-256 is
    computed in a background thread (see InputTensor.pending_sha256)."""
    return plan_file(path, dtype, channel_axis=channel_axis).obtain()


def plan_file(
    path: Path,
    dtype: str | None = None,
    may_group: bool = False,
    eval_pass: bool = False,
    channel_axis: int = 1,
) -> PlannedInput:
    """Check a .npy file's header (rank, dtype, that it fits in memory, holding one channel
    group of PyTorch's output at a time where ``may_group`` and its shape and layout allow, and
    an eval pass's output too where ``eval_pass``: see memory.run_bytes); obtain() loads it as
    load_input does. The file holds the channels on ``channel_axis``."""
    header = _checked_header(path, channel_axis)
    shape = header.shape
    axis = resolve_axis(channel_axis, len(shape), f"--input {path}")
    core = to_core_shape(tuple(shape), axis)
    target, notice = _conversion_for(header.dtype, dtype, path)
    elements = int(np.prod(shape))
    by_groups = (
        may_group and axis == 1 and groups_reproduce_whole(core, not header.fortran_order)
    )
    # A converted input is the file's array and its copy at first, then the copy alone beside
    # PyTorch's output in the new dtype.
    converted = target != header.dtype
    converting = elements * (header.dtype.itemsize + target.itemsize) if converted else 0
    check_fits(
        max(
            run_bytes(core, target.itemsize, by_groups, eval_pass)
            + _relayout_bytes(core, target.itemsize, axis),
            converting,
        ),
        f"--input {path} ({shape_text(shape)} {header.dtype.name})",
        "inspect a slice of it saved as a smaller .npy, or use --stats-only",
    )
    name = format_of(target).name
    return PlannedInput(
        core, name, lambda: _load(path, header, target, notice, axis), by_groups, axis
    )


def _load(path: Path, header, target: np.dtype, notice: str | None, axis: int) -> InputTensor:
    # Read in large reads (3x faster than np.load here), each hashed from memory as it lands:
    # the hash names exactly the bytes inspected, and nothing writes to them. np.load for
    # Fortran order, which needs its transposed view.
    if header.fortran_order:
        hasher = ThreadPoolExecutor(1, thread_name_prefix="sha256")
        pending = hasher.submit(sha256_of, path)
        hasher.shutdown(wait=False)  # the thread finishes the hash; nothing else is queued
        array = read_array(path, "--input")
    else:
        digest = BackgroundSha256()
        array = read_data(path, header, "--input", digest.feed)
        pending = digest.hexdigest()
    if notice is not None:
        notice += _rounding_note(array, target)
        with np.errstate(over="ignore"):  # values beyond a smaller dtype's range become inf
            array = array.astype(target)
    info = InputInfo(
        "file",
        tuple(array.shape),
        format_of(target).name,
        None,
        str(path),
        None,
        (notice,) if notice else (),
        channel_axis=axis,
    )
    return InputTensor(np.moveaxis(array, axis, 1), info, pending)


def _dtype_text(dtype: np.dtype) -> str:
    """float32, or >f4 where the byte order is not this machine's."""
    return dtype.name if dtype.isnative else dtype.str


def map_input(
    path: Path, dtype: str | None = None, channel_axis: int = 1
) -> tuple[InputTensor, object]:
    """Memory-map a .npy tensor read-only for streaming statistics, without loading or hashing
    it; returns the tensor and the mmap (whose pages the reader may release)."""
    header = _checked_header(path, channel_axis)
    axis = resolve_axis(channel_axis, len(header.shape), f"--input {path}")
    target, notice = _conversion_for(header.dtype, dtype, path)
    if notice is not None:
        fix = (
            "drop --dtype, or drop --stats-only"
            if dtype is not None and header.dtype.isnative
            else "drop --stats-only (a full run converts it), or save it in native byte order"
        )
        wanted = f"to {dtype}" if dtype is not None else f"({notice})"
        raise OptionError(
            f"--stats-only streams {path} as stored ({_dtype_text(header.dtype)}) and converts "
            f"nothing {wanted}; {fix}"
        )
    array, mapping = map_array(path, header)
    info = InputInfo(
        "file", header.shape, format_of(target).name, None, str(path), NOT_HASHED,
        channel_axis=axis,
    )
    return InputTensor(np.moveaxis(array, axis, 1), info), mapping
