"""One rank's part of ``run --ranks`` / ``explain --ranks``, in that rank's process: its block
of the batch through PyTorch's own module (batch norm as DDP without SyncBatchNorm computes
it), its float64 moments gathered from every rank and pooled (SyncBatchNorm's statistics), and
SyncBatchNorm's forward (syncbn.py) over the real gloo all_gather. Each output is compared
here, where it lives, with the float64 reference; only per-channel numbers leave the rank.

Exists to run torch (TID253 ignored for it in pyproject.toml).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bninspect.distributed import group, syncbn
from bninspect.distributed.exchange import (
    array_to_moments,
    load_batch,
    moments_to_array,
    save_array,
)
from bninspect.errors import BnInspectError
from bninspect.input.parameters import LayerParameters
from bninspect.numerics import kernels
from bninspect.numerics.pooling import (
    moments_of,
    pooled_statistics,
    shard_bounds,
    statistics_of,
    values_per_channel,
)
from bninspect.numerics.reference import std_of
from bninspect.pytorch.batchnorm import TORCH_DTYPES, run_batchnorm, to_numpy, to_torch


def _errors(shard, y, dtype, mean, std, params: LayerParameters) -> np.ndarray:
    """kernels.output_errors of ``y`` against (shard - mean) / std * weight + bias, as
    (4, C): max |err|, max ULP elementwise, max |reference|, argmax."""
    if shard.size == 0:  # an empty rank: nothing to compare
        nothing = np.zeros((4, shard.shape[1]))
        nothing[3] = -1
        return nothing
    found = kernels.output_errors(shard, y, dtype, mean, std, params.weight, params.bias)
    return np.stack([found.max_abs, found.max_ulp, found.max_reference, found.argmax_ulp])


def _try_sync_batch_norm(shard: np.ndarray, layer: torch.dtype, eps: float) -> str:
    """What torch.nn.SyncBatchNorm itself does with this rank's CPU block, in this group: its
    refusal (every rank raises before any collective), or "ran" on a PyTorch that accepts CPU
    tensors (bninspect does not compare that output yet)."""
    module = torch.nn.SyncBatchNorm(shard.shape[1], eps=eps, dtype=layer)
    try:
        with torch.no_grad():
            module(to_torch(shard))
    except (ValueError, RuntimeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ran"


def run_regimes(task: dict[str, Any], folder: Path, rank: int, world: int, tag: str) -> dict:
    """This rank's figures for one batch (see the module's docstring), as arrays to save."""
    start = time.perf_counter()
    dtype = task["dtype"]
    x = load_batch(Path(task["input"]), dtype)
    sizes = tuple(task["sizes"])
    if len(sizes) != world:
        raise BnInspectError(f"the task splits the batch over {len(sizes)} ranks, not {world}")
    first, end = shard_bounds(sizes)[rank]
    shard = np.ascontiguousarray(x[first:end])
    stored = np.load(folder / task["params"], allow_pickle=False)
    params = LayerParameters(
        *(stored[k] for k in ("weight", "bias", "running_mean", "running_var"))
    )
    reference = np.load(folder / task["reference"], allow_pickle=False)
    full_mean, full_std = reference["mean"], reference["std"]
    eps, weight_of_batch = float(task["eps"]), float(task["batch_weight"])
    count = values_per_channel(x.shape, end - first)

    # float64 moments, gathered from every rank and pooled by counts
    moments = moments_of(shard)
    parts = group.all_gather_array(moments_to_array(moments), "each rank's float64 moments")
    pooled = pooled_statistics([array_to_moments(p) for p in parts])
    figures: dict[str, np.ndarray] = {
        "count": np.array(count),
        "moments": moments_to_array(moments),
        "pooled_mean": pooled.mean,
        "pooled_m2": pooled.m2,
    }

    # DDP without SyncBatchNorm: PyTorch's module on this rank's block alone
    own = statistics_of(moments, count)
    y_rank = None
    try:
        run = run_batchnorm(
            shard, end - first, [task["momentum"]], task["module"], params, eps,
            task["affine"], True,
        )  # fmt: skip
        y_rank = run.output
        figures["torch_running_mean"] = run.running_mean.astype(np.float64)
        figures["torch_running_var"] = run.running_var.astype(np.float64)
        figures["torch_num_batches_tracked"] = np.array(run.num_batches_tracked)
        # PyTorch's CPU kernel splits some reductions by thread: its bits depend on this
        figures["torch_threads"] = np.array(run.num_threads)
        if own is not None:
            own_std = std_of(own.var_biased, eps)
            figures["own_errors"] = _errors(shard, y_rank, dtype, own.mean, own_std, params)
        figures["full_errors"] = _errors(shard, y_rank, dtype, full_mean, full_std, params)
    except BnInspectError as exc:  # PyTorch refuses this block (one value per channel)
        figures["torch_refused"] = np.array(str(exc).removeprefix("PyTorch refused this input: "))

    # SyncBatchNorm: the real all_gather over gloo, CUDA's pooling formulas on CPU
    layer = TORCH_DTYPES[dtype]
    figures["syncbn_on_cpu"] = np.array(_try_sync_batch_norm(shard, layer, eps))

    def vector(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(layer)

    def gather(row: torch.Tensor) -> torch.Tensor:
        return group.all_gather(row, "SyncBatchNorm's per-rank mean, invstd and count")

    y_sync, gathered = syncbn.sync_batch_norm(
        to_torch(shard),
        vector(params.weight),
        vector(params.bias),
        vector(params.running_mean),
        vector(params.running_var),
        weight_of_batch,
        eps,
        gather,
    )
    y_sync = to_numpy(y_sync)
    figures["sync_mean"] = gathered.mean.to(torch.float64).numpy()
    figures["sync_invstd"] = gathered.invstd.to(torch.float64).numpy()
    figures["sync_running_mean"] = gathered.running_mean.to(torch.float64).numpy()
    figures["sync_running_var"] = gathered.running_var.to(torch.float64).numpy()
    figures["sync_errors"] = _errors(shard, y_sync, dtype, full_mean, full_std, params)

    index = task.get("index")
    if index is not None and first <= index[0] < end:
        local = (index[0] - first, *index[1:])
        torch_value = float(y_rank[local]) if y_rank is not None else np.nan
        figures["element"] = np.array([torch_value, float(y_sync[local])])
    if task.get("save_output"):
        if y_rank is not None:
            save_array(folder / f"{tag}.output.npy", y_rank)
        save_array(folder / f"{tag}.sync.npy", y_sync)
    figures["seconds"] = np.array(time.perf_counter() - start)
    return figures
