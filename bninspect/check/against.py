"""``explain --against`` and ``--against-value``: their value for one element beside the
derivation, and the values of the earlier steps it implies, solving backwards from their y with
everything before assumed right: where those part from the reference is where their computation
did; and which known mistake gives their value.

A value from a file is judged as ``check`` judges an output, within rounding of the dtype at
the channel's scale. A value typed by hand (``--against-value 0.0142``) carries the precision of
its digits: it matches a candidate within 1.5 units of its last digit (its own rounding, and
that of the rounded numbers a hand derivation carries from step to step), or within the dtype's
rounding where that is wider.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bninspect.check.variants import KNOWN_EPS, eps_text
from bninspect.numerics.agreement import output_scale, ulp
from bninspect.numerics.reference import channel_values, forward_output
from bninspect.pytorch.inspection import Inspection
from bninspect.results.check import OutputInfo
from bninspect.results.common import Number, Undefined
from bninspect.results.explain import AgainstReport, ImpliedStep

# A hand value matches what lies within this many units of its last digit: half a unit for its
# own rounding, and about one for the rounded numbers carried between the steps by hand.
DIGIT_UNITS = 1.5


@dataclass(frozen=True)
class TheirValue:
    """Their value for the element: read from their output file (``path``), or typed
    (``digit_unit``: the unit of its last digit, e.g. 1e-4 for 0.0142)."""

    value: float
    path: str | Undefined
    digit_unit: float | None = None


def from_file(theirs: np.ndarray, info: OutputInfo, index: tuple[int, ...], first_row: int):
    """Their value for output[index] of the last batch, which starts at sample ``first_row``
    of their stacked output (in the core's layout, as load_output gives it)."""
    return TheirValue(float(theirs[(first_row + index[0], *index[1:])]), info.path)


GIVEN = Undefined("given with --against-value: no file")


def given_value(value: float, digit_unit: float) -> TheirValue:
    """A value typed by hand, with the unit of its last digit."""
    return TheirValue(value, GIVEN, digit_unit)


def against_report(
    inspection: Inspection, index: tuple[int, ...], their: TheirValue, bound_ulps: float
):
    """Their value for output[index] (``index`` into the last batch, the core's layout) against
    the derivation's, judged by ``bound_ulps``: what a correct implementation in the dtype can
    leave on the channel, in ULPs at its scale (check.tolerance), as check judges outputs."""
    c = index[1]
    forward, params = inspection.forward, inspection.params
    eps, dtype = inspection.settings.eps, inspection.tensor.info.dtype
    w, b = float(params.weight[c]), float(params.bias[c])
    x = float(inspection.batch[index])
    mean, var, std = float(forward.mean[c]), float(forward.var[c]), float(forward.std[c])
    y_ref = float(forward_output(forward, x, c, w, b))
    y_theirs = their.value
    values = channel_values(inspection.batch, c)
    channel_y = forward_output(forward, values, c, w, b)
    unit = _unit(channel_y, w, dtype)
    # A typed value is judged to its digits where they are coarser than the dtype's rounding.
    digit = their.digit_unit
    rounding = bound_ulps if math.isfinite(bound_ulps) else math.inf
    if digit is not None and DIGIT_UNITS * digit <= rounding * unit:
        digit = None
    with np.errstate(invalid="ignore"):
        abs_error = abs(y_theirs - y_ref)
    missing = Undefined("cannot be solved for: weight is 0, or x equals the mean")
    x_hat: Number = (y_theirs - b) / w if w != 0 else missing
    implied_std: Number = missing
    implied_var: Number = missing
    if not isinstance(x_hat, Undefined) and x_hat != 0 and x != mean:
        implied_std = (x - mean) / x_hat
        implied_var = implied_std * implied_std - eps  # ** would raise past float64's range
    x_hat_ref = (x - mean) / std if std else 0.0
    steps = (
        ImpliedStep("y", y_ref, y_theirs),
        ImpliedStep("x_hat", x_hat_ref, x_hat, "(y - bias) / weight"),
        ImpliedStep("std", std, implied_std, "(x - mean) / x_hat, if the mean is right"),
        ImpliedStep("var", var, implied_var, "std^2 - eps, if eps is right"),
    )
    scaled = abs_error / unit if unit else Undefined("no scale: weight and y are 0")
    solved_eps = (  # * not **, which would raise past float64's range
        implied_std * implied_std - var if not isinstance(implied_std, Undefined) else implied_std
    )
    if _within(abs_error, rounding * unit, digit):
        verdict = "your value matches the reference to rounding: the steps agree"
        if digit is None and their.digit_unit is not None:  # typed with every digit
            verdict += f" ({scaled:.3g} ULP at the channel's scale)"
        if digit is None and abs_error > EXACT_ULPS * unit:
            # Within what a sloppy correct implementation can leave, yet a known mistake may
            # land on it exactly: say so, as the user can tell which theirs does.
            exact = _mistakes(inspection, c, x, values, y_theirs, solved_eps, EXACT_ULPS)
            if exact:
                left, name, _ = exact[0]
                verdict += (
                    f" ({scaled:.3g} ULP at the channel's scale, bound {rounding:.3g}); yet it "
                    f"matches the known mistake '{name}' to {left:.2g} ULP: if yours computes "
                    "that, it is the mistake, too small to show on this data"
                )
        if digit is not None:
            verdict = (
                f"your value matches the reference ({_full(y_ref)}) to the digits you gave: "
                f"{_units(abs_error, digit)} of your last digit ({digit:g}) apart, as rounding "
                "the steps by hand leaves"
            )
            alike = _mistakes(inspection, c, x, values, y_theirs, solved_eps, rounding, digit)
            if alike:
                verdict += (
                    "; at these digits it cannot be told apart from "
                    f"{', '.join(name for _, name, _ in alike)}: give more digits to tell"
                )
    else:
        found = _mistakes(inspection, c, x, values, y_theirs, solved_eps, rounding, digit)
        verdict = _verdict(found, implied_var, solved_eps, var, mean, digit)
    if their.digit_unit is None:
        digit_unit: Number = Undefined("a value from a file is exact")
        digit_error: Number = digit_unit
    else:
        digit_unit, digit_error = their.digit_unit, abs_error / their.digit_unit
    return AgainstReport(
        their.path, y_theirs, abs_error, scaled, steps, verdict, digit_unit, digit_error
    )


# A value within this many ULPs at the scale of a mistake's is that mistake's to the rounding of
# its last step: closer than any implementation's rounding of the statistics could bring it.
EXACT_ULPS = 1.0


def _within(abs_error: float, limit: float, digit: float | None) -> bool:
    """Within rounding: ``limit`` (the channel's bound, absolute), or DIGIT_UNITS of the last
    digit of a typed value where that is wider."""
    if digit is not None:
        limit = max(limit, DIGIT_UNITS * digit)
    return limit > 0 and abs_error <= limit


def _units(abs_error: float, digit: float) -> str:
    count = abs_error / digit
    return f"{count:.2g} unit" + ("" if count == 1 else "s")


def _full(value: float) -> str:
    return f"{value:.8g}"


def _unit(channel_y: np.ndarray, weight: float, dtype: str) -> float:
    """One ULP of ``dtype`` at the channel's scale (as check measures it)."""
    return float(ulp(output_scale(channel_y, weight), dtype))


def _mistakes(
    inspection, c, x, values, y_theirs, solved_eps, rounding: float, digit: float | None = None
) -> list[tuple[float, str, str]]:
    """The known mistakes whose y for this element is within ``rounding`` ULPs (the channel's
    bound) of theirs at the mistaken channel's scale, as check's criterion (or DIGIT_UNITS of
    the last digit of a typed value, where wider): (what is left, short name, verdict), best
    first (the catalogue's order among equals), an eps fitted to the element after the rest.
    What is left is in ULPs at the channel's scale for a file's value, in units of the last digit
    for a typed one."""
    forward, params, stats = inspection.forward, inspection.params, inspection.stats
    eps, dtype = inspection.settings.eps, inspection.tensor.info.dtype
    train = inspection.settings.mode == "train"
    w, b = float(params.weight[c]), float(params.bias[c])
    mean, var = float(forward.mean[c]), float(forward.var[c])
    before = forward.before

    def layer(m, v, e=eps, weight=w, bias=b, outside=False):
        def y(t):
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                root = math.sqrt(v) + e if outside else math.sqrt(v + e) if v + e >= 0 else math.nan
                return np.subtract(t, m, dtype=np.float64) / root * weight + bias

        return y

    candidates = []  # (short name, verdict, y as a function of x)
    if train and stats.count > 1:
        candidates.append(
            (
                "unbiased variance",
                "your value is what the unbiased variance gives (divide by N - 1): Bessel's "
                "correction where batch norm normalizes with the biased one",
                layer(float(stats.mean[c]), float(stats.var_unbiased[c])),
            )
        )
    if var >= 0:
        candidates.append(
            (
                "eps outside the square root",
                "your value is what eps outside the square root gives: / (sqrt(var) + eps)",
                layer(mean, var, outside=True),
            )
        )
    if eps > 0:
        candidates.append(
            (
                "no eps",
                "your value is what leaving eps out gives: / sqrt(var)",
                layer(mean, var, 0.0),
            )
        )
    if train:
        candidates.append(
            (
                "running statistics",
                "your value is what the running statistics give: batch norm normalizes with "
                "the batch's mean and variance in train mode",
                layer(float(before.running_mean[c]), float(before.running_var[c])),
            )
        )
    else:
        candidates.append(
            (
                "batch statistics",
                "your value is what the batch statistics give: batch norm normalizes with the "
                "running mean and variance in eval mode",
                layer(float(stats.mean[c]), float(stats.var_biased[c])),
            )
        )
    if not (before.running_mean[c] == 0 and before.running_var[c] == 1):
        candidates.append(
            (
                "untrained running statistics",
                "your value is what untrained running statistics give (mean 0, var 1)",
                layer(0.0, 1.0),
            )
        )
    if (w, b) != (1.0, 0.0):
        candidates.append(
            (
                "no weight and bias",
                "your value is what leaving out weight and bias gives",
                layer(mean, var, weight=1.0, bias=0.0),
            )
        )
    if w != b:
        candidates.append(
            (
                "weight and bias swapped",
                "your value is what swapping weight and bias gives",
                layer(mean, var, weight=b, bias=w),
            )
        )
    if w != 1.0:
        candidates.append(
            (
                "weight before normalizing",
                "your value is what multiplying by the weight before normalizing gives (it "
                "cancels but for its sign and eps)",
                lambda t: layer(mean * w, var * w * w, weight=1.0)(np.multiply(t, w)),
            )
        )
    fitted_from = len(candidates)
    if not isinstance(solved_eps, Undefined) and math.isfinite(solved_eps) and solved_eps > 0:
        # The eps this element implies, named when a known default gives their value.
        for known, who in KNOWN_EPS.items():
            if known != eps:
                candidates.append(
                    (
                        f"eps {known:g}",
                        f"your value is what eps {known:g} ({who}) gives instead of the stated "
                        f"{eps:g} (solved from your value: {eps_text(solved_eps)})",
                        layer(mean, var, known),
                    )
                )
    found = []
    for order, (name, verdict, y) in enumerate(candidates):
        unit = _unit(y(values), w, dtype)
        with np.errstate(invalid="ignore"):
            distance = abs(float(y(x)) - y_theirs)
        if math.isfinite(distance) and _within(distance, rounding * unit, digit):
            left = distance / digit if digit is not None else distance / unit if unit else 0.0
            found.append((order >= fitted_from, left, order, name, verdict))
    found.sort()  # as check ranks them: the eps fitted to this element after the others
    return [(left, name, verdict) for _, left, _, name, verdict in found]


def _verdict(found, implied_var, solved_eps, var, mean, digit: float | None = None) -> str:
    if found:
        left, _, verdict = found[0]
        also = [name for _, name, _ in found[1:]]
        measure = (
            f"{left:.3g} ULP at the channel's scale"
            if digit is None
            else f"{left:.2g} units of your last digit ({digit:g})"
        )
        return f"{verdict}; it leaves {measure}" + (
            f" (also within rounding: {', '.join(also)})" if also else ""
        )
    if isinstance(implied_var, Undefined):
        return (
            "your value differs, but it cannot be solved back for the variance (weight 0 or "
            "x at the mean); run bninspect check on the whole tensor"
        )
    return (
        f"the numbers part before x_hat: your value needs var = {implied_var:.6g} where the "
        f"reference has {var:.6g}, if the mean ({mean:.6g}) and eps are right (or eps = "
        f"{eps_text(solved_eps)} if the variance is right); no known mistake gives it; run "
        "bninspect check to try them all on the whole tensor"
    )
