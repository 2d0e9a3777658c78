"""Hostile .npy headers (issue 14, items 1 and 7): validated in full, once, for every file
every command reads; a file whose size is not its header's is refused before any data is read.
Hypothesis draws the header's fields, sizes and dtypes; numpy's own reader is the oracle."""

from __future__ import annotations

import io
import json
import os
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strategies import npy_files


def npy(shape, descr="<f4", fortran=False, data=None) -> bytes:
    """A .npy file's bytes as numpy writes them, for any header fields (also impossible
    ones) and data (default: exactly what the header declares, if it can say)."""
    header = f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}"
    raw = header.encode("latin-1")
    raw += b" " * (63 - (10 + len(raw)) % 64) + b"\n"
    if data is None:
        count = 1
        for size in shape:
            count *= int(size)
        data = bytes(max(0, count) * np.dtype(descr).itemsize)
    return b"\x93NUMPY\x01\x00" + len(raw).to_bytes(2, "little") + raw + data


# Every place a .npy file is read, with the message's option name.
READERS = [
    ("--input", lambda f: ["run", "--input", f]),
    ("--input", lambda f: ["run", "--input", f, "--stats-only"]),
    ("--input", lambda f: ["explain", "--input", f, "--index", "0,0"]),
    ("--output", lambda f: ["check", "--input", "good.npy", "--output", f]),
    ("--against", lambda f: ["explain", "--input", "good.npy", "--index", "0,0", "--against", f]),
    ("--weight", lambda f: ["run", "--input", "good.npy", "--weight", f]),
    ("--running-var", lambda f: ["run", "--input", "good.npy", "--running-var", f]),
]

BAD_HEADERS = [
    ((-1, 3, 4, 5), "the .npy header's shape (-1, 3, 4, 5) has -1 on axis 0, which is not a "
     "size (an integer >= 0); the file is damaged, save the array again with numpy.save"),
    ((2, -3, 4, 5), "the .npy header's shape (2, -3, 4, 5) has -3 on axis 1, which is not a "
     "size (an integer >= 0); the file is damaged, save the array again with numpy.save"),
    ((True, 3, 4, 10), "the .npy header's shape (True, 3, 4, 10) has True on axis 0, which is "
     "not a size (an integer >= 0); the file is damaged, save the array again with numpy.save"),
    ((2**32, 2**32), "the .npy header's shape (4294967296, 4294967296) has "
     "18446744073709551616 elements, more than any array can hold; the file is damaged, save "
     "the array again with numpy.save"),
    ((2**31, 2**31, 4), "the .npy header's shape (2147483648, 2147483648, 4) has "
     "18446744073709551616 elements, more than any array can hold; the file is damaged, save "
     "the array again with numpy.save"),
]


def one_error(result) -> tuple[int, str]:
    """(exit code, the one Error line) of a run that failed cleanly, nothing on stdout."""
    assert (result["status"], result["stdout"]) == ("exit", ""), result
    lines = result["stderr"].splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result
    return result["code"], lines[0].removeprefix("Error: ")


@pytest.mark.parametrize(("shape", "problem"), BAD_HEADERS)
@pytest.mark.parametrize(("option", "command"), READERS)
def test_impossible_sizes_are_refused_by_every_reader(server, tmp_path, shape, problem, option,
                                                      command):
    """They used to give "internal error", or under --stats-only a success reporting shape
    [-1, 3, 4, 5]; a wrapping product passed the size check, and (2**31, 2**31, 4) grew
    without bound. In its own process, with 1 GiB beyond its start and 20 s."""
    np.save(tmp_path / "good.npy", np.ones((2, 2), np.float32))
    (tmp_path / "bad.npy").write_bytes(npy(shape, data=bytes(240)))
    result = server.run(command("bad.npy"), tmp_path, memory=1 << 30, timeout=20)
    assert one_error(result) == (1, f"{option} bad.npy: {problem}")


@pytest.mark.parametrize(("option", "command"), READERS)
def test_a_file_longer_than_its_header_says_is_refused(server, tmp_path, option, command):
    np.save(tmp_path / "good.npy", np.ones((2, 2), np.float32))
    with open(tmp_path / "two.npy", "wb") as f:  # two arrays saved into one file
        np.save(f, np.ones((2, 2), np.float32))
        np.save(f, np.ones((2, 2), np.float32))
    result = server.run(command("two.npy"), tmp_path, memory=1 << 30, timeout=20)
    assert one_error(result) == (1, (
        f"{option} two.npy: has 144 bytes after the array its header describes (144 bytes in "
        "all), which numpy.save never writes (several arrays saved into one file?); save the "
        "array alone with numpy.save"
    ))


def test_a_header_longer_than_numpy_writes_is_not_read(server, tmp_path):
    """A version 2 header may claim 4 GiB of text; it is refused before anything is read."""
    path = tmp_path / "x.npy"
    path.write_bytes(b"\x93NUMPY\x02\x00" + (2**32 - 1).to_bytes(4, "little") + b"{")
    result = server.run(["run", "--input", path], tmp_path, memory=1 << 30, timeout=20)
    assert one_error(result) == (1, (
        f"--input {path}: the .npy header claims 4294967295 bytes, more than numpy ever writes "
        "(10000); save the array again with numpy.save"
    ))


def test_batch_divisors_are_found_in_bounded_time():
    from bninspect.pytorch.inspection import _first_divisors

    for n in range(1, 300):
        assert _first_divisors(n, 9) == [d for d in range(1, n + 1) if n % d == 0][:9]
    big = (2**61 - 1) * 3  # a prime times 3: the loop stops after a million tries
    assert _first_divisors(big, 9) == [1, 3, 2**61 - 1, big]


# --- Hypothesis over header fields, sizes and dtypes ---------------------------------------


def _numpy_reads(blob: bytes):
    """What numpy's own reader makes of the bytes (pickles refused), or None."""
    try:
        array = np.load(io.BytesIO(blob), allow_pickle=False)
    except Exception:  # noqa: BLE001 - numpy refusing the file is the oracle's answer
        return None
    return array if isinstance(array, np.ndarray) else None


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=npy_files(), stats_only=st.booleans())
def test_any_header_gives_a_right_answer_or_one_clean_error(server, tmp_path, file,
                                                            stats_only):
    """Whatever the header says, in a process limited to 1 GiB beyond its start and 20 s:
    exit 0 with the right statistics of what numpy reads from the same bytes, or exit 1/2 with
    one line; never an internal error, a signal, a hang."""
    blob, described = file
    path = tmp_path / "fuzz.npy"
    path.write_bytes(blob)
    args = ["run", "--input", path, "--json"] + ["--stats-only"] * stats_only
    result = server.run(args, tmp_path, memory=1 << 30, timeout=20,
                        env={"PYTHONWARNINGS": "error::RuntimeWarning"})
    note = f"{described}\n{result}"
    assert result["status"] == "exit", note
    if result["code"] != 0:
        assert result["code"] in (1, 2) and result["stdout"] == "", note
        lines = result["stderr"].splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), note
        assert "internal error" not in lines[0] and "ran out of memory" not in lines[0], note
        return
    # A success: numpy reads the same array from the bytes, exactly as long as the file.
    array = _numpy_reads(blob)
    assert array is not None, note
    doc = json.loads(result["stdout"])
    assert tuple(doc["input"]["shape"]) == array.shape, note
    offset = len(blob) - array.nbytes
    assert blob[offset - 1 : offset] == b"\n", note  # the data begins where the header ends
    # bninspect runs integers and booleans as float32 (with a notice), floats as they are
    runs_in = array.dtype if array.dtype.kind == "f" else np.dtype(np.float32)
    assert doc["input"]["dtype"] == runs_in.name, note
    with np.errstate(over="ignore", invalid="ignore"):
        values = array.astype(runs_in).astype(np.float64)
    for c, channel in enumerate(doc["channels"]):
        assert channel["count"] == values.size // values.shape[1], note
        exact = values[:, c].reshape(-1)
        if not np.all(np.isfinite(exact)):
            continue
        total = sum(map(Fraction, exact.tolist()), Fraction(0))  # exactly, in rationals
        try:
            mean = float(total / exact.size)
        except OverflowError:
            continue
        np.testing.assert_allclose(channel["mean"], mean, rtol=1e-12, atol=1e-300, err_msg=note)
    assert sorted(os.listdir(tmp_path)) == ["fuzz.npy"], note
