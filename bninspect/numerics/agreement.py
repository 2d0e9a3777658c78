"""How far PyTorch's values are from the float64 reference: absolute, and in ULPs of a dtype.

A ULP here is the spacing of the dtype's numbers at the *reference* value,
2**(floor(log2|reference|) - mantissa_bits), with subnormals clamped to the smallest spacing.
Non-finite values agree when both are NaN or both are the same infinity; any other pairing with a
non-finite value is an infinite error.
"""

from __future__ import annotations

import numpy as np

from bninspect.dtypes import float_format
from bninspect.numerics.running import StepUpdate
from bninspect.results.common import Comparison, Number, Undefined


def ulp(reference: np.ndarray | float, dtype: str) -> np.ndarray:
    """The spacing of ``dtype`` numbers at each |reference| value, as float64 (same shape)."""
    magnitude = np.abs(np.asarray(reference, dtype=np.float64))
    _, exponent = np.frexp(magnitude)  # magnitude = m * 2**exponent with m in [0.5, 1)
    form = float_format(dtype)
    smallest = form.min_exponent  # zero and subnormals share the smallest normal spacing
    lead = np.where(magnitude == 0, smallest, np.maximum(exponent - 1, smallest))
    return np.ldexp(1.0, lead - form.mantissa_bits)


def channel_scale(max_reference: np.ndarray | float, weight: np.ndarray | float):
    """The scale of a channel's outputs: its largest |reference y|, or |weight| (the spread
    batch norm gives y) where that is larger, as in a constant channel whose y is all bias."""
    return np.maximum(np.abs(max_reference), np.abs(weight))


def output_scale(channel_y: np.ndarray, weight: float) -> float:
    """``channel_scale`` of one channel's reference outputs (any shape), over its finite ones."""
    finite = np.abs(channel_y[np.isfinite(channel_y)])
    return float(channel_scale(finite.max() if finite.size else 0.0, weight))


def running_mean_scale(
    before: np.ndarray,
    after: np.ndarray,
    batch: tuple[float, np.ndarray, np.ndarray] | None,
    dtype: str,
) -> np.ndarray:
    """The scale a running mean's error is counted at, shape (C,), for the update
    ``after = (1 - w) * before + w * batch_mean`` (every convention's rule takes this form for
    the running statistics; ``batch`` is (w, batch_mean, batch_rms), None where no batch was
    folded in: eval mode). It is the largest of |after| and the update's two terms; where they
    cancel, ``after`` is near 0 and its own ULP says nothing.

    The batch term's size is its mean's, or the size of the mean's own error where that is
    larger: PyTorch sums the values in its accumulation type, so the sum errs relative to them
    (their RMS) in that type's units. For float32 (summed in float64) this is |batch_mean|;
    for float64 input, the RMS. |after| itself where that is NaN or infinite.

    The variance needs no such scale: its terms are never negative, so its own value is the
    largest of them.
    """
    scale = np.abs(np.asarray(after, dtype=np.float64))
    if batch is None:
        return scale
    weight, batch_mean, batch_rms = batch
    form = float_format(dtype)
    sum_error_size = float_format(form.torch_accumulation).eps / form.eps  # in the dtype's units
    with np.errstate(invalid="ignore", over="ignore"):
        old_term = (1.0 - weight) * np.abs(np.asarray(before, dtype=np.float64))
        batch_size = np.maximum(np.abs(batch_mean), sum_error_size * np.asarray(batch_rms))
        largest = np.maximum(np.maximum(scale, old_term), weight * batch_size)
    return np.where(np.isfinite(scale), largest, scale)  # a NaN or Inf mean: its own


def errors_at_scale(abs_error: np.ndarray, scale: np.ndarray, dtype: str) -> np.ndarray:
    """|err| in ULPs of ``dtype`` at ``scale`` (elementwise, float64); 0 where the error is 0."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(abs_error == 0, 0.0, abs_error / ulp(scale, dtype))


def elementwise_errors(
    actual: np.ndarray, reference: np.ndarray, dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    """Absolute error and error in ULPs of ``dtype``, element by element (float64 arrays)."""
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf is handled just below
        abs_error = np.abs(actual - reference)
    same_non_finite = (np.isnan(actual) & np.isnan(reference)) | (
        np.isinf(actual) & (actual == reference)
    )
    abs_error = np.where(same_non_finite, 0.0, abs_error)
    abs_error = np.where(np.isnan(abs_error), np.inf, abs_error)
    with np.errstate(over="ignore"):  # float64's ULP at 0 is 2**-1074: big ratios become inf
        return abs_error, abs_error / ulp(reference, dtype)


def max_errors(actual: np.ndarray, reference: np.ndarray, dtype: str) -> tuple[Number, Number]:
    """The largest absolute and ULP error over all elements; Undefined for empty input."""
    if np.size(actual) == 0:
        nothing = Undefined("no elements to compare")
        return nothing, nothing
    abs_error, ulp_error = elementwise_errors(actual, reference, dtype)
    return float(abs_error.max()), float(ulp_error.max())


def round_to_dtype(value: float, dtype: str) -> float:
    """``value`` rounded to the nearest ``dtype`` number (ties to even), returned as a float."""
    with np.errstate(over="ignore"):  # beyond the dtype's range rounds to inf, as it should
        return float(np.asarray(value, dtype=np.float64).astype(float_format(dtype).numpy))


NO_BOUND = Undefined("no bound judged for this value")


def compare_value(
    name: str,
    reference: float,
    torch_value: float | Undefined,
    dtype: str,
    scale: float,
    bound_ulps: Number = NO_BOUND,
) -> Comparison:
    """One PyTorch value beside its float64 reference, with its errors (in ULPs of ``dtype`` at
    ``scale`` and at the reference itself) and whether it is the reference correctly rounded to
    ``dtype``; every PyTorch side undefined when ``torch_value`` is (PyTorch's module did not
    run)."""
    rounded = round_to_dtype(reference, dtype)
    if isinstance(torch_value, Undefined):
        missing = torch_value
        return Comparison(
            name, float(reference), rounded, torch=missing, torch_hex=missing, abs_error=missing,
            scale=float(scale), ulp_error_at_scale=missing, ulp_error=missing,
            correctly_rounded=missing, bound_ulps=bound_ulps,
        )  # fmt: skip
    abs_error, ulp_error = elementwise_errors(np.array([torch_value]), np.array([reference]), dtype)
    scaled: Number = float(errors_at_scale(abs_error, np.array([scale]), dtype)[0])
    if abs_error[0] != 0 and not scale > 0:  # 0 or NaN; an agreement is 0 ULP at any scale
        scaled = Undefined(f"no scale to count {name}'s error at: {float(scale):g}")
    both_nan = np.isnan(rounded) and np.isnan(torch_value)
    return Comparison(
        name=name,
        reference=float(reference),
        reference_rounded=rounded,
        torch=float(torch_value),
        torch_hex=float(torch_value).hex(),
        abs_error=float(abs_error[0]),
        scale=float(scale),
        ulp_error_at_scale=scaled,
        ulp_error=float(ulp_error[0]),
        correctly_rounded=bool(both_nan or rounded == torch_value),
        bound_ulps=bound_ulps,
    )


def mean_update_scale(
    before: np.ndarray, update: StepUpdate | None, after: np.ndarray, dtype: str
) -> np.ndarray:
    """running_mean_scale of one step's running mean, shape (C,) (``update`` None: no
    batch folded in, as in eval mode)."""
    batch = None if update is None else (update.batch_weight, update.batch_mean, update.batch_rms)
    return running_mean_scale(before, after, batch, dtype)
