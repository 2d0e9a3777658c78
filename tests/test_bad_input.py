"""Every bad input ends in one line on stderr naming the problem and the fix, a non-zero exit
code (2 malformed option, 1 input that cannot be inspected), no traceback, nothing written."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

SHAPE_ERRORS = [
    ("1,,2", "--shape '1,,2': entry 1 is empty; give sizes like 1x2x3x4 or 1,2,3,4"),
    (
        "a,b",
        "--shape 'a,b': entry 0 ('a') is not an integer; give sizes like 1x2x3x4 or 1,2,3,4",
    ),
    (
        "1,0,3",
        "--shape '1,0,3': size 0 at position 1 is not positive; every size must be at least 1",
    ),
    (
        "1,-2",
        "--shape '1,-2': size -2 at position 1 is not positive; every size must be at least 1",
    ),
    (
        "7",
        "--shape '7' has rank 1; batch norm takes rank 2 to 5, (N,C), (N,C,L), (N,C,H,W) or "
        "(N,C,D,H,W), with channels on axis 1",
    ),
    (
        "1,2,3,4,5,6",
        "--shape '1,2,3,4,5,6' has rank 6; batch norm takes rank 2 to 5, (N,C), "
        "(N,C,L), (N,C,H,W) or (N,C,D,H,W), with channels on axis 1",
    ),
]


@pytest.mark.parametrize("command", [["run"], ["explain", "--index", "0,0"]])
@pytest.mark.parametrize(("shape", "message"), SHAPE_ERRORS)
def test_malformed_shape(cli, command, shape, message):
    assert cli.error(*command, "--shape", shape, code=2) == message


def test_shape_too_large_for_memory(cli, tmp_path):
    saving = ("--save-input", tmp_path / "x.npy", "--save-output", tmp_path / "y.npy")
    message = cli.error("run", "--shape", "100000,3,1000,1000", *saving, code=1)
    # input and PyTorch's output 2 * 3e11 * 4 bytes, plus a float64 copy of one channel of
    # 1e11 values: 3.2e12 bytes = 2.9 TiB
    assert message.startswith("--shape 100000,3,1000,1000 in float32 needs about 2.9 TiB but only ")
    assert message.endswith(" is available; use a smaller --shape")
    # Without --save-output PyTorch's output is held one channel group at a time, here one
    # channel (4e11 bytes) and its input copy: 1.2e12 + 8e11 + 8e11 bytes = 2.5 TiB
    message = cli.error("run", "--shape", "100000,3,1000,1000", code=1)
    assert message.startswith("--shape 100000,3,1000,1000 in float32 needs about 2.5 TiB but only ")
    assert list(tmp_path.iterdir()) == []


def test_missing_file(cli, tmp_path):
    path = tmp_path / "nope.npy"
    assert (
        cli.error("run", "--input", path, code=1) == f"--input {path}: no such file; check the path"
    )


def test_directory(cli, tmp_path):
    """A directory is never read whole: the message names the pattern of its files."""
    assert cli.error("run", "--input", tmp_path, code=1) == (
        f"--input {tmp_path}: is a directory; give a .npy file, or to stream its files (run "
        f"--stats-only) a quoted pattern: --input '{tmp_path}/*.npy'"
    )
    output = tmp_path / "y.npy"
    np.save(output, np.zeros((1, 2), np.float32))
    assert cli.error("check", "--input", tmp_path, "--output", output, code=1) == (
        f"--input {tmp_path}: is a directory; give a .npy file, or to stream its files (run "
        f"--stats-only) a quoted pattern: --input '{tmp_path}/*.npy'"
    )


def test_not_npy(cli, tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("1,2,3\n")
    assert cli.error("run", "--input", path, code=1) == (
        f"--input {path}: not a .npy file (no NUMPY magic bytes); save the array with numpy.save"
    )


def test_a_pickle_named_npy_is_not_unpickled(cli, tmp_path):
    path = tmp_path / "x.npy"

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    path.write_bytes(pickle.dumps(Boom()))
    assert cli.error("run", "--input", path, code=1) == (
        f"--input {path}: is a Python pickle, not a .npy file, and bninspect never loads "
        "pickles; save the array with numpy.save"
    )


def test_truncated(cli, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 3, 4), dtype=np.float32))
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    assert cli.error("run", "--input", path, code=1) == (
        f"--input {path}: truncated: the header promises {len(data)} bytes but the file has "
        f"{len(data) - 10}; copy or save it again"
    )


def test_damaged_header(cli, tmp_path):
    path = tmp_path / "x.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00\x10\x00{'descr': garbage")
    assert cli.error("run", "--input", path, code=1) == (
        f"--input {path}: the .npy header is damaged; save the array again with numpy.save"
    )


def test_object_dtype_is_refused_unopened(cli, tmp_path):
    path = tmp_path / "x.npy"
    array = np.empty((2, 2), dtype=object)
    array[:] = [[1, 2], [3, 4]]
    np.save(path, array, allow_pickle=True)
    assert cli.error("run", "--input", path, code=1) == (
        f"--input {path}: holds Python objects (a pickle), which bninspect never loads; save a "
        "numeric array, e.g. numpy.save(path, np.asarray(x, dtype=np.float32))"
    )


@pytest.mark.parametrize(
    ("array", "kind"),
    [
        (np.zeros((2, 2), dtype=np.complex64), "complex"),
        (np.array([["a", "b"], ["c", "d"]]), "string"),
        (np.zeros((2, 2), dtype=[("a", "f4"), ("b", "i4")]), "structured or raw-bytes"),
        (np.zeros((2, 2), dtype="datetime64[s]"), "datetime"),
    ],
)
def test_unsupported_dtypes(cli, tmp_path, array, kind):
    path = tmp_path / "x.npy"
    np.save(path, array)
    assert cli.error("run", "--input", path, code=1) == (
        f"--input {path}: dtype {array.dtype} is {kind}; batch norm needs a real numeric array "
        "(float16, float32 or float64; integers are converted)"
    )


def test_file_of_wrong_rank(cli, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros(5, dtype=np.float32))
    assert cli.error("run", "--input", path, code=1) == (
        f"--input {path}: shape (5,) has rank 1; batch norm takes rank 2 to 5, (N,C), (N,C,L), "
        "(N,C,H,W) or (N,C,D,H,W), with channels on axis 1"
    )


def test_shape_and_input_together(cli, tmp_path):
    assert cli.error("run", "--shape", "1,2", "--input", tmp_path / "x.npy", code=2) == (
        "--shape and --input both given; the file has its own shape, drop --shape"
    )


@pytest.mark.parametrize(
    ("index", "message"),
    [
        (
            "0",
            "--index 0 has 1 entry but the input has rank 4 (shape 1x2x3x4); give 4 "
            "comma-separated integers",
        ),
        (
            "0,0,0",
            "--index 0,0,0 has 3 entries but the input has rank 4 (shape 1x2x3x4); give 4 "
            "comma-separated integers",
        ),
        ("0,0,3,0", "--index 0,0,3,0: entry 2 is 3 but axis 2 has size 3; valid range is -3 to 2"),
        (
            "0,x,0,0",
            "--index '0,x,0,0': entry 1 ('x') is not an integer; give one integer per axis "
            "like 1,2,3,4",
        ),
    ],
)
def test_bad_index(cli, index, message):
    assert cli.error("explain", "--index", index, code=2) == message


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        (
            "--weight",
            "1,2,3",
            "--weight '1,2,3': gives 3 values but the input has 2 channels; give exactly 2",
        ),
        (
            "--bias",
            "0.1",
            "--bias '0.1': gives 1 value but the input has 2 channels; give exactly 2",
        ),
        (
            "--running-mean",
            "a,b",
            "--running-mean 'a,b': entry 0 ('a') is not a number; give ones, "
            "zeros, random, a comma list of one number per channel, or a .npy "
            "file",
        ),
        (
            "--running-var",
            "1,-1",
            "--running-var '1,-1': has a negative value; a variance cannot be negative",
        ),
        ("--weight", "1,inf", "--weight '1,inf': entry 1 is inf; values must be finite"),
    ],
)
def test_bad_vectors(cli, option, value, message):
    assert cli.error("run", option, value, code=2) == message


def test_vector_file_of_wrong_length(cli, tmp_path):
    path = tmp_path / "w.npy"
    np.save(path, np.ones(3))
    assert cli.error("run", "--weight", path, code=2) == (
        f"--weight '{path}': gives 3 values but the input has 2 channels; give exactly 2"
    )


def test_missing_vector_file(cli, tmp_path):
    path = tmp_path / "w.npy"
    assert (
        cli.error("run", "--weight", path, code=1) == f"--weight {path}: no such file; "
        "check the path"
    )


@pytest.mark.parametrize("eps", ["-1e-5", "nan", "inf"])
def test_bad_eps(cli, eps):
    message = cli.error("run", "--eps", eps, code=2)
    assert message.endswith(": must be a finite number >= 0 (PyTorch's default is 1e-5)")


def test_bad_eps_reads_as_given(cli):
    assert cli.error("run", "--eps", "-1", code=2) == (
        "--eps -1: must be a finite number >= 0 (PyTorch's default is 1e-5)"
    )


def test_eps_not_a_number(cli):
    assert cli.error("run", "--eps", "abc", code=2).startswith("Invalid value for '--eps'")


@pytest.mark.parametrize("momentum", ["-0.1", "1.5"])
def test_bad_momentum(cli, momentum):
    assert cli.error("run", "--momentum", momentum, code=2) == (
        f"--momentum {float(momentum)}: must lie in [0, 1]; PyTorch's default 0.1 gives the new "
        "batch weight 0.1 in the running statistics"
    )


def test_train_mode_with_one_value_per_channel(cli):
    assert cli.error("run", "--shape", "1,3", code=1) == (
        "train mode needs more than one value per channel, but shape 1x3 has one: its batch "
        "variance is 0 and the unbiased one undefined, so PyTorch raises 'Expected more than 1 "
        "value per channel when training'; use --mode eval to normalize with the running "
        "statistics, or give a batch with more values"
    )


def test_train_mode_with_zero_eps(cli):
    assert cli.error("run", "--eps", "0", code=1).startswith(
        "train mode with --eps 0: PyTorch raises 'batch_norm eps must be positive during training'"
    )


def test_unknown_mode(cli):
    assert cli.error("run", "--mode", "inference", code=2) == (
        "Invalid value for '--mode': 'inference' is not one of 'train', 'eval'; "
        "see 'bninspect run --help'"
    )


def test_empty_array(cli, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((0, 3, 4), dtype=np.float32))
    assert cli.error("run", "--input", path, code=1) == (
        f"--input {path}: shape (0, 3, 4) has an empty axis, so there is nothing to inspect; "
        "give an array with at least one value on every axis"
    )


def test_no_affine_with_weight(cli):
    assert cli.error("run", "--no-affine", "--weight", "2,2", code=2) == (
        "--weight and --bias have no effect with --no-affine; drop one or the other"
    )


def test_output_may_not_overwrite_the_input(cli, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.ones((2, 2), dtype=np.float32))
    before = path.read_bytes()
    assert cli.error("run", "--input", path, "--save-output", path, "--force", code=2) == (
        f"--save-output {path}: is also an input of this run; give a different path"
    )
    assert path.read_bytes() == before


def test_two_outputs_to_one_file(cli, tmp_path):
    path = tmp_path / "x.npy"
    assert cli.error("run", "--save-input", path, "--save-output", path, code=2) == (
        "--save-input and --save-output name the same file; give two paths"
    )


def test_output_into_a_missing_directory(cli, tmp_path):
    path = tmp_path / "no" / "x.npy"
    assert cli.error("run", "--save-output", path, code=2) == (
        f"--save-output {path}: directory {path.parent} does not exist; create it first"
    )


def test_existing_output_survives_a_failed_run(cli, tmp_path):
    path = tmp_path / "y.npy"
    path.write_bytes(b"precious")
    cli.error("run", "--shape", "1,3", "--save-output", path, "--force", code=1)
    assert path.read_bytes() == b"precious"


def test_unknown_option_is_one_line(cli):
    assert cli.error("run", "--frobnicate", code=2) == (
        "No such option: --frobnicate (Possible options: --force); see 'bninspect run --help'"
    )


def test_an_unwritable_second_output_writes_nothing(cli, tmp_path):
    """Found by review: the first file used to be written before the second failed."""
    first = tmp_path / "x.npy"
    message = cli.error("run", "--save-input", first, "--save-output", "/proc/y.npy", code=2)
    assert message.startswith("--save-output /proc/y.npy: cannot create a file in /proc (")
    assert message.endswith("); choose another directory")
    assert list(tmp_path.iterdir()) == []


def test_saved_files_get_the_usual_permissions(cli, tmp_path):
    path = tmp_path / "x.npy"
    cli("run", "--save-input", path)
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    path.chmod(0o640)
    cli("run", "--save-input", path, "--force")
    assert path.stat().st_mode & 0o777 == 0o640  # --force keeps an existing file's mode


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--weight", "1e39,1"],
            "--weight '1e39,1': entry 0 (1e+39) does not fit float32, whose "
            "largest value is 3.403e+38; give a smaller value",
        ),
        (
            ["--running-var", "1,7e4", "--dtype", "float16"],
            "--running-var '1,7e4': entry 1 (70000) does not fit float16, whose largest value "
            "is 6.55e+04; give a smaller value",
        ),
    ],
)
def test_vectors_that_overflow_the_dtype(cli, args, message):
    """Found by review: such values used to become inf with a Python warning."""
    assert cli.error("run", *args, code=2) == message


def test_vector_file_of_the_wrong_shape_or_kind(cli, tmp_path):
    """Found by review: a (3, 1) file was said to give 3 values for 3 channels."""
    path = tmp_path / "w.npy"
    np.save(path, np.ones((3, 1), dtype=np.float32))
    assert cli.error("run", "--shape", "2,3", "--weight", path, code=2) == (
        f"--weight '{path}': has shape (3, 1); save a 1-D array of 3 values, one per channel"
    )
    np.save(path, np.ones(3, dtype=np.complex64))
    assert cli.error("run", "--shape", "2,3", "--weight", path, code=2) == (
        f"--weight {path}: holds complex64 values; save real numbers (float or integer)"
    )
    assert cli.error("run", "--bias", "0.1", code=2) == (
        "--bias '0.1': gives 1 value but the input has 2 channels; give exactly 2"
    )
