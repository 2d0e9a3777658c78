"""`model`'s file options and hostile paths (issue 14, item 3, for the model command): --weights,
--program, --model's .py file, --input files and a directory of batches are refused unless
regular files, by their kind, before anything opens them (a FIFO with no writer used to hang
the run forever, /dev/zero to be read without end, and a FIFO .py was "no file"); and again on
the descriptor when loading, so a name swapped for a FIFO after the start-up check cannot hang
it either."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

FIFO = "is a named pipe (FIFO), not a regular file; "


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--weights", "{fifo}.pt"], "--weights {fifo}.pt: " + FIFO + "give the file torch.save "
         "wrote"),
        (["--model", "torch.nn:Identity", "--weights", "{fifo}.pt", "--shape", "2,3"],
         "--weights {fifo}.pt: " + FIFO + "give the file torch.save wrote"),
        (["--program", "{fifo}.pt2"], "--program {fifo}.pt2: " + FIFO + "give the file "
         "torch.export.save wrote"),
        (["--program", "/dev/zero"], "--program /dev/zero: is a character device, not a regular "
         "file; give the file torch.export.save wrote"),
        (["--weights", "/dev/zero"], "--weights /dev/zero: is a character device, not a regular "
         "file; give the file torch.save wrote"),
        (["--model", "{fifo}.py:make_net", "--shape", "2,3"], "--model {fifo}.py:make_net: "
         "{fifo}.py: " + FIFO + "give a Python source file"),
        (["--model", "torch.nn:Identity", "--input", "{fifo}.npy"], "--input {fifo}.npy: " + FIFO
         + "save the array to a .npy file"),
        (["--model", "torch.nn:Identity", "--input", "{batches}"], "--input {batches}/b.npy: "
         + FIFO + "save the array to a .npy file"),
        (["--program", "{folder}"], "--program {folder}: is a directory; give the file "
         "torch.export.save wrote"),
        (["--model", "torch.nn:Identity", "--input", "{folder}/none.npy"],
         "--input {folder}/none.npy: no such file; check the path"),
    ],
)  # fmt: skip
def test_model_refuses_non_regular_files_without_waiting(server, tmp_path, args, message):
    folder = tmp_path / "d"
    folder.mkdir()
    fifo = tmp_path / "ff"
    for suffix in (".pt", ".pt2", ".py", ".npy"):
        os.mkfifo(f"{fifo}{suffix}")
    batches = tmp_path / "batches"
    batches.mkdir()
    os.mkfifo(batches / "b.npy")
    names = {"fifo": fifo, "batches": batches, "folder": folder}
    result = server.run(["model", *(a.format(**names) for a in args)], tmp_path, timeout=30)
    assert result["status"] == "exit", result
    assert (result["code"], result["stderr"]) == (1, f"Error: {message.format(**names)}\n")
    assert result["stdout"] == ""


def test_loading_opens_regular_files_only(tmp_path):
    """Past the start-up check (a name swapped for a FIFO since): the loaders themselves
    refuse it on the open descriptor, at once. In a subprocess with a time limit."""
    for suffix in (".pt", ".pt2", ".py"):
        os.mkfifo(tmp_path / f"ff{suffix}")
    script = textwrap.dedent(f"""
        from pathlib import Path
        from bninspect.errors import BnInspectError
        from bninspect.model.loading import _import_module, load_program, read_state_dict
        from bninspect.model.spec import parse_model_spec
        folder = Path({str(tmp_path)!r})
        calls = [
            lambda: read_state_dict(folder / "ff.pt"),
            lambda: load_program(folder / "ff.pt2"),
            lambda: _import_module(parse_model_spec(str(folder / "ff.py") + ":make")),
        ]
        for call in calls:
            try:
                call()
            except BnInspectError as exc:
                print(exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == [
        f"--weights {tmp_path}/ff.pt: {FIFO}give the file torch.save wrote",
        f"--program {tmp_path}/ff.pt2: {FIFO}give the file torch.export.save wrote",
        f"--model {tmp_path}/ff.py:make: {tmp_path}/ff.py: {FIFO}give a Python source file",
    ]
