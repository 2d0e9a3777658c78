"""The floating dtypes bninspect runs in, by name: their numpy dtype, IEEE parameters and the
tolerances tests and comparisons use. bfloat16 comes from ml_dtypes, as numpy has none; it is
imported only when a bfloat16 array is made, as it costs about 1 s, as much as half of torch."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

# The dtypes PyTorch's batch norm runs in here; FORMATS describes each. Importing this module
# loads no numpy, so the CLI can list the names before anything heavy is imported.
DTYPE_NAMES = ("float32", "float64", "float16", "bfloat16")


@dataclass(frozen=True)
class FloatFormat:
    """One floating-point format: ``mantissa_bits`` stored fraction bits, ``min_exponent`` the
    exponent of the smallest normal number, ``kernel_code`` its code in the C kernels
    (bninspect.numerics._kernels)."""

    name: str
    mantissa_bits: int
    min_exponent: int
    kernel_code: int
    rtol: (
        float  # torch.testing.assert_close's defaults for the dtype (torch/testing/_comparison.py)
    )
    atol: float
    # the type PyTorch's CPU batch norm sums this dtype's values in (its batch_norm_kernel.cpp:
    # float32 in double, float16/bfloat16 in float32; see conventions.md)
    torch_accumulation: str

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype (for bfloat16, ml_dtypes', imported on first use)."""
        return _numpy_dtype(self.name)

    @property
    def eps(self) -> float:
        """The spacing of numbers just above 1.0: 2**-mantissa_bits."""
        return 2.0**-self.mantissa_bits


FORMATS = {
    f.name: f
    for f in (
        FloatFormat("float32", 23, -126, 0, 1.3e-6, 1e-5, "float64"),
        FloatFormat("float64", 52, -1022, 1, 1e-7, 1e-7, "float64"),
        FloatFormat("float16", 10, -14, 2, 1e-3, 1e-5, "float32"),
        FloatFormat("bfloat16", 7, -126, 3, 1.6e-2, 1e-5, "float32"),
    )
}
assert tuple(FORMATS) == DTYPE_NAMES


@functools.cache
def _numpy_dtype(name: str) -> np.dtype:
    import numpy as np

    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def is_bfloat16(dtype: np.dtype) -> bool:
    """Whether ``dtype`` is ml_dtypes' bfloat16, asked without importing ml_dtypes."""
    return dtype.name == "bfloat16"


def format_of(dtype: np.dtype) -> FloatFormat:
    """The format of a numpy dtype that is one of FORMATS."""
    return FORMATS[dtype.name]


def float_format(name: str) -> FloatFormat:
    """The format of a dtype name such as "float32"."""
    return FORMATS[name]


def bits_view(array: np.ndarray) -> np.ndarray:
    """A view numpy and C extensions can take a buffer of: bfloat16 as its uint16 bits."""
    import numpy as np

    return array.view(np.uint16) if is_bfloat16(array.dtype) else array


def shortest_text(value: float, name: str) -> str:
    """The shortest text that reads back as the same ``name``-dtype number (numpy's repr): every
    bit of a float32 in 8 or 9 digits, not the 17 of its float64 value."""
    return str(float_format(name).numpy.type(value))
