"""Run bninspect's command line many times quickly, each run a process of its own with bounded
memory and time: a server that imports bninspect and torch once, then forks one child per
request (fork is ~5 ms where a fresh interpreter importing torch takes ~1.5 s).

    python tests/cli_server.py      # requests on stdin, results on stdout, one JSON per line

A request: {"args": [...], "cwd": ..., "timeout": s, "memory": bytes (RLIMIT_AS headroom
above the server's own size), "stdout": "file" | "closed" | "full", "stderr": "file" |
"closed", "inject": name or null, "inject_arg": ..., "env": {...}}. A result: {"status":
"exit" | "signal" | "hang", "code", "signal", "stdout", "stderr", "seconds"} (stdout and stderr
as latin-1 text). ``inject`` names a fault to cause inside the child at a precise point of the
run (FAULTS below): a file truncated or rewritten while it is read, a file appearing at a save
path, a failing rename, a signal during a save.

The child runs the command line as the console script does (bninspect.cli.entry.main), with
PYTHONWARNINGS' filters as the request's env gives them. Used by tests/test_hostile.py and
scripts/fuzz.py through CliServer.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# ---------------------------------------------------------------------------------------------
# Faults injected in the child, each at one named point of the run.


def _small_blocks():
    """The statistics' pass in 64 KiB blocks: a small file is read in many."""
    from bninspect.numerics import kernels

    kernels.block_bytes_for = lambda nbytes: 64 << 10


def _after_first_mapped_block(fault):
    """--stats-only: ``fault()`` once, after the first block of the mapped input is read."""
    from bninspect.pytorch import inspection

    _small_blocks()
    original = inspection._release_region

    def release_region(prepared, x):
        release = original(prepared, x)
        done = []

        def after_block(region):
            if not done:
                done.append(True)
                fault()
            if release is not None:
                release(region)

        return after_block

    inspection._release_region = release_region


def _truncate_while_mapped(arg):
    """--stats-only: after the first block of the mapped input, the file loses its tail."""
    _after_first_mapped_block(lambda: os.truncate(arg["path"], arg.get("size", 4096)))


def _rewrite_while_mapped(arg):
    """--stats-only: after the first block of the mapped input, bytes are rewritten in place."""
    _after_first_mapped_block(lambda: _overwrite(arg["path"], arg.get("offset", 1 << 20)))


def _overwrite(path, offset):
    """Rewrite up to 4 KiB of the file in place from ``offset``, within its size."""
    fd = os.open(path, os.O_WRONLY)
    try:
        time.sleep(0.02)  # a file-system clock tick: the write must show in the times
        length = max(1, min(4096, os.fstat(fd).st_size - offset))
        os.pwrite(fd, b"\x7f" * length, offset)
    finally:
        os.close(fd)


def _rewrite_while_read(arg):
    """A full read: after the first read of the file's data, bytes are rewritten in place."""
    from bninspect.input import npy_files

    original = npy_files._read_into
    done = []

    def read_into(file, view, offset):
        got = original(file, view, offset)
        if not done and os.path.abspath(file.path) == os.path.abspath(arg["path"]):
            done.append(True)
            _overwrite(arg["path"], arg.get("offset", 256))
        return got

    npy_files._read_into = read_into


def _output_appears(arg):
    """A file appears at a save path after the start-up check, before the files land."""
    from bninspect.input import npy_files

    original = npy_files._land

    def land(pending, force):
        target = os.path.abspath(pending.target)
        if target == os.path.abspath(arg["path"]) and not os.path.lexists(target):
            with open(target, "wb") as f:
                f.write(b"someone else's")
        return original(pending, force)

    npy_files._land = land


def _second_land_fails(arg):
    """The second file cannot be put in place (as if the disk filled meanwhile)."""
    from bninspect.input import npy_files

    original = npy_files._land
    calls = []

    def land(pending, force):
        calls.append(pending.target)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(pending, force)

    npy_files._land = land


def _signal_while_writing(arg):
    """SIGTERM (or arg's signal) while a save's temporary file is being written."""
    import numpy as np

    from bninspect.input import npy_files

    if arg.get("named"):  # as on a file system without O_TMPFILE: named temporary files
        npy_files._unnamed_file = lambda directory: None
    original = np.save

    def save(f, array, **kwargs):
        f.write(b"\x93NUMPY partial")
        f.flush()
        os.kill(os.getpid(), arg.get("signal", signal.SIGTERM))
        time.sleep(10)  # the watcher ends the process meanwhile
        original(f, array, **kwargs)

    npy_files.np.save = save


def _signal_while_landing(arg):
    """SIGTERM while the saved files are being put in place: they land together, or not."""
    from bninspect.input import npy_files

    original = npy_files._land
    calls = []

    def land(pending, force):
        calls.append(pending.target)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.3)  # the watcher is waiting for the files to land
        return original(pending, force)

    npy_files._land = land


def _signal_while_computing(arg):
    """A signal while the statistics are computed (the kernels' threads at work)."""
    from bninspect.numerics import kernels

    original = kernels.moments

    def moments(*args, **kwargs):
        os.kill(os.getpid(), arg.get("signal", signal.SIGINT))
        time.sleep(10)
        return original(*args, **kwargs)

    kernels.moments = moments


_AT_EXIT: list = []  # called in the child just before it exits


def _probe_memory(arg):
    """Not a fault: record the fit check's estimate, the resident memory when it ran and the
    peak at the end, as JSON in arg["path"] (tests/test_memory_estimate.py)."""
    from bninspect.pytorch import inspection

    seen: dict = {}
    check_fits = inspection.check_fits

    def spy(need, what, advice):
        seen.update(need=need, rss_at_check=_status_bytes("VmRSS"))
        check_fits(need, what, advice)

    inspection.check_fits = spy

    def record():
        seen["peak"] = _status_bytes("VmHWM")
        with open(arg["path"], "w") as f:
            json.dump(seen, f)

    _AT_EXIT.append(record)


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    return 0


FAULTS = {
    "probe-memory": _probe_memory,
    "truncate-while-mapped": _truncate_while_mapped,
    "rewrite-while-mapped": _rewrite_while_mapped,
    "rewrite-while-read": _rewrite_while_read,
    "output-appears": _output_appears,
    "second-land-fails": _second_land_fails,
    "signal-while-writing": _signal_while_writing,
    "signal-while-landing": _signal_while_landing,
    "signal-while-computing": _signal_while_computing,
}

# ---------------------------------------------------------------------------------------------
# The server.


def _vm_size() -> int:
    return _status_bytes("VmSize")


def _child(request: dict, out_path: str, err_path: str) -> None:
    """In the forked child: set the process up as asked, then run the command line."""
    try:
        os.chdir(request["cwd"])
        os.environ.update(request.get("env", {}))
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        for fd, how, path in ((1, request.get("stdout"), out_path), (2, request.get("stderr"),
                                                                         err_path)):
            if how == "closed":
                os.close(fd)
            else:
                target = "/dev/full" if how == "full" else path
                opened = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                os.dup2(opened, fd)
                os.close(opened)
        if request.get("memory"):
            limit = _vm_size() + int(request["memory"])
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        cpu = int(request.get("timeout", 60)) + 5
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        import warnings

        # As the interpreter reads PYTHONWARNINGS at start: "error" or "error::RuntimeWarning"
        specs = list(filter(None, os.environ.get("PYTHONWARNINGS", "").split(",")))
        for spec in specs:
            action, _, category = (spec.split(":") + ["", "", ""])[:3]
            kind = RuntimeWarning if category == "RuntimeWarning" else Warning
            warnings.simplefilter(action, kind)
        sys.warnoptions[:] = specs
        if request.get("inject"):
            FAULTS[request["inject"]](request.get("inject_arg") or {})
        sys.argv = ["bninspect", *request["args"]]
        try:
            from bninspect.cli.entry import main
        except ImportError:  # a bninspect from before entry.py (to run these tests on it)
            from bninspect.cli.main import main
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported as the exit code the interpreter gives
        import traceback

        traceback.print_exc()
        code = 1
    try:
        if sys.stdout is not None:
            sys.stdout.flush()
    except BaseException:  # noqa: BLE001
        code = 120  # what Python itself exits with when the final flush fails
    for hook in _AT_EXIT:
        hook()
    os._exit(code)


def _serve() -> None:
    # Everything the children use, imported once.
    import numpy  # noqa: F401
    import torch  # noqa: F401

    import bninspect.check.report  # noqa: F401
    import bninspect.cli.main  # noqa: F401
    import bninspect.pytorch.batchnorm  # noqa: F401
    import bninspect.render.json_output  # noqa: F401
    import bninspect.render.screen  # noqa: F401
    import bninspect.report.explain  # noqa: F401
    import bninspect.report.run  # noqa: F401

    tasks = len(os.listdir("/proc/self/task"))
    if tasks != 1:  # fork copies one thread: others' locks would stay held in the child
        raise SystemExit(f"cli_server: {tasks} threads before forking; cannot fork safely")
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    for line in sys.stdin:
        request = json.loads(line)
        with tempfile.TemporaryDirectory(prefix="bninspect-cli-") as scratch:
            out_path, err_path = f"{scratch}/out", f"{scratch}/err"
            sys.stdout.flush()
            sys.stderr.flush()
            start = time.monotonic()
            pid = os.fork()
            if pid == 0:
                protocol.close()
                _child(request, out_path, err_path)
            result = _wait(pid, float(request.get("timeout", 60)))
            result["seconds"] = time.monotonic() - start
            for name, path in (("stdout", out_path), ("stderr", err_path)):
                result[name] = Path(path).read_bytes().decode("latin-1") if Path(
                    path
                ).exists() else ""
        protocol.write(json.dumps(result) + "\n")


def _wait(pid: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.WIFSIGNALED(status):
                return {"status": "signal", "signal": os.WTERMSIG(status), "code": None}
            return {"status": "exit", "code": os.WEXITSTATUS(status), "signal": None}
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"status": "hang", "code": None, "signal": None}
        time.sleep(0.005)


class CliServer:
    """The server as a subprocess: ``run(args, ...)`` sends one request and returns its
    result. Start it once (it imports torch); ``close()`` when done."""

    def __init__(self) -> None:
        env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"}
        # numpy's OpenBLAS starts a thread pool on import unless told one thread; bninspect
        # does no linear algebra, and the server must fork with one thread.
        env["OPENBLAS_NUM_THREADS"] = "1"
        env.pop("BNINSPECT_DEBUG", None)
        env.pop("PYTHONWARNINGS", None)
        self.process = subprocess.Popen(
            [sys.executable, __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def run(self, args, cwd, *, timeout: float = 60, memory: int | None = 3 << 30, **more):
        request = {"args": [str(a) for a in args], "cwd": str(cwd), "timeout": timeout,
                   "memory": memory, **more}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout + 60)
        if not ready:
            raise RuntimeError("cli_server did not answer")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"cli_server ended (exit {self.process.wait()})")
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self.process.stdout.close()


if __name__ == "__main__":
    _serve()
