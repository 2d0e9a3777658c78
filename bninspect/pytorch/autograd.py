"""PyTorch's autograd through its own nn.BatchNorm module: the backward pass under inspection.

Exists to run torch (imported at module level, as in batchnorm.py); everything else imports
it inside the function that needs it, after every check on the input has passed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bninspect.errors import torch_refusal
from bninspect.input.parameters import LayerParameters
from bninspect.pytorch.batchnorm import TORCH_DTYPES, _details, _fresh_module, to_numpy, to_torch


@dataclass(frozen=True)
class TorchGradients:
    """What autograd returned, in the input's dtype: dx the batch's shape, dweight and dbias
    (C,) (None without affine: the module has no parameters)."""

    grad_input: np.ndarray
    grad_weight: np.ndarray | None
    grad_bias: np.ndarray | None
    version: str
    cpu_capability: str
    num_threads: int


def run_backward(
    x: np.ndarray,
    dy: np.ndarray,
    module_name: str,
    params: LayerParameters,
    eps: float,
    affine: bool,
    train: bool,
) -> TorchGradients:
    """One forward pass of a fresh ``torch.nn.<module_name>`` over ``x`` in its dtype (train or
    eval mode, the given parameters and buffers), then ``y.backward(dy)``: the gradients with
    respect to x, weight and bias. ``dy`` must have x's shape and dtype."""
    dtype = TORCH_DTYPES[x.dtype.name]
    module = _fresh_module(module_name, params, slice(None), eps, affine, dtype, train)
    x_torch = to_torch(x).detach().clone().requires_grad_(True)
    try:
        y = module(x_torch)
        y.backward(to_torch(dy))
    except (ValueError, RuntimeError) as exc:  # a refusal bninspect's checks did not foresee
        raise torch_refusal(exc) from None
    return TorchGradients(
        grad_input=to_numpy(x_torch.grad).copy(),
        grad_weight=to_numpy(module.weight.grad).copy() if affine else None,
        grad_bias=to_numpy(module.bias.grad).copy() if affine else None,
        **_details(),
    )
