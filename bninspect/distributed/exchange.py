"""The arrays ranks exchange, in the forms they travel in: a Moments as one float64 array
(what all_gather sends, C numbers per field), and a batch as .npy (bfloat16 as its uint16
bits, which .npy can hold). No torch here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bninspect.dtypes import float_format
from bninspect.numerics.kernels import M_FIELDS, Moments


def moments_to_array(m: Moments) -> np.ndarray:
    """(M_FIELDS, C) float64: a Moments as one array."""
    return np.stack(
        [np.asarray(getattr(m, f), dtype=np.float64) for f in Moments.__dataclass_fields__]
    )


def array_to_moments(a: np.ndarray) -> Moments:
    return Moments(*(np.array(a[k], dtype=np.float64) for k in range(M_FIELDS)))


def save_array(path: Path, array: np.ndarray) -> None:
    """np.save, bfloat16 as its uint16 bits."""
    if array.dtype.name == "bfloat16":
        array = array.view(np.uint16)
    np.save(path, array, allow_pickle=False)


def load_batch(path: Path, dtype: str) -> np.ndarray:
    """An array save_array wrote (or a user's .npy), memory-mapped read-only, as ``dtype``."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if dtype == "bfloat16":
        return array.view(float_format("bfloat16").numpy)
    return array
