"""What the user asked for, parsed: the options every inspecting command shares, as plain data.

Light on purpose (no numpy): the CLI builds it before anything heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bninspect.conventions.rules import PYTORCH, Convention
from bninspect.input.parsing import VectorSpec

VECTOR_OPTIONS = ("--weight", "--bias", "--running-mean", "--running-var")


@dataclass(frozen=True)
class InspectRequest:
    """The parsed input and layer options shared by every command. ``vectors`` maps each of
    VECTOR_OPTIONS to its spec; ``shape`` is None when ``input_path`` is given. ``eps`` and
    ``momentum`` are in ``convention``'s meaning (momentum None: PyTorch's cumulative average).
    ``steps``/``batch_size`` None: one step over the whole tensor, or as the other implies.
    ``shape`` and every index are in the user's layout, channels on ``channel_axis`` (the core
    moves them to axis 1: layout.py). ``given`` names the options given on the command line,
    for the notices of those that change nothing (option_effects.py); ``notices`` holds
    them."""

    shape: tuple[int, ...] | None
    seed: int
    input_path: Path | None
    eps: float
    momentum: float | None
    affine: bool
    mode: str  # "train" or "eval"
    vectors: dict[str, VectorSpec]
    save_input: Path | None = None
    save_output: Path | None = None
    force: bool = False
    dtype: str | None = None  # None: float32 for generated input, the file's own for loaded
    offset: float = 0.0  # generated input only: offset + scale * standard normal
    scale: float = 1.0
    stats_only: bool = False  # stream the statistics; do not run PyTorch
    convention: Convention = PYTORCH
    steps: int | None = None
    batch_size: int | None = None
    num_batches_tracked: int = 0  # PyTorch's counter before the pass
    channel_axis: int = 1  # as given: negative counts from the end
    given: frozenset[str] = frozenset()
    notices: tuple[str, ...] = ()
