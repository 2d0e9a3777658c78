"""The lines under every inspecting command's verdict that say what was inspected: the input,
the layer as configured, and what PyTorch ran as. Formats; never computes."""

from __future__ import annotations

from rich.text import Text

from bninspect.render.cells import labelled
from bninspect.results.common import InputInfo, Number, Settings, Undefined
from bninspect.text import shape as shape_text

DEFAULT_BUFFERS = ("zeros", "ones")


def _momentum_text(momentum: Number) -> str:
    return "none (cumulative average)" if isinstance(momentum, Undefined) else f"{momentum:g}"


def source_text(info: InputInfo) -> str:
    """Where the tensor came from: the generator and its seed, or the file."""
    if info.source == "generated":
        spread = (
            ""
            if (info.offset, info.scale) == (0.0, 1.0)
            else f" * {info.scale:g} + {info.offset:g}"
        )
        return f"generated standard normal{spread}, seed {info.seed}"
    if isinstance(info.sha256, Undefined):
        return f"{info.path} (memory-mapped; sha256 not computed)"
    return f"{info.path} (sha256 {info.sha256[:12]}...)"


def layer_text(settings: Settings) -> str:
    """The layer as configured, with the options that differ from their defaults."""
    parts = [
        f"{settings.module}, {settings.mode} mode",
        f"eps {settings.eps:g}",
        f"momentum {_momentum_text(settings.momentum)}",
    ]
    if settings.num_batches_tracked:  # the counter a checkpoint resumes from
        parts.append(f"num_batches_tracked {settings.num_batches_tracked}")
    if not settings.affine:
        parts.append("no affine")
    else:
        parts += [f"weight {settings.weight_given}", f"bias {settings.bias_given}"]
    # The buffers' starting values matter to eval mode's output and to the update; the
    # defaults (zeros, ones) are said only in eval mode, where they normalize.
    given = (settings.running_mean_given, settings.running_var_given)
    if settings.mode == "eval" or given != DEFAULT_BUFFERS:
        parts += [
            f"running_mean {settings.running_mean_given}",
            f"running_var {settings.running_var_given}",
        ]
    return ", ".join(parts)


def uses_text(settings: Settings) -> str:
    if settings.mode == "train":
        return "the batch mean and biased variance (divide by N) normalize"
    return "running_mean and running_var as given normalize (eval mode)"


def context(result, width: int) -> Text:
    """What was inspected, in a few lines that wrap under their labels at ``width``."""
    info, settings = result.input, result.settings
    where = "" if info.channel_axis == 1 else f", channels on axis {info.channel_axis}"
    lines = [
        labelled(
            "input", f"{shape_text(info.shape)} {info.dtype}{where}: {source_text(info)}", width
        )
    ]
    if settings.training_steps > 1:
        last = (settings.training_steps - 1) * settings.batch_size
        lines.append(
            labelled(
                "steps",
                f"{settings.training_steps} training steps of {settings.batch_size} samples; "
                f"the batch shown is the last (samples {last} to "
                f"{last + settings.batch_size - 1})",
                width,
            )
        )
    lines.append(labelled("layer", f"{layer_text(settings)}: {uses_text(settings)}", width))
    if settings.convention != "pytorch":
        lines.append(
            labelled("rules", f"{settings.convention} (see 'bninspect conventions')", width)
        )
    if isinstance(result.torch_version, Undefined):
        lines.append(labelled("PyTorch", f"not run: {result.torch_version.reason}", width))
    elif settings.convention != "pytorch":
        lines.append(
            labelled("PyTorch", f"{result.torch_version} beside it: {result.torch_module}", width)
        )
    else:
        lines.append(
            labelled("PyTorch", f"{result.torch_version}, beside a float64 reference", width)
        )
    notices = (*info.notices, *settings.notices)
    lines += [labelled("notice", notice, width) for notice in notices]
    return Text("\n".join(lines))
