"""``check``'s comparison: their output against the float64 reference, element by element and
per channel. Pure numpy on whole arrays (N, C, ...)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from bninspect.dtypes import float_format
from bninspect.input.memory import CHECK_CHUNK_ELEMENTS
from bninspect.numerics.agreement import elementwise_errors, output_scale, ulp
from bninspect.numerics.reference import forward_output
from bninspect.pytorch.inspection import Inspection
from bninspect.results.check import (
    WHERE_FINITE,
    ChannelCheck,
    ElementError,
    HistogramBin,
    SuggestedTolerance,
    Tolerance,
)
from bninspect.results.common import Number, Undefined

# Elements per chunk of a whole-tensor pass: its float64 temporaries are 32 MiB each.
CHUNK_ELEMENTS = CHECK_CHUNK_ELEMENTS
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
    return scaled_errors_and_scales(theirs, candidate, weight, dtype)[0]


def scaled_errors_and_scales(
    theirs: np.ndarray, candidate: np.ndarray, weight: np.ndarray, dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    """scaled_errors, and each channel's scale (output_scale of the candidate)."""
    channels = theirs.shape[1]
    out, scales = np.empty(channels), np.empty(channels)
    with np.errstate(invalid="ignore", over="ignore"):
        for c in range(channels):
            t = np.asarray(theirs[:, c], dtype=np.float64).reshape(-1)
            y = candidate[:, c].reshape(-1)
            both_nan = np.isnan(t) & np.isnan(y)
            same_inf = np.isinf(t) & (t == y)
            error = np.where(both_nan | same_inf, 0.0, np.abs(t - y))
            error = np.where(np.isnan(error), np.inf, error)
            scale = output_scale(y, weight[c])
            largest = float(error.max(initial=0.0))
            scales[c] = scale
            out[c] = (
                largest / float(ulp(scale, dtype))
                if scale > 0
                else (0.0 if largest == 0 else np.inf)
            )
    return out, scales


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
    index: int, shape, theirs, reference, torch_out, abs_error, dtype: str, scales=None
) -> ElementError:
    """The flat ``index`` as an ElementError (its relative and ULP errors as
    relative_error and ulp_error give them; with ``scales``, each channel's output scale, its
    error in ULPs at its channel's scale)."""
    at = tuple(int(i) for i in np.unravel_index(index, shape))
    e, r = abs_error[at], reference[at]
    torch_value: Number = (
        float(torch_out[at]) if torch_out is not None else Undefined("PyTorch's module did not run")
    )
    return ElementError(
        at,
        float(theirs[at]),
        float(reference[at]),
        torch_value,
        float(e),
        float(relative_error(e, r)),
        float(ulp_error(e, r, dtype)),
        _at_scale(float(e), scales[at[1]], dtype)
        if scales is not None
        else Undefined("no scale given"),
    )


def _at_scale(error: float, scale: float, dtype: str) -> float:
    """|error| in ULPs of ``dtype`` at ``scale`` (as scaled_errors counts it)."""
    if scale > 0:
        with np.errstate(over="ignore"):
            return float(error / float(ulp(scale, dtype)))
    return 0.0 if error == 0 else math.inf


def channel_chunks(shape: tuple[int, ...]) -> list[slice]:
    """Slices of axis 1 holding about CHUNK_ELEMENTS elements each (at least one channel):
    passes over the whole tensor go chunk by chunk, so their float64 temporaries stay small
    beside the arrays check must hold."""
    per_channel = max(1, math.prod(shape) // max(1, shape[1]))
    step = max(1, CHUNK_ELEMENTS // per_channel)
    return [slice(c, min(c + step, shape[1])) for c in range(0, shape[1], step)]


def absolute_errors(theirs: np.ndarray, reference: np.ndarray, dtype: str) -> np.ndarray:
    """|theirs - reference| element by element, float64 (agreement's semantics: NaN with NaN
    and equal infinities agree, other non-finite pairs are inf)."""
    out = np.empty(theirs.shape)
    for s in channel_chunks(theirs.shape):
        out[:, s] = elementwise_errors(theirs[:, s], reference[:, s], dtype)[0]
    return out


def relative_error(abs_error: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """|error| / |reference|: 0 where the error is 0, inf where it is undefined otherwise."""
    with np.errstate(divide="ignore", invalid="ignore"):
        rel_error = np.where(abs_error == 0, 0.0, abs_error / np.abs(reference))
    return np.where(np.isnan(rel_error), np.inf, rel_error)


def ulp_error(abs_error: np.ndarray, reference: np.ndarray, dtype: str) -> np.ndarray:
    """|error| in ULPs of ``dtype`` at the reference value."""
    with np.errstate(over="ignore"):  # float64's ULP at 0 is 2**-1074: big ratios become inf
        return abs_error / ulp(reference, dtype)


def largest_errors(abs_error: np.ndarray, reference: np.ndarray, dtype: str) -> dict[str, int]:
    """The flat index of the largest absolute, relative and ULP error, as np.argmax over the
    whole arrays gives it (the first of equals; a NaN ULP error counts as largest), found chunk
    by chunk without holding the relative and ULP errors of every element."""
    candidates: dict[str, list[tuple[int, float]]] = {"abs": [], "rel": [], "ulp": []}
    for s in channel_chunks(abs_error.shape):
        e, r = abs_error[:, s], reference[:, s]
        for name, values in (
            ("abs", e),
            ("rel", relative_error(e, r)),
            ("ulp", ulp_error(e, r, dtype)),
        ):
            at = np.unravel_index(int(np.argmax(values)), values.shape)
            whole = (at[0], at[1] + s.start, *at[2:])
            flat = int(np.ravel_multi_index(whole, abs_error.shape))
            candidates[name].append((flat, float(values[at])))
    found = {}
    for name, pairs in candidates.items():
        pairs.sort()  # by flat index: argmax over them is the first of the largest
        found[name] = pairs[int(np.argmax([value for _, value in pairs]))][0]
    return found


def worst_indices(abs_error: np.ndarray, top: int) -> np.ndarray:
    """The flat indices of the ``top`` largest errors, largest first, equals in index order (as
    a stable argsort of -abs_error gives them), without sorting every element."""
    flat = abs_error.reshape(-1)
    if top >= flat.size:
        return np.argsort(-flat, kind="stable")
    kth = np.partition(flat, flat.size - top)[flat.size - top]  # the top-th largest
    above = np.flatnonzero(flat > kth)  # fewer than top
    ties, wanted = [], top - above.size
    for start in range(0, flat.size, CHUNK_ELEMENTS):
        if wanted <= 0:
            break
        equal = np.flatnonzero(flat[start : start + CHUNK_ELEMENTS] == kth)[:wanted] + start
        ties.append(equal)
        wanted -= equal.size
    chosen = np.sort(np.concatenate([above, *ties]))
    return chosen[np.argsort(-flat[chosen], kind="stable")]


def mismatched(
    abs_error: np.ndarray,
    reference: np.ndarray,
    tolerance: Tolerance,
    allow_nonfinite: bool = False,
) -> np.ndarray:
    """Where |error| > atol + rtol * |reference| (with the tolerance's per-channel atol where it
    has one). An infinite error (a NaN or infinity of one side against another value of the
    other) is always a mismatch, unless ``allow_nonfinite``; an agreement (NaN with NaN, equal
    infinities) never is. A NaN bound (a channel whose statistics are not finite) matches only
    agreements."""
    out = np.empty(abs_error.shape, dtype=bool)
    per_channel = (
        None
        if tolerance.per_channel_atol is None
        else np.array([a if isinstance(a, float) else np.nan for a in tolerance.per_channel_atol])
    )
    for s in channel_chunks(abs_error.shape):
        e = abs_error[:, s]
        with np.errstate(invalid="ignore", over="ignore"):
            atol = tolerance.atol
            if per_channel is not None:
                atol = per_channel[s].reshape((1, -1) + (1,) * (e.ndim - 2))
            bound = atol + tolerance.rtol * np.abs(reference[:, s])
            bound = np.where(np.isnan(bound), 0.0, bound)
            over = ~(e <= bound)
        infinite = np.isinf(e)
        out[:, s] = (over & ~infinite) | (infinite & (not allow_nonfinite))
    return out


def non_finite_disagreements(theirs: np.ndarray, reference: np.ndarray) -> tuple[int, int]:
    """How many elements have a NaN or infinite reference where theirs is another value, and
    how many are NaN or infinite in theirs where the reference is finite."""
    reference_side = theirs_side = 0
    for s in channel_chunks(theirs.shape):
        t, r = theirs[:, s], reference[:, s]
        agree = (np.isnan(t) & np.isnan(r)) | (np.isinf(t) & (t == r))
        reference_side += int((~np.isfinite(r) & ~agree).sum())
        theirs_side += int((~np.isfinite(t) & np.isfinite(r)).sum())
    return reference_side, theirs_side


def _pattern(theirs: np.ndarray, reference: np.ndarray, unit: float) -> tuple[str, Number, Number]:
    """Fit theirs ~ factor * reference + offset on the finite pairs and name the error's shape;
    with WHERE_FINITE appended when non-finite elements disagree, which the fit cannot see."""
    keep = np.isfinite(theirs) & np.isfinite(reference)
    t, r = theirs[keep], reference[keep]
    if t.size == 0:
        return "not finite", Undefined("no finite pairs"), Undefined("no finite pairs")
    agree = (np.isnan(theirs) & np.isnan(reference)) | (np.isinf(theirs) & (theirs == reference))
    with np.errstate(over="ignore", invalid="ignore"):  # errors near the largest float
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
    theirs, reference, abs_error, mismatch, weight, dtype, best_variants, bounds=None
) -> tuple[ChannelCheck, ...]:
    """One ChannelCheck per channel; ``bounds`` (per channel, absolute): what a correct
    implementation can leave, below which the error's pattern is "exact" (default
    ROUNDING_ULPS at the channel's scale)."""
    checks = []
    for c in range(theirs.shape[1]):
        t, r = theirs[:, c].reshape(-1), reference[:, c].reshape(-1)
        e = abs_error[:, c].reshape(-1)
        scale = output_scale(r, weight[c])
        unit = float(ulp(scale, dtype)) if scale > 0 else 0.0
        within = ROUNDING_ULPS * unit
        if bounds is not None and np.isfinite(bounds[c]):
            within = max(within, float(bounds[c]))
        pattern, factor, offset = _pattern(t, r, within)
        with np.errstate(over="ignore"):
            scaled = float(e.max() / unit) if unit else Undefined("no scale: weight and y are 0")
        checks.append(
            ChannelCheck(
                channel=c,
                max_abs_error=float(e.max()),
                max_ulp_error_at_scale=scaled,
                mismatches=int(mismatch[:, c].sum()),
                non_finite=int((~np.isfinite(t) & np.isfinite(r)).sum()),
                pattern=pattern,
                factor=factor,
                offset=offset,
                explained_by=best_variants[c],
            )
        )
    return tuple(checks)


def histogram(abs_error: np.ndarray) -> tuple[HistogramBin, ...]:
    """How many elements have |error| 0, in each decade from 1e-12 to 10, below and above."""
    edges = [10.0**d for d in HISTOGRAM_DECADES] + [10.0 ** (HISTOGRAM_DECADES[-1] + 1)]
    # counts: exact 0, (0, 1e-12), one per decade [edges[i], edges[i + 1]), [10, inf]
    counts = np.zeros(len(edges) + 2, dtype=np.int64)
    for s in channel_chunks(abs_error.shape):
        e = abs_error[:, s].reshape(-1)
        finite = e[np.isfinite(e)]
        nonzero = finite[finite > 0]
        counts[0] += finite.size - nonzero.size
        counts[1:] += np.bincount(
            np.searchsorted(edges, nonzero, side="right"), minlength=len(edges) + 1
        )
        counts[-1] += e.size - finite.size
    bounds = [(0.0, 0.0), (0.0, edges[0])]
    bounds += [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)] + [(edges[-1], math.inf)]
    return tuple(
        HistogramBin(low, high, int(n)) for (low, high), n in zip(bounds, counts, strict=True)
    )


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


def _needed(theirs, expected, in_dtype: str, tolerance: Tolerance, expected_dtype=None):
    """What assert_close(actual=theirs, expected) computed in ``in_dtype`` needs: the smallest
    atol with rtol kept and the smallest rtol with atol kept (None: no rtol helps), whether NaN
    meets NaN (equal_nan needed), or None where a NaN or infinity meets another value.
    ``expected_dtype``: round expected to that numpy dtype first (chunk by chunk).

    torch.isclose evaluates |a - e| <= atol + |rtol * e| in the compared dtype, atol and rtol
    rounded to it: each of those roundings moves a side by at most u (the unit roundoff), so
    asking |a - e| (1 + 4u) <= atol (1 - 2u) + rtol |e| (1 - 2u) in float64 is safe."""
    atol, rtol, any_nan = 0.0, 0.0, False
    for s in channel_chunks(theirs.shape):
        e = np.asarray(expected[:, s])
        with np.errstate(over="ignore"):
            e = e.astype(expected_dtype) if expected_dtype is not None else e
        need = _needed_of(theirs[:, s], e, in_dtype, tolerance)
        if need is None:
            return None
        atol = max(atol, need[0])
        rtol = None if rtol is None or need[1] is None else max(rtol, need[1])
        any_nan = any_nan or need[2]
    return atol, rtol, any_nan


def _needed_of(theirs, expected, in_dtype: str, tolerance: Tolerance):
    """_needed on one chunk."""
    form = float_format(in_dtype)
    u = 2.0 ** -(form.mantissa_bits + 1)
    with np.errstate(over="ignore", invalid="ignore"):
        a = theirs.astype(form.numpy).astype(np.float64)
        e = expected.astype(form.numpy).astype(np.float64)
        both_nan = np.isnan(a) & np.isnan(e)
        agree = both_nan | (a == e)
        error = np.where(agree, 0.0, np.abs(a - e))
    if not np.all(np.isfinite(error)):
        return None
    magnitude = np.where(agree, 0.0, np.abs(e))
    with np.errstate(over="ignore"):  # an error near the largest float: no finite tolerance
        error = error * (1 + 4 * u)
    if not np.all(np.isfinite(error)):
        return None
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
    abs_error: np.ndarray,
    torch_out: np.ndarray | None,
    dtype: str,
    tolerance: Tolerance,
    torch_name: str,
) -> SuggestedTolerance | Undefined:
    """The smallest atol (rtol kept) and the smallest rtol (atol kept) under which
    ``torch.testing.assert_close(torch.from_numpy(mine), expected, ...)`` passes, with expected
    PyTorch's output (``torch_name``) and also the float64 reference rounded to ``dtype``, and
    under which check itself passes (the float64 reference): rounded up to 3 digits, with the
    line to paste. Undefined where a NaN or an infinite error can never match. ``abs_error``:
    absolute_errors(theirs, reference, dtype)."""
    if not np.all(np.isfinite(abs_error)):
        return Undefined(
            "an element is NaN or infinite where the other is not: no tolerance makes it match"
        )
    compared_in = _compared_in(their_dtype, dtype)
    expecteds = [
        (f"the float64 reference rounded to {dtype}", reference, float_format(dtype).numpy)
    ]
    if torch_out is not None:
        expecteds.insert(0, (f"PyTorch's output, {torch_name}", torch_out, None))
    found = [
        (what, _needed(theirs, e, compared_in, tolerance, rounded_to))
        for what, e, rounded_to in expecteds
    ]
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
    mantissa = math.ceil(Fraction(value) * 10**digits)  # exact: 10**digits may pass floats
    while float(f"{mantissa}e{-digits}") < value:
        mantissa += 1
    return float(f"{mantissa}e{-digits}")
