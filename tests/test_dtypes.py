"""--dtype, --offset, --scale: PyTorch in each dtype against the reference, with tolerances from
the one dtype table (dtypes.FORMATS, torch.testing's defaults)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from bninspect.dtypes import FORMATS


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_generated_dtypes_round_the_same_float32_draws(cli, tmp_path, dtype):
    path = tmp_path / "x.npy"
    result = cli(
        "run",
        "--shape",
        "3,2,4",
        "--seed",
        "4",
        "--dtype",
        dtype,
        "--offset",
        "2",
        "--scale",
        "0.5",
        "--save-input",
        path,
        "--json",
    )
    draws = np.random.default_rng(4).standard_normal((3, 2, 4), dtype=np.float32)
    expected = (draws.astype(np.float64) * 0.5 + 2).astype(FORMATS[dtype].numpy)
    saved = np.load(path)
    if dtype == "bfloat16":
        assert "as float32 (exact; reload it with --dtype bfloat16)" in result.stderr
        saved = saved.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(saved, expected)


def test_offset_and_scale_are_recorded(cli):
    doc = cli.json("run", "--offset", "1e4", "--scale", "2")
    assert (doc["input"]["offset"], doc["input"]["scale"]) == (1e4, 2.0)
    assert (
        "generated standard normal * 2 + 10000"
        in cli("run", "--offset", "1e4", "--scale", "2").stdout
    )


def test_file_conversion_with_notice(cli, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(5).standard_normal((2, 3, 4)).astype(np.float32))
    result = cli("run", "--input", path, "--dtype", "bfloat16", "--json")
    assert result.stderr == "Notice: float32 input converted to bfloat16 (--dtype)\n"
    assert cli.json("run", "--input", path, "--dtype", "bfloat16")["input"]["dtype"] == "bfloat16"


def test_bfloat16_npy_gets_a_hint(cli, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 2), dtype=ml_dtypes.bfloat16))
    assert cli.error("run", "--input", path, code=1).endswith(
        "(a bfloat16 array saved by numpy looks like this: save it as float32 and add "
        "--dtype bfloat16)"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--offset", "nan"], "--offset nan: must be a finite number"),
        (["--scale", "inf"], "--scale inf: must be a finite number"),
    ],
)
def test_bad_offset_and_scale(cli, args, message):
    assert cli.error("run", *args, code=2) == message


def test_offset_with_input_is_refused(cli, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 2), dtype=np.float32))
    assert cli.error("run", "--input", path, "--offset", "1", code=2) == (
        "--offset and --scale shape the generated tensor; with --input, transform the file "
        "instead, or drop them"
    )


def test_unknown_dtype(cli):
    assert "'--dtype'" in cli.error("run", "--dtype", "float8", code=2)


@pytest.mark.parametrize("name", list(FORMATS))
def test_the_table_agrees_with_the_formats_own_description(name):
    # The table's figures against numpy's (ml_dtypes' for bfloat16) description of the format,
    # derived from the type itself rather than from the table.
    form = FORMATS[name]
    info = ml_dtypes.finfo(ml_dtypes.bfloat16) if name == "bfloat16" else np.finfo(name)
    assert form.mantissa_bits == info.nmant
    assert form.min_exponent == info.minexp
    assert form.eps == float(info.eps)
    assert form.numpy == info.dtype
    assert form.name == info.dtype.name
    assert form.kernel_code == list(FORMATS).index(name)  # _kernels.c: DT_F32, DT_F64, ...


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (("--offset", "1e39"), "go beyond float32's range: 12 of 12 generated values are infinite"),
        (("--offset", "7e4", "--dtype", "float16"), "go beyond float16's range: 12 of 12"),
        (("--scale", "1e-50"), "below float32's spacing at --offset 0: every generated value is 0"),
        (("--offset", "1e4", "--scale", "1e-9"), "every generated value is 10000"),
    ],
)
def test_offset_and_scale_that_defeat_the_dtype_say_so(cli, options, words):
    """Found by review: these gave all-inf or constant tensors without a word."""
    doc = cli.json("run", "--shape", "2,2,3", *options)
    assert any(words in notice for notice in doc["input"]["notices"]), doc["input"]["notices"]


def test_ordinary_offsets_and_scales_give_no_notice(cli):
    doc = cli.json("run", "--shape", "2,2,3", "--offset", "1e4", "--scale", "1e-2")
    assert doc["input"]["notices"] == []
