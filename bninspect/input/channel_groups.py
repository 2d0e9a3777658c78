"""When and how PyTorch's module can run over groups of channels in turn, so that ``run`` holds
one group's output at a time instead of the whole. Pure shape arithmetic; no torch.

PyTorch's CPU kernel computes each channel of a C-contiguous (N, C, ...) input with more than
one value per image alone, in the same order whatever the other channels are, so a module per
group gives one module's bits (tests/test_channel_groups.py checks this). One value per image
(rank 2, or (N, C, 1, 1)) takes its channels-last kernel, whose vector lanes span channels.
"""

from __future__ import annotations

import math

# Input bytes per group: each group's input copy and output stay small beside the input, and
# the comparison splits a group into two 8 MiB blocks, one per core here.
GROUP_BYTES = 16 << 20


def groups_reproduce_whole(shape: tuple[int, ...], c_contiguous: bool) -> bool:
    """Whether running the module group by group gives the bits of one module over an input of
    this shape and layout."""
    if len(shape) < 3 or not c_contiguous:
        return False
    return math.prod(shape[2:]) > 1


def channel_groups(
    shape: tuple[int, ...], itemsize: int, group_bytes: int | None = None
) -> list[tuple[int, int]]:
    """[(c0, c1), ...]: consecutive channel ranges of an (N, C, ...) array of ``itemsize``-byte
    values, each of about ``group_bytes`` (default GROUP_BYTES), at least one channel each."""
    channels = shape[1]
    per_group = _channels_per_group(shape, itemsize, group_bytes)
    return [(c0, min(channels, c0 + per_group)) for c0 in range(0, channels, per_group)]


def _channels_per_group(shape: tuple[int, ...], itemsize: int, group_bytes: int | None) -> int:
    channel_bytes = math.prod(shape) // max(shape[1], 1) * itemsize
    return max(1, (group_bytes or GROUP_BYTES) // max(channel_bytes, 1))


def group_bytes_held(shape: tuple[int, ...], itemsize: int) -> int:
    """The most bytes one group's input copy and output take together (arithmetic only: no
    list of the groups, however many channels there are)."""
    channel_bytes = math.prod(shape) // max(shape[1], 1) * itemsize
    widest = min(_channels_per_group(shape, itemsize, None), shape[1])
    return 2 * widest * channel_bytes
