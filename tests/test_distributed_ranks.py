"""Data-parallel batch norm in real ranks: processes joining one gloo group over loopback.

Starting a rank costs a second or two (it imports torch), so the batches are run as several
tasks of one launch per rank count (LocalRanks runs a launch's tasks in turn in the same
group), and everything below is checked against values computed here, independently: numpy in
float64, and PyTorch's own module on each rank's block in this process.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bninspect.distributed.batch import write_task
from bninspect.distributed.exchange import array_to_moments, load_batch
from bninspect.distributed.launch import LocalRanks
from bninspect.dtypes import float_format
from bninspect.input.parameters import LayerParameters
from bninspect.numerics.pooling import shard_bounds, statistics_of
from bninspect.numerics.reference import channel_statistics

MODULES = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}
TORCH = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
UNIT = {"float32": 2.0**-23, "float64": 2.0**-52, "float16": 2.0**-10, "bfloat16": 2.0**-7}


def batch(shape, dtype, seed, scale=1.0, offset=0.0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape) * scale + offset
    return x.astype(float_format(dtype).numpy)


def layer(channels: int, dtype: str, seed: int) -> LayerParameters:
    """Random weight, bias and running buffers, rounded to the dtype as the module holds them."""
    rng = np.random.default_rng(seed)
    form = float_format(dtype).numpy

    def rounded(values):
        return values.astype(form).astype(np.float64)

    return LayerParameters(
        rounded(rng.uniform(0.5, 2.0, channels)),
        rounded(rng.uniform(-1.0, 1.0, channels)),
        rounded(rng.uniform(-0.5, 0.5, channels)),
        rounded(rng.uniform(0.5, 2.0, channels)),
    )


# (shape, dtype, rank sizes, momentum, scale, offset): uneven and empty ranks, tensor ranks 2
# to 5, every dtype, a rank of one value per channel (PyTorch refuses it), PyTorch's cumulative
# average (momentum None)
CASES = {
    4: [
        ((16, 3, 4, 4), "float32", (5, 3, 0, 8), 0.1, 1.0, 0.0),
        ((11, 5), "float64", (4, 4, 2, 1), 0.3, 2.0, 1.0),
        ((9, 2, 7), "float16", (0, 3, 3, 3), 0.1, 1.0, 0.5),
        ((8, 2, 2, 3, 2), "bfloat16", (2, 2, 2, 2), None, 1.0, 0.0),
        ((12, 2, 3, 3), "float32", (1, 5, 0, 6), 0.1, 0.01, 100.0),
    ],
}
# Two and three ranks run end to end in test_distributed_cli.py; one launch here keeps the
# suite quick (a rank costs a second or two to start).


LEFT: dict = {}  # the launch's folder and rank processes, to see them gone


@pytest.fixture(scope="module")
def launches():
    """Every case run in real ranks: per world size, one launch of several tasks. Returns, per
    case: (x, sizes, params, momentum, eps, reports, outputs, sync outputs)."""
    done = []
    for world, cases in CASES.items():
        with LocalRanks(world, timeout=120) as local:
            tasks, inputs = [], []
            for number, (shape, dtype, sizes, momentum, scale, offset) in enumerate(cases):
                x = batch(shape, dtype, seed=number + 10 * world, scale=scale, offset=offset)
                params = layer(shape[1], dtype, seed=number)
                eps = 1e-5 if dtype != "float16" else 1e-3
                tasks.append(
                    write_task(
                        local, number, x, sizes, params, eps, momentum, MODULES[len(shape)],
                        save_output=True,
                    )
                )  # fmt: skip
                inputs.append((x, sizes, params, momentum, eps))
            local.start(tasks)
            local.wait()
            LEFT.update(folder=local.folder, pids=local.pids())
            for number, (x, sizes, params, momentum, eps) in enumerate(inputs):
                reports, outputs, syncs = [], [], []
                for rank in range(world):
                    reports.append(local.report(rank, number))
                    path = local.path(f"rank{rank}.{number}.output.npy")
                    outputs.append(
                        np.array(load_batch(path, x.dtype.name)) if path.exists() else None
                    )
                    syncs.append(
                        np.array(
                            load_batch(local.path(f"rank{rank}.{number}.sync.npy"), x.dtype.name)
                        )
                    )
                done.append((x, sizes, params, momentum, eps, reports, outputs, syncs))
    return done


def ids():
    return [
        f"{len(c[2])}ranks-{c[1]}-{len(c[0])}d-{','.join(map(str, c[2]))}"
        for w in CASES.values()
        for c in w
    ]


CASE_IDS = ids()


@pytest.fixture(params=range(len(CASE_IDS)), ids=CASE_IDS)
def case(request, launches):
    return launches[request.param]


def test_pooled_statistics_gathered_by_the_ranks_are_the_full_batch_s(case):
    x, sizes, _, _, _, reports, _, _ = case
    full = channel_statistics(x)
    rms = np.sqrt(full.mean**2 + full.var_biased)
    for report in reports:  # every rank pooled the same, from the same all_gather
        np.testing.assert_array_equal(report["pooled_mean"], reports[0]["pooled_mean"])
    mean_ulps = np.abs(reports[0]["pooled_mean"] - full.mean) / np.spacing(rms)
    m2_ulps = np.abs(reports[0]["pooled_m2"] - full.m2) / np.spacing(full.m2)
    assert mean_ulps.max() <= 2 and m2_ulps.max() <= 2, (mean_ulps, m2_ulps)
    # and each rank's own moments are its block's
    for (first, end), report in zip(shard_bounds(sizes), reports, strict=True):
        own = statistics_of(array_to_moments(report["moments"]), int(report["count"]))
        if end == first:
            assert own is None
            continue
        block = x[first:end].astype(np.float64)
        axes = (0, *range(2, x.ndim))
        np.testing.assert_allclose(own.mean, block.mean(axis=axes), rtol=1e-12, atol=1e-14)


def test_each_rank_runs_pytorch_s_module_on_its_block_bit_for_bit(case):
    """What a rank returns is exactly what torch.nn.BatchNormXd gives on that rank's block in
    this process; a rank of one value per channel is refused, as PyTorch refuses it."""
    x, sizes, params, momentum, eps, reports, outputs, _ = case
    dtype = TORCH[x.dtype.name]
    module_class = getattr(torch.nn, MODULES[x.ndim])
    for (first, end), report, output in zip(shard_bounds(sizes), reports, outputs, strict=True):
        module = module_class(x.shape[1], eps=eps, momentum=momentum, dtype=dtype)
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(module, name).copy_(torch.from_numpy(getattr(params, name)).to(dtype))
        block = (
            torch.from_numpy(np.ascontiguousarray(x[first:end]).view(np.uint16)).view(dtype)
            if x.dtype.name == "bfloat16"
            else torch.from_numpy(np.ascontiguousarray(x[first:end]))
        )
        if (end - first) * (x.size // (x.shape[0] * x.shape[1])) == 1:
            with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
                module(block)
            assert "Expected more than 1 value per channel" in str(report["torch_refused"])
            assert output is None
            continue
        threads = torch.get_num_threads()
        torch.set_num_threads(int(report["torch_threads"]))  # some reductions split by thread
        try:
            with torch.no_grad():
                expected = module(block)
        finally:
            torch.set_num_threads(threads)
        got = (
            torch.from_numpy(output.view(np.uint16)).view(dtype)
            if x.dtype.name == "bfloat16"
            else torch.from_numpy(output)
        )
        assert torch.equal(got, expected), (first, end)
        buffers = (module.running_mean.double().numpy(), module.running_var.double().numpy())
        np.testing.assert_array_equal(report["torch_running_mean"], buffers[0])
        np.testing.assert_array_equal(report["torch_running_var"], buffers[1])


def test_running_buffers_by_hand(case):
    """Each rank's buffers against (1 - m) * before + m * its block's mean and unbiased
    variance, in float64 here (its own Bessel factor); an empty rank's left as they were.
    SyncBatchNorm's against the same with the global count's Bessel factor."""
    x, sizes, params, momentum, eps, reports, _, _ = case
    m = 1.0 if momentum is None else momentum
    unit = UNIT[x.dtype.name]
    axes = (0, *range(2, x.ndim))
    wide = x.astype(np.float64)
    for (first, end), report in zip(shard_bounds(sizes), reports, strict=True):
        if "torch_refused" in report:
            continue
        if end == first:
            np.testing.assert_array_equal(report["torch_running_mean"], params.running_mean)
            np.testing.assert_array_equal(report["torch_running_var"], params.running_var)
            continue
        block = wide[first:end]
        mean = (1 - m) * params.running_mean + m * block.mean(axis=axes)
        var = (1 - m) * params.running_var + m * block.var(axis=axes, ddof=1)
        size = np.abs((1 - m) * params.running_mean) + np.abs(m * block.mean(axis=axes)) + 1e-30
        assert np.all(np.abs(report["torch_running_mean"] - mean) <= 4 * unit * size)
        assert np.all(np.abs(report["torch_running_var"] / var - 1) <= 4 * unit)
    mean = (1 - m) * params.running_mean + m * wide.mean(axis=axes)
    var = (1 - m) * params.running_var + m * wide.var(axis=axes, ddof=1)
    for report in reports:  # every rank ends with the same buffers under SyncBatchNorm
        size = np.abs((1 - m) * params.running_mean) + np.abs(m * wide.mean(axis=axes))
        # float32 pooling with the variance rebuilt from 1 / invstd^2 - eps: a few units of
        # the accumulation type at the values' size, then rounded to the layer's dtype
        acc = 2.0**-52 if x.dtype == np.float64 else 2.0**-23
        rms = np.sqrt(wide.mean(axis=axes) ** 2 + wide.var(axis=axes))
        assert np.all(
            np.abs(report["sync_running_mean"] - mean) <= 2 * unit * size + 32 * acc * rms
        )
        assert np.all(
            np.abs(report["sync_running_var"] / var - 1)
            <= 2 * unit + 64 * acc * (1 + (wide.mean(axis=axes) ** 2 + eps) / wide.var(axis=axes))
        )


def test_syncbn_output_is_the_full_batch_s(case):
    """SyncBatchNorm's output (emulated over the real all_gather), from every rank, against
    the full batch's float64 batch norm computed here, in units of the dtype at the scale."""
    x, sizes, params, _, eps, _, _, syncs = case
    wide = x.astype(np.float64)
    axes = (0, *range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean, var = wide.mean(axis=axes), wide.var(axis=axes)
    y = (wide - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps)
    y = y * params.weight.reshape(shape) + params.bias.reshape(shape)
    got = np.concatenate(syncs).astype(np.float64)
    scale = np.maximum(np.abs(y).max(axis=axes), np.abs(params.weight))
    error = np.abs(got - y).max(axis=axes) / (scale * UNIT[x.dtype.name])
    # float32 arithmetic where the data's |mean| / std is large loses about that many units
    conditioning = 1 + np.abs(mean) / np.sqrt(var)
    allowed = 2 + (4 * conditioning if x.dtype.name in ("float32", "float64") else 0)
    assert np.all(error <= allowed), (error, allowed)


def test_local_ranks_leave_nothing_behind(launches):
    """The private directory (rendezvous file, tasks, reports) went with the launch, and every
    rank process with it."""
    folder, pids = LEFT["folder"], LEFT["pids"]
    assert not folder.exists() and len(pids) == 4
    for pid in pids:
        assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def test_momentum_none_weighs_the_first_batch_fully(launches):
    """PyTorch's cumulative average (momentum None) takes the batch whole on the first step:
    the bfloat16 case's rank buffers are the blocks' statistics themselves."""
    x, sizes, _, momentum, _, reports, _, _ = launches[3]
    assert momentum is None
    first, end = shard_bounds(sizes)[0]
    block = x[first:end].astype(np.float64)
    axes = (0, *range(2, x.ndim))
    expected = block.mean(axis=axes).astype(float_format("bfloat16").numpy).astype(np.float64)
    assert math.isclose(
        float(np.max(np.abs(reports[0]["torch_running_mean"] - expected))), 0.0, abs_tol=2**-7
    )
