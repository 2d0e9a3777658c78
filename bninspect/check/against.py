"""``explain --against``: their value for one element beside the derivation, and the values of
the earlier steps it implies, solving backwards from their y with everything before assumed
right: where those part from the reference is where their computation did."""

from __future__ import annotations

import math

import numpy as np

from bninspect.check.compare import ROUNDING_ULPS
from bninspect.check.variants import KNOWN_EPS, eps_text
from bninspect.numerics.agreement import output_scale, ulp
from bninspect.numerics.reference import channel_values, forward_output
from bninspect.pytorch.inspection import Inspection
from bninspect.results.check import OutputInfo
from bninspect.results.common import Number, Undefined
from bninspect.results.explain import AgainstReport, ImpliedStep


def against_report(
    inspection: Inspection,
    index: tuple[int, ...],
    theirs: np.ndarray,
    info: OutputInfo,
    first_row: int,
) -> AgainstReport:
    """Their value for output[index] (``index`` into the last batch, which starts at row
    ``first_row`` of their stacked output) against the derivation's."""
    c = index[1]
    forward, params = inspection.forward, inspection.params
    eps, dtype = inspection.settings.eps, inspection.tensor.info.dtype
    w, b = float(params.weight[c]), float(params.bias[c])
    x = float(inspection.batch[index])
    mean, var, std = float(forward.mean[c]), float(forward.var[c]), float(forward.std[c])
    y_ref = float(forward_output(forward, x, c, w, b))
    y_theirs = float(theirs[(first_row + index[0], *index[1:])])
    values = channel_values(inspection.batch, c)
    channel_y = forward_output(forward, values, c, w, b)
    unit = _unit(channel_y, w, dtype)
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
    if not isinstance(scaled, Undefined) and scaled <= ROUNDING_ULPS:
        verdict = "your value matches the reference to rounding: the steps agree"
    else:
        solved_eps = (
            implied_std * implied_std - var
            if not isinstance(implied_std, Undefined)
            else implied_std
        )
        found = _mistakes(inspection, c, x, values, y_theirs, solved_eps)
        verdict = _verdict(found, implied_var, solved_eps, var, mean)
    return AgainstReport(info.path, y_theirs, abs_error, scaled, steps, verdict)


def _unit(channel_y: np.ndarray, weight: float, dtype: str) -> float:
    """One ULP of ``dtype`` at the channel's scale (as check measures it)."""
    return float(ulp(output_scale(channel_y, weight), dtype))


def _mistakes(inspection, c, x, values, y_theirs, solved_eps) -> list[tuple[float, str, str]]:
    """The known mistakes whose y for this element is within ROUNDING_ULPS of theirs, at the
    mistaken channel's scale, as check's criterion: (ULPs left, short name, verdict), best
    first (the catalogue's order among equals), an eps fitted to the element after the rest."""
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
            left = abs(float(y(x)) - y_theirs) / unit if unit else math.inf
        if left <= ROUNDING_ULPS:
            found.append((order >= fitted_from, left, order, name, verdict))
    found.sort()  # as check ranks them: the eps fitted to this element after the others
    return [(left, name, verdict) for _, left, _, name, verdict in found]


def _verdict(found, implied_var, solved_eps, var, mean) -> str:
    if found:
        left, _, verdict = found[0]
        also = [name for _, name, _ in found[1:]]
        return f"{verdict}; it leaves {left:.3g} ULP at the channel's scale" + (
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
