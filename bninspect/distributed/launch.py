"""Start the ranks of a local run (``--ranks K``) and see them through.

K processes (``python -m bninspect.distributed.worker``), each joining one gloo process group
through a file:// rendezvous in a private temporary directory, bound to the loopback interface
(environment.LOOPBACK). The launcher watches them: the first rank that fails or dies ends the
run, the others are stopped at once, and the error names that rank and what it said; a rank that
hangs is ended by the group's timeout (every collective waits at most ``timeout`` seconds). The
directory, with the rendezvous file and every rank's report, is removed whatever happens, and
no rank outlives the launcher (each asks Linux to kill it with its parent).

No torch here: the ranks import it; the launcher only reads their files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import bninspect
from bninspect.distributed.environment import local_rank_environment, threads_per_rank
from bninspect.errors import BnInspectError

POLL_SECONDS = 0.02
# After one rank fails, how long to wait for the others to say why they stop too: a rank
# that loses its peers fails a moment after the one it lost, and only the first is the cause.
SETTLE_SECONDS = 1.0
STOP_SECONDS = 2.0  # SIGTERM, then this long, then SIGKILL


class RanksFailed(BnInspectError):
    """A rank of a local run failed, died or hung; the message names it."""


class _Terminated(Exception):
    """SIGTERM reached the launcher: stop the ranks and clean up, as for Ctrl-C."""


def _on_sigterm(signum, frame):
    raise _Terminated


class LocalRanks:
    """The ranks of one local run, as a context manager: ``start(tasks)``, ``wait()``, then
    ``report(rank, task_number)``; leaving the block stops any rank still running and removes
    the directory."""

    def __init__(self, world: int, timeout: float) -> None:
        self.world, self.timeout = world, timeout
        self.folder = Path(tempfile.mkdtemp(prefix="bninspect-ranks-"))
        self.processes: list[subprocess.Popen] = []
        self._previous_handler = None

    def __enter__(self) -> LocalRanks:
        try:
            self._previous_handler = signal.signal(signal.SIGTERM, _on_sigterm)
        except ValueError:  # not the main thread: SIGTERM keeps its default
            self._previous_handler = None
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
            if self._previous_handler is not None:
                signal.signal(signal.SIGTERM, self._previous_handler)

    def save(self, name: str, **arrays: np.ndarray) -> str:
        """Arrays the ranks will read, as FOLDER/name (an .npz); returns the name."""
        np.savez(self.folder / name, **arrays)
        return name

    def path(self, name: str) -> Path:
        return self.folder / name

    def start(self, tasks: list[dict[str, Any]]) -> None:
        """Write the tasks and start one process per rank."""
        launch = {"world": self.world, "timeout": self.timeout, "tasks": tasks}
        (self.folder / "task.json").write_text(json.dumps(launch))
        environment = local_rank_environment(threads_per_rank(self.world))
        package_root = str(Path(bninspect.__file__).resolve().parent.parent)
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, (package_root, environment.get("PYTHONPATH")))
        )
        for rank in range(self.world):
            with open(self.folder / f"rank{rank}.log", "wb") as log:
                command = [
                    sys.executable,
                    "-m",
                    "bninspect.distributed.worker",
                    str(self.folder),
                    str(rank),
                    str(os.getpid()),
                ]
                self.processes.append(
                    subprocess.Popen(
                        command,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=environment,
                        start_new_session=True,  # Ctrl-C reaches the launcher, which stops them
                    )
                )

    def wait(self) -> float:
        """Wait until every rank has finished; raise RanksFailed naming the rank at fault if
        one fails, dies, or does not finish within the timeout of another finishing. Returns
        the wall seconds from start to the last rank's end."""
        began = time.perf_counter()
        first_done = None
        try:
            while True:
                codes = [p.poll() for p in self.processes]
                if any(code not in (None, 0) for code in codes):
                    self._settle()
                    raise RanksFailed(self._failure())
                if all(code == 0 for code in codes):
                    return time.perf_counter() - began
                if first_done is None and 0 in codes:
                    first_done = (codes.index(0), time.perf_counter())
                if first_done is not None and time.perf_counter() - first_done[1] > self.timeout:
                    late = [r for r, code in enumerate(codes) if code is None]
                    raise RanksFailed(
                        f"rank {late[0]} of {self.world} did not finish within {self.timeout:g} s "
                        f"of rank {first_done[0]}; it was stopped (give a larger --rank-timeout "
                        "if it was only slow)"
                    )
                time.sleep(POLL_SECONDS)
        except (KeyboardInterrupt, _Terminated):
            self.stop()
            raise RanksFailed("interrupted; every rank was stopped") from None

    def _settle(self) -> None:
        """Give the other ranks a moment to fail with their own reasons, if they will."""
        deadline = time.perf_counter() + SETTLE_SECONDS
        while time.perf_counter() < deadline and any(p.poll() is None for p in self.processes):
            time.sleep(POLL_SECONDS)

    def _error_of(self, rank: int) -> dict[str, str] | None:
        try:
            return json.loads((self.folder / f"rank{rank}.error").read_text())
        except (OSError, ValueError):
            return None

    def _failure(self) -> str:
        """The message naming the rank at fault: one that failed on its own account first,
        then one that died without a word, then one that lost the others."""
        failed, still = [], []
        for rank, process in enumerate(self.processes):
            code = process.poll()
            if code is None:
                still.append(rank)
            elif code != 0:
                error = self._error_of(rank)
                order = 0 if error and error["kind"] == "own" else (1 if not error else 2)
                failed.append((order, rank, code, error))
        order, rank, code, error = min(failed, key=lambda f: f[:2])
        who = f"rank {rank} of {self.world}"
        if order == 0:
            message = f"{who} failed: {error['message']}"
        elif order == 1:
            if code < 0:
                how = f"killed by {signal.Signals(-code).name}"
            else:
                how = f"exit code {code}"
            message = f"{who} died ({how}) before finishing"
            last = self._last_log_line(rank)
            if last:
                message += f"; its last words: {last}"
        elif still:  # it lost a rank that is still running: that one hangs
            hung = ", ".join(map(str, still))
            return (
                f"rank{'s' * (len(still) > 1)} {hung} of {self.world} did not answer: {who} "
                f"gave up waiting ({error['message']}); stopped"
            )
        else:
            message = f"{who} stopped: {error['message']}"
        if still:
            running = ", ".join(map(str, still))
            message += f" (rank{'s' * (len(still) > 1)} {running} still running: stopped)"
        return message

    def _last_log_line(self, rank: int) -> str:
        try:
            lines = (self.folder / f"rank{rank}.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return lines[-1].strip()[:200] if lines else ""

    def stop(self) -> None:
        """End every rank still running: SIGTERM, then SIGKILL; reap them all."""
        alive = [p for p in self.processes if p.poll() is None]
        for process in alive:
            process.terminate()
        deadline = time.perf_counter() + STOP_SECONDS
        for process in alive:
            try:
                process.wait(max(0.0, deadline - time.perf_counter()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def report(self, rank: int, number: int = 0) -> dict[str, np.ndarray]:
        """What rank ``rank`` saved for task ``number`` (an empty dict if it saved nothing)."""
        path = self.folder / f"rank{rank}.{number}.npz"
        if not path.exists():
            return {}
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]
