"""Population statistics of many .npy files (precise batch-norm statistics of a dataset's
activations): each rank streams its share of the files through the memory-mapped statistics
kernel, merging count, mean and m2 file by file with Chan et al.'s pairwise formula
(kernels.merge_moments); then the ranks' partial results, C numbers per field per rank, are
gathered and merged the same way, in rank order. One process is the case of one rank.

No torch here: a rank's collectives come in as ``gather`` (group.all_gather_array in a rank's
process; nothing at all for one process), so the same code runs in one process, in the ranks of
a local run and under torchrun.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bninspect.distributed.environment import LostRanks
from bninspect.distributed.exchange import array_to_moments, moments_to_array
from bninspect.distributed.sharding import file_split
from bninspect.errors import BnInspectError
from bninspect.input.npy_files import map_array, read_header, release_pages
from bninspect.input.parsing import MAX_RANK, MIN_RANK
from bninspect.numerics import kernels
from bninspect.numerics.kernels import Moments, Region
from bninspect.text import counted

# gather(array, what): every rank's float64 ``array``, stacked (world, *shape), in rank order.
Gather = Callable[[np.ndarray, str], np.ndarray]
FILE_DTYPES = ("float16", "float32", "float64")


@dataclass(frozen=True)
class FileInfo:
    path: Path
    shape: tuple[int, ...]
    dtype: str
    nbytes: int  # of the array's data


def check_file(path: Path) -> FileInfo:
    """A file --stats-only can stream as it is: a complete .npy of rank 2 to 5, no empty axis,
    float16, float32 or float64 in this machine's byte order, C order."""
    header = read_header(path, "--input")
    shape, dtype = header.shape, header.dtype
    if not MIN_RANK <= len(shape) <= MAX_RANK or 0 in shape:
        raise BnInspectError(
            f"--input {path}: shape {shape} is not (N, C, ...) of rank 2 to 5 with values on "
            "every axis; every file of the pattern must be one"
        )
    if dtype.kind != "f" or dtype.name not in FILE_DTYPES or not dtype.isnative:
        raise BnInspectError(
            f"--input {path}: dtype {dtype.str} cannot be streamed as it is; --stats-only on a "
            "pattern reads float16, float32 or float64 in native byte order (save it with "
            "numpy.save(path, x.astype(numpy.float32)))"
        )
    if header.fortran_order:
        raise BnInspectError(
            f"--input {path}: is stored in Fortran order, which cannot be streamed channel by "
            "channel; save it with numpy.save(path, numpy.ascontiguousarray(x))"
        )
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return FileInfo(path, tuple(shape), dtype.name, nbytes)


def _releasing(mapping, array: np.ndarray, data_offset: int) -> Callable[[Region], None]:
    """A callback dropping the mapped pages of each finished block of ``array`` (N, C, S), so
    resident memory stays at what is being read, whatever the files' sizes."""
    N, C = array.shape[0], array.shape[1]
    S, itemsize = array.size // (N * C), array.dtype.itemsize

    def release(r: Region) -> None:
        start = ((r.n0 * C) + r.c0) * S + r.s0
        end = ((r.n1 - 1) * C + (r.c1 - 1)) * S + r.s1
        release_pages(mapping, data_offset + start * itemsize, data_offset + end * itemsize)

    return release


def stream_file(info: FileInfo) -> Moments:
    """The per-channel moments of one file, streamed from a read-only memory map."""
    header = read_header(info.path, "--input")
    mapped = map_array(info.path, header)  # a file that shrinks meanwhile gives no SIGBUS
    array, mapping = mapped.array, mapped.mapping
    try:
        moments = kernels.moments(
            array, info.dtype, after_block=_releasing(mapping, array, header.data_offset)
        )
        mapped.check_unchanged()  # changed while read: said, not streamed half changed
        return moments
    finally:
        del array
        mapped.close()


@dataclass(frozen=True)
class Share:
    """What one rank streamed: its files (first, end) in the sorted list, their bytes, values
    per channel, and the seconds its streaming took."""

    rank: int
    first: int
    end: int
    nbytes: int
    values: int
    seconds: float


@dataclass(frozen=True)
class Population:
    """The merged moments of every file, per channel; who streamed what; the files' dtypes."""

    moments: Moments
    values: int  # values per channel, finite or not
    channels: int
    shares: tuple[Share, ...]
    dtypes: tuple[str, ...]
    seconds: float  # from the start of streaming to the merged result, on this rank


def _no_gather(array: np.ndarray, what: str) -> np.ndarray:
    return array[None]


def population(
    files: list[Path],
    pattern: str,
    rank: int = 0,
    world: int = 1,
    gather: Gather = _no_gather,
) -> Population:
    """This rank's share of ``files`` (all of them, sorted, the same list on every rank)
    streamed and merged, then merged with every other rank's: the population's moments, on
    every rank. A rank whose files are unreadable raises its error; the others raise
    LostRanks instead of waiting for it."""
    start = time.perf_counter()
    bounds = file_split([os.stat(p).st_size for p in files], world, pattern)
    first, end = bounds[rank]
    try:
        mine, failure = [check_file(p) for p in files[first:end]], None
    except BnInspectError as exc:
        mine, failure = [], exc
    channels = {info.shape[1] for info in mine}
    if len(channels) > 1:
        a, b = (next(i for i in mine if i.shape[1] == c) for c in sorted(channels)[:2])
        failure = BnInspectError(
            f"--input: {a.path} has {counted(a.shape[1], 'channel')} (axis 1) and {b.path} "
            f"{b.shape[1]}; "
            "population statistics need the same channels in every file"
        )
    codes = {name: k for k, name in enumerate(FILE_DTYPES)}
    summary = np.zeros(2 + len(FILE_DTYPES))
    summary[0] = 1.0 if failure else 0.0
    summary[1] = channels.pop() if len(channels) == 1 and not failure else 0
    for info in mine:
        summary[2 + codes[info.dtype]] = 1
    summaries = gather(summary, "each rank's file headers")
    if failure is not None:
        raise failure
    failed = [r for r in range(world) if summaries[r, 0]]
    if failed:
        raise LostRanks(f"rank {failed[0]} could not read its files (it says why)")
    counts = sorted({int(c) for c in summaries[:, 1]})
    if len(counts) > 1:
        owners = [next(r for r in range(world) if summaries[r, 1] == c) for c in counts[:2]]
        named = [
            f"{files[bounds[r][0]]} ({counted(c, 'channel')})"
            for r, c in zip(owners, counts, strict=False)
        ]
        raise BnInspectError(
            f"--input: files disagree on the channels (axis 1): {named[0]} and {named[1]}; "
            "population statistics need the same channels in every file"
        )
    C = counts[0]
    streamed = time.perf_counter()
    total = kernels.empty_moments(C)
    for info in mine:
        total = kernels.merge_moments(total, stream_file(info))
    seconds = time.perf_counter() - streamed
    values = sum(int(np.prod(i.shape, dtype=np.int64)) // i.shape[1] for i in mine)
    nbytes = sum(i.nbytes for i in mine)
    parts = gather(moments_to_array(total), "the ranks' moments")
    facts = gather(np.array([nbytes, values, seconds], dtype=np.float64), "the ranks' shares")
    merged = kernels.empty_moments(C)
    for r in range(world):
        merged = kernels.merge_moments(merged, array_to_moments(parts[r]))
    shares = tuple(
        Share(r, bounds[r][0], bounds[r][1], int(facts[r, 0]), int(facts[r, 1]), float(facts[r, 2]))
        for r in range(world)
    )
    dtypes = tuple(name for k, name in enumerate(FILE_DTYPES) if summaries[:, 2 + k].any())
    return Population(
        merged,
        sum(s.values for s in shares),
        C,
        shares,
        dtypes,
        time.perf_counter() - start,
    )
