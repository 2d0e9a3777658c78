"""check's data-parallel mistakes (with --ranks / --rank-sizes), each against an implementation
of the mistake written here: DDP without SyncBatchNorm (PyTorch's own module on each rank's
block), and SyncBatchNorm done with the per-rank variances averaged instead of pooled."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def batch() -> np.ndarray:
    """Samples whose means differ (a per-sample offset), so ranks' statistics differ."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, 3, 4, 4)) + rng.standard_normal((8, 1, 1, 1)) * 1.5
    return x.astype(np.float32)


def ddp_without_sync(x: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    """What each rank's torch.nn.BatchNorm2d gives on its own block, stacked in rank order."""
    parts, first = [], 0
    for size in sizes:
        module = torch.nn.BatchNorm2d(x.shape[1])
        with torch.no_grad():
            parts.append(module(torch.from_numpy(x[first : first + size])).numpy())
        first += size
    return np.concatenate(parts)


def averaged_variances(x: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    """A SyncBatchNorm that all-reduces each rank's variance weighted by its count instead of
    pooling: the batch mean, and sum n_r var_r / N, in float32 as a float32 layer would."""
    axes = (0, 2, 3)
    mean = x.mean(axis=axes, keepdims=True, dtype=np.float32)
    total, weighted, first = 0, np.zeros_like(mean), 0
    for size in sizes:
        block = x[first : first + size]
        if size:
            n = block.size // x.shape[1]
            weighted += n * block.var(axis=axes, keepdims=True, dtype=np.float32)
            total += n
        first += size
    return ((x - mean) / np.sqrt(weighted / total + np.float32(1e-5))).astype(np.float32)


def equal_weight_variances(x: np.ndarray, sizes: tuple[int, ...]) -> np.ndarray:
    """A SyncBatchNorm that all-reduces each non-empty rank's variance and divides by their
    number, whatever their sizes: the batch mean, and sum var_r / K, in float32."""
    axes = (0, 2, 3)
    mean = x.mean(axis=axes, keepdims=True, dtype=np.float32)
    variances, first = [], 0
    for size in sizes:
        if size:
            block = x[first : first + size]
            variances.append(block.var(axis=axes, keepdims=True, dtype=np.float32))
        first += size
    variance = sum(variances) / np.float32(len(variances))
    return ((x - mean) / np.sqrt(variance + np.float32(1e-5))).astype(np.float32)


def diagnose(cli, tmp_path, x, theirs, *options) -> dict:
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "theirs.npy", theirs)
    result = cli(
        "check", "--input", tmp_path / "x.npy", "--output", tmp_path / "theirs.npy", *options,
        "--json", code=3,
    )  # fmt: skip
    import json

    return json.loads(result.stdout)["diagnosis"]


@pytest.mark.parametrize("sizes", [(3, 5), (3, 0, 5), (2, 2, 2, 2)])
def test_ddp_without_sync_is_named(cli, tmp_path, sizes):
    x = batch()
    split = ",".join(map(str, sizes))
    found = diagnose(cli, tmp_path, x, ddp_without_sync(x, sizes), "--rank-sizes", split)
    first = found["hypotheses"][0]
    assert (first["name"], first["explains"]) == ("per-rank-statistics", True), found
    assert first["max_over_bound"] <= 1  # within what a correct implementation leaves
    assert first["detail"] == f"{len(sizes)} ranks of {split} samples"
    averaged = next(h for h in found["hypotheses"] if h["name"] == "averaged-variances")
    assert not averaged["explains"]


def test_averaged_variances_are_named(cli, tmp_path):
    x = batch()
    found = diagnose(cli, tmp_path, x, averaged_variances(x, (4, 4)), "--ranks", "2")
    first = found["hypotheses"][0]
    assert (first["name"], first["explains"]) == ("averaged-variances", True), found
    per_rank = next(h for h in found["hypotheses"] if h["name"] == "per-rank-statistics")
    assert not per_rank["explains"]


@pytest.mark.parametrize("sizes", [(3, 5), (1, 0, 7)])
def test_equal_weight_variances_are_named_apart_from_count_weighted(cli, tmp_path, sizes):
    """On uneven ranks the plain equal-weight average is its own mistake, named as such, and
    the count-weighted one does not explain it (nor the reverse)."""
    x = batch()
    split = ",".join(map(str, sizes))
    found = diagnose(cli, tmp_path, x, equal_weight_variances(x, sizes), "--rank-sizes", split)
    first = found["hypotheses"][0]
    assert (first["name"], first["explains"]) == ("equal-weight-variances", True), found
    by_count = next(h for h in found["hypotheses"] if h["name"] == "averaged-variances")
    assert not by_count["explains"]
    found = diagnose(cli, tmp_path, x, averaged_variances(x, sizes), "--rank-sizes", split)
    assert found["hypotheses"][0]["name"] == "averaged-variances", found
    equal = next(h for h in found["hypotheses"] if h["name"] == "equal-weight-variances")
    assert not equal["explains"]


def test_without_ranks_the_data_parallel_mistakes_are_not_tried(cli, tmp_path):
    x = batch()
    found = diagnose(cli, tmp_path, x, ddp_without_sync(x, (4, 4)))
    names = {h["name"] for h in found["hypotheses"]}
    assert not names & {"per-rank-statistics", "averaged-variances", "equal-weight-variances"}
    assert not found["explained"]


def test_check_refuses_a_split_that_does_not_fit(cli, tmp_path):
    x = batch()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "theirs.npy", x)
    message = cli.error(
        "check", "--input", tmp_path / "x.npy", "--output", tmp_path / "theirs.npy",
        "--ranks", "9", code=2,
    )  # fmt: skip
    assert message.startswith("--ranks 9: the batch has only 8 samples on axis 0")
