"""Run the model inspection on a network object and tensors, bypassing files and options."""

from __future__ import annotations

import dataclasses

import torch

from bninspect.model.inspect import inspect_network
from bninspect.model.network import ModuleNetwork
from bninspect.model.spec import GAP_THRESHOLD, ModelRequest
from bninspect.results.model import BatchSource

BASE = ModelRequest(
    model=None, kwargs={}, weights=None, program=None, inputs=(), input_source=None,
    shape=None, seed=0, layer=None, show_all=False, dump_dir=None, fold=False,
    fold_dtype=None, threshold=GAP_THRESHOLD,
)  # fmt: skip


def inspect(net, *batches: torch.Tensor, **options):
    """The ModelResult for ``net`` (a torch.nn.Module or a network) on the batches."""
    network = ModuleNetwork(net) if isinstance(net, torch.nn.Module) else net
    request = dataclasses.replace(BASE, **options)
    dtype = str(network.dtype()).removeprefix("torch.")
    source = BatchSource("generated", (), tuple(batches[0].shape), dtype, len(batches), 0)
    return inspect_network(request, network, list(batches), source)


def layer(result, name: str):
    return next(layer for layer in result.layers if layer.name == name)
