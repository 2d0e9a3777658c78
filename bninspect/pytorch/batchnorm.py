"""The implementation under inspection: PyTorch's own nn.BatchNorm1d/2d/3d module.

The only module that imports torch (about 1.4 s); others import it inside the function that
needs it, after every check on the input has passed, so errors and ``--help`` stay instant.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bninspect.dtypes import FORMATS
from bninspect.errors import torch_refusal
from bninspect.input.channel_groups import channel_groups
from bninspect.input.parameters import LayerParameters

TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def to_torch(x: np.ndarray) -> torch.Tensor:
    """A tensor sharing ``x``'s memory where possible (a read-only array is copied first, in
    its own layout), with ``x``'s strides: channels-last data stays channels last, as a user
    porting it would hand it to PyTorch (``torch.from_numpy(x).movedim(-1, 1)``); bfloat16
    goes through its uint16 bits, which torch.from_numpy understands."""
    source = x if x.flags.writeable else x.copy(order="K")
    if x.dtype.name == "bfloat16":
        return torch.from_numpy(source.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(source)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """The tensor's data as numpy, bfloat16 as ml_dtypes.bfloat16."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.uint16).numpy().view(FORMATS["bfloat16"].numpy)
    return t.numpy()


@dataclass(frozen=True)
class TorchStep:
    """The module's running buffers after one training step, shape (C,), in the input dtype."""

    running_mean: np.ndarray
    running_var: np.ndarray
    num_batches_tracked: int


@dataclass(frozen=True)
class TorchRun:
    """What the module produced. ``step_outputs``: every step's output, each the shape and dtype
    of its batch, as torch returned it (no copy), or none from run_by_channel_groups, which
    keeps none; ``output`` is the last. The running buffers after the last step, and after
    each step in ``steps`` (train mode). ``eval_output``: the last batch through the same
    module in eval mode after the steps, when asked for."""

    step_outputs: tuple[np.ndarray, ...]
    running_mean: np.ndarray
    running_var: np.ndarray
    num_batches_tracked: int
    version: str
    cpu_capability: str  # the vector kernel torch dispatched to: "AVX512", "AVX2", "DEFAULT"
    num_threads: int  # torch's intra-op threads, which split some reductions
    steps: tuple[TorchStep, ...] = ()
    eval_output: np.ndarray | None = None
    channel_groups: int = 1  # modules run over channel groups in turn (run_by_channel_groups)

    @property
    def output(self) -> np.ndarray:
        """The last step's output, shape (batch_size, C, ...)."""
        if not self.step_outputs:
            raise ValueError("PyTorch ran over channel groups: its output was not kept")
        return self.step_outputs[-1]


def in_layout_of(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """PyTorch's output ``y`` in the memory layout of its input ``x``: itself where PyTorch kept
    the layout (always for C-contiguous input, and for channels last in rank 4 and 5), else a
    copy (rank 3, or channels on another axis, come back C-contiguous)."""
    if x.flags.c_contiguous or y.strides == x.strides:
        return y
    out = np.empty_like(x)  # numpy keeps x's order of strides (order="K")
    np.copyto(out, y)
    return out


def _buffers(module: torch.nn.Module) -> TorchStep:
    return TorchStep(
        to_numpy(module.running_mean).copy(),
        to_numpy(module.running_var).copy(),
        int(module.num_batches_tracked),
    )


def _fresh_module(
    module_name: str,
    params: LayerParameters,
    channels: slice,
    eps: float,
    affine: bool,
    dtype: torch.dtype,
    train: bool,
    num_batches_tracked: int = 0,
) -> torch.nn.Module:
    """A new ``torch.nn.<module_name>`` for ``channels`` of the layer, holding their parameters
    and running buffers rounded to ``dtype``, its counter at ``num_batches_tracked``."""
    weight, bias = params.weight[channels], params.bias[channels]
    module_class = getattr(torch.nn, module_name)
    module = module_class(len(weight), eps=eps, affine=affine, dtype=dtype)

    def as_tensor(values: np.ndarray) -> torch.Tensor:  # float64 values, rounded to dtype
        return torch.from_numpy(np.ascontiguousarray(values)).to(dtype)

    with torch.no_grad():
        if affine:
            module.weight.copy_(as_tensor(weight))
            module.bias.copy_(as_tensor(bias))
        module.running_mean.copy_(as_tensor(params.running_mean[channels]))
        module.running_var.copy_(as_tensor(params.running_var[channels]))
        module.num_batches_tracked.fill_(num_batches_tracked)
    return module.train(train)


def _details() -> dict:
    return {
        "version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "num_threads": torch.get_num_threads(),
    }


def run_batchnorm(
    x: np.ndarray,
    batch_size: int,
    momenta: Sequence[float | None],
    module_name: str,
    params: LayerParameters,
    eps: float,
    affine: bool,
    train: bool,
    with_eval: bool = False,
    num_batches_tracked: int = 0,
) -> TorchRun:
    """Run one fresh ``torch.nn.<module_name>`` (e.g. "BatchNorm2d") in ``x``'s dtype over ``x``
    (N, C, ...) in consecutive batches of ``batch_size`` samples, one per entry of ``momenta``
    (the module's momentum at that step; None: cumulative average), with the given parameters
    and buffers and counter, in train or eval mode, without autograd. ``with_eval`` (train
    mode) runs the last batch once more in eval mode: a whole extra forward pass, so only when
    asked for. ``x`` may be a view with channels on another axis in memory (channels last):
    PyTorch gets it as it is, and each output comes back in ``x``'s layout."""
    dtype = TORCH_DTYPES[x.dtype.name]
    module = _fresh_module(
        module_name, params, slice(None), eps, affine, dtype, train, num_batches_tracked
    )
    outputs, steps, eval_output = [], [], None
    with torch.no_grad():
        try:
            for step, momentum in enumerate(momenta):
                rows = slice(step * batch_size, (step + 1) * batch_size)
                module.momentum = momentum
                batch = x[rows]
                outputs.append(in_layout_of(to_numpy(module(to_torch(batch))), batch))
                if train:
                    steps.append(_buffers(module))
            if train and with_eval:
                eval_output = in_layout_of(to_numpy(module.eval()(to_torch(batch))), batch)
        except (ValueError, RuntimeError) as exc:  # a refusal bninspect's checks did not foresee
            raise torch_refusal(exc) from None
    last = _buffers(module)
    return TorchRun(
        step_outputs=tuple(outputs),
        running_mean=last.running_mean,
        running_var=last.running_var,
        num_batches_tracked=last.num_batches_tracked,
        steps=tuple(steps),
        eval_output=eval_output,
        **_details(),
    )


def run_by_channel_groups(
    x: np.ndarray,
    momentum: float | None,
    module_name: str,
    params: LayerParameters,
    eps: float,
    affine: bool,
    train: bool,
    on_group: Callable[[int, int, np.ndarray, np.ndarray], None],
    group_bytes: int | None = None,
    num_batches_tracked: int = 0,
) -> TorchRun:
    """What run_batchnorm gives for one step over all of ``x`` (N, C, ...), where
    channel_groups.groups_reproduce_whole holds for it, holding one channel group's output at a
    time instead of the whole: a fresh module per group of about ``group_bytes`` of input,
    each group's input and output (both (N, c1 - c0, ...), contiguous) passed to
    ``on_group(c0, c1, input, output)`` and then dropped. The result has no step outputs; its
    buffers are the groups' joined."""
    dtype = TORCH_DTYPES[x.dtype.name]
    groups = channel_groups(x.shape, x.dtype.itemsize, group_bytes)
    running_mean, running_var = [], []
    with torch.no_grad():
        for c0, c1 in groups:
            module = _fresh_module(
                module_name, params, slice(c0, c1), eps, affine, dtype, train, num_batches_tracked
            )
            module.momentum = momentum
            group = to_torch(x[:, c0:c1]).contiguous()  # the kernel's contiguous path wants it
            try:
                output = module(group)
            except (ValueError, RuntimeError) as exc:
                raise torch_refusal(exc) from None
            on_group(c0, c1, to_numpy(group), to_numpy(output))
            del group, output  # before the next group's: one group at a time
            buffers = _buffers(module)
            running_mean.append(buffers.running_mean)
            running_var.append(buffers.running_var)
    last = TorchStep(
        np.concatenate(running_mean), np.concatenate(running_var), buffers.num_batches_tracked
    )
    return TorchRun(
        step_outputs=(),
        running_mean=last.running_mean,
        running_var=last.running_var,
        num_batches_tracked=last.num_batches_tracked,
        steps=(last,) if train else (),
        channel_groups=len(groups),
        **_details(),
    )
