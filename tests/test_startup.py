"""`--help` and every error path run without importing torch (it costs ~1.4 s) or ml_dtypes
(~1 s, only bfloat16 needs it), proven in a subprocess where importing either fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
NO_TORCH = (
    # any `import torch` or `import ml_dtypes` now raises ImportError
    "import sys; sys.modules['torch'] = None; sys.modules['ml_dtypes'] = None\n"
    "from bninspect.cli.main import main\n"
    "sys.argv = ['bninspect', *sys.argv[1:]]\n"
    "main()\n"
)


def bninspect_without_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", NO_TORCH, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_help_without_numpy():
    """--help must not even load numpy (~0.1 s): it is what keeps it under 0.25 s."""
    blocked = NO_TORCH.replace("sys.modules['torch'] = None", "sys.modules['numpy'] = None")
    assert blocked != NO_TORCH
    result = subprocess.run(
        [sys.executable, "-c", blocked, "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0 and "Usage: bninspect" in result.stdout, result.stderr


def test_help_without_torch():
    for args in (
        [],
        ["--help"],
        ["run", "--help"],
        ["explain", "--help"],
        ["conventions", "--help"],
    ):
        result = bninspect_without_torch(*args)
        assert "Usage: bninspect" in result.stdout, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.returncode == (2 if args == [] else 0)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "text.npy").write_text("not numpy")
    np.save(folder / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(folder / "complex.npy", np.zeros((2, 2), dtype=np.complex64))
    np.save(folder / "one.npy", np.ones((1, 3), dtype=np.float32))
    np.save(folder / "two.npy", np.ones((3, 1), dtype=np.float32))
    return folder


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["run", "--shape", "1,,2"], 2),
        (["run", "--shape", "100000,3,1000,1000"], 1),
        (["run", "--input", "missing.npy"], 1),
        (["run", "--input", "{bad}/text.npy"], 1),
        (["run", "--input", "{bad}/objects.npy"], 1),
        (["run", "--input", "{bad}/complex.npy"], 1),
        (["run", "--input", "{bad}/one.npy"], 1),
        (["run", "--weight", "1,2,3"], 2),
        (["run", "--eps", "-1"], 2),
        (["run", "--momentum", "2"], 2),
        (["run", "--mode", "nope"], 2),
        (["run", "--shape", "1,4"], 1),
        (["explain", "--index", "0,0,9,0"], 2),
        (["explain"], 2),
        (["run", "--offset", "nan"], 2),
        (["run", "--dtype", "float8"], 2),
        (["run", "--input", "{bad}/one.npy", "--offset", "1"], 2),
        (["run", "--input", "{bad}/one.npy", "--stats-only", "--save-output", "y.npy"], 2),
        (["run", "--input", "{bad}/one.npy", "--stats-only", "--dtype", "float16"], 2),
        (["check", "--output", "y.npy"], 2),
        (["check", "--input", "{bad}/one.npy", "--output", "{bad}/missing.npy"], 1),
        (["check", "--input", "{bad}/one.npy", "--output", "{bad}/complex.npy"], 1),
        (["check", "--input", "{bad}/one.npy", "--output", "{bad}/two.npy"], 1),
        (
            ["explain", "--input", "{bad}/one.npy", "--index", "0,0", "--against", "{bad}/two.npy"],
            1,
        ),
        (["run", "--momentum", "none", "--convention", "keras"], 2),
        (["run", "--momentum", "fast"], 2),
        (["run", "--steps", "2", "--mode", "eval"], 2),
        (["run", "--batch-size", "2"], 2),
        (["run", "--input", "{bad}/one.npy", "--batch-size", "2"], 2),
        (["run", "--convention", "theano"], 2),
        (["conventions", "--momentum", "none", "--from", "caffe"], 2),
    ],
)
def test_error_paths_without_torch(bad_files, args, code):
    result = bninspect_without_torch(*(a.format(bad=bad_files) for a in args))
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["conventions"], ["conventions", "--json", "--momentum", "0.1"]])
def test_conventions_need_no_torch(args):
    result = bninspect_without_torch(*args)
    assert result.returncode == 0, result.stderr
    assert "caffe" in result.stdout and result.stderr == ""


def test_a_convention_pytorch_cannot_run_needs_no_torch():
    # One value per channel in train mode: Keras normalizes it, PyTorch refuses, so only the
    # reference runs and torch is never imported.
    result = bninspect_without_torch("run", "--shape", "1,3", "--convention", "keras", "--json")
    assert result.returncode == 0, result.stderr
    assert '"torch_module": "none: PyTorch' in result.stdout


def test_module_entry_point_runs():
    result = subprocess.run(
        [sys.executable, "-m", "bninspect", "run", "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert '"command": "run"' in result.stdout


def test_a_missing_torch_is_named_not_reported_as_a_bug():
    result = bninspect_without_torch("run", "--shape", "2,3")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: PyTorch could not be imported"), result.stderr
    assert "pip install torch" in result.stderr and result.stderr.count("\n") == 1
