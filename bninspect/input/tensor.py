"""The tensor under inspection: generated from a seed or loaded from a .npy file, then checked
and brought to a floating dtype PyTorch's batch norm runs in."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bninspect.dtypes import float_format, format_of
from bninspect.errors import BnInspectError, OptionError
from bninspect.input.channel_groups import groups_reproduce_whole
from bninspect.input.files import OpenFile, open_regular
from bninspect.input.layout import resolve_axis, shape_forms, to_core_shape, to_user_shape
from bninspect.input.npy_files import (
    READ_BYTES,
    BackgroundSha256,
    NpyHeader,
    map_array,
    read_data,
    read_header,
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
# float64 intermediates stay small (memory.py counts three of them).
GENERATE_BLOCK_BYTES = 8 << 20


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
    # Raises if the file behind a memory-mapped array changed while it was read (--stats-only;
    # a file read into memory is checked as it is read)
    check_unchanged: Callable[[], None] = lambda: None
    mapping: object | None = None  # the mmap behind ``array`` (--stats-only), else None

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
    shape and layout let PyTorch run over channel groups. ``channel_axis``: where the user's
    layout has the channels (non-negative). ``obtaining_bytes``: what obtaining it holds beside
    the array at its peak (a conversion's buffers); ``mapped``: the array is a memory map
    (--stats-only), which holds no memory of its own. ``what`` and ``advice`` word a refusal
    for memory."""

    shape: tuple[int, ...]
    dtype: str
    obtain: Callable[[], InputTensor]
    by_groups: bool = False  # PyTorch may run over channel groups (channel_groups.py)
    channel_axis: int = 1
    obtaining_bytes: int = 0
    mapped: bool = False
    what: str = ""
    advice: str = ""

    @property
    def user_shape(self) -> tuple[int, ...]:
        """The shape in the user's layout."""
        return to_user_shape(self.shape, self.channel_axis)


def plan_generated(
    shape: tuple[int, ...],
    seed: int,
    dtype: str = "float32",
    offset: float = 0.0,
    scale: float = 1.0,
    may_group: bool = False,
    channel_axis: int = 1,
) -> PlannedInput:
    """A generated tensor of ``shape`` (the user's layout, channels on ``channel_axis``),
    planned (nothing built): obtain() generates it (generate_input). ``may_group``: PyTorch
    may run over channel groups where the shape allows."""
    shape = tuple(shape)
    form = float_format(dtype)
    axis = resolve_axis(channel_axis, len(shape), f"--shape {shape_text(shape)}")
    core = to_core_shape(shape, axis)
    by_groups = may_group and axis == 1 and groups_reproduce_whole(core, True)
    # Unless the draws are the tensor (float32, offset 0, scale 1), they are held beside it,
    # with three float64 blocks of the conversion.
    plain = dtype == "float32" and offset == 0.0 and scale == 1.0
    obtaining = 0 if plain else math.prod(shape) * 4 + 3 * GENERATE_BLOCK_BYTES
    return PlannedInput(
        core,
        dtype,
        lambda: _generate(shape, seed, dtype, offset, scale, axis),
        by_groups,
        axis,
        obtaining,
        what=f"--shape {','.join(map(str, shape))} in {form.name}",
        advice="use a smaller --shape",
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
        draws, values = z.reshape(-1), array.reshape(-1)
        step = GENERATE_BLOCK_BYTES // 8  # float64 values per block, whatever the shape
        with np.errstate(over="ignore"):  # a huge offset overflows float16 to inf, as asked
            for start in range(0, draws.size, step):
                block = draws[start : start + step].astype(np.float64) * scale + offset
                values[start : start + step] = block.astype(form.numpy)
        del z, draws
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


def _rounding_note(lowest: int, highest: int, target: np.dtype) -> str:
    """What a notice should add when integers from ``lowest`` to ``highest`` convert to floats
    inexactly: beyond 2**(mantissa bits + 1) not every integer is a float32 (or float64...)."""
    bits = format_of(target).mantissa_bits + 1
    if max(-lowest, highest) <= 2**bits:
        return ""
    return (
        f"; some values (from {lowest} to {highest}) lie beyond +-2**{bits}, where not every "
        f"integer is a {target.name}: they are rounded to the nearest"
    )


def _opened_input(path: Path, channel_axis: int = 1) -> tuple[OpenFile, NpyHeader]:
    """--input opened (held open until it is read, so the header and the data are one file's)
    and its header checked for batch norm: rank 2 to 5, no empty axis."""
    file = open_regular(path, "--input")
    try:
        header = read_header(file)
        shape = header.shape
        if not MIN_RANK <= len(shape) <= MAX_RANK:
            raise file.error(
                f"shape {shape} has rank {len(shape)}; batch norm takes rank 2 to 5, "
                f"{shape_forms(channel_axis)}, with channels on axis {channel_axis}"
            )
        if 0 in shape:
            raise file.error(
                f"shape {shape} has an empty axis, so there is nothing to inspect; give an "
                "array with at least one value on every axis"
            )
    except BaseException:
        file.close()
        raise
    return file, header


def load_input(path: Path, dtype: str | None = None, channel_axis: int = 1) -> InputTensor:
    """Load a .npy tensor (never unpickling), check its rank and dtype, and convert it to
    ``dtype`` if given, or integer/boolean data to float32, with a notice. The file's SHA-256 is
    computed in a background thread (see InputTensor.pending_sha256)."""
    return plan_file(path, dtype, channel_axis=channel_axis).obtain()


def plan_file(
    path: Path, dtype: str | None = None, may_group: bool = False, channel_axis: int = 1
) -> PlannedInput:
    """Check a .npy file's header (rank, dtype), holding the file open; obtain() loads it as
    load_input does. ``may_group``: PyTorch may run over channel groups where the shape and
    layout allow. The file holds the channels on ``channel_axis``."""
    file, header = _opened_input(path, channel_axis)
    try:
        axis = resolve_axis(channel_axis, len(header.shape), f"--input {path}")
        target, notice = _conversion_for(header.dtype, dtype, path)
    except BaseException:
        file.close()
        raise
    shape = header.shape
    core = to_core_shape(tuple(shape), axis)
    by_groups = (
        may_group and axis == 1 and groups_reproduce_whole(core, not header.fortran_order)
    )
    # A conversion reads the file block by block into the new dtype's array.
    obtaining = min(header.nbytes, READ_BYTES) if target != header.dtype else 0
    return PlannedInput(
        core,
        format_of(target).name,
        lambda: _load(file, header, target, notice, axis),
        by_groups,
        axis,
        obtaining,
        what=f"--input {path} ({shape_text(shape)} {header.dtype.name})",
        advice="inspect a slice of it saved as a smaller .npy, or use --stats-only",
    )


def _load(
    file: OpenFile, header: NpyHeader, target: np.dtype, notice: str | None, axis: int
) -> InputTensor:
    # Read in large reads (3x faster than np.load here), each hashed from memory as it lands:
    # the hash names exactly the bytes inspected, and nothing writes to them.
    digest = BackgroundSha256()
    extremes: list[tuple[int, int]] = []

    def note_extremes(values: np.ndarray) -> None:  # for the rounding notice of integers
        if values.dtype.kind in "iu" and values.size:
            extremes.append((int(values.min()), int(values.max())))

    try:
        array = read_data(
            file, header, digest.feed, target if notice is not None else None, note_extremes
        )
    finally:
        pending = digest.hexdigest()
        file.close()
    if notice is not None and extremes:
        lowest, highest = min(e[0] for e in extremes), max(e[1] for e in extremes)
        notice += _rounding_note(lowest, highest, target)
    info = InputInfo(
        "file",
        tuple(array.shape),
        format_of(target).name,
        None,
        str(file.path),
        None,
        (notice,) if notice else (),
        channel_axis=axis,
    )
    return InputTensor(np.moveaxis(array, axis, 1), info, pending)


def _dtype_text(dtype: np.dtype) -> str:
    """float32, or >f4 where the byte order is not this machine's."""
    return dtype.name if dtype.isnative else dtype.str


def plan_mapped(path: Path, dtype: str | None = None, channel_axis: int = 1) -> PlannedInput:
    """A .npy tensor to memory-map read-only for streaming statistics (--stats-only), without
    loading or hashing it; refuses what would need converting. obtain() maps it."""
    file, header = _opened_input(path, channel_axis)
    try:
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
        if header.fortran_order:
            map_array(file, header)  # refuses it
    except BaseException:
        file.close()
        raise

    def obtain() -> InputTensor:
        mapped = map_array(file, header)
        info = InputInfo(
            "file", header.shape, format_of(target).name, None, str(path), NOT_HASHED,
            channel_axis=axis,
        )
        return InputTensor(
            np.moveaxis(mapped.array, axis, 1),
            info,
            check_unchanged=mapped.check_unchanged,
            mapping=mapped.mapping,
        )

    return PlannedInput(
        to_core_shape(header.shape, axis),
        format_of(target).name,
        obtain,
        channel_axis=axis,
        mapped=True,
        what=f"--input {path} ({shape_text(header.shape)} {header.dtype.name})",
        advice="inspect a slice of it saved as a smaller .npy",
    )


def map_input(
    path: Path, dtype: str | None = None, channel_axis: int = 1
) -> tuple[InputTensor, object]:
    """Memory-map a .npy tensor read-only for streaming statistics (see plan_mapped): the
    tensor and the mmap (whose pages the reader may release)."""
    tensor = plan_mapped(path, dtype, channel_axis).obtain()
    return tensor, tensor.mapping
