"""The C kernels (bninspect.numerics._kernels) made convenient: the work split into
cache-friendly blocks, run on a few threads (the kernels release the GIL), and the per-block
results merged.

Arrays are viewed as contiguous (N, C, S), S the product of the spatial sizes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from bninspect.dtypes import bits_view, float_format
from bninspect.numerics import _kernels

# Input bytes per block: large enough that Python's per-call cost (~0.2 ms of the main
# thread's time, against ~0.8 ms of a worker's per 8 MiB) stays small, small enough that the
# threads share the work evenly, a progress bar moves, and a streamed file's mapped pages stay
# few. Inputs of a GiB or more take 32 MiB blocks (streaming ~3% faster here).
BLOCK_BYTES = 8 << 20
LARGE_BLOCK_BYTES = 32 << 20


def block_bytes_for(nbytes: int) -> int:
    """Bytes per block for an input of ``nbytes``: at least 32 blocks, within the two sizes."""
    return min(LARGE_BLOCK_BYTES, max(BLOCK_BYTES, nbytes // 32))


M_FIELDS, E_FIELDS = 11, 4  # per-channel outputs of _kernels.moments and output_errors
U = 2.0**-53  # float64's unit roundoff

Progress = Callable[[int], None]  # told the input bytes of each finished block


def worker_count() -> int:
    """Threads for the kernels: the CPUs this process may use, at most 8; or as many as
    BNINSPECT_KERNEL_THREADS says (set for each of several ranks sharing a machine)."""
    given = os.environ.get("BNINSPECT_KERNEL_THREADS", "")
    if given.isdigit() and int(given) > 0:
        return min(8, int(given))
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(8, available))


@dataclass(frozen=True)
class Region:
    """Rows [n0, n1), channels [c0, c1), positions [s0, s1) of an (N, C, S) array."""

    n0: int
    n1: int
    c0: int
    c1: int
    s0: int
    s1: int

    def values(self, S: int) -> int:
        return (self.n1 - self.n0) * (self.c1 - self.c0) * (self.s1 - self.s0)


def ncs(array: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    """The array as a C-contiguous buffer and its (N, C, S)."""
    N, C = array.shape[0], array.shape[1]
    return bits_view(np.ascontiguousarray(array)), N, C, array.size // max(N * C, 1)


def channels_moved(array: np.ndarray) -> np.ndarray | None:
    """For an (N, C, ...) array that is a view of a C-contiguous array with its channels on
    another axis (``numpy.moveaxis(u, axis, 1)``: channels last, say), that memory as a
    C-contiguous (P, C, Q) array: P the product of the sizes before the channel axis, Q of
    those after it. Channel c's values come in the same order in both, (n, s) = (p, q) in
    lexicographic order, so per-channel kernels can read (P, C, Q) in place. None for a
    C-contiguous array (it needs nothing) or any other layout."""
    if array.ndim < 2 or array.flags.c_contiguous:
        return None
    for axis in range(array.ndim):
        if axis == 1:
            continue
        moved = np.moveaxis(array, 1, axis)
        if moved.flags.c_contiguous:
            before = math.prod(moved.shape[:axis])
            return moved.reshape(before, array.shape[1], -1)
    return None


# A layout other than (N, C, S) is read a tile at a time: a transposed copy this small stays in
# cache (measured 3-7 GB/s, against 0.6 GB/s for one transposed copy of a few MiB), and the
# pages of a memory map are released every SLAB_BYTES of it.
TILE_BYTES = 64 << 10
SLAB_BYTES = 4 << 20
# Channels per tile: a tile writes this many rows of the gathered block, each a run of
# positions; hundreds of rows 64 KiB apart evict each other from the cache (measured 1.5x
# slower at 256 channels than tiles of 64).
CHANNEL_TILE = 64


def _values_of(moved: np.ndarray, c0: int, c1: int, t0: int, t1: int) -> np.ndarray:
    """Channels [c0, c1) at positions [t0, t1) of the channel's sequence, from the (P, C, Q)
    array ``moved``, as a (c1 - c0, t1 - t0) array (a view where possible)."""
    Q = moved.shape[2]
    p0, q0 = divmod(t0, Q)
    p1, q1 = divmod(t1, Q)
    if p0 == p1:
        return moved[p0, c0:c1, q0:q1]
    parts = []
    if q0:
        parts.append(moved[p0, c0:c1, q0:])
        p0 += 1
    if p1 > p0:
        middle = moved[p0:p1, c0:c1, :]
        parts.append(middle.transpose(1, 0, 2).reshape(c1 - c0, -1) if Q > 1 else middle[..., 0].T)
    if q1:
        parts.append(moved[p1, c0:c1, :q1])
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def gathered_region(
    moved: np.ndarray, r: Region, S: int, after_read: Callable[[Region], None] | None = None
) -> np.ndarray:
    """Region ``r`` of the (N, C, S) array whose memory is ``moved`` (see channels_moved), as a
    C-contiguous (rows, channels, positions) array: what the kernels would read of the region
    in a C-contiguous array, value for value in the same order. Read a tile at a time;
    ``after_read`` is told each slab read (about SLAB_BYTES of memory) as a Region spanning
    from its first value, (n0, c0, s0), to its last, (n1 - 1, c1 - 1, s1 - 1)."""
    rows, channels, length = r.n1 - r.n0, r.c1 - r.c0, r.s1 - r.s0
    out = np.empty((rows, channels, length), dtype=moved.dtype)
    itemsize, C = moved.dtype.itemsize, moved.shape[1]
    tile = max(1, TILE_BYTES // (itemsize * C))  # positions of every channel per tile
    slab = max(1, SLAB_BYTES // (itemsize * C))
    read = 0
    pending: Region | None = None

    def done(piece: Region, positions: int) -> None:
        nonlocal read, pending
        if after_read is None:
            return
        if pending is not None:  # the span from the slab's first value to this piece's last
            piece = Region(pending.n0, piece.n1, piece.c0, piece.c1, pending.s0, piece.s1)
        pending = piece
        read += positions
        if read >= slab:
            after_read(pending)
            pending, read = None, 0

    if length * channels <= tile * C and length == S:  # whole rows, several per tile
        per = max(1, tile // S)
        for n in range(r.n0, r.n1, per):
            m = min(r.n1, n + per)
            values = _values_of(moved, r.c0, r.c1, n * S, m * S)
            out[n - r.n0 : m - r.n0] = values.reshape(channels, m - n, S).transpose(1, 0, 2)
            done(Region(n, m, r.c0, r.c1, 0, S), (m - n) * S)
    else:  # row by row, a tile of positions (and of channels, where many) at a time
        group = min(channels, CHANNEL_TILE)
        positions = max(1, TILE_BYTES // (itemsize * group))
        for n in range(r.n0, r.n1):
            for s in range(r.s0, r.s1, positions):
                e = min(r.s1, s + positions)
                for c in range(r.c0, r.c1, group):
                    d = min(r.c1, c + group)
                    out[n - r.n0, c - r.c0 : d - r.c0, s - r.s0 : e - r.s0] = _values_of(
                        moved, c, d, n * S + s, n * S + e
                    )
                done(Region(n, n + 1, r.c0, r.c1, s, e), e - s)
    if pending is not None and after_read is not None:
        after_read(pending)
    return out


def regions(
    N: int, C: int, S: int, itemsize: int, block_bytes: int = BLOCK_BYTES
) -> Iterator[Region]:
    """Blocks of about ``block_bytes`` covering the array in memory order: whole rows when a
    row fits, else channel ranges of a row, else position ranges of one channel."""
    per_block = max(1, block_bytes // itemsize)
    if C * S <= per_block:
        rows = per_block // (C * S)
        for n in range(0, N, rows):
            yield Region(n, min(N, n + rows), 0, C, 0, S)
    elif S <= per_block:
        channels = per_block // S
        for n in range(N):
            for c in range(0, C, channels):
                yield Region(n, n + 1, c, min(C, c + channels), 0, S)
    else:
        for n in range(N):
            for c in range(C):
                for s in range(0, S, per_block):
                    yield Region(n, n + 1, c, c + 1, s, min(S, s + per_block))


def _run_blocks(
    work: Callable[[Region], np.ndarray],
    blocks: list[Region],
    itemsize: int,
    S: int,
    progress: Progress | None,
) -> Iterator[tuple[Region, np.ndarray]]:
    """Run ``work`` on every block on worker_count() threads, yielding results in order."""
    with ThreadPoolExecutor(worker_count()) as pool:
        for region, result in zip(blocks, pool.map(work, blocks), strict=True):
            if progress is not None:
                progress(region.values(S) * itemsize)
            yield region, result


@dataclass(frozen=True)
class Moments:
    """Per-channel statistics of the finite values, float64 arrays of shape (C,), and counts of
    the values left out. The sum is total + total_lo, within total_err of the exact sum of the
    finite values (a bound, from the kernel's arithmetic: see _kernels.c, "The sums' accuracy")."""

    count: np.ndarray  # finite values
    total: np.ndarray  # their sum, rounded
    mean: np.ndarray
    mean_lo: np.ndarray  # what the mean's rounding left out: mean + mean_lo is the mean
    m2: np.ndarray  # sum of squared deviations from the mean
    nan: np.ndarray
    posinf: np.ndarray
    neginf: np.ndarray
    total_lo: np.ndarray  # what the sum's rounding left out
    total_err: np.ndarray  # bound on |total + total_lo - exact sum|
    m2_lo: np.ndarray  # what m2's rounding left out


def two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a + b = hi + lo exactly, hi the rounded sum (Knuth's two-sum), elementwise."""
    hi = a + b
    back = hi - a
    return hi, (a - (hi - back)) + (b - back)


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Moments of the union of two disjoint sets of values (Chan et al.'s pairwise update). The
    means are carried as two parts: the difference of two close means is then exact, which
    keeps the rounding of a large mean out of m2."""
    count = a.count + b.count
    # Values near float64's limit may overflow to inf; the sides' own parts stand where the
    # other side is empty (inf * 0 would make NaN of a huge mean).
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        share = np.where(count > 0, b.count / count, 0.0)
        delta = (b.mean - a.mean) + (b.mean_lo - a.mean_lo)
        m2, m2_lo = _merged_m2(a, b, count)
        step = delta * share
        mean = a.mean + step
        back = mean - a.mean
        low = a.mean_lo + ((a.mean - (mean - back)) + (step - back))  # two-sum's error
        high = mean + low
        low = np.where(np.isfinite(high), low - (high - mean), 0.0)
        total, total_lo, total_err = _merged_sums(a, b)
    a_only, b_only = b.count == 0, a.count == 0

    def pick(both: np.ndarray, of_a: np.ndarray, of_b: np.ndarray) -> np.ndarray:
        return np.where(b_only, of_b, np.where(a_only, of_a, both))

    return Moments(
        count,
        pick(total, a.total, b.total),
        np.where(b_only, b.mean, np.where(a_only, a.mean, high)),
        np.where(b_only, b.mean_lo, np.where(a_only, a.mean_lo, low)),
        pick(m2, a.m2, b.m2),
        a.nan + b.nan,
        a.posinf + b.posinf,
        a.neginf + b.neginf,
        pick(total_lo, a.total_lo, b.total_lo),
        pick(total_err, a.total_err, b.total_err),
        pick(m2_lo, a.m2_lo, b.m2_lo),
    )


def _merged_sums(a: Moments, b: Moments) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sum of two sums held as two parts each, and its error bound: the high parts added
    error-free, the small rest plainly, which rounds by at most 2.02u of its magnitude. Where
    the sum leaves float64's range it is the plain (infinite or NaN) sum, of unbounded error."""
    high, rest = two_sum(a.total, b.total)
    small = rest + a.total_lo + b.total_lo
    rounding = 2.02 * U * (abs(rest) + abs(a.total_lo) + abs(b.total_lo))
    total, total_lo = two_sum(high, small)
    finite = np.isfinite(high) & np.isfinite(total)
    return (
        np.where(finite, total, a.total + b.total),
        np.where(finite, total_lo, 0.0),
        np.where(finite, a.total_err + b.total_err + rounding, np.inf),
    )


def two_product(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """a * b = p + e exactly (Dekker's product of Veltkamp's halves), elementwise, for
    magnitudes well inside float64's range (no overflow, and no underflow of e)."""
    p = a * b

    def split(v):
        c = 134217729.0 * v  # 2**27 + 1
        high = c - (c - v)
        return high, v - high

    ah, al = split(a)
    bh, bl = split(np.asarray(b, dtype=np.float64))
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _merged_m2(a: Moments, b: Moments, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """m2 of the union, m2_a + m2_b + delta**2 n_a n_b / n, in two parts: the difference of the
    means taken from their two parts each, its square and product error-free (Dekker), the
    sums error-free; only the weight n_a n_b / n rounds. Streaming a file block by block merges
    here once per block, and plain sums lost a ULP or more over a few dozen blocks."""
    high, low = two_sum(b.mean, -a.mean)
    low = low + (b.mean_lo - a.mean_lo)
    delta, low = two_sum(high, low)
    square, square_err = two_product(delta, delta)
    weight = a.count * b.count / np.where(count > 0, count, 1.0)
    term, term_err = two_product(square, weight)
    term_err = term_err + (square_err + 2 * delta * low) * weight
    m2, rest = two_sum(a.m2, b.m2)
    m2, rest2 = two_sum(m2, term)
    m2, m2_lo = two_sum(m2, rest + rest2 + a.m2_lo + b.m2_lo + term_err)
    plain = a.m2 + b.m2 + delta * delta * weight  # where the parts overflow, or lose bits
    fine = np.isfinite(m2) & np.isfinite(m2_lo) & (np.abs(square) < 2.0**900)
    return np.where(fine, m2, plain), np.where(fine, m2_lo, 0.0)


def _moments_of(out: np.ndarray) -> Moments:
    """Moments from the kernel's (C, M_FIELDS) output."""
    return Moments(*(out[:, k].copy() for k in range(M_FIELDS)))


def empty_moments(channels: int) -> Moments:
    return _moments_of(np.zeros((channels, M_FIELDS)))


def moments(
    array: np.ndarray,
    dtype: str,
    progress: Progress | None = None,
    block_bytes: int | None = None,
    after_block: Callable[[Region], None] | None = None,
) -> Moments:
    """Per-channel moments of an (N, C, ...) array of ``dtype`` (a name in dtypes.FORMATS).
    ``after_block`` is called with each finished region (the streaming reader releases its
    pages there). ``block_bytes`` defaults to block_bytes_for(array.nbytes)."""
    code, itemsize = float_format(dtype).kernel_code, array.dtype.itemsize
    if block_bytes is None:
        block_bytes = block_bytes_for(array.nbytes)
    moved = channels_moved(array)
    if moved is None:
        buffer, N, C, S = ncs(array)
    else:  # channels on another axis: each region gathered as the kernel would read it
        N, C = array.shape[0], array.shape[1]
        S = array.size // max(N * C, 1)

    def work(r: Region) -> np.ndarray:
        out = np.empty((r.c1 - r.c0, M_FIELDS))
        if moved is None:
            _kernels.moments(buffer, code, N, C, S, r.n0, r.n1, r.c0, r.c1, r.s0, r.s1, out)
            if after_block is not None:
                after_block(r)
        else:
            # The same values in the same order and the same chunks as in a C-contiguous
            # array, so the same bits: the region's result depends on its values alone.
            block = bits_view(gathered_region(moved, r, S, after_block))
            n, c, s = block.shape
            _kernels.moments(block, code, n, c, s, 0, n, 0, c, 0, s, out)
        return out

    total = empty_moments(C)
    blocks = list(regions(N, C, S, itemsize, block_bytes))
    for region, out in _run_blocks(work, blocks, itemsize, S, progress):
        part = np.zeros((C, M_FIELDS))  # channels outside the block: no values, no change
        part[region.c0 : region.c1] = out
        total = merge_moments(total, _moments_of(part))
    return total


@dataclass(frozen=True)
class OutputErrors:
    """Per channel, float64 arrays of shape (C,): the largest absolute and ULP error of an
    output against the reference, the largest |reference|, and the flat index (into the
    (N, C, S) array) of the largest ULP error, -1 if none."""

    max_abs: np.ndarray
    max_ulp: np.ndarray
    max_reference: np.ndarray
    argmax_ulp: np.ndarray


def output_errors(
    x: np.ndarray,
    y: np.ndarray,
    dtype: str,
    mean: np.ndarray,
    std: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    progress: Progress | None = None,
) -> OutputErrors:
    """Compare ``y`` with the reference (x - mean) / std * weight + bias (per-channel vectors,
    shape (C,)), element by element, as agreement.elementwise_errors would."""
    N, C = x.shape[0], x.shape[1]
    S = x.size // max(N * C, 1)
    moved_x, moved_y = channels_moved(x), channels_moved(y)
    if moved_x is not None and moved_y is not None and moved_x.shape == moved_y.shape:
        # Both with channels on another axis: compared in place as (P, C, Q), a channel's
        # values in the same order (its maxima are the same; its first largest error too).
        errors = output_errors(moved_x, moved_y, dtype, mean, std, weight, bias, progress)
        Q = moved_x.shape[2]
        flat = errors.argmax_ulp.astype(np.int64)
        p, within = np.divmod(flat, C * Q)
        c, q = np.divmod(within, Q)
        n, s = np.divmod(p * Q + q, max(S, 1))
        argmax = np.where(flat >= 0, (n * C + c) * S + s, -1).astype(np.float64)
        return OutputErrors(errors.max_abs, errors.max_ulp, errors.max_reference, argmax)
    xb, yb = ncs(x)[0], ncs(y)[0]
    form = float_format(dtype)
    params = np.ascontiguousarray(np.stack([mean, std, weight, bias], axis=1), dtype=np.float64)

    def work(r: Region) -> np.ndarray:
        out = np.empty((r.c1 - r.c0, E_FIELDS))
        _kernels.output_errors(
            xb,
            yb,
            form.kernel_code,
            N,
            C,
            S,
            r.n0,
            r.n1,
            r.c0,
            r.c1,
            r.s0,
            r.s1,
            params,
            form.mantissa_bits,
            form.min_exponent,
            out,
        )
        return out

    result = np.zeros((C, E_FIELDS))
    result[:, 3] = -1
    for r, out in _run_blocks(
        work, list(regions(N, C, S, x.dtype.itemsize)), x.dtype.itemsize, S, progress
    ):
        seen = result[r.c0 : r.c1]
        better = out[:, 1] > seen[:, 1]
        seen[better, 3] = out[better, 3]
        seen[:, :3] = np.maximum(seen[:, :3], out[:, :3])
    return OutputErrors(*(result[:, k].copy() for k in range(E_FIELDS)))


def joined_errors(parts: list[tuple[int, OutputErrors]], shape: tuple[int, ...]) -> OutputErrors:
    """The errors of a whole (N, C, ...) output from those of its channel groups, each given with
    its first channel, in channel order: each group's argmax_ulp, a flat index into the group's
    (N, c, S), becomes one into the whole (N, C, S)."""
    C, S = shape[1], int(np.prod(shape[2:], dtype=np.int64))
    fields: list[list[np.ndarray]] = [[] for _ in range(E_FIELDS)]
    for c0, part in parts:
        flat = part.argmax_ulp.astype(np.int64)
        n, within = np.divmod(flat, len(part.max_abs) * S)
        c, s = np.divmod(within, S)
        whole = np.where(flat >= 0, (n * C + c0 + c) * S + s, -1).astype(np.float64)
        for k, values in enumerate((part.max_abs, part.max_ulp, part.max_reference, whole)):
            fields[k].append(values)
    result = OutputErrors(*(np.concatenate(f) if f else np.zeros(0) for f in fields))
    if len(result.max_abs) != C:
        raise ValueError(f"channel groups cover {len(result.max_abs)} channels, not {C}")
    return result


def welford(x: np.ndarray, dtype: str) -> np.ndarray:
    """Per channel, (mean, biased variance) by Welford's update in working precision (float32,
    or float64 for float64 input), in memory order: shape (C, 2)."""
    buffer, N, C, S = ncs(x)
    out = np.empty((C, 2))
    _kernels.welford(buffer, float_format(dtype).kernel_code, N, C, S, out)
    return out
