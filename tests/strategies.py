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
