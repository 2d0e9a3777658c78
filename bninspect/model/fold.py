"""``--fold``: every conv or linear layer whose output only a batch norm reads, folded into it
(w' = w * gamma / sqrt(var + eps), b' = (b - mean) * gamma / sqrt(var + eps) + beta) in float64
and rounded to the dtype, run folded and unfolded on the layer's real input from the batch,
both against the float64 unfolded result in ULPs at each channel's output scale; beside
PyTorch's own fold (torch.nn.utils.fusion). Pairs are found in the module graph (torch.fx)
where the network traces, in the exported graph otherwise. One pair at a time."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils import fusion

from bninspect.model.network import BATCH_NORM, GRAPH_BATCH_NORMS, ModuleNetwork
from bninspect.model.probe import per_channel_max
from bninspect.numerics.agreement import ulp
from bninspect.pytorch.batchnorm import TORCH_DTYPES
from bninspect.results.common import Undefined
from bninspect.results.model import FoldChannel, FoldDtype, FoldReport

TRANSPOSED_MODULES = (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
CONV_MODULES = (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, *TRANSPOSED_MODULES)
GRAPH_PRODUCERS = {
    "aten.conv1d.default": "Conv1d",
    "aten.conv2d.default": "Conv2d",
    "aten.conv3d.default": "Conv3d",
    "aten.conv_transpose1d.default": "ConvTranspose1d",
    "aten.conv_transpose2d.input": "ConvTranspose2d",
    "aten.conv_transpose3d.input": "ConvTranspose3d",
    "aten.linear.default": "Linear",
}
# aten.conv_transposeNd(input, weight, bias, stride, padding, output_padding, groups, dilation)
GRAPH_TRANSPOSED_GROUPS = 6
WORST_CHANNELS = 3


def _along_channels(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.reshape(1, -1, *([1] * (ndim - 2)))


def _normalize64(z, rm, rv, gamma, beta, eps):
    """The batch norm in eval mode, float64."""
    n = z.dim()
    inv = 1.0 / torch.sqrt(rv + eps)
    return (z - _along_channels(rm, n)) * _along_channels(inv * gamma, n) + _along_channels(beta, n)


def fold_weight(weight: torch.Tensor, factor: torch.Tensor, transposed: bool, groups: int):
    """The producer's weight with each output channel's slice times ``factor`` (C_out,).
    A convolution's weight is (C_out, C_in / groups, k...): output channels on axis 0. A
    transposed one's is (C_in, C_out / groups, k...): output channel g * C_out / groups + j
    is column j of the rows of group g, so the factor goes on axis 1, group by group."""
    if not transposed:
        return weight * factor.reshape(-1, *([1] * (weight.dim() - 1)))
    in_channels, per_group, *kernel = weight.shape
    grouped = weight.reshape(groups, in_channels // groups, per_group, *kernel)
    scaled = grouped * factor.reshape(groups, 1, per_group, *([1] * len(kernel)))
    return scaled.reshape(weight.shape)


def _errors(y: torch.Tensor, reference: torch.Tensor, dtype: str) -> np.ndarray:
    """Per channel max |y - reference| in ULPs of ``dtype`` at the channel's max |reference|."""
    difference = per_channel_max((y.double() - reference).abs())
    scale = per_channel_max(reference.abs())
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(difference == 0, 0.0, difference / ulp(scale, dtype))  # NaN stays NaN


def measure_fold(
    producer: str,
    kind: str,
    run,  # run(x, weight, bias) -> the producer's output
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bn: tuple,  # (gamma, beta, running_mean, running_var, eps), gamma/beta possibly None
    dtypes: list[str],
    fuse,  # fuse(dtype) -> (weight, bias): PyTorch's fold in that dtype
    transposed: bool = False,
    groups: int = 1,
) -> FoldReport:
    gamma, beta, rm, rv, eps = bn
    channels = rm.shape[0]
    d64 = torch.float64
    g64 = torch.ones(channels, dtype=d64) if gamma is None else gamma.double()
    b64 = torch.zeros(channels, dtype=d64) if beta is None else beta.double()
    rm64, rv64 = rm.double(), rv.double()
    w64 = weight.double()
    bias64 = torch.zeros(channels, dtype=d64) if bias is None else bias.double()
    factor = g64 / torch.sqrt(rv64 + eps)
    folded_w64 = fold_weight(w64, factor, transposed, groups)
    folded_b64 = (bias64 - rm64) * factor + b64
    x64 = x.double()
    unfolded64 = _normalize64(run(x64, w64, bias64), rm64, rv64, g64, b64, eps)
    folded64 = run(x64, folded_w64, folded_b64)
    float64_error = float((folded64 - unfolded64).abs().max()) if folded64.numel() else 0.0
    del folded64, unfolded64
    fold_scale = factor.abs().numpy()
    reports = []
    for name in dtypes:
        d = TORCH_DTYPES[name]
        x_d = x.to(d)
        reference = _normalize64(run(x_d.double(), w64, bias64), rm64, rv64, g64, b64, eps)

        def cast(t, d=d):
            return None if t is None else t.to(d)

        unfolded = F.batch_norm(
            run(x_d, weight.to(d), cast(bias)),
            rm.to(d),
            rv.to(d),
            cast(gamma),
            cast(beta),
            False,
            0.0,
            eps,
        )
        unfolded_err = _errors(unfolded, reference, name)
        del unfolded
        folded_err = _errors(run(x_d, folded_w64.to(d), folded_b64.to(d)), reference, name)
        try:
            fused_w, fused_b = fuse(d)
            fused_top: float | Undefined = float(
                _errors(run(x_d, fused_w, fused_b), reference, name).max()
            )
        except RuntimeError as exc:  # PyTorch's fold of a grouped ConvTranspose, for one
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            why = (
                "it scales the weight's axis 1 by all C_out factors, which holds C_out / "
                "groups columns in a grouped ConvTranspose; "
                if transposed and groups > 1
                else ""
            )
            fused_top = Undefined(f"PyTorch's fold fails: {why}RuntimeError: {text}")
        del reference
        nan_first = np.where(np.isnan(folded_err), np.inf, folded_err)
        order = np.argsort(-nan_first, kind="stable")[:WORST_CHANNELS]
        worst = tuple(
            FoldChannel(
                int(c),
                float(folded_err[c]),
                float(unfolded_err[c]),
                float(rv64[c]),
                float(fold_scale[c]),
            )
            for c in order
        )
        top_unfolded, top_folded = float(unfolded_err.max()), float(folded_err.max())
        reports.append(
            FoldDtype(
                name,
                top_unfolded,
                top_folded,
                fused_top,
                costly=bool(top_folded > 2 and top_folded > 2 * top_unfolded),
                worst=worst,
            )
        )
    return FoldReport(producer, kind, float64_error, tuple(reports))


def _module_pairs(network: ModuleNetwork, x: torch.Tensor) -> tuple[dict[str, str], str]:
    """{producer module path: batch norm module path}, and how they were found."""
    try:
        traced = torch.fx.symbolic_trace(network.shell)
    except Exception:
        traced = None
    if traced is not None:
        modules = dict(traced.named_modules())
        pairs = {}
        for node in traced.graph.nodes:
            if node.op != "call_module" or not isinstance(modules.get(node.target), BATCH_NORM):
                continue
            source = node.args[0] if node.args else None
            if (
                getattr(source, "op", None) == "call_module"
                and isinstance(modules.get(source.target), (*CONV_MODULES, torch.nn.Linear))
                and len(source.users) == 1
            ):
                pairs[str(source.target)] = str(node.target)
        return pairs, "torch.fx"
    try:
        exported = torch.export.export(network.shell, (x,))
    except Exception:
        return {}, "nothing (neither torch.fx nor torch.export traces this network)"
    graph_pairs = _graph_pairs(exported.module().graph)
    return {_producer_name(conv): bn for conv, bn in graph_pairs}, "the exported graph"


def _producer_name(node) -> str:
    weight = node.args[1]
    return str(weight.target).rsplit(".", 1)[0] if weight.op == "get_attr" else node.name


def _graph_pairs(graph) -> list[tuple[object, str]]:
    """(producer node, batch norm name) for every producer node a batch norm alone reads."""
    pairs = []
    for node in graph.nodes:
        if node.op != "call_function" or str(node.target) not in GRAPH_BATCH_NORMS:
            continue
        source = node.args[0]
        if (
            getattr(source, "op", None) == "call_function"
            and str(source.target) in GRAPH_PRODUCERS
            and len(source.users) == 1
            and getattr(source.args[1], "op", None) == "get_attr"
        ):
            rm = node.args[3]
            name = (
                str(rm.target).rsplit(".", 1)[0]
                if getattr(rm, "op", None) == "get_attr"
                else node.name
            )
            pairs.append((source, name))
    return pairs


def _bn_tensors(bn) -> tuple:
    return (bn.weight, bn.bias, bn.running_mean, bn.running_var, float(bn.eps))


def fold_pairs(network, x: torch.Tensor, extra_dtype: str | None):
    """{(batch norm name, 1): FoldReport}, the batch norms left unpaired, how pairs were found."""
    dtypes = [str(network.dtype()).removeprefix("torch.")]
    if extra_dtype and extra_dtype not in dtypes:
        dtypes.append(extra_dtype)
    if network.kind == "module":
        return _fold_module(network, x, dtypes)
    return _fold_program(network, x, dtypes)


def _fold_module(network: ModuleNetwork, x, dtypes):
    pairs, how = _module_pairs(network, x)
    shell = network.shell
    reports: dict = {}
    hooks = []
    for producer_name, bn_name in pairs.items():
        producer, bn = shell.get_submodule(producer_name), shell.get_submodule(bn_name)
        if bn.running_mean is None:
            continue

        def hook(module, args, _output, producer_name=producer_name, bn=bn, bn_name=bn_name):
            if (bn_name, 1) in reports:
                return None
            is_linear = isinstance(module, torch.nn.Linear)
            transposed = isinstance(module, TRANSPOSED_MODULES)
            if transposed:
                # the output_padding this call used (forward's output_size may have set it)
                spatial = module.weight.dim() - 2
                padding = module._output_padding(
                    args[0], list(_output.shape[2:]), module.stride, module.padding,
                    module.kernel_size, spatial, module.dilation,
                )  # fmt: skip
                conv_transpose = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[
                    spatial - 1
                ]

            def run(inp, w, b):
                if is_linear:
                    return F.linear(inp, w, b)
                if transposed:
                    return conv_transpose(
                        inp, w, b, module.stride, module.padding, padding, module.groups,
                        module.dilation,
                    )  # fmt: skip
                return module._conv_forward(inp, w, b)

            def fuse(d):
                # copies of the two modules (the shell's hooks stay with the shell)
                keep = {id(network): network}
                pair = (
                    copy.deepcopy(module, dict(keep)).to(d),
                    copy.deepcopy(bn, dict(keep)).to(d),
                )
                fused = (
                    fusion.fuse_linear_bn_eval(*pair)
                    if is_linear
                    else fusion.fuse_conv_bn_eval(*pair, transpose=transposed)
                )
                return fused.weight, fused.bias

            reports[(bn_name, 1)] = measure_fold(
                producer_name,
                type(module).__name__,
                run,
                args[0],
                module.weight,
                module.bias,
                _bn_tensors(bn),
                dtypes,
                fuse,
                transposed=transposed,
                groups=1 if is_linear else module.groups,
            )
            return None

        hooks.append(producer.register_forward_hook(hook))
    try:
        network.forward(x, lambda site, x_in, y: None)
    finally:
        for h in hooks:
            h.remove()
    names = [n for n in network.names.values()]
    unpaired = tuple(n for n in names if (n, 1) not in reports)
    return reports, unpaired, how


def _fold_program(network, x, dtypes):
    gm = network.graph_module
    pairs = dict(_graph_pairs(gm.graph))
    bn_of = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and str(node.target) in GRAPH_BATCH_NORMS:
            bn_of[node.args[0]] = node
    reports: dict = {}

    def tensor(arg):
        return _attr(gm, arg)

    class Probe(torch.fx.Interpreter):
        def run_node(self, n):
            result = super().run_node(n)
            if n in pairs:
                bn_node = bn_of[n]
                args = self.fetch_args_kwargs_from_env(n)[0]
                inp, rest = args[0], args[3:]
                target = n.target

                def run(i, w, b, target=target, rest=rest):
                    return target(i, w, b, *rest)

                positions = GRAPH_BATCH_NORMS[str(bn_node.target)]
                gamma, beta, rm, rv = (tensor(a) for a in bn_node.args[1:5])
                eps = float(bn_node.args[positions[2]])
                kind = GRAPH_PRODUCERS[str(target)]
                weight, bias = args[1], args[2]
                transposed = kind.startswith("ConvTranspose")
                groups = (
                    int(args[GRAPH_TRANSPOSED_GROUPS])
                    if transposed and len(args) > GRAPH_TRANSPOSED_GROUPS
                    else 1
                )

                def fuse(
                    d,
                    kind=kind,
                    weight=weight,
                    bias=bias,
                    gamma=gamma,
                    beta=beta,
                    rm=rm,
                    rv=rv,
                    eps=eps,
                    transposed=transposed,
                ):
                    def cast(t):
                        return None if t is None else t.to(d)

                    if kind == "Linear":
                        return fusion.fuse_linear_bn_weights(
                            cast(weight),
                            cast(bias),
                            cast(rm),
                            cast(rv),
                            eps,
                            cast(gamma),
                            cast(beta),
                        )
                    return fusion.fuse_conv_bn_weights(
                        cast(weight), cast(bias), cast(rm), cast(rv), eps, cast(gamma),
                        cast(beta), transpose=transposed,
                    )  # fmt: skip

                reports[(pairs[n], 1)] = measure_fold(
                    _producer_name(n),
                    kind,
                    run,
                    inp,
                    weight,
                    bias,
                    (gamma, beta, rm, rv, eps),
                    dtypes,
                    fuse,
                    transposed=transposed,
                    groups=groups,
                )
            return result

    with torch.no_grad():
        Probe(gm, garbage_collect_values=True).run(x)
    names = [network.layer_name(n) for n in network.bn_nodes]
    unpaired = tuple(n for n in names if (n, 1) not in reports)
    return reports, unpaired, "the exported graph"


def _attr(gm, node):
    if node is None:
        return None
    if getattr(node, "op", None) != "get_attr":
        return None
    target = str(node.target)
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
