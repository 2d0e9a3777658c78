"""One backward pass inspected: the float64 reference gradients of the inspected batch beside
PyTorch's autograd, and the measures both ``run --grad`` and ``check`` use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bninspect.check.tolerance import inspection_conditioning
from bninspect.dtypes import float_format
from bninspect.grad.reference import ReferenceBackward, reference_backward
from bninspect.grad.tolerance import GradientBounds, gradient_bounds
from bninspect.numerics.agreement import elementwise_errors, ulp
from bninspect.pytorch.inspection import Inspection
from bninspect.results.common import Number, Undefined
from bninspect.results.grad import CS231N_GOOD, CS231N_WRONG, Cs231nError, GradOutputInfo

if TYPE_CHECKING:
    from bninspect.pytorch.autograd import TorchGradients

GRADIENTS = ("grad_input", "grad_weight", "grad_bias")
NO_AFFINE = "--no-affine: the layer has no weight or bias, so autograd gives no gradient for them"


@dataclass(frozen=True)
class Backward:
    """The reference gradients and autograd's (None, with the reason in ``no_torch``, where
    PyTorch's module did not run), and per gradient and channel what a correct backward in
    the dtype can leave (``bounds``: grad/tolerance.py)."""

    reference: ReferenceBackward
    torch: TorchGradients | None
    no_torch: str | None
    dy: np.ndarray
    grad_output: GradOutputInfo
    dtype: str
    affine: bool
    bounds: GradientBounds

    def bound_ulps_of(self, name: str) -> np.ndarray:
        """The bound of gradient ``name`` per channel (C,), in ULPs of the dtype at its scale."""
        return self.bounds.in_ulps(name)

    def scale_of(self, name: str) -> np.ndarray:
        """The per-channel scale (C,) of gradient ``name``."""
        r = self.reference
        return {"grad_input": r.input_scale, "grad_weight": r.weight_scale,
                "grad_bias": r.bias_scale}[name]  # fmt: skip

    def reference_of(self, name: str) -> np.ndarray:
        return getattr(self.reference, name)

    def torch_of(self, name: str) -> np.ndarray | Undefined:
        if self.torch is None:
            return Undefined(f"PyTorch was not run: {self.no_torch}")
        value = getattr(self.torch, name)
        if value is None:
            return Undefined(NO_AFFINE)
        return np.asarray(value, dtype=np.float64)


def inspect_backward(inspection: Inspection, dy: np.ndarray, info: GradOutputInfo) -> Backward:
    """The reference backward of the inspected batch for ``dy`` and, where PyTorch's module ran
    beside the reference, autograd's through a fresh module with the same settings."""
    settings, params, forward = inspection.settings, inspection.params, inspection.forward
    train = settings.mode == "train"
    reference = reference_backward(
        inspection.batch, dy, forward.mean, forward.std, params.weight, train,
        forward.passes_through,
    )  # fmt: skip
    torch_gradients, no_torch = None, None
    if inspection.torch_run is None:
        no_torch = inspection.no_peer
    else:
        from bninspect.pytorch.autograd import run_backward

        torch_gradients = run_backward(
            inspection.batch, dy, settings.module, params, settings.eps, settings.affine, train
        )
    dtype = inspection.tensor.info.dtype
    bounds = gradient_bounds(reference, inspection_conditioning(inspection), dtype)
    return Backward(
        reference, torch_gradients, no_torch, dy, info, dtype, settings.affine, bounds
    )


def within_range(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` (float64) with those beyond ``dtype``'s range replaced by the infinity they
    round to: what a correct backward in the dtype returns there (a float16 dweight above
    65504 is inf in every implementation), so that their infinity agrees with it."""
    values = np.asarray(values, dtype=np.float64)
    if dtype == "float64":
        return values
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = values.astype(float_format(dtype).numpy).astype(np.float64)
        return np.where(np.isinf(rounded) & np.isfinite(values), rounded, values)


def channel_errors_at_scale(
    values: np.ndarray, reference: np.ndarray, scale: np.ndarray, dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (C,), the largest |values - reference| and it in ULPs of ``dtype`` at the
    channel's ``scale`` (NaN where an error meets a scale of 0). Elementwise arrays (N, C, ...)
    or per-channel ones (C,). A reference beyond the dtype's range is its infinity."""
    abs_error, _ = elementwise_errors(values, within_range(reference, dtype), dtype)
    if abs_error.ndim > 1:
        axes = (0, *range(2, abs_error.ndim))
        largest = np.max(abs_error, axis=axes, initial=0.0)
    else:
        largest = abs_error
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        at_scale = np.where(largest == 0, 0.0, largest / ulp(scale, dtype))
        at_scale = np.where((largest != 0) & ~(scale > 0), np.nan, at_scale)
    return largest, at_scale


def as_number(value: float, reason: str) -> Number:
    """A float, or Undefined(reason) where it is NaN."""
    return Undefined(reason) if np.isnan(value) else float(value)


NO_BOUND = (
    "no finite bound: the channel's spread is below what the dtype's statistics resolve (a "
    "correct x_hat can be anything), so any value passes"
)
EXACT_ONLY = "the channel's statistics are not finite: only an exact agreement passes"


def bound_number(value: float) -> Number:
    """A bound in ULPs as a JSON number, or why there is none (infinite, or NaN)."""
    if np.isfinite(value):
        return float(value)
    return Undefined(EXACT_ONLY if np.isnan(value) else NO_BOUND)


def within_bounds(at_scale: np.ndarray, bound_ulps: np.ndarray) -> bool:
    """Whether every channel's error (ULPs at scale) is within its bound in the same ULPs: a NaN
    error (an error where the scale is 0) is not, a NaN bound (statistics not finite) admits
    only 0."""
    with np.errstate(invalid="ignore"):
        limit = np.where(np.isnan(bound_ulps), 0.0, bound_ulps)
        return bool(np.all(at_scale <= limit))


NO_SCALE = "no scale to count the error at: the gradient and its terms are 0 in this channel"


def cs231n(values: np.ndarray, reference: np.ndarray) -> Cs231nError:
    """CS231n's relative error, max over elements of |a - b| / max(1e-8, |a| + |b|), and its
    reading; NaN against NaN agrees, any other non-finite pairing is infinite."""
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    b = np.asarray(reference, dtype=np.float64).reshape(-1)
    if a.size == 0:
        return Cs231nError(Undefined("no elements"), "n/a")
    with np.errstate(invalid="ignore", over="ignore"):
        ratio = np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))
    agree = (np.isnan(a) & np.isnan(b)) | (np.isinf(a) & (a == b))
    ratio = np.where(agree, 0.0, np.where(np.isnan(ratio), np.inf, ratio))
    worst = float(ratio.max())
    return Cs231nError(worst, cs231n_reading(worst))


def cs231n_reading(rel_error: float) -> str:
    """The course notes' reading: above 1e-2 wrong, 1e-4 to 1e-2 uncomfortable, 1e-7 to 1e-4
    acceptable only for objectives with kinks, below 1e-7 good."""
    if rel_error > CS231N_WRONG:
        return "wrong"
    if rel_error > 1e-4:
        return "uncomfortable"
    if rel_error >= CS231N_GOOD:
        return "okay only with kinks"
    return "good"
