"""The network under inspection, run once per call of ``forward`` with a callback at every batch
norm: a ``torch.nn.Module`` (forward hooks on a copy of its module tree that shares its tensors)
or a torch.export program (its graph interpreted node by node, batch-norm nodes intercepted).

Every run here is in eval mode (dropout off) without autograd, and writes no buffer: the
callback sees each batch norm's input and its eval-mode output and may return another output
(the train-mode one) for the rest of the network to use. The user's module and its buffers are
never changed: the copy's modules are its own, its tensors are only read.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from bninspect.errors import BnInspectError
from bninspect.pytorch.batchnorm import to_numpy

BATCH_NORM = torch.nn.modules.batchnorm._BatchNorm
OTHER_NORMS = tuple(
    kind
    for kind in (
        torch.nn.GroupNorm,
        torch.nn.LayerNorm,
        torch.nn.modules.instancenorm._InstanceNorm,
        torch.nn.LocalResponseNorm,
        getattr(torch.nn, "RMSNorm", None),
    )
    if kind is not None
)
MODULE_FOR_RANK = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}
# The batch-norm operators of an exported graph, and where their arguments sit:
# aten.batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)
# aten._native_batch_norm_legit_no_training(input, weight, bias, mean, var, momentum, eps)
GRAPH_BATCH_NORMS = {
    "aten.batch_norm.default": (5, 6, 7, False),
    "aten._native_batch_norm_legit_no_training.default": (None, 5, 6, True),
}


@dataclass
class Site:
    """One batch-norm call as the network makes it: its settings and tensors (read only)."""

    name: str
    call: int  # 1 for the module's first call in a forward, 2 for its second, ...
    module: str  # "BatchNorm2d", ...
    eps: float
    momentum: float | None
    affine: bool
    track_running_stats: bool
    mode: str  # as given: "train" or "eval"
    num_batches_tracked: int | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    running_mean: torch.Tensor | None
    running_var: torch.Tensor | None

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.call)

    def vector(self, which: str, channels: int) -> np.ndarray | None:
        """weight, bias, running_mean or running_var as float64 (C,); weight 1 and bias 0
        without affine, None for absent running buffers."""
        tensor = getattr(self, which)
        if tensor is None:
            if which in ("weight", "bias"):
                return np.full(channels, 1.0 if which == "weight" else 0.0)
            return None
        return to_numpy(
            tensor.detach().float() if tensor.dtype == torch.bfloat16 else tensor
        ).astype(np.float64)

    def train_output(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's train-mode output on ``x``: normalized with the batch's statistics,
        updating no buffer (none is passed)."""
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)

    def train_update(self, x: torch.Tensor):
        """(running_mean, running_var, num_batches_tracked) after one train-mode step on ``x``,
        as the module's own forward would leave them (on copies: nothing here is written), or
        None where the layer tracks no buffers or ``x`` has one value per channel."""
        if self.running_mean is None or x.numel() // x.shape[1] < 2:
            return None
        mean, var = self.running_mean.clone(), self.running_var.clone()
        batches = (self.num_batches_tracked or 0) + 1
        # momentum None: PyTorch's cumulative average weighs the step 1 / num_batches_tracked
        factor = 1.0 / batches if self.momentum is None else self.momentum
        F.batch_norm(x, mean, var, self.weight, self.bias, True, factor, self.eps)
        return mean, var, batches

    def eval_output(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's eval-mode output on ``x``: its running buffers, or the batch's statistics
        where it tracks none."""
        if self.running_mean is None:
            return self.train_output(x)
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )


# Told the site, its input and its eval-mode output; returns the output the network goes on
# with (None: the eval-mode one).
OnBatchNorm = Callable[[Site, torch.Tensor, torch.Tensor], torch.Tensor | None]


def _num_batches(tensor) -> int | None:
    return None if tensor is None else int(tensor)


class ModuleNetwork:
    """A ``torch.nn.Module``: runs on a copy of its module tree in eval mode whose parameters
    and buffers are the user's own tensors (shared, never written)."""

    kind = "module"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.mode = "train" if model.training else "eval"
        memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
        self.shell = copy.deepcopy(model, memo).eval()
        self.modes = {
            name: ("train" if m.training else "eval") for name, m in model.named_modules()
        }
        self._local = threading.local()
        self.names: dict[int, str] = {}
        for name, module in self.shell.named_modules():
            if isinstance(module, BATCH_NORM) and id(module) not in self.names:
                self.names[id(module)] = name
                module.register_forward_hook(self._hook)
            # Where a refusal happened: the last module entered.
            module.register_forward_pre_hook(self._entered(name))
        self.other_norms = tuple(
            f"{name} ({type(m).__name__})"
            for name, m in model.named_modules()
            if isinstance(m, OTHER_NORMS)
        )

    def _entered(self, name: str):
        def hook(_module, _args):
            self._local.current = name

        return hook

    @property
    def current(self) -> str | None:
        """The module last entered on this thread (where a refusal happened)."""
        return getattr(self._local, "current", None) or None

    @property
    def batch_norm_count(self) -> int:
        return len(self.names)

    def dtype(self) -> torch.dtype:
        for tensor in (*self.model.parameters(), *self.model.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.float32

    def _hook(self, module, args, output):
        state = self._local
        name = self.names[id(module)]
        state.calls[name] = state.calls.get(name, 0) + 1
        momentum = module.momentum
        site = Site(
            name=name,
            call=state.calls[name],
            module=type(module).__name__,
            eps=float(module.eps),
            momentum=None if momentum is None else float(momentum),
            affine=bool(module.affine),
            track_running_stats=bool(module.track_running_stats),
            mode=self.modes.get(name, "eval"),
            num_batches_tracked=_num_batches(getattr(module, "num_batches_tracked", None)),
            weight=module.weight,
            bias=module.bias,
            running_mean=module.running_mean,
            running_var=module.running_var,
        )
        return state.on_bn(site, args[0], output)

    def forward(self, x: torch.Tensor, on_bn: OnBatchNorm):
        self._local.calls, self._local.on_bn, self._local.current = {}, on_bn, None
        with torch.no_grad():
            return self.shell(x)


class _Interpreter(torch.fx.Interpreter):
    def __init__(self, network: ProgramNetwork, on_bn: OnBatchNorm) -> None:
        super().__init__(network.graph_module, garbage_collect_values=True)
        self.network, self.on_bn, self.calls = network, on_bn, {}

    def run_node(self, n):
        self.node = self.network._local.current = n
        return super().run_node(n)

    def call_function(self, target, args, kwargs):
        positions = GRAPH_BATCH_NORMS.get(str(target))
        if positions is None:
            return super().call_function(target, args, kwargs)
        site = self.network.site_of(self.node, args, positions, self.calls)
        x = args[0]
        y = site.eval_output(x)
        replaced = self.on_bn(site, x, y)
        out = y if replaced is None else replaced
        if positions[3]:  # an operator returning (output, saved mean, saved inverse std)
            return (out, x.new_empty(0), x.new_empty(0))
        return out


class ProgramNetwork:
    """A torch.export program: its graph interpreted node by node; batch-norm operators are
    computed here (eval or train mode as asked), never the program's own way, so its mode at
    export does not matter and no buffer is written."""

    kind = "program"

    def __init__(self, program) -> None:
        self.program = program
        self.graph_module = program.module()
        self._local = threading.local()
        self.mode = "eval"
        self.bn_nodes = [
            n
            for n in self.graph_module.graph.nodes
            if n.op == "call_function" and str(n.target) in GRAPH_BATCH_NORMS
        ]
        self.other_norms = tuple(
            f"{n.name} ({str(n.target).split('.')[1]})"
            for n in self.graph_module.graph.nodes
            if n.op == "call_function"
            and any(k in str(n.target) for k in ("group_norm", "layer_norm", "instance_norm"))
        )
        modes = [
            bool(n.args[5]) if str(n.target) == "aten.batch_norm.default" else False
            for n in self.bn_nodes
        ]
        self.mode = "train" if any(modes) else "eval"

    @property
    def batch_norm_count(self) -> int:
        return len(self.bn_nodes)

    def dtype(self) -> torch.dtype:
        for tensor in self.program.state_dict.values():
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                return tensor.dtype
        return torch.float32

    def layer_name(self, node) -> str:
        """The batch norm's module path, from the attributes its weight or buffers come from."""
        for position in (3, 1, 2):
            arg = node.args[position] if len(node.args) > position else None
            if getattr(arg, "op", None) == "get_attr":
                return str(arg.target).rsplit(".", 1)[0]
        return node.name

    def site_of(self, node, args, positions, calls) -> Site:
        name = self.layer_name(node)
        calls[name] = calls.get(name, 0) + 1
        training_at, momentum_at, eps_at, _ = positions
        counter = None
        try:
            counter = self.graph_module.get_buffer(f"{name}.num_batches_tracked")
        except AttributeError:
            pass
        momentum = args[momentum_at]
        return Site(
            name=name,
            call=calls[name],
            module=MODULE_FOR_RANK.get(args[0].dim(), "BatchNorm"),
            eps=float(args[eps_at]),
            momentum=None if momentum is None else float(momentum),
            affine=args[1] is not None,
            track_running_stats=args[3] is not None,
            mode="train" if training_at is not None and args[training_at] else "eval",
            num_batches_tracked=_num_batches(counter),
            weight=args[1],
            bias=args[2],
            running_mean=args[3],
            running_var=args[4],
        )

    @property
    def current(self) -> str | None:
        node = getattr(self._local, "current", None)
        return None if node is None else f"graph node {node.name}"

    def forward(self, x: torch.Tensor, on_bn: OnBatchNorm):
        self._local.current = None
        with torch.no_grad():
            return _Interpreter(self, on_bn).run(x)


def network_output(network, x: torch.Tensor) -> torch.Tensor:
    """The first tensor of whatever the network returns (a tensor, a tuple, a dict...)."""
    out = network.forward(x, lambda site, x, y: None)
    return first_tensor(out)


def first_tensor(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for item in out:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


def refused(exc: Exception, where: str | None, shape: tuple[int, ...]) -> BnInspectError:
    """PyTorch's refusal of the batch, with the layer it happened in where known."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    at = f" in {where}" if where else ""
    shape_text = "x".join(map(str, shape))
    return BnInspectError(
        f"the model rejected the {shape_text} batch{at}: {type(exc).__name__}: {text}; give "
        "a batch of the shape it takes (--shape or --input)"
    )
