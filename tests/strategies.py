"""Hypothesis strategies for batch-norm inputs, in one place."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st


@st.composite
def shapes(draw, min_rank: int = 2, max_rank: int = 5, max_size: int = 4):
    """(N, C, *spatial) with at least two values per channel (train mode needs them)."""
    rank = draw(st.integers(min_rank, max_rank))
    shape = [draw(st.integers(1, max_size)) for _ in range(rank)]
    if int(np.prod(shape)) // shape[1] < 2:
        shape[0] = 2
    return tuple(shape)


@st.composite
def tensors(draw, dtype=np.float32, max_rank: int = 5):
    """A standard-normal tensor of a drawn shape, stretched and shifted per draw."""
    shape = draw(shapes(max_rank=max_rank))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([1e-3, 0.1, 1.0, 10.0, 1e3]))
    offset = draw(st.sampled_from([0.0, 0.5, -3.0, 100.0]))
    x = np.random.default_rng(seed).standard_normal(shape) * scale + offset
    return x.astype(dtype)


@st.composite
def dyadic_tensors(draw):
    """Tensors of multiples of 1/8 below 2**10: every sum, shift and mean of them stays exact
    in float32 and float64, so properties can be checked without rounding noise."""
    shape = draw(shapes(max_size=3))
    seed = draw(st.integers(0, 2**32 - 1))
    values = np.random.default_rng(seed).integers(-(2**13), 2**13, size=shape)
    return (values / 8).astype(np.float32)


def vectors(channels: int, low: float, high: float):
    """A per-channel float list of length ``channels``."""
    return st.lists(
        st.floats(low, high, allow_nan=False, width=32), min_size=channels, max_size=channels
    )


def conventions():
    """Any framework's convention."""
    from bninspect.conventions.rules import CONVENTIONS

    return st.sampled_from(list(CONVENTIONS.values()))


@st.composite
def batched_tensors(draw, max_steps: int = 4):
    """(x, batch_size): a float32 tensor of 1 to ``max_steps`` batches stacked on axis 0, each
    with at least two values per channel."""
    shape = draw(shapes(max_rank=4, max_size=3))
    steps = draw(st.integers(1, max_steps))
    seed = draw(st.integers(0, 2**32 - 1))
    offset = draw(st.sampled_from([0.0, 0.5, -3.0]))
    full = (shape[0] * steps, *shape[1:])
    x = np.random.default_rng(seed).standard_normal(full) + offset
    return x.astype(np.float32), shape[0]


# Magnitudes of the values that cancel, and of the values among them, per dtype: up to where the
# squares stay within float64 (float16: within float16's own range).
_CANCELLING = {
    np.dtype(np.float64): ([1e3, 1e8, 1e16, 1e100], [1e-8, 1e-3, 1.0, 10.0]),
    np.dtype(np.float32): ([1e3, 1e8, 1e16, 1e30], [1e-8, 1e-3, 1.0, 10.0]),
    np.dtype(np.float16): ([1e2, 1e3, 3e4, 6e4], [1e-3, 0.1, 1.0]),
}


@st.composite
def cancelling_tensors(draw, dtype=np.float64):
    """Channels whose values cancel, as the review found (50 x 1e16, 50 x -1e16 and ten standard
    normals: the mean is the normals' sum / 110): in each channel a drawn number of +big and
    -big pairs at shuffled positions among small normal values (and, drawn, exact zeros), so
    the sum is far below sum |x| and the small values' low bits decide it."""
    dtype = np.dtype(dtype)
    shape = draw(shapes())
    seed = draw(st.integers(0, 2**32 - 1))
    bigs, smalls = _CANCELLING[dtype]
    big, small = draw(st.sampled_from(bigs)), draw(st.sampled_from(smalls))
    zeros = draw(st.booleans())
    rng = np.random.default_rng(seed)
    x = np.moveaxis(rng.standard_normal(shape) * small, 1, 0).reshape(shape[1], -1)
    for channel in x:  # a view of each channel's values
        pairs = int(rng.integers(0, channel.size // 2 + 1))
        where = rng.permutation(channel.size)
        channel[where[:pairs]] = big
        channel[where[pairs : 2 * pairs]] = -big
        if zeros:
            channel[where[2 * pairs :][: channel.size // 4]] = 0.0
    x = np.moveaxis(x.reshape(shape[1], shape[0], *shape[2:]), 0, 1)
    return np.ascontiguousarray(x.astype(dtype))


@st.composite
def float_channels(draw, dtype=np.float64):
    """One channel, (n, 1), of hypothesis' own floats of the dtype: mixed magnitudes, signed
    zeros, subnormals, values that cancel."""
    dtype = np.dtype(dtype)
    width = {2: 16, 4: 32, 8: 64}[dtype.itemsize]
    limit = {16: 2.0**15, 32: 2.0**100, 64: 2.0**330}[width]  # squares within float64
    values = draw(st.lists(st.floats(-limit, limit, width=width), min_size=2, max_size=60))
    return np.array(values, dtype=dtype).reshape(-1, 1)


# Hostile .npy files: a valid file most of the time, with up to two of its header fields or
# its length broken (sizes negative, bool, beyond int64; dtypes numpy cannot read or bninspect
# must refuse; data longer or shorter than declared; a damaged dict, an unknown version).
# Sizes no array can have: negative, bool (an int to numpy's parser), or beyond int64 once
# multiplied; and an empty axis.
_HOSTILE_SIZES = st.one_of(
    st.integers(-(2**64), -1), st.booleans(), st.integers(2**31, 2**66), st.just(0)
)
_VALID_DESCRS = ["<f4", "<f4", "<f8", "<f2", ">f4", ">f8", "<i4", "|u1", "|b1", "<i8", "<u2"]
_HOSTILE_DESCRS = [
    "<c8", "|V4", "<U3", "|O", "<M8[s]", "|S0", "<f16", "('<f4', (2,))", "[('a', '<f4')]",
    "garbage", "<f0", "|V0", "<m8[s]",
]
_MUTATIONS = [
    "rank", "zero", "descr", "fortran", "shape text", "dict", "version", "header length",
    "data longer", "data shorter", "pickle", "magic only",
]


@st.composite
def npy_files(draw):
    """(the bytes of a .npy file, a description of the draw)."""
    shape = [draw(st.integers(1, 4)) for _ in range(draw(st.integers(2, 5)))]
    descr = draw(st.sampled_from(_VALID_DESCRS))
    fortran: object = draw(st.booleans())
    version = draw(st.sampled_from([(1, 0), (1, 0), (2, 0)]))
    how_many = draw(st.sampled_from([0, 0, 1, 1, 1, 2]))  # 0: valid but for the size below
    mutations = list(dict.fromkeys(draw(st.sampled_from(_MUTATIONS)) for _ in range(how_many)))
    if draw(st.sampled_from([False, False, False, True])):  # a size no array can have
        mutations.insert(0, "size")
    if "size" in mutations:
        shape[draw(st.integers(0, len(shape) - 1))] = draw(_HOSTILE_SIZES)
    if "rank" in mutations:
        shape = shape[: draw(st.sampled_from([0, 1]))] if draw(st.booleans()) else shape + [2] * 3
    if "zero" in mutations and shape:
        shape[draw(st.integers(0, len(shape) - 1))] = 0
    if "descr" in mutations:
        descr = draw(st.sampled_from(_HOSTILE_DESCRS))
    if "fortran" in mutations:
        fortran = draw(st.sampled_from(["'yes'", 1, None]))
    shape_text = repr(tuple(shape))
    if "shape text" in mutations:
        shape_text = draw(st.sampled_from(["[2, 3]", "(2.0, 3)", "None", "(2, 'a')", "((2,),)"]))
    descr_text = descr if descr.startswith(("(", "[")) else repr(descr)
    fields = f"'descr': {descr_text}, 'fortran_order': {fortran}, 'shape': {shape_text}, "
    if "dict" in mutations:
        fields = draw(st.sampled_from(["", "'descr': '<f4'", "__import__('os')", "{{{", "'a': 1"]))
    header = ("{" + fields + "}").encode("latin-1")
    if "version" in mutations:
        version = draw(st.sampled_from([(3, 0), (0, 0), (9, 9)]))
    wide = version >= (2, 0)
    prefix_length = 12 if wide else 10
    header += b" " * ((64 - (prefix_length + len(header) + 1) % 64) % 64) + b"\n"
    length = len(header)
    if "header length" in mutations:
        length = draw(st.sampled_from([0, 1, length - 1, length + 1, 10001, 2**16 - 1]))
    magic = b"\x93NUMPY" + bytes(version) + length.to_bytes(4 if wide else 2, "little")
    try:
        count = 1
        for size in shape:
            count *= int(size)
        declared = max(0, count) * np.dtype(descr).itemsize
    except (TypeError, ValueError, SyntaxError):
        declared = 0
    if declared > 1 << 16:
        declared = 0  # a size no test writes: data of a drawn length instead
    data_length = declared
    if "data longer" in mutations:
        data_length += draw(st.sampled_from([1, 7, 128, declared or 1]))
    if "data shorter" in mutations:
        data_length = max(0, data_length - draw(st.sampled_from([1, 4, 128])))
    seed = draw(st.integers(0, 2**32 - 1))
    values = np.random.default_rng(seed).standard_normal(data_length // 4 + 1) * 3 + 1
    blob = magic + header + values.astype(np.float32).tobytes()[:data_length]
    if "pickle" in mutations:
        blob = b"\x80\x04\x95" + blob
    if "magic only" in mutations:
        blob = blob[: draw(st.integers(0, len(magic)))]
    described = (
        f"mutations={mutations} version={version} descr={descr} fortran={fortran} "
        f"shape={shape_text} header_length={length} data={data_length} (declared {declared})"
    )
    return blob, described


# Values that stress the arithmetic: NaN, infinities, the largest and smallest numbers of the
# dtype, subnormals, signed zeros, among ordinary ones.
@st.composite
def hostile_tensors(draw):
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    shape = draw(shapes(max_size=3))
    info = np.finfo(dtype)
    specials = [np.nan, np.inf, -np.inf, info.max, -info.max, info.tiny, info.smallest_subnormal,
                -0.0, 0.0, 1.0, info.max / 2, info.eps]
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    picks = draw(st.lists(st.sampled_from(specials), min_size=1, max_size=x.size))
    where = rng.permutation(x.size)[: len(picks)]
    with np.errstate(over="ignore"):
        x.reshape(-1)[where] = np.array(picks, dtype=np.float64).astype(dtype)
    if draw(st.booleans()):  # a whole channel of one special value
        x[:, 0] = dtype(draw(st.sampled_from(specials)))
    return x
