"""Data-parallel batch norm without processes: splits, pooling by counts against the full batch,
the averaged-variance mistake, SyncBatchNorm's CUDA pooling formulas (syncbn.py) against a
float64 hand computation, the file split, and the refusals of --ranks (none of which may load
torch). The same code in real ranks is tested in test_distributed_ranks.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bninspect.distributed import syncbn
from bninspect.distributed.sharding import batch_split, file_split, parse_rank_sizes
from bninspect.errors import OptionError
from bninspect.numerics.pooling import (
    averaged_variance,
    equal_weight_variance,
    even_sizes,
    pooled_statistics,
    rank_moments,
    rank_of_sample,
    rank_statistics,
    shard_bounds,
)
from bninspect.numerics.reference import channel_statistics

from test_startup import bninspect_without_torch

DTYPES = {
    "float32": np.float32,
    "float64": np.float64,
    "float16": np.float16,
}


@st.composite
def splits(draw, samples: int):
    """Rank sizes adding up to ``samples``: 2 to 5 ranks, some possibly empty."""
    ranks = draw(st.integers(2, 5))
    cuts = sorted(draw(st.lists(st.integers(0, samples), min_size=ranks - 1, max_size=ranks - 1)))
    edges = [0, *cuts, samples]
    return tuple(edges[k + 1] - edges[k] for k in range(ranks))


@st.composite
def split_batches(draw):
    """(x, sizes): a tensor of rank 2 to 5 in a drawn dtype and a split of its samples."""
    rank = draw(st.integers(2, 5))
    samples = draw(st.integers(1, 9))
    shape = (samples, draw(st.integers(1, 3)), *(draw(st.integers(1, 3)) for _ in range(rank - 2)))
    dtype = draw(st.sampled_from(sorted(DTYPES)))
    scale = draw(st.sampled_from([1e-2, 1.0, 30.0]))
    offset = draw(st.sampled_from([0.0, 3.0, -100.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    x = np.random.default_rng(seed).standard_normal(shape) * scale + offset
    return x.astype(DTYPES[dtype]), draw(splits(samples))


def ulps64(value, reference, scale):
    return np.abs(np.asarray(value) - reference) / np.spacing(np.abs(scale))


@given(split_batches())
def test_pooled_statistics_are_the_full_batch_s(case):
    """Every rank's moments merged by counts (Chan) give the full batch's mean and variance to
    rounding, over uneven and empty ranks, tensor ranks 2 to 5 and dtypes."""
    x, sizes = case
    full = channel_statistics(x)
    pooled = pooled_statistics(rank_moments(x, sizes))
    assert pooled.count == full.count
    rms = np.sqrt(full.mean**2 + full.var_biased)
    assert np.all(ulps64(pooled.mean, full.mean, rms) <= 2), (sizes, pooled.mean, full.mean)
    scale = np.maximum(full.m2, np.finfo(np.float64).tiny)
    assert np.all(ulps64(pooled.m2, full.m2, scale) <= 2), (sizes, pooled.m2, full.m2)


@given(split_batches())
def test_rank_statistics_and_the_averaged_variance_by_hand(case):
    """Each rank's statistics are its block's (numpy in float64), and the averaged-variance
    mistake is sum n_r var_r / N, short of the pooled variance by the spread of the rank means
    (law of total variance)."""
    x, sizes = case
    wide = x.astype(np.float64)
    axes = (0, *range(2, x.ndim))
    own = rank_statistics(x, sizes)
    within = np.zeros(x.shape[1])
    between = np.zeros(x.shape[1])
    mean = wide.mean(axis=axes)
    size = 1 + float(np.max(mean**2))  # the variances' rounding is relative to mean^2 + var
    for (first, end), stats in zip(shard_bounds(sizes), own, strict=True):
        block = wide[first:end]
        if end == first:
            assert stats is None
            continue
        n = block.size // x.shape[1]
        assert stats.count == n
        np.testing.assert_allclose(stats.mean, block.mean(axis=axes), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(
            stats.var_biased, block.var(axis=axes), rtol=1e-9, atol=1e-12 * size
        )
        within += n * block.var(axis=axes)
        between += n * (block.mean(axis=axes) - mean) ** 2
    total = wide[:, 0].size
    np.testing.assert_allclose(averaged_variance(own), within / total, rtol=1e-9, atol=1e-12 * size)
    np.testing.assert_allclose(
        (within + between) / total, wide.var(axis=axes), rtol=1e-9, atol=1e-12 * size
    )


@given(split_batches())
def test_equal_weight_variance_by_hand(case):
    """The plain mistake: numpy's variance of each non-empty rank's block, averaged with
    equal weights (all_reduce(var) / K), whatever the ranks' sizes."""
    x, sizes = case
    wide = x.astype(np.float64)
    axes = (0, *range(2, x.ndim))
    blocks = [wide[first:end] for first, end in shard_bounds(sizes) if end > first]
    by_hand = np.mean([block.var(axis=axes) for block in blocks], axis=0)
    size = 1 + float(np.max(wide.mean(axis=axes) ** 2))
    found = equal_weight_variance(rank_statistics(x, sizes))
    np.testing.assert_allclose(found, by_hand, rtol=1e-9, atol=1e-12 * size)


def test_equal_weights_differ_from_count_weights_on_uneven_ranks():
    """Ranks of 1 and 3 samples: (var_0 + var_1) / 2, not (n_0 var_0 + n_1 var_1) / 4."""
    x = np.array([[0.0, 0.0], [10.0, 0.0], [12.0, 0.0], [14.0, 0.0]]).reshape(4, 1, 2)
    own = rank_statistics(x, (1, 3))
    # rank 0: 0, 0 -> var 0; rank 1: 10, 0, 12, 0, 14, 0 -> mean 6, var 218/6 - 36
    var_1 = (100 + 144 + 196) / 6 - 36
    np.testing.assert_allclose(equal_weight_variance(own), [var_1 / 2])
    np.testing.assert_allclose(averaged_variance(own), [6 * var_1 / 8])


def test_splits():
    assert even_sizes(10, 4) == (3, 3, 2, 2)
    assert shard_bounds((5, 3, 0, 8)) == ((0, 5), (5, 8), (8, 8), (8, 16))
    assert [rank_of_sample((5, 3, 0, 8), s) for s in (0, 4, 5, 7, 8, 15)] == [0, 0, 1, 1, 3, 3]
    assert batch_split(16, None, "5,3,0,8") == (5, 3, 0, 8)
    assert batch_split(7, 3, None) == (3, 2, 2)
    assert parse_rank_sizes(" 1, 0,2") == (1, 0, 2)


@pytest.mark.parametrize(
    ("samples", "ranks", "sizes", "words"),
    [
        (8, 9, None, "--ranks 9: the batch has only 8 samples on axis 0"),
        (16, None, "5,-3", "entry 1 ('-3') is not a count of samples"),
        (16, None, "5,,3", "entry 1 ('') is not a count of samples"),
        (16, 2, "8,8", "--ranks and --rank-sizes both given"),
    ],
)
def test_splits_refused(samples, ranks, sizes, words):
    with pytest.raises(OptionError) as refused:
        batch_split(samples, ranks, sizes)
    assert words in str(refused.value)


def test_a_split_that_does_not_add_up():
    with pytest.raises(OptionError, match="adds up to 12 samples, but the batch has 16"):
        batch_split(16, None, "5,3,4")


@given(
    st.lists(st.integers(1, 10**6), min_size=1, max_size=40),
    st.integers(1, 40),
)
def test_file_split_is_contiguous_balanced_and_never_empty(sizes, ranks):
    if ranks > len(sizes):
        with pytest.raises(OptionError, match=f"matches {len(sizes)} file"):
            file_split(sizes, ranks, "x/*.npy")
        return
    bounds = file_split(sizes, ranks, "x/*.npy")
    assert bounds[0][0] == 0 and bounds[-1][1] == len(sizes)
    assert all(a < b for a, b in bounds)  # every rank streams at least one file
    assert all(bounds[k][1] == bounds[k + 1][0] for k in range(ranks - 1))
    # each boundary is the nearest one to its share of the bytes that leaves every rank a file
    total, running = sum(sizes), np.cumsum([0, *sizes])
    for rank in range(1, ranks):
        target, chosen = total * rank / ranks, bounds[rank][0]
        lowest, highest = bounds[rank - 1][0] + 1, len(sizes) - (ranks - rank)
        assert all(
            abs(running[chosen] - target) <= abs(running[k] - target)
            for k in range(lowest, highest + 1)
        )


# SyncBatchNorm's pooling (CUDA's formulas in syncbn.py), with the gather done by hand here


def sync_by_hand(x: np.ndarray, sizes, eps=1e-5, momentum=0.1):
    """syncbn.sync_batch_norm for every rank, the all_gather being a plain stack."""
    layer = {np.float32: torch.float32, np.float64: torch.float64, np.float16: torch.float16}
    dtype = layer[x.dtype.type]
    rows = torch.stack(
        [syncbn.combined_row(torch.from_numpy(x[a:b]), eps) for a, b in shard_bounds(sizes)]
    )
    channels = x.shape[1]
    ones, zeros = torch.ones(channels, dtype=dtype), torch.zeros(channels, dtype=dtype)
    outputs = []
    for a, b in shard_bounds(sizes):
        y, gathered = syncbn.sync_batch_norm(
            torch.from_numpy(x[a:b]), ones, zeros, zeros, ones, momentum, eps, lambda row: rows
        )
        outputs.append(y.numpy())
    return np.concatenate(outputs), gathered


@given(split_batches())
def test_syncbn_pools_to_the_full_batch(case):
    """The emulated SyncBatchNorm's mean, invstd, output and running buffers against the full
    batch's float64 statistics: to a few units of the accumulation type (float32 for float16),
    the variance's with room for its 1 / invstd^2 - eps round trip."""
    x, sizes = case
    if x.dtype == np.float16:
        x = x.clip(-60000, 60000).astype(np.float16)
    full = channel_statistics(x)
    eps, momentum = 1e-5, 0.1
    if full.count < 2 or not np.all(np.isfinite(full.m2)):
        return
    y, gathered = sync_by_hand(x, sizes, eps, momentum)
    acc = 2.0**-52 if x.dtype == np.float64 else 2.0**-23
    var = full.var_biased
    rms = np.sqrt(full.mean**2 + var)
    world = len(sizes)
    mean = gathered.mean.double().numpy()
    # each merge rounds a few times at the size of the values (their rms)
    assert np.all(np.abs(mean - full.mean) <= 8 * world * acc * rms), (mean, full.mean)
    invstd = gathered.invstd.double().numpy()
    reference_invstd = 1 / np.sqrt(var + eps)
    # the variance is rebuilt from each rank's invstd, which holds var + eps to a few units;
    # the merge then adds the spread of the rank means, a term of the size of mean^2
    room = 16 * world * acc * (1 + (full.mean**2 + eps) / (var + eps))
    assert np.all(np.abs(invstd / reference_invstd - 1) <= room), (invstd, reference_invstd)
    unbiased = full.m2 / (full.count - 1)
    expected_var = (1 - momentum) * 1.0 + momentum * unbiased
    layer_unit = 2.0 ** -{np.float16: 10, np.float32: 23, np.float64: 52}[x.dtype.type]
    got = gathered.running_var.double().numpy()
    assert np.all(np.abs(got / expected_var - 1) <= 2 * room + 2 * layer_unit), (got, expected_var)
    got_mean = gathered.running_mean.double().numpy()
    subnormal = {np.float16: 2.0**-24, np.float32: 2.0**-149, np.float64: 2.0**-1074}
    room_mean = (
        8 * world * acc * rms + layer_unit * np.abs(momentum * full.mean) + subnormal[x.dtype.type]
    )
    assert np.all(np.abs(got_mean - momentum * full.mean) <= room_mean), (got_mean, full.mean)


def test_syncbn_float16_counts_overflow_as_on_cuda():
    """A float16 layer's counts are cast to float16 (as SyncBatchNorm does, pytorch#98332): a
    rank with more than 65504 values per channel gives an infinite count, and the pooled
    statistics are NaN (pytorch#70901)."""
    x = np.random.default_rng(0).standard_normal((2, 1, 200, 200)).astype(np.float16)
    _, gathered = sync_by_hand(x, (1, 1))  # 40000 values per rank: still finite
    assert torch.isfinite(gathered.mean).all()
    x = np.random.default_rng(0).standard_normal((4, 1, 200, 200)).astype(np.float16)
    _, gathered = sync_by_hand(x, (2, 2))  # 80000 values per rank: beyond float16
    assert torch.isnan(gathered.mean).all() or torch.isnan(gathered.invstd).all()


def test_syncbn_drops_empty_ranks_and_takes_the_global_bessel_factor():
    """Exact numbers: 1, 2, 3 on one rank, 5 on another, a third empty. Pooled mean 11/4,
    m2 = 2 + 0 + 3 * (2 - 11/4)^2 + 1 * (5 - 11/4)^2 = 8.75; running_var with momentum 1 is
    the unbiased 8.75 / 3 (the global count's Bessel factor, not a rank's)."""
    x = np.array([1.0, 2.0, 3.0, 5.0]).reshape(4, 1)
    rows = torch.stack(
        [
            syncbn.combined_row(torch.from_numpy(x[0:3]), 0.0),
            syncbn.combined_row(torch.from_numpy(x[3:4]), 0.0),
            syncbn.combined_row(torch.from_numpy(x[4:4]), 0.0),
        ]
    )
    one = torch.ones(1, dtype=torch.float64)
    gathered = syncbn.gather_statistics(rows, one * 0, one, 1.0, 1e-300)
    assert gathered.mean.item() == 11 / 4
    assert math.isclose(gathered.running_var.item(), 8.75 / 3, rel_tol=1e-15)
    assert math.isclose(1 / gathered.invstd.item() ** 2, 8.75 / 4, rel_tol=1e-14)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["run", "--ranks", "2", "--mode", "eval"], "eval mode normalizes with the running"),
        (["run", "--ranks", "2", "--steps", "2"], "drop --steps and --batch-size"),
        (["run", "--ranks", "2", "--convention", "keras"], "drop --convention"),
        (["run", "--ranks", "9", "--shape", "8,3"], "the batch has only 8 samples"),
        (["run", "--rank-sizes", "1,2", "--shape", "4,3"], "adds up to 3 samples"),
        (["run", "--ranks", "2", "--rank-sizes", "1,1", "--shape", "2,3"], "both given"),
        (["run", "--input", "{folder}/*.npy"], "is a pattern of files"),
        (["run", "--stats-only", "--input", "{folder}/*.npy", "--ranks", "4"], "matches 3 files"),
        (["run", "--stats-only", "--input", "{folder}/nothing*.npy"], "no file matches"),
        (
            ["run", "--stats-only", "--input", "{folder}/*.npy", "--rank-sizes", "1,2"],
            "for files give --ranks K",
        ),
        (["explain", "--ranks", "2", "--index", "0,0", "--precision"], "drop --precision or"),
        (["run", "--ranks", "2", "--shape", "4,3", "--var-method"], "--var-method"),
    ],
)
def test_refusals(cli, tmp_path, args, words):
    for k in range(3):
        np.save(tmp_path / f"part{k}.npy", np.ones((2, 3), np.float32))
    message = cli.error(*(a.format(folder=tmp_path) for a in args), code=CODES.get(words, 2))
    assert words in message, message


CODES = {"no file matches": 1}


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--ranks", "2", "--mode", "eval"],
        ["run", "--ranks", "9", "--shape", "8,3"],
        ["run", "--stats-only", "--input", "{folder}/*.npy", "--ranks", "4"],
    ],
)
def test_refusals_need_no_torch(tmp_path, args):
    """Refused before a rank starts or torch loads (a few of the cases above, in a process
    where importing torch fails)."""
    for k in range(3):
        np.save(tmp_path / f"part{k}.npy", np.ones((2, 3), np.float32))
    result = bninspect_without_torch(*(a.format(folder=tmp_path) for a in args))
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
