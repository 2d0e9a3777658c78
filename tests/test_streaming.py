"""run --stats-only: streamed statistics equal the in-memory ones, and the file is untouched."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bninspect.errors import BnInspectError
from bninspect.input import npy_files
from bninspect.input import tensor as tensor_input
from bninspect.input.npy_files import opened_npy, read_data
from bninspect.input.tensor import load_input, map_input
from bninspect.numerics import kernels
from bninspect.numerics.reference import channel_statistics
from bninspect.pytorch import inspection

from rationals import assert_statistics_exact_to_ulps
from strategies import cancelling_tensors, tensors


def streamed_statistics(path, block: int):
    """The statistics as run --stats-only computes them: the file memory-mapped read-only
    (tensor_input.map_input), the kernel over blocks of ``block`` bytes, each block's pages
    released as it finishes (inspection's callback), then the mapping closed. Also the
    regions the callback was told of."""
    tensor, mapping = map_input(path)
    release = inspection._release_region(SimpleNamespace(mapping=mapping), tensor.array)
    seen = []

    def after_block(region):
        seen.append(region)
        release(region)

    with mock.patch.object(kernels, "block_bytes_for", lambda nbytes: block):
        stats = channel_statistics(tensor.array, after_block=after_block)
    del tensor  # the callback keeps only offsets and the mmap object, not its buffer
    mapping.close()  # BufferError if an array still held the mapped pages
    return stats, seen


@settings(max_examples=60)
@given(
    x=st.sampled_from([np.float16, np.float32, np.float64]).flatmap(
        lambda dtype: st.one_of(tensors(dtype=dtype), cancelling_tensors(dtype))
    ),
    block=st.integers(1, 4096),
)
def test_a_file_streamed_in_many_uneven_blocks_gives_the_exact_statistics(x, block):
    """A .npy streamed from a memory map in blocks of a drawn size (down to one value: rows,
    channel ranges and position ranges that divide nothing) gives statistics within an ULP or
    two of exact rational arithmetic, and of the in-memory one-block result; the file's bytes
    and modification time are unchanged."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.npy"
        np.save(path, x)
        before, stamp = path.read_bytes(), os.stat(path).st_mtime_ns
        streamed, regions = streamed_statistics(path, block)
        assert path.read_bytes() == before and os.stat(path).st_mtime_ns == stamp
    assert_statistics_exact_to_ulps(streamed, x)
    # Many blocks, unless the whole tensor fits in one
    assert len(regions) >= min(x.size * x.itemsize // max(block, x.itemsize), 2)
    with mock.patch.object(kernels, "block_bytes_for", lambda nbytes: 1 << 30):
        whole = channel_statistics(x.copy())
    np.testing.assert_array_equal(streamed.nan_count, whole.nan_count)
    for name in ("mean", "m2", "var_biased"):
        a, b = getattr(streamed, name), getattr(whole, name)
        # each within its ULPs of the exact value, so within their sum of each other
        np.testing.assert_allclose(a, b, rtol=5 * 2.0**-52, atol=0, err_msg=name)


def test_stats_only_equals_the_full_run(cli, tmp_path):
    path = tmp_path / "x.npy"
    x = (np.random.default_rng(2).standard_normal((6, 4, 50, 7)) * 3 + 10).astype(np.float32)
    np.save(path, x)
    full = cli.json("run", "--input", path)
    streamed = cli.json("run", "--input", path, "--stats-only")
    for a, b in zip(full["channels"], streamed["channels"], strict=True):
        for key in ("count", "mean", "var_biased", "var_unbiased", "running_mean", "flags"):
            assert a[key] == b[key], key
        assert b["max_abs_error"] is None
    assert streamed["torch_version"] is None
    assert streamed["null_reasons"]["/torch_version"] == "--stats-only streams the statistics alone"
    assert streamed["input"]["sha256"] is None
    assert "not computed with --stats-only" in streamed["null_reasons"]["/input/sha256"]
    assert full["input"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_mapped_file_is_never_modified(cli, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(3).standard_normal((3, 2, 1000)).astype(np.float32))
    before, stamp = path.read_bytes(), os.stat(path).st_mtime_ns
    cli("run", "--input", path, "--stats-only")
    tensor, _ = map_input(path)
    with pytest.raises((TypeError, ValueError)):
        tensor.array[0, 0, 0] = 1.0  # read-only mapping
    channel_statistics(tensor.array)
    assert path.read_bytes() == before and os.stat(path).st_mtime_ns == stamp


def test_a_full_run_reads_the_file_and_never_changes_it(cli, tmp_path):
    path = tmp_path / "x.npy"
    x = np.random.default_rng(4).standard_normal((3, 2, 1000)).astype(np.float32)
    np.save(path, x)
    before, stamp = path.read_bytes(), os.stat(path).st_mtime_ns
    doc = cli.json("run", "--input", path, "--save-output", tmp_path / "y.npy")
    assert doc["input"]["sha256"] == hashlib.sha256(before).hexdigest()
    tensor = load_input(path)
    np.testing.assert_array_equal(tensor.array, x)
    assert tensor.finished_info().sha256 == hashlib.sha256(before).hexdigest()
    tensor.array[0, 0, 0] = 123.0  # the array is this process's own copy
    assert path.read_bytes() == before and os.stat(path).st_mtime_ns == stamp
    assert load_input(path).array[0, 0, 0] == x[0, 0, 0]


def test_a_file_that_shrinks_while_read_is_an_error_not_a_crash(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.ones((4, 2, 100), dtype=np.float32))
    with opened_npy(path, "--input") as (file, header):
        # As if the file lost its last values between the header check and the read.
        longer = dataclasses.replace(header, shape=(5, 2, 100))
        with pytest.raises(BnInspectError, match="while being read"):
            read_data(file, longer)


def test_the_hash_is_of_the_bytes_read_even_if_the_file_then_goes(tmp_path, monkeypatch):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(60, dtype=np.float32).reshape(3, 2, 10))
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    read_data = tensor_input.read_data

    def read_then_delete(*args):
        read = read_data(*args)
        path.unlink()  # the hash, taken as the bytes were read, must not need the file
        return read

    monkeypatch.setattr(tensor_input, "read_data", read_then_delete)
    assert load_input(path).finished_info().sha256 == expected


def test_stats_only_refusals(cli, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 2, 3), dtype=np.float32))
    assert cli.error(
        "run", "--input", path, "--stats-only", "--save-output", tmp_path / "y.npy", code=2
    ) == ("--save-output needs PyTorch's output, which --stats-only does not compute; drop one")
    assert cli.error("run", "--input", path, "--stats-only", "--dtype", "float16", code=2) == (
        f"--stats-only streams {path} as stored (float32) and converts nothing to float16; "
        "drop --dtype, or drop --stats-only"
    )
    np.save(path, np.zeros((2, 2, 3), dtype=">f4"))
    assert cli.error("run", "--input", path, "--stats-only", code=2).endswith(
        "as stored (>f4) and converts nothing (>f4 (byte-swapped) converted to native float32); "
        "drop --stats-only (a full run converts it), or save it in native byte order"
    )
    np.save(path, np.asfortranarray(np.zeros((2, 2, 3), dtype=np.float32)))
    assert "Fortran order" in cli.error("run", "--input", path, "--stats-only", code=1)


def test_stats_only_accepts_what_only_pytorch_refuses(cli, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(3, dtype=np.float32).reshape(1, 3))
    doc = cli.json("run", "--input", path, "--stats-only")  # one value per channel, train mode
    assert [c["mean"] for c in doc["channels"]] == [0.0, 1.0, 2.0]


def test_the_hash_of_a_file_read_in_many_reads(tmp_path, monkeypatch):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(2).standard_normal((3, 4, 1000)).astype(np.float32))
    monkeypatch.setattr(npy_files, "READ_BYTES", 4096)  # 12 reads of the data, one uneven
    tensor = load_input(path)
    assert tensor.finished_info().sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert tensor.array.tobytes() == np.load(path).tobytes()
