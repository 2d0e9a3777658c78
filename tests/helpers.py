"""Build inspections straight from arrays, bypassing files and options."""

from __future__ import annotations

import dataclasses

import numpy as np

from bninspect.conventions.rules import PYTORCH, Convention
from bninspect.input.channel_groups import groups_reproduce_whole
from bninspect.input.parameters import LayerParameters
from bninspect.input.request import InspectRequest
from bninspect.input.tensor import InputTensor
from bninspect.pytorch.inspection import MODULE_FOR_RANK, Prepared, run_inspection
from bninspect.results.common import CUMULATIVE, InputInfo, Settings, Undefined


def inspect_array(
    x: np.ndarray,
    *,
    weight=None,
    bias=None,
    running_mean=None,
    running_var=None,
    eps: float = 1e-5,
    momentum: float | None = 0.1,
    mode: str = "train",
    no_peer: str | None = None,
    convention: Convention = PYTORCH,
    batch_size: int | None = None,
    compare_only: bool = False,
    num_batches_tracked: int = 0,
):
    """Run PyTorch and the reference on ``x`` with per-channel vectors given as sequences
    (rounded to x's dtype, as the module stores them), under ``convention``, in consecutive
    training steps of ``batch_size`` samples (default: one step over all of x); ``compare_only``
    as in inspection.prepare; ``num_batches_tracked`` PyTorch's counter before the pass."""
    channels = x.shape[1]

    def vector(values, default):
        values = np.full(channels, default) if values is None else np.asarray(values, np.float64)
        return values.astype(x.dtype).astype(np.float64)

    params = LayerParameters(
        vector(weight, 1.0), vector(bias, 0.0), vector(running_mean, 0.0), vector(running_var, 1.0)
    )
    info = InputInfo("file", x.shape, x.dtype.name, None, "test.npy", "0" * 64)
    batch_size = batch_size or x.shape[0]
    settings = Settings(
        MODULE_FOR_RANK[x.ndim],
        mode,
        eps,
        Undefined(CUMULATIVE) if momentum is None else momentum,
        True,
        "test",
        "test",
        "test",
        "test",
        convention=convention.name,
        training_steps=x.shape[0] // batch_size,
        batch_size=batch_size,
        torch_momentum=Undefined("not used by the tests"),
        num_batches_tracked=num_batches_tracked,
    )
    request = InspectRequest(
        None, 0, None, eps, momentum, True, mode, {}, convention=convention,
        num_batches_tracked=num_batches_tracked,
    )  # fmt: skip
    tensor = InputTensor(x, info)
    # As prepare decides: one pass (no batch size given), a shape and layout that allow it.
    by_groups = (
        compare_only
        and settings.training_steps == 1
        and batch_size == x.shape[0]
        and groups_reproduce_whole(x.shape, x.flags.c_contiguous)
    )
    prepared = Prepared(request, tensor, settings, params, None, convention, no_peer)
    return run_inspection(dataclasses.replace(prepared, by_groups=by_groups and no_peer is None))
