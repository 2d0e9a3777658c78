"""The gradients the backward pass takes and gives, as files: dy (``--grad-output``, or drawn
from the seed) and, for ``check``, their dx, dweight and dbias. Vetted like the input: the shape
and dtype must match the input's, and each refusal names both."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bninspect.dtypes import float_format
from bninspect.errors import BnInspectError
from bninspect.input.npy_files import read_hashed, read_header
from bninspect.input.their_output import load_output, transposition_hint
from bninspect.results.grad import GradOutputInfo
from bninspect.text import shape as shape_text

# dy draws from its own stream of --seed, as the 'random' vectors do (input/parameters.py):
# numpy.random.default_rng([seed, GRAD_OUTPUT_STREAM]).standard_normal, in float32, then the dtype.
GRAD_OUTPUT_STREAM = 5


def generated_grad_output(shape: tuple[int, ...], seed: int, dtype: str) -> np.ndarray:
    """Standard normal dy of ``shape`` from stream GRAD_OUTPUT_STREAM of ``seed``, drawn in
    float32 (as the generated input is) and rounded to ``dtype``."""
    z = np.random.default_rng([seed, GRAD_OUTPUT_STREAM]).standard_normal(shape, dtype=np.float32)
    return z.astype(float_format(dtype).numpy)


def generated_info(seed: int, dtype: str) -> GradOutputInfo:
    return GradOutputInfo("generated", seed, GRAD_OUTPUT_STREAM, None, None, dtype)


def _first_bad(array: np.ndarray) -> tuple[int, ...]:
    flat = int(np.flatnonzero(~np.isfinite(array.reshape(-1)))[0])
    return tuple(int(i) for i in np.unravel_index(flat, array.shape))


def load_grad_output(
    path: Path, shape: tuple[int, ...], accepted: set[str], dtype: str
) -> tuple[np.ndarray, GradOutputInfo]:
    """dy from ``path``: the input's shape, stored in one of the ``accepted`` dtypes (the run's,
    and the input file's own where --dtype converts it; float32 stands for bfloat16, which .npy
    cannot name), converted to ``dtype`` as the input is; finite everywhere."""
    option = "--grad-output"
    header = read_header(path, option)
    if header.shape != tuple(shape):
        raise BnInspectError(
            f"{option} {path}: shape {shape_text(header.shape)} but the input is "
            f"{shape_text(shape)}; dy is the gradient of the output, which has the input's shape"
            f"{transposition_hint(header.shape, tuple(shape))}"
        )
    accepted = set(accepted) | ({"float32"} if "bfloat16" in accepted else set())
    if header.dtype.name not in accepted:
        raise BnInspectError(
            f"{option} {path}: dtype {header.dtype.name} but the input is {dtype}; save dy in "
            f"the input's dtype (numpy: dy.astype(numpy.{dtype.replace('bfloat16', 'float32')})"
            "), as autograd would pass it"
        )
    array, again, sha256 = read_hashed(path, option)  # one opening: the bytes hashed are these
    if again != header:
        raise BnInspectError(f"{option} {path}: changed while it was read; run again")
    with np.errstate(over="ignore"):
        dy = array.astype(float_format(dtype).numpy)
    if not np.all(np.isfinite(dy)):
        at = _first_bad(dy)
        value = float(np.asarray(dy[at], dtype=np.float64))
        stored = float(np.asarray(array[at], dtype=np.float64))
        if np.isnan(value):
            what = "NaN"
        elif np.isinf(stored):
            what = "an infinity"
        else:
            what = f"{stored:g}, beyond {dtype}'s range"
        raise BnInspectError(
            f"{option} {path}: {what} at index {list(at)}; a non-finite dy makes every dx of "
            "its channel non-finite and tests nothing; give a finite gradient"
        )
    notices = ()
    if header.dtype.name != dtype:
        notices = (f"{option} converted from {header.dtype.name} to {dtype}, as the input is",)
    return dy, GradOutputInfo("file", None, None, str(path), sha256, dtype, notices)


def load_their_gradient(
    path: Path, option: str, expected: tuple[int, ...], dtype: str, what: str, channel_axis=1
) -> tuple[np.ndarray, str, str]:
    """Their gradient as float64 (exact), with its sha256 and stored dtype; its shape must be
    ``expected``: the input's for dx (``what`` "dx", in the input's layout, channels on
    ``channel_axis``, given back with them on axis 1), (C,) for dweight and dbias."""
    if what == "dx":
        values, info = load_output(path, option, expected, dtype, channel_axis)
        return values, info.sha256, info.dtype
    header = read_header(path, option)
    if header.dtype.kind not in "fiu":
        raise BnInspectError(
            f"{option} {path}: dtype {header.dtype.name} is not numeric; save the gradient as "
            "floating point"
        )
    if header.shape != tuple(expected):
        squeezed = ""
        if int(np.prod(header.shape)) == expected[0]:
            squeezed = f"; it holds {expected[0]} values: reshape it to ({expected[0]},)"
        raise BnInspectError(
            f"{option} {path}: shape {shape_text(header.shape) or '()'} but {what} must be "
            f"({expected[0]},), one value per channel{squeezed}"
        )
    values, again, sha256 = read_hashed(path, option, np.dtype(np.float64))  # one opening
    if again != header:
        raise BnInspectError(f"{option} {path}: changed while it was read; run again")
    return values, sha256, header.dtype.name
