"""Joining and using a torch.distributed process group (gloo, CPU), and the one rule for its
failures: a collective that fails or times out raises ``LostRanks``, which says the fault is
probably another rank's, so the launcher can name the rank that failed first.

Exists to run torch: torch is imported at the top (the only modules importing this one run in
a rank's process, or under torchrun).
"""

from __future__ import annotations

import os
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from bninspect.distributed.environment import LostRanks
from bninspect.text import counted


def join(rank: int, world: int, init_method: str, timeout: float) -> None:
    """Join the gloo group of ``world`` ranks as ``rank``, through ``init_method`` (file://
    for local runs, env:// under torchrun), with ``timeout`` seconds for the rendezvous and for
    every collective after it."""
    try:
        dist.init_process_group(
            "gloo",
            init_method=init_method,
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=timeout),
        )
    except (RuntimeError, ValueError) as exc:  # a store that timed out, an address refused
        raise LostRanks(
            f"could not join the process group of {counted(world, 'rank')} within {timeout:g} s "
            f"({_first_line(exc)})"
        ) from None


def join_from_environment(timeout: float) -> tuple[int, int]:
    """Join the group torchrun (or any env:// launcher) describes: its RANK, WORLD_SIZE,
    MASTER_ADDR and MASTER_PORT, used as they are. Returns (rank, world)."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    join(rank, world, "env://", timeout)
    return rank, world


def leave() -> None:
    """Leave the group (every rank must call it; the file store's file goes with the last)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def all_gather(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """Every rank's ``tensor`` (the same shape and dtype on each), stacked in rank order."""
    world = dist.get_world_size()
    parts = [torch.empty_like(tensor) for _ in range(world)]
    try:
        dist.all_gather(parts, tensor.contiguous())
    except RuntimeError as exc:  # DistBackendError and gloo's timeouts derive from it
        raise LostRanks(
            f"lost the other ranks while gathering {what} ({_first_line(exc)})"
        ) from None
    return torch.stack(parts)


def all_gather_array(array: np.ndarray, what: str) -> np.ndarray:
    """``all_gather`` of a float64 numpy array: shape (world, *array.shape)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
    return all_gather(tensor, what).numpy()


def barrier(what: str) -> None:
    try:
        dist.barrier()
    except RuntimeError as exc:
        raise LostRanks(
            f"lost the other ranks while waiting for {what} ({_first_line(exc)})"
        ) from None
