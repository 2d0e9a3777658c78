"""A rank of a local run: ``python -m bninspect.distributed.worker FOLDER RANK PARENT_PID``.

The launcher (launch.py) writes FOLDER/task.json and starts one of these per rank. Each joins
the gloo group through the file FOLDER/rendezvous, runs every task of the launch in turn
(``regimes``: one batch split over the ranks; ``population``: files split over the ranks) and
writes its figures to FOLDER/rank{R}.{T}.npz. On failure it writes FOLDER/rank{R}.error, a
JSON object: "kind" ("own": this rank's fault; "lost": a collective failed, so probably
another rank's) and "message" (one line), and exits 1. Its output and any traceback go to
FOLDER/rank{R}.log, which the launcher's caller never shows unless asked.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import traceback
from pathlib import Path

import numpy as np

from bninspect.distributed.environment import LostRanks, commit_fault, injected_fault
from bninspect.errors import BnInspectError

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this rank if the launcher dies (a stray rank must never outlive the
    run), then check the launcher did not die before that was asked."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the launcher's own cleanup has to do
        pass
    if os.getppid() != parent:
        os._exit(1)


def _write_error(folder: Path, rank: int, kind: str, message: str) -> None:
    line = " ".join(message.split())  # one line, whatever the exception's text held
    temporary = folder / f"rank{rank}.error.tmp"
    temporary.write_text(json.dumps({"kind": kind, "message": line}))
    temporary.replace(folder / f"rank{rank}.error")


def _save(path: Path, figures: dict[str, np.ndarray]) -> None:
    temporary = path.with_suffix(".tmp.npz")
    np.savez(temporary, **figures)
    temporary.replace(path)


def run(folder: Path, rank: int) -> None:
    """Join the group, run every task, leave."""
    launch = json.loads((folder / "task.json").read_text())
    world, timeout = int(launch["world"]), float(launch["timeout"])
    fault = injected_fault(rank)
    from bninspect.distributed import group  # torch loads here

    group.join(rank, world, (folder / "rendezvous").as_uri(), timeout)
    commit_fault(fault, rank)
    for number, task in enumerate(launch["tasks"]):
        tag = f"rank{rank}.{number}"
        if task["kind"] == "regimes":
            from bninspect.distributed.regimes import run_regimes

            _save(folder / f"{tag}.npz", run_regimes(task, folder, rank, world, tag))
        elif task["kind"] == "population":
            from bninspect.distributed.exchange import moments_to_array
            from bninspect.distributed.population import population

            files = [Path(p) for p in task["files"]]
            found = population(files, task["pattern"], rank, world, group.all_gather_array)
            if rank == 0:
                shares = np.array(
                    [[s.first, s.end, s.nbytes, s.values, s.seconds] for s in found.shares]
                )
                _save(
                    folder / f"{tag}.npz",
                    {
                        "moments": moments_to_array(found.moments),
                        "values": np.array(found.values),
                        "shares": shares,
                        "dtypes": np.array(found.dtypes),
                        "seconds": np.array(found.seconds),
                    },
                )
        else:
            raise BnInspectError(f"unknown task kind {task['kind']!r}")
    group.leave()


def main(argv: list[str]) -> int:
    folder, rank, parent = Path(argv[0]), int(argv[1]), int(argv[2])
    _die_with_parent(parent)
    try:
        run(folder, rank)
    except BnInspectError as exc:
        traceback.print_exc()
        _write_error(folder, rank, "lost" if isinstance(exc, LostRanks) else "own", str(exc))
        return 1
    except Exception as exc:
        traceback.print_exc()
        _write_error(folder, rank, "own", f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
