"""Who gets what: the batch's samples split over ranks (--ranks, --rank-sizes), and a list of
files split over ranks (--stats-only on a pattern). Pure functions on sizes and names; every
refusal says why and what to give instead."""

from __future__ import annotations

import glob
from pathlib import Path

from bninspect.errors import BnInspectError, OptionError
from bninspect.numerics.pooling import even_sizes
from bninspect.text import counted

RANK_OPTIONS = "--ranks K or --rank-sizes"


def parse_rank_sizes(text: str) -> tuple[int, ...]:
    """--rank-sizes "5,3,0,8": samples per rank, in rank order; empty ranks allowed."""
    sizes = []
    for position, part in enumerate(p.strip() for p in text.split(",")):
        if not part.isdigit():
            raise OptionError(
                f"--rank-sizes '{text}': entry {position} ('{part}') is not a count of samples; "
                "give one integer >= 0 per rank, like 5,3,0,8"
            )
        sizes.append(int(part))
    return tuple(sizes)


def batch_split(samples: int, ranks: int | None, rank_sizes: str | None) -> tuple[int, ...]:
    """The batch's ``samples`` (axis 0) split over the ranks asked for: --ranks K evenly (the
    first ranks one larger, as numpy.array_split), or --rank-sizes as given, which must add up
    to the batch."""
    if ranks is not None and rank_sizes is not None:
        raise OptionError("--ranks and --rank-sizes both given; give one (--rank-sizes sets both)")
    if rank_sizes is not None:
        sizes = parse_rank_sizes(rank_sizes)
        if sum(sizes) != samples:
            raise OptionError(
                f"--rank-sizes {rank_sizes} adds up to {sum(sizes)} samples, but the batch has "
                f"{samples} on axis 0; give sizes adding up to {samples}"
            )
        return sizes
    assert ranks is not None
    if ranks > samples:
        raise OptionError(
            f"--ranks {ranks}: the batch has only {counted(samples, 'sample')} on axis 0, so "
            "some ranks "
            f"would hold none; give at most --ranks {samples}, or --rank-sizes to leave ranks "
            "empty on purpose"
        )
    return even_sizes(samples, ranks)


GLOB_CHARACTERS = frozenset("*?[")


def is_pattern(text: str) -> bool:
    """Whether --input names many files by a shell pattern (quoted so the shell leaves it)."""
    return any(c in GLOB_CHARACTERS for c in text) and not Path(text).exists()


def expand_pattern(pattern: str) -> list[Path]:
    """The .npy files a pattern names, sorted by name, so every rank, on any machine, sees the
    same list in the same order. A directory is refused, not read whole: a pattern says
    which of its files are the data (a --save-output beside them is not)."""
    if Path(pattern).is_dir():
        raise BnInspectError(
            f"--input {pattern}: is a directory; give its files as a quoted pattern: --input "
            f"'{Path(pattern) / '*.npy'}'"
        )
    found = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
    files = [p for p in found if p.is_file()]
    if not files:
        raise BnInspectError(
            f"--input '{pattern}': no file matches the pattern; check the directory and the "
            "quotes (the pattern is expanded by bninspect, not the shell)"
        )
    return files


def file_split(sizes: list[int], ranks: int, pattern: str) -> tuple[tuple[int, int], ...]:
    """(first, end) indices of each rank's files: contiguous runs in name order, at least one
    file each, about the same bytes each (each boundary where the running total of bytes is
    nearest to r / ranks of the whole)."""
    count = len(sizes)
    if ranks > count:
        raise OptionError(
            f"--ranks {ranks}: '{pattern}' matches {count} file{'s' * (count != 1)}, and each "
            f"rank streams whole files; give at most --ranks {count}"
        )
    total = sum(sizes)
    running = [0]
    for size in sizes:
        running.append(running[-1] + size)
    bounds = [0]
    for rank in range(1, ranks):
        target = total * rank / ranks
        lowest, highest = bounds[-1] + 1, count - (ranks - rank)
        best = min(range(lowest, highest + 1), key=lambda k: (abs(running[k] - target), k))
        bounds.append(best)
    bounds.append(count)
    return tuple((bounds[r], bounds[r + 1]) for r in range(ranks))
