"""Hostile paths and files (issue 14, items 3, 8, 13, 14, 15): every path problem is one clean
line with exit code 1 (a file to read) or 2 (a place to write), never an internal error; no
file the run reads can be overwritten; names are echoed printable and written to JSON
faithfully; nothing is left behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def x_npy(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32))
    return path


def listing(folder) -> list[str]:
    """Every name in the folder, hidden ones included."""
    return sorted(os.listdir(folder))


# --- Files that are not regular: refused before they are opened (item 3) -------------------


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["run", "--input", "{fifo}"], 1, "--input {fifo}: is a named pipe (FIFO), not a "
         "regular file; save the array to a .npy file"),
        (["run", "--weight", "{fifo_npy}"], 1, "--weight {fifo_npy}: is a named pipe (FIFO), "
         "not a regular file; save the array to a .npy file"),
        (["check", "--input", "{x}", "--output", "{fifo}"], 1, "--output {fifo}: is a named "
         "pipe (FIFO), not a regular file; save the array to a .npy file"),
        (["explain", "--input", "{x}", "--index", "0,0,0", "--against", "{fifo}"], 1,
         "--against {fifo}: is a named pipe (FIFO), not a regular file; save the array to a "
         ".npy file"),
        (["run", "--save-output", "{fifo}"], 2, "--save-output {fifo}: is a named pipe (FIFO); "
         "bninspect writes regular files only, give another path"),
        (["run", "--input", "/dev/zero"], 1, "--input /dev/zero: is a character device, not a "
         "regular file; give a .npy file"),
        # A device of its own, never a system one: bninspect before this fix replaced the
        # device with a file under --force (as root, /dev/null itself).
        (["run", "--save-input", "{device}", "--force"], 2, "--save-input {device}: is a "
         "character device; bninspect writes regular files only, give another path"),
    ],
)
def test_non_regular_files_are_refused_without_waiting(server, tmp_path, x_npy, args, code,
                                                       message):
    """A FIFO with no writer used to block the run forever on opening it; in its own process
    with a time limit, each is now one line at once."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "fifo.npy").symlink_to(fifo)
    device = tmp_path / "null"
    if "{device}" in args:
        try:  # a character device like /dev/null's, in the test's own folder
            os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("making a device node needs root")
    names = {"fifo": fifo, "fifo_npy": tmp_path / "fifo.npy", "x": x_npy, "device": device}
    result = server.run([a.format(**names) for a in args], tmp_path, timeout=20)
    assert result["status"] == "exit", result
    assert (result["code"], result["stderr"]) == (code, f"Error: {message.format(**names)}\n")
    assert result["stdout"] == ""


# --- Paths the operating system refuses (items 8 and 15) -----------------------------------


def test_a_name_over_255_bytes(cli, tmp_path):
    path = tmp_path / ("a" * 300 + ".npy")
    assert cli.error("run", "--input", path, code=1) == (
        f"--input {path}: name too long (a file name may have at most 255 bytes, a path 4096); "
        "give a shorter path"
    )
    assert cli.error("run", "--save-output", path, code=2) == (
        f"--save-output {path}: name too long (a file name may have at most 255 bytes, a path "
        "4096); give a shorter path"
    )
    assert listing(tmp_path) == []


def test_a_path_over_4096_bytes(cli, tmp_path):
    path = tmp_path.joinpath(*["d" * 200] * 21, "x.npy")  # no such directories either
    assert len(os.fsencode(str(path))) > 4096
    assert cli.error("run", "--input", path, code=1).endswith(
        ": name too long (a file name may have at most 255 bytes, a path 4096); give a shorter "
        "path"
    )


def test_a_symbolic_link_loop_is_not_a_missing_file(cli, tmp_path):
    (tmp_path / "a.npy").symlink_to(tmp_path / "b.npy")
    (tmp_path / "b.npy").symlink_to(tmp_path / "a.npy")
    assert cli.error("run", "--input", tmp_path / "a.npy", code=1) == (
        f"--input {tmp_path / 'a.npy'}: too many levels of symbolic links (a loop?); check the "
        "links on the path"
    )


def test_a_dangling_link_to_read(cli, tmp_path):
    (tmp_path / "x.npy").symlink_to(tmp_path / "gone.npy")
    assert cli.error("run", "--weight", tmp_path / "x.npy", code=1) == (
        f"--weight {tmp_path / 'x.npy'}: is a symbolic link to a file that does not exist; "
        "check the link"
    )


def test_a_dangling_link_is_not_replaced_without_force(cli, tmp_path):
    link = tmp_path / "y.npy"
    link.symlink_to(tmp_path / "elsewhere.npy")
    assert cli.error("run", "--save-output", link, code=2) == (
        f"--save-output {link}: is a symbolic link to a file that does not exist; add --force "
        "to replace the link"
    )
    assert link.is_symlink() and listing(tmp_path) == ["y.npy"]
    cli("run", "--save-output", link, "--force")  # replaces the link, writes no further
    assert not link.is_symlink() and np.load(link).shape == (1, 2, 3, 4)
    assert listing(tmp_path) == ["y.npy"]


def test_a_save_path_ending_in_a_slash_names_a_directory(cli, tmp_path):
    path = f"{tmp_path}/newname/"
    assert cli.error("run", "--save-output", path, code=2) == (
        f"--save-output '{path}': names a directory, not a file; give a file path, e.g. "
        f"{tmp_path}/newname/output.npy"
    )
    assert listing(tmp_path) == []


@pytest.mark.parametrize("length", [240, 255])
def test_the_longest_names_can_be_saved(cli, tmp_path, length):
    """The temporary file is unnamed, or has a short name: never longer than the final one."""
    path = tmp_path / ("y" * (length - 4) + ".npy")
    cli("run", "--save-output", path, "--save-input", tmp_path / "x.npy")
    assert listing(tmp_path) == sorted(["x.npy", path.name])


def test_no_probe_or_temporary_file_is_left(cli, tmp_path):
    cli("run", "--save-output", tmp_path / "y.npy")
    cli.error("run", "--save-output", tmp_path / "z.npy", "--shape", "1,3", code=1)
    assert listing(tmp_path) == ["y.npy"]


def _drop_file_permissions_bypass() -> list[str]:
    """A command prefix running without the root's bypass of file permissions (or skip)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: permissions cannot be tested")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]


def _bninspect(prefix, *args, cwd):
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "bninspect", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    return done.returncode, done.stderr


def test_unreadable_files_and_unsearchable_directories(tmp_path, x_npy):
    """A mode-000 file exits 1 as the README says (typer's own check said 2), and a directory
    that cannot be searched is a clean error, not "internal error (PermissionError)"."""
    prefix = _drop_file_permissions_bypass()
    readable = tmp_path / "readable.npy"
    shutil.copy(x_npy, readable)
    x_npy.chmod(0)
    shut = tmp_path / "shut"
    shut.mkdir()
    np.save(shut / "w.npy", np.ones(3))
    shut.chmod(0o600)  # readable, not searchable
    try:
        permission = (
            "permission denied (reading the file, or searching a directory on its path); check "
            "the permissions"
        )
        for args in (
            ["run", "--input", x_npy],
            ["check", "--input", readable, "--output", x_npy],
            ["run", "--shape", "2,3", "--weight", shut / "w.npy"],
        ):
            code, stderr = _bninspect(prefix, *args, cwd=tmp_path)
            option, path = str(args[-2]), args[-1]
            assert (code, stderr) == (1, f"Error: {option} {path}: {permission}\n")
        code, stderr = _bninspect(prefix, "run", "--save-output", shut / "y.npy", cwd=tmp_path)
        assert (code, stderr) == (2, f"Error: --save-output {shut / 'y.npy'}: {permission}\n")
    finally:
        shut.chmod(0o700)
        x_npy.chmod(0o600)


def test_no_probe_file_in_an_append_only_directory(cli, tmp_path):
    """An append-only directory lets files be created but not removed: probing by creating
    a file left it there."""
    folder = tmp_path / "log"
    folder.mkdir()
    chattr = shutil.which("chattr")
    if os.geteuid() != 0 or chattr is None:
        pytest.skip("needs root and chattr to make an append-only directory")
    if subprocess.run([chattr, "+a", folder], capture_output=True).returncode != 0:
        pytest.skip("this file system has no append-only attribute")
    try:
        cli("run", "--save-output", folder / "y.npy")
        assert listing(folder) == ["y.npy"]
    finally:
        subprocess.run([chattr, "-a", folder], check=True)


# --- Every file the run reads is protected (item 13) ---------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["explain", "--input", "{x}", "--index", "0,0,0", "--against", "{y}",
         "--save-output", "{y}"],
        ["explain", "--input", "{x}", "--index", "0,0,0", "--against", "{y}",
         "--save-input", "{y}"],
        ["run", "--input", "{x}", "--grad", "--grad-output", "{y}", "--save-output", "{y}"],
        ["run", "--input", "{x}", "--weight", "{w}", "--save-output", "{w}"],
        ["run", "--input", "{x}", "--save-output", "{x_link}"],
        ["run", "--input", "{x}", "--save-output", "{x_hard}"],
    ],
)
def test_no_file_the_run_reads_is_overwritten(cli, tmp_path, x_npy, args):
    y, w = tmp_path / "y.npy", tmp_path / "w.npy"
    np.save(y, np.zeros((2, 3, 4), np.float32))
    np.save(w, np.ones(3, np.float32))
    (tmp_path / "x_link.npy").symlink_to(x_npy)
    os.link(x_npy, tmp_path / "x_hard.npy")
    names = {"x": x_npy, "y": y, "w": w, "x_link": tmp_path / "x_link.npy",
             "x_hard": tmp_path / "x_hard.npy"}
    before = {name: (tmp_path / name).read_bytes() for name in listing(tmp_path)}
    args = [a.format(**names) for a in args]
    assert cli.error(*args, "--force", code=2) == (
        f"{args[-2]} {args[-1]}: is also an input of this run; give a different path"
    )
    assert {name: (tmp_path / name).read_bytes() for name in listing(tmp_path)} == before


# --- Names echoed and written (item 15) ----------------------------------------------------


def test_control_characters_in_names_are_escaped(cli, tmp_path):
    name = "a\x1b(0red\nline\u202e.npy"  # ESC ( 0: the line-drawing character set
    np.save(tmp_path / name, np.random.default_rng(0).standard_normal((2, 3, 4)).astype("f4"))
    shown = "a\\x1b(0red\\x0aline\\u202e.npy"
    message = cli.error("run", "--input", tmp_path / "missing" / name, code=1)
    assert message == f"--input {tmp_path}/missing/{shown}: no such file; check the path"
    tables = cli("run", "--input", tmp_path / name).stdout
    assert f"{tmp_path}/{shown}" in tables
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f\u202e]", tables)
    doc = cli.json("run", "--input", tmp_path / name)
    assert doc["input"]["path"] == str(tmp_path / name)  # JSON keeps it, escaped by JSON


def _name_bytes(text: str) -> bytes:
    """Undo docs/errors.md's rule: \\xNN is the byte NN, \\\\ a backslash."""
    out, i = bytearray(), 0
    while i < len(text):
        if text.startswith("\\\\", i):
            out += b"\\"
            i += 2
        elif re.match(r"\\x[0-9a-f]{2}", text[i : i + 4]):
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        else:
            out += text[i].encode()
            i += 1
    return bytes(out)


@pytest.mark.parametrize("raw", [b"caf\xe9.npy", b"\xff\xfe\\x41\\.npy", "été.npy".encode()])
def test_names_that_are_not_utf8_are_faithful_in_json(cli, tmp_path, raw):
    """Python holds such a name with lone surrogates, which strict JSON readers refuse; the
    document now holds valid Unicode from which the name's bytes come back exactly."""
    path = os.path.join(os.fsencode(str(tmp_path)), raw)
    with open(path, "wb") as f:
        np.save(f, np.ones((2, 2), np.float32))
    result = cli("run", "--input", os.fsdecode(path), "--json")
    text = result.stdout
    text.encode("utf-8")  # no lone surrogate (they cannot be encoded)
    doc = json.loads(text)
    assert _name_bytes(doc["input"]["path"]) == path
