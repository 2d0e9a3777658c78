"""Faults around a run (issue 14, items 1, 4, 5, 6, 10, 14): each case in a process of its own
with bounded memory and time (tests/cli_server.py), the fault caused at a precise point of the
run: files truncated or rewritten while read, a file appearing at a save path, a failing
rename, signals, closed and full output streams, headers promising terabytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_error(result, code: int) -> str:
    """The one ``Error:`` line of a run that failed cleanly with ``code``, nothing on stdout."""
    assert result["status"] == "exit", result
    assert result["code"] == code, result
    assert result["stdout"] == "", result
    lines = result["stderr"].splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result["stderr"]
    return lines[0].removeprefix("Error: ")


@pytest.fixture
def big_input(tmp_path):
    """A 4 MiB float32 input: many blocks of the statistics' pass (small blocks below)."""
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(1).standard_normal((8, 8, 128, 128)).astype(np.float32))
    return path


# --- Files that change while they are read (items 4 and 5) ---------------------------------


def test_a_mapped_file_that_shrinks_is_an_error_not_sigbus(server, tmp_path, big_input):
    """--stats-only maps the file; reading past its new end used to kill the run with SIGBUS
    (exit 135, nothing said)."""
    result = server.run(
        ["run", "--input", big_input, "--stats-only"],
        tmp_path,
        inject="truncate-while-mapped",
        inject_arg={"path": str(big_input), "size": 1 << 20},
    )
    assert one_error(result, 1) == (
        f"--input {big_input}: shrank while it was read (reading past its new end found "
        "nothing); run again when nothing is writing to it"
    )


def test_a_mapped_file_rewritten_in_place_is_detected(server, tmp_path, big_input):
    """Torn statistics used to be reported as if nothing had happened."""
    result = server.run(
        ["run", "--input", big_input, "--stats-only", "--json"],
        tmp_path,
        inject="rewrite-while-mapped",
        inject_arg={"path": str(big_input), "offset": 3 << 20},
    )
    assert one_error(result, 1) == (
        f"--input {big_input}: changed while it was read (it was written to meanwhile), so the "
        "values read may mix old and new ones; run again when nothing is writing to it"
    )


@pytest.mark.parametrize("option", ["--input", "--output", "--weight"])
def test_a_file_rewritten_while_read_into_memory_is_detected(server, tmp_path, big_input, option):
    target = tmp_path / "other.npy"
    if option == "--weight":
        np.save(target, np.ones(8, np.float32))
        args = ["run", "--input", big_input, "--weight", target]
    elif option == "--output":
        np.save(target, np.load(big_input))
        args = ["check", "--input", big_input, "--output", target]
    else:
        target = big_input
        args = ["run", "--input", big_input]
    result = server.run(
        args, tmp_path, inject="rewrite-while-read", inject_arg={"path": str(target), "offset": 130}
    )
    assert one_error(result, 1) == (
        f"{option} {target}: changed while it was read (it was written to meanwhile), so the "
        "values read may mix old and new ones; run again when nothing is writing to it"
    )


# --- Saving: the final name created exclusively, both files or neither (item 14) ----------


def test_a_file_appearing_at_the_save_path_is_kept(server, tmp_path):
    """The start-up check found no y.npy; one appears before the files land. It used to be
    overwritten without --force."""
    result = server.run(
        ["run", "--save-input", "x.npy", "--save-output", "y.npy"],
        tmp_path,
        inject="output-appears",
        inject_arg={"path": "y.npy"},
    )
    assert one_error(result, 1) == (
        "could not write y.npy: a file appeared there while bninspect ran, and it was kept; "
        "nothing was written; add --force to overwrite it, or give another path"
    )
    assert sorted(os.listdir(tmp_path)) == ["y.npy"]  # not x.npy alone, no temporary file
    assert (tmp_path / "y.npy").read_bytes() == b"someone else's"


@pytest.mark.parametrize("force", [False, True])
def test_both_files_land_or_neither(server, tmp_path, force):
    """The second file cannot land: the first, already in place, is taken back (and with
    --force the files it replaced are put back)."""
    if force:
        for name in ("x.npy", "y.npy"):
            (tmp_path / name).write_bytes(b"old " + name.encode())
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    args = ["run", "--save-input", "x.npy", "--save-output", "y.npy"] + ["--force"] * force
    result = server.run(args, tmp_path, inject="second-land-fails")
    assert one_error(result, 1) == (
        "could not write y.npy: No space left on device; nothing was written; check the disk "
        "and the path"
    )
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


# --- Signals (item 6) ----------------------------------------------------------------------


@pytest.mark.parametrize("named", [False, True])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_during_a_save_removes_its_temporary_files(server, tmp_path, signum, named):
    """SIGTERM and SIGHUP used to leave a hidden partial .tmp beside the target; SIGINT said
    nothing. ``named``: as on a file system without unnamed files (O_TMPFILE)."""
    result = server.run(
        ["run", "--save-input", "x.npy", "--save-output", "y.npy"],
        tmp_path,
        inject="signal-while-writing",
        inject_arg={"signal": int(signum), "named": named},
    )
    name = signal.Signals(signum).name
    removed = "; its unfinished output files were removed" if named else ""
    assert one_error(result, 128 + signum) == f"interrupted by {name}{removed}"
    assert os.listdir(tmp_path) == []


def test_a_signal_while_files_land_leaves_both(server, tmp_path):
    result = server.run(
        ["run", "--save-input", "x.npy", "--save-output", "y.npy"],
        tmp_path,
        inject="signal-while-landing",
    )
    assert (result["status"], result["code"], result["stdout"]) == ("exit", 143, "")
    *wrote, last = result["stderr"].splitlines()  # the run may say what it wrote first
    assert last == "Error: interrupted by SIGTERM"
    assert all(line.startswith("wrote ") for line in wrote), result["stderr"]
    assert sorted(os.listdir(tmp_path)) == ["x.npy", "y.npy"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_computing(server, tmp_path, signum):
    """Said at once, whichever thread the signal reaches (the kernels' workers, torch's)."""
    result = server.run(
        ["run", "--shape", "4,3,8,8", "--json"],
        tmp_path,
        inject="signal-while-computing",
        inject_arg={"signal": int(signum)},
        timeout=8,
    )
    name = signal.Signals(signum).name
    assert one_error(result, 128 + signum) == f"interrupted by {name}"


def test_a_signal_from_outside(tmp_path):
    """The real thing: SIGINT to a real process, half-way through a run that saves files."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bninspect",
            "run",
            "--shape",
            "64,64,64,64",
            "--steps",
            "4",
            "--save-output",
            "y.npy",
            "--save-input",
            "x.npy",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    time.sleep(1.5)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.skip("the run finished before the signal came")
    assert (process.returncode, out, err) == (130, "", err)
    assert err.startswith("Error: interrupted by SIGINT") and err.count("\n") == 1
    assert [n for n in os.listdir(tmp_path) if n not in ("x.npy", "y.npy")] == []


# --- Output streams (item 10) --------------------------------------------------------------


@pytest.mark.parametrize("json_output", [True, False])
def test_a_closed_or_full_stdout_is_an_error(server, tmp_path, json_output):
    args = ["run", "--shape", "2,3,4,5"] + ["--json"] * json_output
    assert one_error(server.run(args, tmp_path, stdout="closed"), 1) == (
        "stdout is closed, so the result cannot be printed; run again with stdout open "
        "(redirect it to a file to keep the result)"
    )
    assert one_error(server.run(args, tmp_path, stdout="full"), 1) == (
        "could not write the result to stdout (No space left on device); check where stdout "
        "goes (a closed pipe, a full disk)"
    )


def test_with_stderr_closed_stdout_holds_the_document_alone(server, tmp_path):
    """Notices and errors used to land on stdout when stderr was closed."""
    x = tmp_path / "x.npy"
    np.save(x, np.arange(24, dtype=np.int64).reshape(2, 3, 4))  # converted, with a notice
    result = server.run(["run", "--input", x, "--json"], tmp_path, stderr="closed")
    assert (result["status"], result["code"]) == ("exit", 0)
    assert json.loads(result["stdout"])["input"]["shape"] == [2, 3, 4]
    result = server.run(["run", "--weight", "x", "--json"], tmp_path, stderr="closed")
    assert (result["status"], result["code"], result["stdout"]) == ("exit", 2, "")


def test_a_closed_stdout_at_start_in_a_real_process(tmp_path):
    """Python starts with sys.stdout None when fd 1 is closed (`>&-`): no internal error."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run(
        [sys.executable, "-m", "bninspect", "run", "--shape", "2,3,4", "--json"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        timeout=60,
        pass_fds=(),
        close_fds=True,
        preexec_fn=lambda: os.close(1),
    )
    assert (done.returncode, done.stderr) == (
        1,
        (
            "Error: stdout is closed, so the result cannot be printed; run again with stdout open "
            "(redirect it to a file to keep the result)\n"
        ),
    )


# --- Memory: refused before anything the shape's size is built (item 1) -------------------


def _npy_header(shape, descr="<f4") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}".encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


HUGE = "--input huge.npy: the .npy header's shape (2147483648, 2147483648, 4) has "
TRUNCATED = "--input large.npy: truncated: the header promises "


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--input", "huge.npy"], HUGE),
        (["run", "--input", "huge.npy", "--stats-only"], HUGE),
        (["explain", "--input", "huge.npy", "--index", "0,0,0"], HUGE),
        (["run", "--input", "large.npy"], TRUNCATED),
        (["run", "--input", "large.npy", "--stats-only"], TRUNCATED),
        (
            ["run", "--shape", "2097152,1000000000,2"],
            "--shape 2097152,1000000000,2 in float32 needs about",
        ),
        (
            ["run", "--shape", "2097152,10000000,2"],
            "--shape 2097152,10000000,2 in float32 needs about",
        ),
        (
            ["run", "--shape", "2,2", "--steps", "1000000000"],
            "--shape 2,2 over --steps 1000000000 in float32 needs about",
        ),
    ],
)
def test_what_cannot_fit_is_refused_at_once(server, tmp_path, args, message):
    """A 608-byte file whose header says (2**31, 2**31, 4) grew to 15 GB; so did such shapes.
    Now refused in a fraction of a second, in 1 GiB of address space beyond the process's."""
    (tmp_path / "huge.npy").write_bytes(_npy_header((2**31, 2**31, 4)) + bytes(480))
    (tmp_path / "large.npy").write_bytes(_npy_header((2**20, 2**20, 4)) + bytes(480))
    result = server.run(args, tmp_path, memory=1 << 30, timeout=10)
    assert one_error(result, 1).startswith(message)
    assert result["seconds"] < 5


def _real_process(args, **kwargs):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return [sys.executable, "-m", "bninspect", *args], dict(cwd=ROOT, env=env, **kwargs)


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["--version"]])
def test_help_to_a_full_or_closed_stdout_is_an_error(args):
    """click writes --help and --version itself: they used to be an internal error on a full
    stdout and a silent exit 0 on a closed one."""
    command, options = _real_process(args)
    with open("/dev/full", "w") as full:
        done = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True,
                              timeout=60, **options)  # fmt: skip
    assert (done.returncode, done.stderr) == (1, (
        "Error: could not write the result to stdout (No space left on device); check where "
        "stdout goes (a closed pipe, a full disk)\n"
    ))  # fmt: skip
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=60, preexec_fn=lambda: os.close(1), **options)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("Error: stdout is closed")


@pytest.mark.parametrize("json_output", [True, False])
def test_a_reader_that_leaves_half_way_is_an_error(json_output):
    """A result far larger than a pipe holds, its reader gone after one byte: the kernel
    reports the part written, and Python's buffered stdout used to drop the rest silently
    (exit 0, the result cut short)."""
    args = ["run", "--shape", "4,300,8", "--json" if json_output else "--verbose"]  # ~0.1-1 MB
    command, options = _real_process(args)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          **options) as process:  # fmt: skip
        assert len(process.stdout.read(1)) == 1
        process.stdout.close()
        stderr = process.stderr.read().decode()
        assert process.wait(timeout=120) == 1
    assert stderr == (
        "Error: could not write the result to stdout (Broken pipe); check where stdout goes "
        "(a closed pipe, a full disk)\n"
    )
