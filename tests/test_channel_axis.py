"""--channel-axis: every command on channels-last (or any-axis) data equals the same command on
the data transposed to (N, C, ...): statistics bit for bit, outputs, files and indices moved
back to the user's layout; PyTorch gets what a user porting the data would give it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bninspect.cli.options import build_request
from bninspect.dtypes import FORMATS
from bninspect.input.layout import to_core_index, to_user_index, user_indices
from bninspect.input.tensor import map_input
from bninspect.numerics import kernels
from bninspect.numerics.reference import channel_statistics
from bninspect.pytorch import inspection
from bninspect.pytorch.inspection import prepare, run_inspection

from strategies import cancelling_tensors

STAT_FIELDS = ("count", "mean", "var_biased", "var_unbiased", "std", "inv_std", "running_mean",
               "running_var", "flags", "running_mean_scale", "nan_count")  # fmt: skip


@contextlib.contextmanager
def small_tiles(tile: int, slab: int, channels: int = 2):
    """Gather a moved layout in tiles and slabs of these many bytes (normally 64 KiB, 4 MiB),
    tiles of at most ``channels`` channels (normally 64)."""
    with (
        mock.patch.object(kernels, "TILE_BYTES", tile),
        mock.patch.object(kernels, "SLAB_BYTES", slab),
        mock.patch.object(kernels, "CHANNEL_TILE", channels),
    ):
        yield


@st.composite
def moved_arrays(draw, dtypes=("float16", "float32", "float64", "bfloat16")):
    """(u, axis): a C-contiguous array of rank 2 to 5 with its channels on ``axis``."""
    rank = draw(st.integers(2, 5))
    shape = tuple(draw(st.integers(1, 5)) for _ in range(rank))
    axis = draw(st.integers(-rank, rank - 1))
    dtype = FORMATS[draw(st.sampled_from(dtypes))].numpy
    seed = draw(st.integers(0, 2**32 - 1))
    offset = draw(st.sampled_from([0.0, 3.0, 300.0]))
    x = np.random.default_rng(seed).standard_normal(shape) * 2 + offset
    return x.astype(dtype), axis


# --- the kernels: a moved layout read in place gives the same bits -----------------------


@settings(max_examples=150)
@given(
    case=moved_arrays(),
    block=st.sampled_from([2, 24, 256, 4096, 1 << 20]),
    tile=st.sampled_from([2, 16, 64 << 10]),
    slab=st.sampled_from([4, 100, 4 << 20]),
)
def test_moments_of_a_moved_layout_are_those_of_its_transpose(case, block, tile, slab):
    """kernels.moments over np.moveaxis(u, axis, 1), gathered region by region without a
    whole copy, against the C-contiguous transpose: every field bit for bit, for any block
    size (rows, channel ranges, position ranges) and tile size."""
    u, axis = case
    view = np.moveaxis(u, axis, 1)
    nchw = np.ascontiguousarray(view)
    # never a whole copy: the (N, C, S) buffer of the old path must not be asked for
    no_copy = mock.patch.object(kernels, "ncs", side_effect=AssertionError("a whole copy"))
    with small_tiles(tile, slab), no_copy if not view.flags.c_contiguous else nullcontext():
        moved = kernels.moments(view, view.dtype.name, block_bytes=block)
    contiguous = kernels.moments(nchw, nchw.dtype.name, block_bytes=block)
    for field in dataclasses.fields(contiguous):
        np.testing.assert_array_equal(
            getattr(moved, field.name), getattr(contiguous, field.name), err_msg=field.name
        )


@settings(max_examples=40)
@given(x=st.sampled_from([np.float32, np.float64]).flatmap(cancelling_tensors))
def test_statistics_of_cancelling_channels_moved_last(x):
    """Channels the kernel hands to the exact recompute give the same bits moved last too."""
    u = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    moved, contiguous = channel_statistics(np.moveaxis(u, -1, 1)), channel_statistics(x)
    for name in ("total", "mean", "m2", "nan_count"):
        np.testing.assert_array_equal(getattr(moved, name), getattr(contiguous, name))


@settings(max_examples=60)
@given(case=moved_arrays(("float16", "float32", "float64")), tile=st.sampled_from([2, 64 << 10]))
def test_output_errors_of_a_moved_layout_are_those_of_its_transpose(case, tile):
    """The comparison kernel on x and y in the same moved layout, read in place as (P, C, Q):
    the same maxima, and the same first worst element, as an index into (N, C, S)."""
    u, axis = case
    x = np.moveaxis(u, axis, 1)
    C = x.shape[1]
    rng = np.random.default_rng(int(u.size))
    y_user = (u.astype(np.float64) * 0.9 + rng.standard_normal(u.shape) * 1e-3).astype(u.dtype)
    y = np.moveaxis(y_user, axis, 1)
    vectors = [rng.standard_normal(C), 1 + rng.random(C), rng.standard_normal(C), np.zeros(C)]
    moved = kernels.output_errors(x, y, x.dtype.name, *vectors)
    contiguous = kernels.output_errors(
        np.ascontiguousarray(x), np.ascontiguousarray(y), x.dtype.name, *vectors
    )
    for field in dataclasses.fields(contiguous):
        np.testing.assert_array_equal(
            getattr(moved, field.name), getattr(contiguous, field.name), err_msg=field.name
        )


@pytest.mark.parametrize("axis", [-1, 0, 2])
@pytest.mark.parametrize("block", [64, 3000, 1 << 20])
def test_streaming_a_moved_file_releases_every_page_and_gives_the_same_bits(axis, block):
    """--stats-only's streaming on a file with channels on another axis: the statistics of the
    transposed file bit for bit, and every whole page of the data released at least once (so
    resident memory stays at what is being read)."""
    u = np.random.default_rng(5).standard_normal((3, 4, 5, 600)).astype(np.float32)
    released: list[tuple[int, int]] = []
    real = inspection.release_pages

    def record(mapping, start, end):
        released.append((start, end))
        real(mapping, start, end)

    with tempfile.TemporaryDirectory() as folder:
        moved_path, path = Path(folder) / "u.npy", Path(folder) / "x.npy"
        np.save(moved_path, u)
        np.save(path, np.ascontiguousarray(np.moveaxis(u, axis, 1)))
        results = []
        for file, channel_axis in ((moved_path, axis), (path, 1)):
            tensor, mapping = map_input(file, channel_axis=channel_axis)
            release = inspection._release_region(SimpleNamespace(mapping=mapping), tensor.array)
            with (
                mock.patch.object(kernels, "block_bytes_for", lambda nbytes: block),
                mock.patch.object(inspection, "release_pages", record),
                small_tiles(4096, 16384),
            ):
                results.append(channel_statistics(tensor.array, after_block=release))
            if channel_axis == axis:
                moved_released, released = released, []
                data_start = mapping.size() - u.nbytes
            del tensor
            mapping.close()
    moved, contiguous = results
    for name in ("total", "mean", "m2"):
        np.testing.assert_array_equal(getattr(moved, name), getattr(contiguous, name))
    page = 4096
    first, last = -(-data_start // page) * page, (data_start + u.nbytes) // page * page
    covered = np.zeros((last - first) // page, dtype=bool)
    for start, end in moved_released:
        covered[max(0, (start - first) // page) : max(0, (end - first) // page)] = True
    assert covered.all()


# --- the commands: NHWC against the transposed NCHW ---------------------------------------


def _files(tmp_path, u, axis):
    moved, plain = tmp_path / "moved.npy", tmp_path / "plain.npy"
    np.save(moved, u)
    np.save(plain, np.ascontiguousarray(np.moveaxis(u, axis, 1)))
    return moved, plain


def _channels(doc):
    return [{f: c[f] for f in STAT_FIELDS} for c in doc["channels"]]


@pytest.mark.parametrize("shape", [(2, 4, 5, 3), (3, 7, 4), (2, 3, 2, 4, 5)])
@pytest.mark.parametrize("extra", [[], ["--mode", "eval", "--running-var", "{var}"]])
def test_run_channels_last_equals_run_on_the_transpose(cli, tmp_path, shape, extra):
    u = (np.random.default_rng(1).standard_normal(shape) * 3 + 50).astype(np.float32)
    moved, plain = _files(tmp_path, u, -1)
    extra = [a.format(var=",".join(["2"] * shape[-1])) for a in extra]
    args = ["--weight", "random", "--bias", "random", "--running-mean", "random", *extra]
    doc = cli.json("run", "--input", moved, "--channel-axis", "-1", *args,
                   "--save-output", tmp_path / "y_moved.npy")  # fmt: skip
    reference = cli.json("run", "--input", plain, *args, "--save-output", tmp_path / "y.npy")
    assert _channels(doc) == _channels(reference)  # every statistic bit for bit
    assert doc["input"]["shape"] == list(shape) and doc["input"]["channel_axis"] == len(shape) - 1
    y_moved, y = np.load(tmp_path / "y_moved.npy"), np.load(tmp_path / "y.npy")
    assert y_moved.shape == shape
    # PyTorch's channels-last kernel rounds on its own: within rounding of the NCHW kernel's
    np.testing.assert_allclose(np.moveaxis(y_moved, -1, 1), y, rtol=0, atol=1e-5)
    # the worst element is where the saved output is furthest from the reference, in ULPs,
    # as an index into the file's own layout
    reference_y = _reference_output(u, doc, axis=-1)
    ulps = np.abs(y_moved - reference_y) / np.spacing(np.abs(reference_y).astype(np.float32))
    for c, channel in enumerate(doc["channels"]):
        if channel["worst_index"] is not None:
            index = tuple(channel["worst_index"])
            assert index[-1] == c
            assert ulps[index] == pytest.approx(ulps[..., c].max(), rel=1e-6)


def _reference_output(u, doc, axis):
    """y in float64 from the file's values and the reported per-channel numbers."""
    x = np.moveaxis(u.astype(np.float64), axis, -1)
    ch = doc["channels"]
    mean = np.array([c["mean"] for c in ch]) if doc["settings"]["mode"] == "train" else np.array(
        [c["running_mean"] for c in ch]
    )
    std = np.array([c["std"] for c in ch])
    weight, bias = np.array([c["weight"] for c in ch]), np.array([c["bias"] for c in ch])
    return np.moveaxis((x - mean) / std * weight + bias, -1, axis)


def test_pytorch_gets_what_a_user_porting_channels_last_data_would_give_it(cli, tmp_path):
    """The module sees torch.from_numpy(x).permute(0, 3, 1, 2), channels-last strides and all:
    its output, saved back channels last, is that module call's to the bit."""
    u = (np.random.default_rng(2).standard_normal((4, 5, 6, 8)) + 10).astype(np.float32)
    np.save(tmp_path / "x.npy", u)
    cli("run", "--input", tmp_path / "x.npy", "--channel-axis", "-1",
        "--save-output", tmp_path / "y.npy")  # fmt: skip
    tensor = torch.from_numpy(u).permute(0, 3, 1, 2)
    assert tensor.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = torch.nn.BatchNorm2d(8)(tensor).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


def test_generated_channels_last_and_its_saved_files(cli, tmp_path):
    """--shape is in the --channel-axis layout; the saved input is the generator's draws in that
    shape, and the saved output lies the same way."""
    x_path, y_path = tmp_path / "x.npy", tmp_path / "y.npy"
    doc = cli.json("run", "--shape", "2x4x5x3", "--channel-axis", "-1", "--seed", "7",
                   "--save-input", x_path, "--save-output", y_path)  # fmt: skip
    x = np.load(x_path)
    assert x.shape == (2, 4, 5, 3) and len(doc["channels"]) == 3
    np.testing.assert_array_equal(
        x, np.random.default_rng(7).standard_normal((2, 4, 5, 3), dtype=np.float32)
    )
    y = np.load(y_path)
    assert y.shape == x.shape
    # train mode: each channel (last axis) of the output has mean ~0 and variance ~1
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-5)


def test_steps_over_channels_first_data(cli, tmp_path):
    """--channel-axis 0: (C, N, L) data; samples are axis 1, batches split it, and the output
    is saved stacked along it."""
    u = np.random.default_rng(3).standard_normal((3, 8, 5)).astype(np.float32)
    moved, plain = _files(tmp_path, u, 0)
    doc = cli.json("run", "--input", moved, "--channel-axis", "0", "--batch-size", "2",
                   "--save-output", tmp_path / "y_moved.npy")  # fmt: skip
    reference = cli.json("run", "--input", plain, "--batch-size", "2",
                         "--save-output", tmp_path / "y.npy")  # fmt: skip
    assert _channels(doc) == _channels(reference)
    def history(d):  # the reference's side of every step
        fields = ("batch_mean", "batch_var", "running_mean", "running_var", "running_mean_scale")
        return [[{f: c[f] for f in fields} for c in r["channels"]] for r in d["running_history"]]

    assert len(doc["running_history"]) == 4 and history(doc) == history(reference)
    y_moved = np.load(tmp_path / "y_moved.npy")
    assert y_moved.shape == (3, 8, 5)
    np.testing.assert_allclose(np.moveaxis(y_moved, 0, 1), np.load(tmp_path / "y.npy"), atol=1e-5)


def test_stats_only_channels_last_equals_the_transpose(cli, tmp_path):
    u = (np.random.default_rng(4).standard_normal((3, 6, 7, 5)) * 1e-2 + 1e3).astype(np.float32)
    moved, plain = _files(tmp_path, u, -1)
    doc = cli.json("run", "--input", moved, "--channel-axis", "-1", "--stats-only")
    reference = cli.json("run", "--input", plain, "--stats-only")
    assert _channels(doc) == _channels(reference)


def test_explain_takes_and_gives_the_index_in_the_users_layout(cli, tmp_path):
    u = np.random.default_rng(6).standard_normal((2, 3, 4, 5)).astype(np.float32)
    moved, plain = _files(tmp_path, u, -1)
    doc = cli.json("explain", "--input", moved, "--channel-axis", "-1", "--index", "1,2,-1,3")
    reference = cli.json("explain", "--input", plain, "--index", "1,3,2,3")
    assert doc["index"] == [1, 2, 3, 3] and doc["channel"] == 3
    assert doc["x"] == float(u[1, 2, 3, 3]) == reference["x"]
    values = {s["name"]: s["value"] for s in doc["derivation"]}
    assert values == {s["name"]: s["value"] for s in reference["derivation"]}
    assert doc["y"]["reference"] == reference["y"]["reference"]
    assert doc["derivation"][0]["substitution"] == "input[1, 2, 3, 3]"
    assert doc["derivation"][1]["formula"] == "count = values in channel 3 (every axis but 3)"
    assert doc["verdict"]["summary"][0].startswith("output[1, 2, 3, 3] = ")
    precision = cli.json(
        "explain", "--input", moved, "--channel-axis", "-1", "--index", "0,0,0,0", "--precision"
    )
    assert precision["null_reasons"]["/precision"].startswith(
        "the input has its channels on axis 3, so PyTorch ran on a view with channels-last"
    )


def test_check_on_channels_last_files_equals_check_on_the_transpose(cli, tmp_path):
    """Their output channels last, made with the unbiased variance: the same verdict, errors
    and diagnosis as the transposed files, the worst elements indexed channels last."""
    u = (np.random.default_rng(8).standard_normal((4, 3, 5, 6)) + 2).astype(np.float32)
    moved, plain = _files(tmp_path, u, -1)
    x = u.astype(np.float64)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2), ddof=1)
    theirs = ((x - mean) / np.sqrt(var + 1e-5)).astype(np.float32)
    np.save(tmp_path / "theirs_moved.npy", theirs)
    np.save(tmp_path / "theirs.npy", np.ascontiguousarray(np.moveaxis(theirs, -1, 1)))
    def check(*args):
        return json.loads(cli("check", *args, "--json", code=3).stdout)

    doc = check("--input", moved, "--channel-axis", "-1", "--output", tmp_path / "theirs_moved.npy")
    reference = check("--input", plain, "--output", tmp_path / "theirs.npy")
    assert doc["passed"] is reference["passed"] is False
    assert doc["mismatches"] == reference["mismatches"]
    assert doc["diagnosis"] == reference["diagnosis"]
    assert doc["channels"] == reference["channels"]
    for mine, theirs_worst in zip(doc["worst"], reference["worst"], strict=True):
        assert mine["index"] == list(to_user_index(tuple(theirs_worst["index"]), 3))
        assert mine["theirs"] == theirs_worst["theirs"] == float(theirs[tuple(mine["index"])])
    for name in ("worst_by_abs_error", "worst_by_rel_error", "worst_by_ulp_error"):
        assert doc[name]["index"] == list(to_user_index(tuple(reference[name]["index"]), 3))
    # and explain --against on one of them, indexed channels last
    worst = doc["worst"][0]["index"]
    against = cli.json("explain", "--input", moved, "--channel-axis", "-1", "--index",
                       ",".join(map(str, worst)), "--against", tmp_path / "theirs_moved.npy")
    assert against["against"]["theirs"] == doc["worst"][0]["theirs"]
    assert against["against"]["conclusion"].startswith("your value is what the unbiased variance")


def test_a_file_in_the_other_layout_is_named(cli, tmp_path):
    u = np.zeros((2, 4, 5, 3), np.float32)
    moved, _ = _files(tmp_path, u, -1)
    np.save(tmp_path / "y.npy", np.zeros((2, 3, 4, 5), np.float32))
    message = cli.error("check", "--input", moved, "--channel-axis", "-1",
                        "--output", tmp_path / "y.npy", code=1)  # fmt: skip
    assert message.endswith(
        "shape 2x3x4x5 but the input is 2x4x5x3; batch norm keeps the shape; it looks like the "
        "input transposed by (0, 3, 1, 2) (channels on axis 1): numpy.transpose(y, (0, 2, 3, 1)) "
        "brings it back"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--shape", "2x3", "--channel-axis", "2"],
            "--channel-axis 2: --shape 2x3 has rank 2, so its axes are 0 to 1 (or -2 to -1); "
            "give one of them (1 for (N,C,...), -1 for channels last)",
        ),
        (
            ["--shape", "2x3x4x5x6x7", "--channel-axis", "-1"],
            "--shape '2x3x4x5x6x7' has rank 6; batch norm takes rank 2 to 5, (N,C), (N,L,C), "
            "(N,H,W,C) or (N,D,H,W,C), with channels on axis -1",
        ),
    ],
)
def test_bad_channel_axis(cli, args, message):
    assert cli.error("run", *args, code=2) == message


# --- any rank, any axis: the inspection itself ------------------------------------------


@settings(max_examples=25)
@given(case=moved_arrays(("float32", "float64")), mode=st.sampled_from(["train", "eval"]))
def test_any_rank_and_axis_inspects_as_its_transpose(case, mode):
    """Ranks 2 to 5, every axis: the reference's statistics and pass bit for bit those of the
    transposed (N, C, ...) input; PyTorch's output in the input's layout, and bit for bit what
    the module gives on torch.from_numpy(u).movedim(axis, 1)."""
    u, axis = case
    x = np.moveaxis(u, axis, 1)
    if mode == "train" and x.size // x.shape[1] < 2:
        return  # PyTorch refuses one value per channel in train mode
    with tempfile.TemporaryDirectory() as folder:
        moved, plain = Path(folder) / "u.npy", Path(folder) / "x.npy"
        np.save(moved, u)
        np.save(plain, np.ascontiguousarray(x))
        mine = run_inspection(prepare(build_request("run", input=moved, channel_axis=axis,
                                                    mode=_mode(mode))))  # fmt: skip
        theirs = run_inspection(prepare(build_request("run", input=plain, mode=_mode(mode))))
    for name in ("mean", "m2", "total", "count"):
        np.testing.assert_array_equal(getattr(mine.stats, name), getattr(theirs.stats, name))
    for name in ("mean", "var", "std", "running_mean", "running_var"):
        np.testing.assert_array_equal(getattr(mine.forward, name), getattr(theirs.forward, name))
    module = getattr(torch.nn, mine.settings.module)(x.shape[1], dtype=torch.from_numpy(u).dtype)
    with torch.no_grad():
        expected = module.train(mode == "train")(torch.from_numpy(u).movedim(axis, 1)).numpy()
    np.testing.assert_array_equal(mine.torch_run.output, expected)
    assert np.moveaxis(mine.torch_run.output, 1, axis).flags.c_contiguous


def _mode(name):
    from bninspect.cli.options import Mode

    return Mode(name)


def test_indices_go_back_to_the_users_layout():
    @dataclasses.dataclass(frozen=True)
    class Element:
        index: tuple[int, ...]
        channel: int

    @dataclasses.dataclass(frozen=True)
    class Result:
        worst: tuple[Element, ...]
        worst_index: tuple[int, ...]
        shape: tuple[int, ...]

    result = Result((Element((1, 2, 3, 4), 2),), (0, 1, 0, 0), (5, 6, 7, 8))
    moved = user_indices(result, 3, 4)
    assert moved.worst[0].index == (1, 3, 4, 2) and moved.worst_index == (0, 0, 0, 1)
    assert moved.shape == (5, 6, 7, 8)  # not an index: left alone
    assert user_indices(result, 1, 4) is result
    assert to_core_index(to_user_index((1, 2, 3, 4), 0), 0) == (1, 2, 3, 4)


def test_the_backward_pass_channels_last(cli, tmp_path):
    """--grad with dy channels last: the reference's derivation is that of the transposed
    files, value for value, named in the file's layout; check --grad-input takes dx channels
    last (here the compact formula, written out below in float64: it passes)."""
    u = np.random.default_rng(9).standard_normal((2, 3, 4, 5)).astype(np.float32)
    dy = np.random.default_rng(10).standard_normal((2, 3, 4, 5)).astype(np.float32)
    moved, plain = _files(tmp_path, u, -1)
    np.save(tmp_path / "dy_moved.npy", dy)
    np.save(tmp_path / "dy.npy", np.ascontiguousarray(np.moveaxis(dy, -1, 1)))
    mine = cli.json("explain", "--input", moved, "--channel-axis", "-1", "--index", "1,2,3,4",
                    "--grad", "--grad-output", tmp_path / "dy_moved.npy")["grad"]  # fmt: skip
    theirs = cli.json("explain", "--input", plain, "--index", "1,4,2,3",
                      "--grad", "--grad-output", tmp_path / "dy.npy")["grad"]  # fmt: skip
    assert mine["index"] == [1, 2, 3, 4]
    assert mine["comparisons"][0]["name"] == "grad_input[1, 2, 3, 4]"
    for field in ("derivation", "compact_derivation", "x", "x_hat", "grad_output_value"):
        assert mine[field] == theirs[field], field
    assert [c["reference"] for c in mine["comparisons"]] == [
        c["reference"] for c in theirs["comparisons"]
    ]
    x, g = u.astype(np.float64), dy.astype(np.float64)
    axes, M = (0, 1, 2), u.size // u.shape[-1]
    x_hat = (x - x.mean(axes)) / np.sqrt(x.var(axes) + 1e-5)
    dx = (M * g - g.sum(axes) - x_hat * (g * x_hat).sum(axes)) / (M * np.sqrt(x.var(axes) + 1e-5))
    np.save(tmp_path / "dx.npy", dx.astype(np.float32))
    doc = cli.json("check", "--input", moved, "--channel-axis", "-1", "--grad-output",
                   tmp_path / "dy_moved.npy", "--grad-input", tmp_path / "dx.npy")  # fmt: skip
    assert doc["passed"] is True
