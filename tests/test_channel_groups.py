"""PyTorch's module run channel group by channel group (what ``run`` does, to hold one group's
output at a time) against one module over the whole tensor: the same bits, by PyTorch itself."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bninspect.dtypes import FORMATS, bits_view
from bninspect.input import channel_groups as groups_module
from bninspect.input import memory
from bninspect.input.channel_groups import channel_groups, group_bytes_held, groups_reproduce_whole
from bninspect.input.memory import run_bytes
from bninspect.input.parameters import LayerParameters
from bninspect.numerics.kernels import OutputErrors, joined_errors, output_errors
from bninspect.pytorch.batchnorm import run_batchnorm, run_by_channel_groups
from bninspect.report.run import build_run_result

from helpers import inspect_array

MODULES = {3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}


@st.composite
def grouped_cases(draw):
    """(x, params, group_bytes): an input with more than one value per image, in any dtype, with
    spatial sizes reaching PyTorch's vector loops (8 and 16 lanes), layer vectors of every
    kind, and groups from one channel to all of them."""
    rank = draw(st.integers(3, 5))
    shape = [draw(st.integers(1, 4)), draw(st.integers(1, 9))]
    shape += [draw(st.integers(1, 40)) for _ in range(rank - 2)]
    if int(np.prod(shape[2:])) < 2:
        shape[2] = 2
    dtype = draw(st.sampled_from(list(FORMATS)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    offset = draw(st.sampled_from([0.0, 3.0, -100.0]))
    x = (rng.standard_normal(shape) * draw(st.sampled_from([1e-3, 1.0, 50.0])) + offset).astype(
        FORMATS[dtype].numpy
    )
    C = shape[1]

    def vector(low, high):  # rounded to the dtype, as the module holds them
        values = rng.uniform(low, high, C).astype(FORMATS[dtype].numpy)
        return values.astype(np.float64)

    params = LayerParameters(vector(-2, 2), vector(-1, 1), vector(-1, 1), vector(0.1, 3))
    channel_bytes = x.nbytes // C
    group_bytes = draw(st.integers(1, channel_bytes * C + 1))
    return x, params, group_bytes


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and np.array_equal(bits_view(a), bits_view(b))


@settings(max_examples=150, deadline=None)
@given(
    case=grouped_cases(),
    train=st.booleans(),
    momentum=st.sampled_from([0.1, None, 1.0]),
    affine=st.booleans(),
)
def test_channel_groups_give_the_whole_modules_bits(case, train, momentum, affine):
    x, params, group_bytes = case
    module = MODULES[x.ndim]
    assert groups_reproduce_whole(x.shape, x.flags.c_contiguous)
    whole = run_batchnorm(x, x.shape[0], [momentum], module, params, 1e-5, affine, train)
    seen: list[tuple[int, int]] = []

    def check(c0, c1, x_group, y_group):
        assert same_bits(x_group, x[:, c0:c1])
        assert same_bits(y_group, whole.output[:, c0:c1]), (c0, c1)
        seen.append((c0, c1))

    grouped = run_by_channel_groups(
        x, momentum, module, params, 1e-5, affine, train, check, group_bytes
    )
    assert seen == channel_groups(x.shape, x.dtype.itemsize, group_bytes)
    assert seen[0][0] == 0 and seen[-1][1] == x.shape[1]
    assert all(a[1] == b[0] for a, b in zip(seen, seen[1:], strict=False))
    assert same_bits(grouped.running_mean, whole.running_mean)
    assert same_bits(grouped.running_var, whole.running_var)
    assert grouped.num_batches_tracked == whole.num_batches_tracked
    assert len(grouped.steps) == len(whole.steps)
    for a, b in zip(grouped.steps, whole.steps, strict=True):
        assert same_bits(a.running_mean, b.running_mean)
        assert same_bits(a.running_var, b.running_var)
    assert grouped.step_outputs == ()


def test_channel_groups_split_by_bytes():
    # 64 x 256 x 128 x 128 float32: 4 MiB per channel, 16 MiB groups of 4 channels
    groups = channel_groups((64, 256, 128, 128), 4)
    assert len(groups) == 64 and groups[0] == (0, 4) and groups[-1] == (252, 256)
    assert channel_groups((2, 3, 5), 8, 1) == [(0, 1), (1, 2), (2, 3)]  # at least one channel
    assert channel_groups((2, 3, 5), 8, 10**9) == [(0, 3)]


@pytest.mark.parametrize(
    "x",
    [
        np.zeros((4, 3), np.float32),  # one value per image: PyTorch's channels-last kernel
        np.zeros((4, 3, 1, 1), np.float32),
        np.zeros((2, 3, 4, 5), np.float32).transpose(0, 1, 3, 2),  # not C-contiguous
    ],
)
def test_no_groups_for_one_value_per_image_or_another_layout(x):
    assert not groups_reproduce_whole(x.shape, x.flags.c_contiguous)


def test_joined_errors_equal_the_whole_tensors():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 7, 5, 6)).astype(np.float32)
    mean, std = rng.standard_normal(7), rng.uniform(0.5, 2, 7)
    weight, bias = rng.uniform(-2, 2, 7), rng.uniform(-1, 1, 7)
    vectors = (mean, std, weight, bias)
    per_channel = [v[None, :, None, None] for v in vectors]
    y = ((x - per_channel[0]) / per_channel[1] * per_channel[2] + per_channel[3]).astype(np.float32)
    y[2, 5, 4, 1] += 1.0  # every other element correctly rounded: this is channel 5's worst
    whole = output_errors(x, y, "float32", *vectors)
    parts = []
    for c0, c1 in [(0, 2), (2, 3), (3, 7)]:
        group = [np.ascontiguousarray(a[:, c0:c1]) for a in (x, y)]
        parts.append((c0, output_errors(*group, "float32", *(v[c0:c1] for v in vectors))))
    joined = joined_errors(parts, x.shape)
    for field in dataclasses.fields(OutputErrors):
        np.testing.assert_array_equal(getattr(joined, field.name), getattr(whole, field.name))
    assert np.unravel_index(int(joined.argmax_ulp[5]), x.shape) == (2, 5, 4, 1)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_compared_by_groups_reports_what_the_whole_output_does(mode, monkeypatch):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 6, 9, 7)) * 3 + 20).astype(np.float32)
    weight, bias = rng.uniform(-2, 2, 6), rng.uniform(-1, 1, 6)
    whole = inspect_array(x, weight=weight, bias=bias, mode=mode)
    monkeypatch.setattr(groups_module, "GROUP_BYTES", x.nbytes // 6 * 2)  # 3 groups
    grouped = inspect_array(x, weight=weight, bias=bias, mode=mode, compare_only=True)
    assert whole.output_errors is None and grouped.output_errors is not None
    assert grouped.torch_run.step_outputs == ()
    whole_result, grouped_result = build_run_result(whole), build_run_result(grouped)
    assert grouped_result.torch_module == (
        "torch.nn.BatchNorm2d itself; run over 3 groups of channels in turn, which gives one "
        "call's bits (PyTorch computes each channel alone) without holding the whole output"
    )
    assert (
        dataclasses.replace(grouped_result, torch_module=whole_result.torch_module) == whole_result
    )


def test_steps_keep_the_whole_output():
    x = np.random.default_rng(1).standard_normal((4, 3, 5)).astype(np.float32)
    inspection = inspect_array(x, batch_size=2, compare_only=True)  # train/eval gap needs it
    assert inspection.output_errors is None and inspection.torch_run.output.shape == (2, 3, 5)


def test_run_reports_the_same_by_groups_as_whole(cli, tmp_path, monkeypatch):
    # --save-output needs PyTorch's whole output, so it runs one module: the JSON of the two
    # runs may differ only in how the peer ran.
    path = tmp_path / "x.npy"
    x = np.random.default_rng(5).standard_normal((3, 5, 6, 7)).astype(np.float32) * 4 - 9
    x[1, 2, 3, 4] = np.nan  # a NaN channel and a constant one, reported alike both ways
    x[:, 3] = 2.5
    np.save(path, x)
    monkeypatch.setattr(groups_module, "GROUP_BYTES", x.nbytes // 5)  # one channel each
    common = ("run", "--input", path, "--weight", "random", "--bias", "random", "--json")
    grouped = cli.json(*common)
    whole = cli.json(*common, "--save-output", tmp_path / "y.npy")
    assert "over 5 groups of channels" in grouped.pop("torch_module")
    assert "groups" not in whole.pop("torch_module")
    assert grouped == whole
    assert np.load(path).tobytes() == x.tobytes()  # the input untouched


def test_a_run_by_groups_is_planned_with_one_groups_memory():
    shape = (64, 256, 128, 128)  # 1 GiB of float32, 16 MiB groups
    assert run_bytes(shape, 4) == 2 * 2**30 + 8 * 64 * 128 * 128
    assert group_bytes_held(shape, 4) == 2 * 16 * 2**20
    assert run_bytes(shape, 4, by_groups=True) == 2**30 + 32 * 2**20 + 8 * 64 * 128 * 128


@pytest.fixture
def arrays_only(monkeypatch):
    """The fit check counting the arrays alone: torch's runtime, the kernels' blocks and the
    reports' fixed costs set to 0, so the tests can add the arrays' bytes up by hand."""
    for name in ("TORCH_RUNTIME_BYTES", "KERNEL_BYTES", "RUN_CHANNEL_BYTES"):
        monkeypatch.setattr(memory, name, 0)


def test_run_fits_where_only_one_group_of_output_fits(cli, tmp_path, monkeypatch, arrays_only):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 8, 64, 64), np.float32))  # 256 KiB, 32 KiB a channel
    monkeypatch.setattr(groups_module, "GROUP_BYTES", 32 << 10)
    # 384 KiB by groups (input, a group's copy and output, a float64 channel), 576 KiB whole
    monkeypatch.setattr(memory, "available_bytes", lambda: 400 << 10)
    assert "over 8 groups" in cli.json("run", "--input", path)["torch_module"]
    message = cli.error("explain", "--input", path, "--index", "0,0,0,0", code=1)
    assert message.startswith(f"--input {path} (2x8x64x64 float32) needs about")
    message = cli.error("run", "--input", path, "--save-output", tmp_path / "y.npy", code=1)
    assert "needs about 576.0 KiB" in message


def test_the_fit_check_counts_the_eval_pass_and_the_converted_dtype(
    cli, tmp_path, monkeypatch, arrays_only
):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 8, 64, 64), np.float32))  # 256 KiB
    # --steps in train mode keeps every step's output and one more from the eval pass:
    # 256 KiB in, 512 out, 64 for a float64 channel = 832 KiB; in eval mode 576 KiB.
    monkeypatch.setattr(memory, "available_bytes", lambda: 700 << 10)
    assert cli.json("run", "--input", path, "--steps", "1", "--mode", "eval")["channels"]
    assert "needs about 832.0 KiB" in cli.error("run", "--input", path, "--steps", "1", code=1)
    # float16 read as float64, block by block (the whole 128 KiB file in one block): 512 KiB
    # in, then 512 out, 64 for a float64 channel and explain's 8 float64 copies of a channel
    # (8 * 8 * 8192 = 512 KiB): 1600 KiB
    half = tmp_path / "half.npy"
    np.save(half, np.zeros((2, 8, 64, 64), np.float16))
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000 << 10)
    message = cli.error(
        "explain", "--input", half, "--dtype", "float64", "--index", "0,0,0,0", code=1
    )
    assert "needs about 1.6 MiB" in message
