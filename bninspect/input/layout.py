"""Where the channels are: the user's layout (channels on ``--channel-axis``) against the core's
(channels on axis 1). Pure functions on shapes and indices; arrays are only ever viewed.

The core sees every tensor as (N, C, *spatial), ``numpy.moveaxis(x, axis, 1)`` of the user's
array: a view, no copy. The other axes keep their order, so N is the first axis that is not the
channel axis, and a channel's values come in the same order in both layouts. Shapes, indices
and files go back to the user's layout at the output edge (``to_user_index``,
``user_indices``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from bninspect.errors import OptionError

# The letters of the non-channel axes of each rank, for messages: (N,C), (N,C,L), ...
_OTHER_AXES = {2: "N", 3: "NL", 4: "NHW", 5: "NDHW"}


def shape_forms(channel_axis: int = 1) -> str:
    """The shapes batch norm takes with channels on ``channel_axis``, as messages name them:
    "(N,C), (N,C,L), (N,C,H,W) or (N,C,D,H,W)" for axis 1, "(N,C), (N,L,C), ..." for -1."""
    forms = []
    for rank, others in _OTHER_AXES.items():
        if not -rank <= channel_axis < rank:
            continue
        letters = list(others)
        letters.insert(channel_axis % rank, "C")
        forms.append("(" + ",".join(letters) + ")")
    if not forms:
        return "rank 2 to 5"
    return forms[0] if len(forms) == 1 else ", ".join(forms[:-1]) + " or " + forms[-1]


def resolve_axis(channel_axis: int, rank: int, what: str) -> int:
    """``channel_axis`` for an array of ``rank`` as a non-negative axis; a one-line error naming
    ``what`` (the input's description) when the array has no such axis."""
    if not -rank <= channel_axis < rank:
        raise OptionError(
            f"--channel-axis {channel_axis}: {what} has rank {rank}, so its axes are 0 to "
            f"{rank - 1} (or -{rank} to -1); give one of them (1 for (N,C,...), -1 for "
            "channels last)"
        )
    return channel_axis % rank


def batch_axis(channel_axis: int) -> int:
    """The user's axis that holds the samples: the first axis that is not the channel axis."""
    return 1 if channel_axis == 0 else 0


def to_core_shape(shape: tuple[int, ...], channel_axis: int) -> tuple[int, ...]:
    """The user's shape with its channel axis moved to 1, as the core sees it."""
    sizes = list(shape)
    channels = sizes.pop(channel_axis)
    sizes.insert(1, channels)
    return tuple(sizes)


def to_user_shape(shape: tuple[int, ...], channel_axis: int) -> tuple[int, ...]:
    """A core (N, C, ...) shape in the user's layout."""
    return to_user_index(shape, channel_axis)


def to_core_index(index: tuple[int, ...], channel_axis: int) -> tuple[int, ...]:
    """An index in the user's layout as the core's (N, C, ...) index."""
    return to_core_shape(index, channel_axis)


def to_user_index(index: tuple[int, ...], channel_axis: int) -> tuple[int, ...]:
    """A core (N, C, ...) index in the user's layout (the channel moved to ``channel_axis``)."""
    values = list(index)
    channel = values.pop(1)
    values.insert(channel_axis, channel)
    return tuple(values)


def user_indices(result: Any, channel_axis: int, rank: int) -> Any:
    """``result`` (a result dataclass) with every element index in the user's layout: each field
    named ``index`` or ending in ``_index`` that holds one integer per axis, at any depth. The
    result objects are built in the core's layout; this is the one place they leave it."""
    if channel_axis == 1:
        return result
    return _mapped(result, channel_axis, rank)


def _is_index(value: Any, rank: int) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == rank
        and all(isinstance(i, int) and not isinstance(i, bool) for i in value)
    )


def _mapped(value: Any, channel_axis: int, rank: int) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for field in dataclasses.fields(value):
            old = getattr(value, field.name)
            is_index = field.name == "index" or field.name.endswith("_index")
            if is_index and _is_index(old, rank):
                new = to_user_index(old, channel_axis)
            else:
                new = _mapped(old, channel_axis, rank)
            if new is not old:
                changes[field.name] = new
        return dataclasses.replace(value, **changes) if changes else value
    if isinstance(value, tuple):
        items = tuple(_mapped(v, channel_axis, rank) for v in value)
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if isinstance(value, list):
        return [_mapped(v, channel_axis, rank) for v in value]
    return value
