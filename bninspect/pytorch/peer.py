"""What PyTorch's module ran as beside the reference, or why it did not run: the line every
report prints under "PyTorch", and the reason a PyTorch value is missing."""

from __future__ import annotations

from bninspect.conventions.rules import PYTORCH
from bninspect.pytorch.inspection import Inspection
from bninspect.results.common import Undefined


def no_torch_value(inspection: Inspection) -> Undefined:
    """Why a PyTorch value is missing: why its module did not run."""
    return Undefined(inspection.no_peer)


def describe_peer(inspection: Inspection) -> str:
    """What PyTorch's module ran as, beside the reference, or why it did not run."""
    if inspection.torch_run is None:
        return f"none: {inspection.no_peer}"
    groups = inspection.torch_run.channel_groups
    text = _module_as_run(inspection)
    if groups > 1:
        text += (
            f"; run over {groups} groups of channels in turn, which gives one call's bits "
            "(PyTorch computes each channel alone) without holding the whole output"
        )
    return text


def _module_as_run(inspection: Inspection) -> str:
    settings, convention = inspection.settings, inspection.convention
    module = f"torch.nn.{settings.module}"
    if convention is PYTORCH:
        return f"{module} itself"
    if settings.mode == "eval":
        return f"{module} in eval mode with eps {settings.eps:g}, as {convention.name} uses it"
    momentum = settings.torch_momentum
    given = (
        "1/scale_factor at each step"
        if isinstance(momentum, Undefined)
        else f"{float(f'{momentum:.12g}'):g}"
    )
    return (
        f"{module} with eps {settings.eps:g} and momentum {given}, {convention.name}'s rule in "
        "PyTorch's terms: where it differs from the reference, the frameworks' rules differ"
    )
