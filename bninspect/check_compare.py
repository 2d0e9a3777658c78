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
from bninspect.dtypes import float_format
from bninspect.inspection import Inspection
from bninspect.reference import forward_output
from bninspect.results import Number, Undefined

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


def _compared_in(their_dtype: str, dtype: str) -> str:
    """The dtype torch.testing.assert_close compares their array (``their_dtype``, as loaded by
    torch.from_numpy) and an ``expected`` of ``dtype`` in: torch.promote_types for floats
    (float16 with bfloat16 is float32), ``dtype`` for integers and booleans."""
    widths = {"float16": 16, "bfloat16": 16, "float32": 32, "float64": 64}
    if their_dtype not in widths or their_dtype == dtype:
        return dtype
    if widths[their_dtype] == widths[dtype]:
        return "float32"
    return their_dtype if widths[their_dtype] > widths[dtype] else dtype


def _needed(theirs, expected, in_dtype: str, tolerance: Tolerance):
    """What assert_close(actual=theirs, expected) computed in ``in_dtype`` needs: the smallest
    atol with rtol kept and the smallest rtol with atol kept (None: no rtol helps), whether NaN
    meets NaN (equal_nan needed), or None where a NaN or infinity meets another value.

    torch.isclose evaluates |a - e| <= atol + |rtol * e| in the compared dtype, atol and rtol
    rounded to it: each of those roundings moves a side by at most u (the unit roundoff), so
    asking |a - e| (1 + 4u) <= atol (1 - 2u) + rtol |e| (1 - 2u) in float64 is safe."""
    form = float_format(in_dtype)
    u = 2.0 ** -(form.mantissa_bits + 1)
    with np.errstate(over="ignore", invalid="ignore"):
        a = theirs.astype(form.numpy).astype(np.float64)
        e = np.asarray(expected).astype(form.numpy).astype(np.float64)
        both_nan = np.isnan(a) & np.isnan(e)
        agree = both_nan | (a == e)
        error = np.where(agree, 0.0, np.abs(a - e))
    if not np.all(np.isfinite(error)):
        return None
    magnitude = np.where(agree, 0.0, np.abs(e))
    error = error * (1 + 4 * u)
    atol = float(max(0.0, np.max(error - tolerance.rtol * magnitude * (1 - 2 * u), initial=0.0)))
    short = error - tolerance.atol * (1 - 2 * u)
    rtol: float | None = 0.0
    if np.any(short > 0):
        if np.any((short > 0) & (magnitude == 0)):
            rtol = None
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                rtol = float(np.max(np.where(short > 0, short / (magnitude * (1 - 2 * u)), 0.0)))
    return atol, rtol, bool(both_nan.any())


def suggested_tolerance(
    theirs: np.ndarray,
    their_dtype: str,
    reference: np.ndarray,
    torch_out: np.ndarray | None,
    dtype: str,
    tolerance: Tolerance,
    torch_name: str,
) -> SuggestedTolerance | Undefined:
    """The smallest atol (rtol kept) and the smallest rtol (atol kept) under which
    ``torch.testing.assert_close(torch.from_numpy(mine), expected, ...)`` passes, with expected
    PyTorch's output (``torch_name``) and also the float64 reference rounded to ``dtype``, and
    under which check itself passes (the float64 reference): rounded up to 3 digits, with the
    line to paste. Undefined where a NaN or an infinite error can never match."""
    if not np.all(np.isfinite(elementwise_errors(theirs, reference, dtype)[0])):
        return Undefined(
            "an element is NaN or infinite where the other is not: no tolerance makes it match"
        )
    compared_in = _compared_in(their_dtype, dtype)
    with np.errstate(over="ignore"):
        rounded = reference.astype(float_format(dtype).numpy)
    expecteds = [(f"the float64 reference rounded to {dtype}", rounded)]
    if torch_out is not None:
        expecteds.insert(0, (f"PyTorch's output, {torch_name}", torch_out))
    found = [(what, _needed(theirs, e, compared_in, tolerance)) for what, e in expecteds]
    passable = [(what, need) for what, need in found if need is not None]
    if not passable:
        return Undefined(
            "PyTorch's output and the rounded reference have NaN or Inf where yours does not: "
            "no tolerance makes it match"
        )
    expected = passable[0][0]
    if torch_out is None:
        expected += " (PyTorch did not run)"
    elif expected != found[0][0]:
        expected += " (PyTorch's output has NaN or Inf where yours does not)"
    needs = [_needed(theirs, reference, "float64", tolerance)] + [n for _, n in passable]
    atol = _ceil3(max(n[0] for n in needs))
    rtols = [n[1] for n in needs]
    rtol: Number = (
        Undefined("an element whose expected value is 0 misses by more than atol: no rtol helps")
        if None in rtols
        else _ceil3(max(rtols))
    )
    options = ""
    if their_dtype != dtype:
        options += ", check_dtype=False"
    if any(n[2] for n in needs):
        options += ", equal_nan=True"
    line = (
        f"torch.testing.assert_close(torch.from_numpy(mine), expected, atol={atol!r}, "
        f"rtol={tolerance.rtol!r}{options})"
    )
    return SuggestedTolerance(atol, rtol, line, expected)


def _ceil3(value: float) -> float:
    """``value`` rounded up to 3 significant digits: the float nearest that decimal, never
    below ``value``, so the printed suggestion still passes."""
    if value == 0:
        return 0.0
    digits = 2 - math.floor(math.log10(value))
    mantissa = math.ceil(value * 10**digits)
    while float(f"{mantissa}e{-digits}") < value:
        mantissa += 1
    return float(f"{mantissa}e{-digits}")
