"""One backward pass inspected: the float64 reference gradients of the inspected batch beside
PyTorch's autograd, and the measures both ``run --grad`` and ``check`` use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bninspect.grad.reference import ReferenceBackward, reference_backward
from bninspect.numerics.agreement import elementwise_errors, ulp
from bninspect.pytorch.inspection import Inspection
from bninspect.results.common import Number, Undefined
from bninspect.results.grad import CS231N_GOOD, CS231N_WRONG, Cs231nError, GradOutputInfo

if TYPE_CHECKING:
    from bninspect.pytorch.autograd import TorchGradients

# An error within this many ULPs of the dtype at the channel's scale is rounding, as for the
# forward (check/compare.py's ROUNDING_ULPS). Measured: autograd's dx, dweight and dbias on
# torch 2.13 stay within 3 ULPs at these scales in every dtype, rank and mode
# (tests/test_grad.py checks it over hypothesis' draws).
GRAD_ROUNDING_ULPS = 4.0
GRADIENTS = ("grad_input", "grad_weight", "grad_bias")
NO_AFFINE = "--no-affine: the layer has no weight or bias, so autograd gives no gradient for them"


@dataclass(frozen=True)
class Backward:
    """The reference gradients and autograd's (None, with the reason in ``no_torch``, where
    PyTorch's module did not run)."""

    reference: ReferenceBackward
    torch: TorchGradients | None
    no_torch: str | None
    dy: np.ndarray
    grad_output: GradOutputInfo
    dtype: str
    affine: bool

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
    return Backward(
        reference, torch_gradients, no_torch, dy, info, inspection.tensor.info.dtype,
        settings.affine,
    )  # fmt: skip


def channel_errors_at_scale(
    values: np.ndarray, reference: np.ndarray, scale: np.ndarray, dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (C,), the largest |values - reference| and it in ULPs of ``dtype`` at the
    channel's ``scale`` (NaN where an error meets a scale of 0). Elementwise arrays (N, C, ...)
    or per-channel ones (C,)."""
    abs_error, _ = elementwise_errors(values, reference, dtype)
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
