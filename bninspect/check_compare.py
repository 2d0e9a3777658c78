"""``check``'s comparison: their output against the float64 reference, element by element and
per channel. Pure numpy on whole arrays (N, C, ...)."""

from __future__ import annotations

import math

import numpy as np

from bninspect.agreement import channel_scale, elementwise_errors, ulp
from bninspect.check_results import (
    WHERE_FINITE,
    ChannelCheck,
    ElementError,
    HistogramBin,
    SuggestedTolerance,
    Tolerance,
)
from bninspect.inspection import Inspection
from bninspect.reference import forward_output
from bninspect.results import Number, Undefined
from bninspect.text import number

# An error within this many ULPs at the channel's scale is rounding, not a mistake.
ROUNDING_ULPS = 4.0
# The least-squares line explains the error when what is left is below this share of it.
AFFINE_SHARE = 0.25
HISTOGRAM_DECADES = range(-12, 1)  # |error| bins [1e-12, 1e-11), ..., [1, 10); plus exact


def scaled_errors(
    theirs: np.ndarray, candidate: np.ndarray, weight: np.ndarray, dtype: str
) -> np.ndarray:
    """Per channel, max |theirs - candidate| in ULPs of ``dtype`` at the channel's scale (the
    candidate's largest |y|, or |weight|); NaN against NaN agrees, other non-finite is inf."""
    channels = theirs.shape[1]
    out = np.empty(channels)
    with np.errstate(invalid="ignore", over="ignore"):
        for c in range(channels):
            t, y = theirs[:, c].reshape(-1), candidate[:, c].reshape(-1)
            both_nan = np.isnan(t) & np.isnan(y)
            same_inf = np.isinf(t) & (t == y)
            error = np.where(both_nan | same_inf, 0.0, np.abs(t - y))
            error = np.where(np.isnan(error), np.inf, error)
            finite = np.abs(y[np.isfinite(y)])
            scale = float(channel_scale(finite.max() if finite.size else 0.0, weight[c]))
            out[c] = (
                error.max() / float(ulp(scale, dtype))
                if scale > 0
                else (0.0 if error.max() == 0 else np.inf)
            )
    return out


def reference_output(inspection: Inspection) -> np.ndarray:
    """The float64 reference output of the inspected (last) batch, shape (N, C, ...)."""
    x, forward, params = inspection.batch, inspection.forward, inspection.params
    out = np.empty(x.shape, dtype=np.float64)
    for c in range(x.shape[1]):
        out[:, c] = forward_output(forward, x[:, c], c, params.weight[c], params.bias[c])
    return out


def _number(value: float) -> Number:
    return float(value)


def element(
    index: int, shape, theirs, reference, torch_out, abs_error, rel_error, ulp_error
) -> ElementError:
    """The flat ``index`` as an ElementError."""
    at = tuple(int(i) for i in np.unravel_index(index, shape))
    torch_value: Number = (
        float(torch_out[at]) if torch_out is not None else Undefined("PyTorch's module did not run")
    )
    return ElementError(
        at,
        float(theirs[at]),
        float(reference[at]),
        torch_value,
        float(abs_error.flat[index]),
        float(rel_error.flat[index]),
        float(ulp_error.flat[index]),
    )


def errors(theirs: np.ndarray, reference: np.ndarray, dtype: str):
    """Absolute, relative and ULP errors, element by element (agreement's semantics: NaN with
    NaN and equal infinities agree)."""
    abs_error, ulp_error = elementwise_errors(theirs, reference, dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_error = np.where(abs_error == 0, 0.0, abs_error / np.abs(reference))
    rel_error = np.where(np.isnan(rel_error), np.inf, rel_error)
    return abs_error, rel_error, ulp_error


def mismatched(abs_error: np.ndarray, reference: np.ndarray, tolerance: Tolerance) -> np.ndarray:
    """Where |error| > atol + rtol * |reference| (an infinite error always)."""
    with np.errstate(invalid="ignore"):
        bound = tolerance.atol + tolerance.rtol * np.abs(reference)
    return ~(abs_error <= np.where(np.isnan(bound), np.inf, bound))


def _pattern(theirs: np.ndarray, reference: np.ndarray, unit: float) -> tuple[str, Number, Number]:
    """Fit theirs ~ factor * reference + offset on the finite pairs and name the error's shape;
    with WHERE_FINITE appended when non-finite elements disagree, which the fit cannot see."""
    keep = np.isfinite(theirs) & np.isfinite(reference)
    t, r = theirs[keep], reference[keep]
    if t.size == 0:
        return "not finite", Undefined("no finite pairs"), Undefined("no finite pairs")
    agree = (np.isnan(theirs) & np.isnan(reference)) | (np.isinf(theirs) & (theirs == reference))
    name, factor, offset = _affine_pattern(t, r, unit)
    return name + (WHERE_FINITE if np.any(~keep & ~agree) else ""), factor, offset


def _affine_pattern(t: np.ndarray, r: np.ndarray, unit: float) -> tuple[str, Number, Number]:
    """The shape of the error of finite ``t`` against finite ``r``, with the fitted line."""
    error = t - r
    if np.max(np.abs(error)) <= unit:
        return "exact", 1.0, 0.0
    if t.size < 2 or np.ptp(r) == 0:
        return "shift", 1.0, float(np.mean(error))
    slope, intercept = np.polyfit(r, error, 1)
    left = error - (slope * r + intercept)
    if np.sqrt(np.mean(left**2)) > AFFINE_SHARE * np.sqrt(np.mean(error**2)):
        return "noise", float(1 + slope), float(intercept)
    scale_part = abs(slope) * np.max(np.abs(r))
    shift_part = abs(intercept)
    if scale_part > 4 * shift_part:
        name = "scale"
    elif shift_part > 4 * scale_part:
        name = "shift"
    else:
        name = "scale and shift"
    return name, float(1 + slope), float(intercept)


def channel_checks(
    theirs, reference, abs_error, mismatch, weight, dtype, best_variants
) -> tuple[ChannelCheck, ...]:
    """One ChannelCheck per channel."""
    checks = []
    for c in range(theirs.shape[1]):
        t, r = theirs[:, c].reshape(-1), reference[:, c].reshape(-1)
        e = abs_error[:, c].reshape(-1)
        finite = np.abs(r[np.isfinite(r)])
        scale = float(channel_scale(finite.max() if finite.size else 0.0, weight[c]))
        unit = float(ulp(scale, dtype)) if scale > 0 else 0.0
        pattern, factor, offset = _pattern(t, r, ROUNDING_ULPS * unit)
        with np.errstate(over="ignore"):
            scaled = float(e.max() / unit) if unit else Undefined("no scale: weight and y are 0")
        checks.append(
            ChannelCheck(
                channel=c,
                max_abs_error=float(e.max()),
                max_ulp_error=scaled,
                mismatches=int(mismatch[:, c].sum()),
                non_finite=int((~np.isfinite(t) & np.isfinite(r)).sum()),
                pattern=pattern,
                factor=factor,
                offset=offset,
                best_variant=best_variants[c],
            )
        )
    return tuple(checks)


def histogram(abs_error: np.ndarray) -> tuple[HistogramBin, ...]:
    """How many elements have |error| 0, in each decade from 1e-12 to 10, below and above."""
    e = abs_error[np.isfinite(abs_error)]
    bins = [HistogramBin(0.0, 0.0, int((e == 0).sum()))]
    nonzero = e[e > 0]
    bins.append(
        HistogramBin(
            0.0, 10.0 ** HISTOGRAM_DECADES[0], int((nonzero < 10.0 ** HISTOGRAM_DECADES[0]).sum())
        )
    )
    for d in HISTOGRAM_DECADES:
        lower, upper = 10.0**d, 10.0 ** (d + 1)
        bins.append(HistogramBin(lower, upper, int(((nonzero >= lower) & (nonzero < upper)).sum())))
    bins.append(
        HistogramBin(
            10.0 ** (HISTOGRAM_DECADES[-1] + 1),
            math.inf,
            int(
                (nonzero >= 10.0 ** (HISTOGRAM_DECADES[-1] + 1)).sum()
                + (~np.isfinite(abs_error)).sum()
            ),
        )
    )
    return tuple(bins)


def suggested_tolerance(
    abs_error: np.ndarray, reference: np.ndarray, tolerance: Tolerance
) -> SuggestedTolerance | Undefined:
    """The smallest atol (rtol kept) and the smallest rtol (atol kept) under which every
    element would match, as a ready assert_close line; undefined where a NaN or an infinite
    error can never match."""
    if not np.all(np.isfinite(abs_error)):
        return Undefined(
            "an element is NaN or infinite where the other is not: no tolerance makes it match"
        )
    magnitude = np.abs(reference)
    atol = float(max(0.0, np.max(abs_error - tolerance.rtol * magnitude)))
    with np.errstate(divide="ignore", invalid="ignore"):
        needed = np.where(
            abs_error <= tolerance.atol, 0.0, (abs_error - tolerance.atol) / magnitude
        )
    rtol: Number = (
        float(np.max(needed))
        if np.all(np.isfinite(needed))
        else Undefined("an element whose reference is 0 misses by more than atol: no rtol helps")
    )
    line = (
        f"torch.testing.assert_close(actual, expected, atol={_ceil3(atol)}, "
        f"rtol={number(tolerance.rtol)})"
    )
    return SuggestedTolerance(
        _ceil3(atol), rtol if isinstance(rtol, Undefined) else _ceil3(rtol), line
    )


def _ceil3(value: float) -> float:
    """``value`` rounded up to 3 significant digits, so the suggestion still passes."""
    if value == 0:
        return 0.0
    digits = 2 - math.floor(math.log10(value))
    return math.ceil(value * 10**digits) / 10**digits
