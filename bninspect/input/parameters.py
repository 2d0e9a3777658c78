"""The layer's per-channel vectors (weight, bias, running mean and variance), resolved from their
options into the values PyTorch's module will hold."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bninspect.dtypes import float_format
from bninspect.errors import OptionError
from bninspect.input.npy_files import opened_npy, read_data
from bninspect.input.parsing import VectorSpec

# Each vector draws from its own stream of the seed, so `--weight random` gives the same weights
# whatever the other options are.
_RANDOM_STREAM = {"--weight": 1, "--bias": 2, "--running-mean": 3, "--running-var": 4}


@dataclass(frozen=True)
class LayerParameters:
    """Per-channel values exactly as the module holds them (rounded to the run's dtype), as
    float64 arrays of shape (C,). Without affine, weight is 1 and bias 0, which is what the
    module's missing parameters mean."""

    weight: np.ndarray
    bias: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray


def resolve_vector(
    option: str, spec: VectorSpec, channels: int, dtype: str, seed: int
) -> np.ndarray:
    """The C values ``spec`` asks for, rounded to ``dtype`` as PyTorch will store them."""
    if spec.kind == "ones":
        values = np.ones(channels)
    elif spec.kind == "zeros":
        values = np.zeros(channels)
    elif spec.kind == "random":  # uniform in [0, 1), as PyTorch < 1.2 initialised weights
        values = np.random.default_rng([seed, _RANDOM_STREAM[option]]).random(channels)
    elif spec.kind == "list":
        values = np.array(spec.values, dtype=np.float64)
    else:
        values = _vector_from_file(option, spec, channels)
    if values.ndim != 1:
        raise OptionError(
            f"{option} '{spec.text}': has shape {values.shape}; save a 1-D array of {channels} "
            "values, one per channel"
        )
    if values.size != channels:
        count = f"{values.size} value" + ("s" if values.size != 1 else "")
        raise OptionError(
            f"{option} '{spec.text}': gives {count} but the input has {channels} channels; give "
            f"exactly {channels}"
        )
    if option == "--running-var" and np.any(values < 0):
        raise OptionError(
            f"{option} '{spec.text}': has a negative value; a variance cannot be negative"
        )
    form = float_format(dtype)
    with np.errstate(over="ignore"):  # checked just below
        stored = values.astype(form.numpy).astype(np.float64)
    if not np.all(np.isfinite(stored)):
        entry = int(np.argmin(np.isfinite(stored)))
        largest = float(np.finfo(np.float32 if dtype == "bfloat16" else form.numpy).max)
        raise OptionError(
            f"{option} '{spec.text}': entry {entry} ({values[entry]:g}) does not fit {dtype}, "
            f"whose largest value is {largest:.4g}; give a smaller value"
        )
    return stored


def _vector_from_file(option: str, spec: VectorSpec, channels: int) -> np.ndarray:
    """The values of a vector's .npy file as float64, its shape and kind checked from the
    header before anything is read (a huge file is refused, not loaded)."""
    path = Path(spec.path)
    with opened_npy(path, option) as (file, header):
        if header.dtype.kind not in "iufb":
            raise OptionError(
                f"{option} {spec.path}: holds {header.dtype} values; save real "
                "numbers (float or integer)"
            )
        if len(header.shape) > 1:
            raise OptionError(
                f"{option} '{spec.text}': has shape {header.shape}; save a 1-D array "
                f"of {channels} values, one per channel"
            )
        if header.count != channels:
            count = f"{header.count} value" + ("s" if header.count != 1 else "")
            raise OptionError(
                f"{option} '{spec.text}': gives {count} but the input has "
                f"{channels} channels; give exactly {channels}"
            )
        values = read_data(file, header, dtype=np.dtype(np.float64)).reshape(-1)
    if not np.all(np.isfinite(values)):
        raise OptionError(
            f"{option} {spec.path}: contains NaN or Inf; values must be finite"
        )
    return values


def resolve_parameters(
    specs: dict[str, VectorSpec], channels: int, dtype: str, seed: int, affine: bool
) -> LayerParameters:
    """Resolve the four vector options (keyed by option name) for ``channels`` channels."""

    def vector(option: str) -> np.ndarray:
        return resolve_vector(option, specs[option], channels, dtype, seed)

    if affine:
        weight, bias = vector("--weight"), vector("--bias")
    else:
        weight, bias = np.ones(channels), np.zeros(channels)
    return LayerParameters(weight, bias, vector("--running-mean"), vector("--running-var"))
