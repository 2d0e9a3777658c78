"""Fuzz bninspect as a hostile user would, and print what happened as a table.

    python scripts/fuzz.py                 # about 3,000 cases, 5-15 minutes on 2 cores
    python scripts/fuzz.py --cases 500     # a quicker look
    python scripts/fuzz.py --show 5        # and up to 5 examples of every bad outcome

Each case runs bninspect's command line in a process of its own (tests/cli_server.py: forked
from a server that imported torch once), with 2 GiB of address space beyond the server's and
a time limit, RuntimeWarnings made errors (PYTHONWARNINGS), in a scratch folder of its own:

- malformed and unusual .npy files (header fields, sizes, dtypes, lengths drawn by hypothesis:
  tests/strategies.py npy_files) at every place a .npy is read;
- valid inputs with extreme values (NaN, infinities, the dtype's largest and smallest numbers)
  through every command, checked against numpy in float64;
- bad option values; pickle payloads at every place a .npy is read (a payload that ran would
  leave a file);
- paths: too long, looping links, dangling links, FIFOs, devices, directories, names with
  control characters or bytes that are not UTF-8, save paths ending in '/', existing files
  without --force, a save path naming a file the run reads;
- faults: a file truncated or rewritten while read, a file appearing at a save path, a failing
  rename, signals during a save or a computation, stdout closed or full, stderr closed.

Outcomes, one per case: a clean error (exit 1 or 2, or 128 + n after signal n, one
``Error:`` line, nothing on stdout), a right answer (exit 0, or check's 3, and the oracle
agrees), an internal error (a traceback, "internal error", "ran out of memory", any other
exit), a signal (the process killed by one it was not sent), a hang (over the time limit), a
wrong success (exit 0 where the oracle says otherwise). Files touched counts the cases that
changed a file they should not have (an existing file, a file read, or anything left behind)
whatever their outcome. Target: every column but clean errors and right answers at 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cli_server import CliServer  # noqa: E402

COLUMNS = [
    "cases tried",
    "clean errors",
    "right answers",
    "internal errors",
    "signals",
    "hangs",
    "wrong successes",
    "files touched",
]


@dataclass
class Case:
    """One run: its arguments, how to set its folder up, what it may write, how to judge a
    success (``oracle(folder, result) -> problem or None``), and server options."""

    family: str
    args: list[str]
    setup: callable = lambda folder: None
    writes: tuple[str, ...] = ()  # files a success may create or replace
    oracle: callable | None = None  # None: any success is wrong (a clean error expected)
    options: dict = field(default_factory=dict)
    sent_signal: int | None = None
    injected: tuple[str, ...] = ()  # files the injected fault itself changes or creates


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every entry under the folder: kind, size, content hash, modification time."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            status = os.lstat(path)
            digest = None
            if os.path.isfile(path) and not os.path.islink(path):
                try:
                    with open(path, "rb") as f:
                        digest = hashlib.sha256(f.read()).hexdigest()
                except OSError:
                    digest = "unreadable"
            seen[os.path.relpath(path, folder)] = (status.st_mode, status.st_size, digest,
                                                   status.st_mtime_ns)
    return seen


def judge(case: Case, result: dict, folder: Path, before: dict) -> tuple[str, bool, str]:
    """(outcome, files touched, detail)."""
    after = snapshot(folder)
    code = result["code"]
    expected_interrupt = case.sent_signal is not None and code == 128 + case.sent_signal
    landed = code in (0, 3) or expected_interrupt
    allowed = (set(case.writes) if landed else set()) | set(case.injected)
    touched = sorted(
        name
        for name in set(before) | set(after)
        if before.get(name) != after.get(name) and name not in allowed
    )
    stderr, stdout = result["stderr"], result["stdout"]
    detail = f"{case.family}: {case.args}\n  -> {result['status']} {result['code']} " + (
        f"signal {result['signal']}\n  stderr: {stderr[-600:]!r}\n  stdout: {stdout[:300]!r}"
    )
    if touched:
        detail += f"\n  touched: {touched}"
    if result["status"] == "hang":
        return "hangs", bool(touched), detail
    if result["status"] == "signal":
        return "signals", bool(touched), detail
    lines = stderr.splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    if "Traceback" in stderr or "internal error" in stderr or "ran out of memory" in stderr:
        return "internal errors", bool(touched), detail
    others = [line for line in lines if not line.startswith(("Error: ", "Notice: ", "wrote "))]
    if case.options.get("stderr") == "closed" and code in (1, 2):  # the message went nowhere
        return ("clean errors" if not stderr and not stdout else "internal errors"), bool(
            touched
        ), detail
    if code in (1, 2) or expected_interrupt:
        if len(errors) == 1 and not others and stdout == "":
            return "clean errors", bool(touched), detail
        return "internal errors", bool(touched), detail
    if code in (0, 3):
        if case.oracle is None or others or errors:
            return "wrong successes", bool(touched), detail
        problem = case.oracle(folder, result)
        if problem:
            return "wrong successes", bool(touched), f"{detail}\n  oracle: {problem}"
        return "right answers", bool(touched), detail
    return "internal errors", bool(touched), detail


# --- Oracles --------------------------------------------------------------------------------


def _runs_in(array: np.ndarray) -> np.dtype:
    return array.dtype.newbyteorder("=") if array.dtype.kind == "f" else np.dtype(np.float32)


def _exact_means(values: np.ndarray) -> list[float | None]:
    """Each channel's mean of float64 ``values``, correctly rounded (exact rationals), or
    None where a value is not finite."""
    from fractions import Fraction

    means = []
    for c in range(values.shape[1]):
        channel = values[:, c].reshape(-1)
        if not np.all(np.isfinite(channel)):
            means.append(None)
            continue
        total = sum((Fraction(float(v)) for v in channel), Fraction(0))
        try:
            means.append(float(total / channel.size))
        except OverflowError:
            means.append(None)
    return means


def stats_oracle(name: str):
    """run --json: the shape, and each channel's mean against the exact mean (rationals) of
    the values as bninspect runs them (integers as float32)."""

    def oracle(folder: Path, result: dict) -> str | None:
        try:
            doc = json.loads(result["stdout"])
        except ValueError as exc:
            return f"stdout is not one JSON document ({exc})"
        try:
            array = np.load(folder / name, allow_pickle=False)
        except Exception as exc:  # noqa: BLE001
            return f"numpy cannot read the file bninspect accepted ({exc})"
        if tuple(doc["input"]["shape"]) != array.shape:
            return f"shape {doc['input']['shape']} but numpy reads {array.shape}"
        with np.errstate(all="ignore"):
            values = array.astype(_runs_in(array)).astype(np.float64)
        for c, (channel, mean) in enumerate(zip(doc["channels"], _exact_means(values),
                                                strict=True)):
            if mean is None:
                continue
            if channel["mean"] is None or not np.isclose(
                channel["mean"], mean, rtol=1e-12, atol=1e-300
            ):
                return f"channel {c} mean {channel['mean']} but exactly {mean}"
        return None

    return oracle


def document_oracle(folder: Path, result: dict) -> str | None:
    """Any --json success: stdout is exactly one strict JSON document."""
    try:
        json.loads(result["stdout"], parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except ValueError as exc:
        return f"stdout is not one strict JSON document ({exc})"
    return None


def tables_oracle(folder: Path, result: dict) -> str | None:
    if not result["stdout"].strip():
        return "a success printed nothing"
    if any(c in result["stdout"] for c in "\x1b\r\x00"):
        return "control characters on stdout"
    return None


def saved_oracle(*names: str):
    def oracle(folder: Path, result: dict) -> str | None:
        for name in names:
            try:
                np.load(folder / name, allow_pickle=False)
            except Exception as exc:  # noqa: BLE001
                return f"{name} not a readable .npy after a success ({exc})"
        return None

    return oracle


# --- Case families --------------------------------------------------------------------------


def _save(name: str, array: np.ndarray):
    def setup(folder: Path) -> None:
        np.save(folder / name, array)

    return setup


def _write(name: str, data: bytes):
    def setup(folder: Path) -> None:
        (folder / name).write_bytes(data)

    return setup


def _both(*setups):
    def setup(folder: Path) -> None:
        for one in setups:
            one(folder)

    return setup


GOOD = np.random.default_rng(7).standard_normal((2, 3, 4, 5)).astype(np.float32)


def readers(name: str) -> list[tuple[list[str], str]]:
    """Every place a .npy is read, reading ``name``: (args, the option that reads it)."""
    return [
        (["run", "--input", name, "--json"], "--input"),
        (["run", "--input", name, "--stats-only", "--json"], "--input"),
        (["explain", "--input", name, "--index", "0,0", "--json"], "--input"),
        (["check", "--input", "good.npy", "--output", name], "--output"),
        (["explain", "--input", "good.npy", "--index", "0,0,0,0", "--against", name], "--against"),
        (["run", "--input", "good.npy", "--weight", name], "--weight"),
        (["run", "--input", "good.npy", "--bias", name], "--bias"),
        (["run", "--input", "good.npy", "--running-mean", name], "--running-mean"),
        (["run", "--input", "good.npy", "--running-var", name], "--running-var"),
    ]


def npy_cases(count: int, seed: int) -> list[Case]:
    """Malformed and unusual .npy files drawn by hypothesis, each read by a drawn reader."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    from strategies import npy_files

    drawn: list[tuple[bytes, str, int]] = []

    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(file=npy_files(), reader=st.integers(0, 8))
    def draw(file, reader):
        drawn.append((*file, reader))

    draw()
    cases = []
    for blob, described, reader in drawn:
        args, option = readers("fuzz.npy")[reader]
        oracle = stats_oracle("fuzz.npy") if option == "--input" and args[0] == "run" else (
            document_oracle if "--json" in args else tables_oracle
        )
        setup = _both(_write("fuzz.npy", blob), _save("good.npy", GOOD))
        cases.append(Case(f"npy file ({described})", args, setup, oracle=oracle))
    return cases


def value_cases(count: int, seed: int) -> list[Case]:
    """Valid inputs with extreme values through every command."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    from strategies import hostile_tensors

    drawn = []

    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(x=hostile_tensors(), command=st.integers(0, 6))
    def draw(x, command):
        drawn.append((x, command))

    draw()
    cases = []
    for x, command in drawn:
        index = ",".join(["0"] * x.ndim)
        last = ",".join(str(s - 1) for s in x.shape)
        args, oracle = [
            (["run", "--input", "x.npy", "--json"], stats_oracle("x.npy")),
            (["run", "--input", "x.npy", "--stats-only", "--json"], stats_oracle("x.npy")),
            (["run", "--input", "x.npy", "--var-method"], tables_oracle),
            (["explain", "--input", "x.npy", "--index", index, "--precision", "--json"],
             document_oracle),
            (["explain", "--input", "x.npy", "--index", last, "--mode", "eval"], tables_oracle),
            (["check", "--input", "x.npy", "--output", "x.npy", "--json"], document_oracle),
            (["run", "--input", "x.npy", "--dtype", "bfloat16", "--json"], document_oracle),
        ][command]
        cases.append(Case(f"values {x.dtype} {x.shape}", args, _save("x.npy", x), oracle=oracle))
    return cases


BAD_VALUES = {
    "--shape": ["", ",", "1,", "1,2,3,4,5,6", "0,3", "-1,3", "1e3,2", "2,x", "9" * 40 + ",2",
                "2," + "9" * 20, "2,3," * 50, "１,２", " 2 , 3 ", "2,3\n"],
    "--index": ["", "0", "9" * 30 + ",0,0,0", "0,0,0,0,0", "a", "-5,0,0,0", "0,0,3,0"],
    "--eps": ["nan", "inf", "-inf", "-0.0", "1e309", "-1e-300", "abc", "0x10", "1" * 400],
    "--momentum": ["nan", "-0", "1.0000001", "none", "NONE", "", "1e-400", "2", "x"],
    "--weight": ["", ",", "nan,1", "1e39,1", "1,2,3", "random,1", "ones ", "1;2",
                 "../x.npy", "w.npy", "nowhere/w.npy"],
    "--running-var": ["-1,1", "-0.0,1", "1e-320,1", "inf,1", "1e38,1"],
    "--steps": ["0", "-1", "1000000000", "9" * 30, "x", "1.5"],
    "--batch-size": ["0", "-3", "9" * 25, "1"],
    "--seed": ["-1", str(2**63), "9" * 25, "x"],
    "--dtype": ["float8", "int32", "", "FLOAT32"],
    "--offset": ["nan", "inf", "1e308", "-1e308"],
    "--scale": ["nan", "-inf", "1e308", "0", "-1e-320"],
    "--convention": ["torch", "", "keras "],
    "--mode": ["training", "EVAL", ""],
    "--top": ["0", "-1", "9" * 30],
    "--atol": ["nan", "-1", "inf", "1e-400"],
}


def option_cases() -> list[Case]:
    cases = []
    for option, values in BAD_VALUES.items():
        for value in values:
            if option == "--index":
                args = ["explain", "--input", "good.npy", option, value]
            elif option in ("--top", "--atol"):
                args = ["check", "--input", "good.npy", "--output", "good.npy", option, value]
            elif option in ("--batch-size",):
                args = ["run", "--input", "good.npy", option, value, "--json"]
            else:
                args = ["run", option, value, "--json"]
            cases.append(Case(f"option {option}", args, _save("good.npy", GOOD),
                              oracle=document_oracle if "--json" in args else tables_oracle,
                              options={"timeout": 60}))
    return cases


class _Payload:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('pickle ran')",))


def pickle_cases() -> list[Case]:
    payload = pickle.dumps(_Payload(), protocol=4)
    object_npy = None
    array = np.empty(2, dtype=object)
    array[:] = [_Payload(), 1]
    with tempfile.TemporaryFile() as f:
        np.save(f, array, allow_pickle=True)
        f.seek(0)
        object_npy = f.read()
    cases = []
    for blob in (payload, object_npy, payload[:20]):
        for args, _option in readers("evil.npy"):
            setup = _both(_write("evil.npy", blob), _save("good.npy", GOOD))
            cases.append(Case("pickle payload", args, setup))
    return cases


def path_cases() -> list[Case]:
    long_name = "n" * 300 + ".npy"
    deep = "/".join(["d" * 200] * 21) + "/x.npy"

    def loop(folder):
        os.symlink("b.npy", folder / "a.npy")
        os.symlink("a.npy", folder / "b.npy")

    def dangling(folder):
        os.symlink("nowhere.npy", folder / "link.npy")

    def fifo(folder):
        os.mkfifo(folder / "pipe.npy")

    def device(folder):
        try:
            os.mknod(folder / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:  # not root: a FIFO stands for it
            os.mkfifo(folder / "null")

    def shut(folder):
        (folder / "sub").mkdir()
        np.save(folder / "sub" / "x.npy", GOOD)
        (folder / "sub").chmod(0o600)

    def nasty_names(folder):
        np.save(folder / "a\x1b[31m\n.npy", GOOD)
        with open(os.path.join(os.fsencode(folder), b"caf\xe9.npy"), "wb") as f:
            np.save(f, GOOD)

    def existing(folder):
        np.save(folder / "good.npy", GOOD)
        (folder / "y.npy").write_bytes(b"precious")

    good = _save("good.npy", GOOD)
    cases = [
        Case("path", ["run", "--input", long_name], good),
        Case("path", ["run", "--input", deep], good),
        Case("path", ["run", "--save-output", long_name], good),
        Case("path", ["run", "--save-output", "y" * 251 + ".npy"], good, ("y" * 251 + ".npy",),
             saved_oracle("y" * 251 + ".npy")),
        Case("path", ["run", "--input", "a.npy"], loop),
        Case("path", ["run", "--weight", "link.npy"], dangling),
        Case("path", ["run", "--save-output", "link.npy"], dangling),
        Case("path", ["run", "--input", "pipe.npy"], fifo, options={"timeout": 15}),
        Case("path", ["check", "--input", "good.npy", "--output", "pipe.npy"],
             _both(fifo, good), options={"timeout": 15}),
        Case("path", ["run", "--save-output", "pipe.npy"], fifo, options={"timeout": 15}),
        Case("path", ["run", "--input", "/dev/zero"], options={"timeout": 15}),
        Case("path", ["run", "--input", "/dev/stdin"], options={"timeout": 15}),
        # a device of the case's own: never a system one (as root, a bninspect that replaced
        # devices under --force would replace /dev/null)
        Case("path", ["run", "--save-output", "null", "--force"], device,
             options={"timeout": 15}),
        Case("path", ["run", "--input", "."]),
        Case("path", ["run", "--save-output", "."]),
        Case("path", ["run", "--save-output", "new/"]),
        Case("path", ["run", "--save-output", "missing/y.npy"]),
        # as root, permissions do not stop reading: then a right answer is the right outcome
        Case("path", ["run", "--input", "sub/x.npy"], shut,
             oracle=tables_oracle if os.geteuid() == 0 else None),
        Case("path", ["run", "--input", "a\x1b[31m\n.npy"], nasty_names, oracle=tables_oracle),
        Case("path", ["run", "--input", os.fsdecode(b"caf\xe9.npy"), "--json"], nasty_names,
             oracle=document_oracle),
        Case("path", ["run", "--input", "gone\x1b[2J.npy"]),
        Case("path", ["run", "--input", "good.npy", "--save-output", "y.npy"], existing),
        Case("path", ["run", "--input", "good.npy", "--save-output", "good.npy", "--force"],
             existing),
        Case("path", ["check", "--input", "good.npy", "--output", "y.npy", "--save-output",
                      "y.npy", "--force"], _both(existing, _save("y.npy", GOOD))),
        Case("path", ["run", "--input", "good.npy", "--save-input", "s.npy", "--save-output",
                      "s.npy"], good),
    ]
    return cases


def fault_cases() -> list[Case]:
    big = np.random.default_rng(3).standard_normal((8, 8, 64, 64)).astype(np.float32)
    setup = _save("x.npy", big)
    cases = [
        Case("fault", ["run", "--input", "x.npy", "--stats-only"], setup, injected=("x.npy",),
             options={"inject": "truncate-while-mapped", "inject_arg": {"size": 65536}}),
        Case("fault", ["run", "--input", "x.npy", "--stats-only", "--json"], setup,
             injected=("x.npy",),
             options={"inject": "rewrite-while-mapped", "inject_arg": {"offset": 1 << 20}}),
        Case("fault", ["run", "--input", "x.npy"], setup, injected=("x.npy",),
             options={"inject": "rewrite-while-read", "inject_arg": {"offset": 200}}),
        Case("fault", ["run", "--save-input", "a.npy", "--save-output", "b.npy"],
             options={"inject": "output-appears", "inject_arg": {"path": "b.npy"}},
             injected=("b.npy",)),
        Case("fault", ["run", "--save-input", "a.npy", "--save-output", "b.npy"],
             options={"inject": "second-land-fails"}),
        Case("fault", ["run", "--save-input", "a.npy", "--save-output", "b.npy"],
             writes=("a.npy", "b.npy"), oracle=saved_oracle("a.npy", "b.npy"),
             options={"inject": "signal-while-landing"}, sent_signal=signal.SIGTERM),
        Case("fault", ["run", "--shape", "2,3,4,5", "--json"], options={"stdout": "closed"}),
        Case("fault", ["run", "--shape", "2,3,4,5", "--json"], options={"stdout": "full"}),
        Case("fault", ["run", "--shape", "2,3,4,5"], options={"stdout": "full"}),
        Case("fault", ["run", "--shape", "2,3,4,5", "--json", "--weight", "x"],
             options={"stderr": "closed"}),
        Case("fault", ["run", "--shape", "2,3,4,5", "--json"], options={"stderr": "closed"},
             oracle=document_oracle),
    ]
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                   signal.SIGUSR1, signal.SIGALRM):
        for named in (False, True):
            cases.append(Case(
                "signal", ["run", "--save-input", "a.npy", "--save-output", "b.npy"],
                options={"inject": "signal-while-writing",
                         "inject_arg": {"signal": int(signum), "named": named}},
                sent_signal=int(signum)))
        cases.append(Case("signal", ["run", "--shape", "4,3,8,8"],
                          options={"inject": "signal-while-computing",
                                   "inject_arg": {"signal": int(signum)}, "timeout": 20},
                          sent_signal=int(signum)))
    for case in cases:  # the injected faults act on the case's own x.npy
        arg = case.options.get("inject_arg")
        if arg is not None and "path" not in arg and case.options.get("inject", "").startswith(
            ("truncate", "rewrite")
        ):
            arg["path"] = "x.npy"
    return cases


def huge_cases() -> list[Case]:
    def header(shape, descr="<f4"):
        text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}".encode()
        text += b" " * (63 - (10 + len(text)) % 64) + b"\n"
        return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text

    cases = []
    for shape in [(2**31, 2**31, 4), (2**20, 2**20, 4), (2**40, 2), (2, 2**40), (3, 2**62)]:
        for args, _ in readers("huge.npy"):
            cases.append(Case("huge header", args, _both(
                _write("huge.npy", header(shape) + bytes(480)), _save("good.npy", GOOD)),
                options={"memory": 1 << 30, "timeout": 20}))
    for shape in ["2097152,1000000000,2", "2097152,10000000,2", "1,2000000000"]:
        cases.append(Case("huge shape", ["run", "--shape", shape],
                          options={"memory": 1 << 30, "timeout": 20}))
    cases.append(Case("huge steps", ["run", "--shape", "2,2", "--steps", "100000000"],
                      options={"memory": 1 << 30, "timeout": 20}))
    return cases


def all_cases(count: int, seed: int) -> list[Case]:
    fixed = option_cases() + pickle_cases() + path_cases() + fault_cases() + huge_cases()
    drawn = max(0, count - len(fixed))
    cases = fixed + npy_cases(drawn * 2 // 3, seed) + value_cases(drawn - drawn * 2 // 3, seed)
    random.Random(seed).shuffle(cases)
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=3, help="examples of each bad outcome")
    options = parser.parse_args()
    cases = all_cases(options.cases, options.seed)
    counts: Counter[str] = Counter()
    examples: dict[str, list[str]] = defaultdict(list)
    families: dict[str, Counter] = defaultdict(Counter)
    server = CliServer()
    start = time.monotonic()
    try:
        for number, case in enumerate(cases, 1):
            with tempfile.TemporaryDirectory(prefix="bninspect-fuzz-") as scratch:
                folder = Path(scratch)
                case.setup(folder)
                before = snapshot(folder)
                request = {"timeout": 60, "memory": 2 << 30,
                           "env": {"PYTHONWARNINGS": "error::RuntimeWarning"}, **case.options}
                if "inject_arg" in request and "path" in request["inject_arg"]:
                    request["inject_arg"] = {**request["inject_arg"]}
                    request["inject_arg"]["path"] = str(folder / request["inject_arg"]["path"])
                result = server.run(case.args, folder, **request)
                outcome, touched, detail = judge(case, result, folder, before)
                for dirpath, dirnames, _ in os.walk(folder):  # let the folder be removed
                    for name in dirnames:
                        os.chmod(os.path.join(dirpath, name), 0o700)
            counts["cases tried"] += 1
            counts[outcome] += 1
            families[case.family.split(" (")[0]][outcome] += 1
            if touched:
                counts["files touched"] += 1
            for bad in ([outcome] if outcome not in ("clean errors", "right answers") else []) + (
                ["files touched"] if touched else []
            ):
                if len(examples[bad]) < options.show:
                    examples[bad].append(detail)
            if number % 250 == 0:
                print(f"... {number} of {len(cases)} cases, {time.monotonic() - start:.0f} s",
                      file=sys.stderr)
    finally:
        server.close()
        shutil.rmtree(Path(tempfile.gettempdir()) / "PWNED", ignore_errors=True)
    elapsed = time.monotonic() - start
    print(f"bninspect fuzz: {counts['cases tried']} cases in {elapsed:.0f} s (seed "
          f"{options.seed})\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    print("| " + " | ".join(str(counts[c]) for c in COLUMNS) + " |")
    print("\nBy family (cases: clean errors / right answers / other):")
    for family, outcome in sorted(families.items()):
        total = sum(outcome.values())
        good = outcome["clean errors"], outcome["right answers"]
        print(f"  {family:<14} {total:5d}: {good[0]} / {good[1]} / {total - sum(good)}")
    for bad, details in examples.items():
        print(f"\n{bad}:")
        for detail in details:
            print(f"  {detail}")
    sys.exit(0 if all(counts[c] == 0 for c in COLUMNS[3:]) else 1)


if __name__ == "__main__":
    main()
