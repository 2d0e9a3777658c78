"""Where the ranks run and what they may use: torchrun's environment when bninspect runs under
it, the environment of the ranks a local run starts (loopback only), threads per rank, and the
fault-injection hook the tests use. No torch here: the launcher imports this."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from bninspect.errors import BnInspectError

# A local run binds and connects on the loopback interface only: gloo otherwise picks the
# address the host name resolves to, which can be a public one.
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
# What a launcher like torchrun sets for its workers: a local run's ranks must not inherit it.
LAUNCHER_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
)
# The statistics kernels' threads (numerics.kernels.worker_count reads it).
KERNEL_THREADS = "BNINSPECT_KERNEL_THREADS"
# Testing hook: "RANK:KIND[,RANK:KIND...]" makes that rank fail on purpose after joining the
# group: KIND "raise" raises an error, "hang" sleeps until killed (so a test can look at its
# sockets, kill it, or see the others time out). Only tests set it.
FAULT = "BNINSPECT_TEST_FAULT"
DEFAULT_TIMEOUT = 300.0  # seconds a collective (or the rendezvous) waits for the other ranks


class LostRanks(BnInspectError):
    """This rank cannot go on because of another: a collective failed or timed out, or another
    rank said it failed. The launcher names the rank whose own fault it was, if one said so."""


@dataclass(frozen=True)
class Torchrun:
    """This process is one rank of a group an env:// launcher (torchrun) started."""

    rank: int
    world: int
    local_world: int


def torchrun() -> Torchrun | None:
    """The env:// launcher's description of this process, if it was started by one: RANK and
    WORLD_SIZE set (torchrun also sets MASTER_ADDR, MASTER_PORT and LOCAL_WORLD_SIZE)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    return Torchrun(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_WORLD_SIZE", world)))


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_rank(ranks_on_this_machine: int) -> int:
    """The CPUs this process may use shared out between the ranks on this machine; under an
    env:// launcher, OMP_NUM_THREADS where it set one (torchrun sets 1 for several ranks)."""
    if torchrun() is not None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    return max(1, usable_cpus() // ranks_on_this_machine)


def local_rank_environment(threads: int) -> dict[str, str]:
    """The environment of a rank a local run starts: this one, loopback pinned, threads set,
    and no launcher's rank variables."""
    environment = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    environment.update(LOOPBACK)
    environment[KERNEL_THREADS] = str(threads)
    environment["OMP_NUM_THREADS"] = str(threads)
    return environment


def injected_fault(rank: int) -> str | None:
    """The fault FAULT asks this rank to commit, if any."""
    for entry in os.environ.get(FAULT, "").split(","):
        who, _, kind = entry.partition(":")
        if who.strip() == str(rank) and kind in ("raise", "hang"):
            return kind
    return None


def commit_fault(kind: str | None, rank: int) -> None:
    """Fail as FAULT asked (see FAULT); nothing when ``kind`` is None."""
    if kind == "raise":
        raise RuntimeError(f"fault injected by {FAULT} on rank {rank}")
    if kind == "hang":
        while True:
            time.sleep(60)
