"""``check --grad-input``: their dx (and optionally dweight, dbias) against the float64
reference, with autograd's beside it, and the backward mistake that explains them, if any.

A mistake explains their gradients when, under it, every gradient they gave is within
GRAD_ROUNDING_ULPS ULPs of the dtype at each channel's scale (what a correct implementation in
the dtype leaves; autograd's own stays within 3) while under the stated formulas it is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bninspect.check.compare import (
    absolute_errors,
    mismatched,
    relative_error,
    suggested_tolerance,
    ulp_error,
    worst_indices,
)
from bninspect.check.report import tolerance_for
from bninspect.grad.backward import GRAD_ROUNDING_ULPS, Backward, as_number, cs231n
from bninspect.grad.variants import CATALOGUE, Pass
from bninspect.numerics.agreement import ulp
from bninspect.pytorch.inspection import Inspection
from bninspect.pytorch.peer import describe_peer
from bninspect.results.check import Tolerance
from bninspect.results.common import Number, Undefined, Verdict
from bninspect.results.grad import (
    GradChannelCheck,
    GradCheckResult,
    GradDiagnosis,
    GradElement,
    GradHypothesis,
    GradientCheck,
)
from bninspect.text import number as fmt

SHORT = {"grad_input": "dx", "grad_weight": "dweight", "grad_bias": "dbias"}
NO_SCALE = "no scale: the gradient and its terms are 0 in this channel"


@dataclass(frozen=True)
class TheirGradient:
    """One gradient they gave: float64 values (exact), the file and its stored dtype."""

    name: str  # grad_input, grad_weight or grad_bias
    values: np.ndarray
    path: str
    sha256: str
    dtype: str


def _as_grid(values: np.ndarray) -> np.ndarray:
    """(C,) per-channel gradients as (1, C), so every comparison is per channel on axis 1."""
    values = np.asarray(values, dtype=np.float64)
    return values.reshape(1, -1) if values.ndim == 1 else values


def scaled_by_channel(theirs: np.ndarray, candidate: np.ndarray, scale: np.ndarray, dtype: str):
    """Per channel (C,), max |theirs - candidate| in ULPs of ``dtype`` at the channel's scale,
    the larger of ``scale`` and the candidate's own largest |value|; NaN against NaN agrees,
    other non-finite pairings are infinite."""
    t, y = _as_grid(theirs), _as_grid(candidate)
    axes = (0, *range(2, t.ndim))
    with np.errstate(invalid="ignore", over="ignore"):
        both_nan = np.isnan(t) & np.isnan(y)
        same_inf = np.isinf(t) & (t == y)
        error = np.where(both_nan | same_inf, 0.0, np.abs(t - y))
        error = np.where(np.isnan(error), np.inf, error)
        largest = np.max(error, axis=axes, initial=0.0)
        own = np.max(np.where(np.isfinite(y), np.abs(y), 0.0), axis=axes, initial=0.0)
        at = np.maximum(np.asarray(scale, dtype=np.float64), own)
        return np.where(largest == 0, 0.0, np.where(at > 0, largest / ulp(at, dtype), np.inf))


def pass_of(inspection: Inspection, backward: Backward) -> Pass:
    """The pass as the catalogue's variants take it."""
    stats, forward, params = inspection.stats, inspection.forward, inspection.params
    return Pass(
        x=np.asarray(inspection.batch, dtype=np.float64),
        dy=np.asarray(backward.dy, dtype=np.float64),
        batch_mean=stats.mean,
        var_biased=stats.var_biased,
        var_unbiased=stats.var_unbiased,
        mean=forward.mean,
        var=forward.var,
        eps=inspection.settings.eps,
        weight=params.weight,
        train=inspection.settings.mode == "train",
    )


def _element(flat, grid_shape, per_channel, theirs, reference, torch_values, abs_error, scale,
             dtype) -> GradElement:  # fmt: skip
    at = tuple(int(i) for i in np.unravel_index(flat, grid_shape))
    index = (at[1],) if per_channel else at
    e, r = float(abs_error[at]), float(reference[at])
    unit = float(ulp(scale[at[1]], dtype))
    return GradElement(
        index=index,
        theirs=float(theirs[at]),
        reference=r,
        torch=torch_values if isinstance(torch_values, Undefined) else float(torch_values[at]),
        abs_error=e,
        rel_error=float(relative_error(np.array(e), np.array(r))),
        ulp_error=float(ulp_error(np.array(e), np.array(r), dtype)),
        ulp_error_at_scale=0.0 if e == 0 else (e / unit if scale[at[1]] > 0 else np.inf),
    )


def gradient_tolerance(
    dtype: str, scale: np.ndarray, atol: float | None, rtol: float | None
) -> Tolerance:
    """The given --atol/--rtol (the other torch.testing's default), or by default, per channel,
    what a correct implementation in the dtype leaves: GRAD_ROUNDING_ULPS ULPs at the
    channel's scale (autograd's own stays within 3), rtol 0."""
    if atol is not None or rtol is not None:
        return tolerance_for(dtype, atol, rtol)
    with np.errstate(over="ignore"):
        bounds = GRAD_ROUNDING_ULPS * ulp(scale, dtype)
    return Tolerance(
        float(bounds.max(initial=0.0)),
        0.0,
        f"derived: {GRAD_ROUNDING_ULPS:g} ULPs of {dtype} at each channel's scale, what a "
        "correct implementation leaves (docs/grad.md)",
        tuple(float(b) for b in bounds),
    )


def _gradient_check(backward: Backward, their: TheirGradient, atol, rtol, top: int,
                    torch_name: str) -> GradientCheck:  # fmt: skip
    dtype, name = backward.dtype, their.name
    tolerance = gradient_tolerance(dtype, backward.scale_of(name), atol, rtol)
    per_channel = name != "grad_input"
    theirs = _as_grid(their.values)
    reference = _as_grid(backward.reference_of(name))
    scale = backward.scale_of(name)
    torch_values = backward.torch_of(name)
    torch_grid = None if isinstance(torch_values, Undefined) else _as_grid(torch_values)
    abs_error = absolute_errors(theirs, reference, dtype)
    mismatch = mismatched(abs_error, reference, tolerance)
    axes = (0, *range(2, theirs.ndim))
    largest = np.max(abs_error, axis=axes, initial=0.0)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        at_scale = np.where(largest == 0, 0.0, largest / ulp(scale, dtype))
        at_scale = np.where((largest != 0) & ~(scale > 0), np.nan, at_scale)
    channels = tuple(
        GradChannelCheck(c, float(largest[c]), as_number(at_scale[c], NO_SCALE),
                         int(mismatch[:, c].sum()), float(scale[c]))  # fmt: skip
        for c in range(theirs.shape[1])
    )
    shown_torch = torch_values if torch_grid is None else torch_grid
    worst = tuple(
        _element(int(i), theirs.shape, per_channel, theirs, reference, shown_torch, abs_error,
                 scale, dtype)  # fmt: skip
        for i in worst_indices(abs_error, top)
    )
    if torch_grid is None:
        torch_max: Number = torch_values
    else:
        torch_max = float(scaled_by_channel(torch_grid, reference, scale, dtype).max())
    overall = (
        Undefined(NO_SCALE) if np.isnan(at_scale).any() else float(np.max(at_scale, initial=0.0))
    )
    return GradientCheck(
        name=name,
        path=their.path,
        sha256=their.sha256,
        dtype=their.dtype,
        tolerance=tolerance,
        passed=bool(not mismatch.any()),
        elements=int(theirs.size),
        mismatches=int(mismatch.sum()),
        max_abs_error=float(np.max(abs_error, initial=0.0)),
        max_ulp_error_at_scale=overall,
        torch_max_ulp_error_at_scale=torch_max,
        cs231n=cs231n(theirs, reference),
        worst=worst,
        channels=channels,
        suggested=suggested_tolerance(
            theirs, their.dtype, reference, abs_error, torch_grid, dtype, tolerance, torch_name
        ),
    )


def diagnose(inspection: Inspection, backward: Backward, theirs: list[TheirGradient]
             ) -> GradDiagnosis:  # fmt: skip
    """Every applicable mistake with the error left under it, best first (most gradients
    explained, then least error left), and per wrong gradient the first one explaining it."""
    dtype = backward.dtype
    the_pass = pass_of(inspection, backward)
    order = {"grad_input": 0, "grad_weight": 1, "grad_bias": 2}

    def left_under(candidate) -> dict[str, float]:
        return {
            t.name: float(scaled_by_channel(t.values, candidate[order[t.name]],
                                            backward.scale_of(t.name), dtype).max(initial=0.0))
            for t in theirs
        }  # fmt: skip

    stated = left_under(tuple(backward.reference_of(n) for n in order))
    wrong = [name for name, v in stated.items() if v > GRAD_ROUNDING_ULPS]
    hypotheses = []
    for mistake in CATALOGUE:
        candidate = mistake.compute(the_pass)
        if candidate is None:
            continue
        left = left_under(candidate)
        keeps_right = all(left[n] <= GRAD_ROUNDING_ULPS for n in left if n not in wrong)
        explains = tuple(n for n in wrong if left[n] <= GRAD_ROUNDING_ULPS) if keeps_right else ()
        hypotheses.append(
            GradHypothesis(mistake.name, mistake.description, max(left.values()), left, explains)
        )
    hypotheses.sort(key=lambda h: (-len(h.explains), h.max_ulp_error_at_scale))
    best: dict[str, str | Undefined] = {}
    for name in order:
        if name not in stated:
            continue
        if name not in wrong:
            best[name] = "stated formulas"
            continue
        fits = [h for h in hypotheses if name in h.explains]
        best[name] = fits[0].name if fits else Undefined("no known mistake fits this gradient")
    return GradDiagnosis(
        explained=bool(wrong) and all(isinstance(best[n], str) for n in wrong),
        summary=_summary(stated, wrong, best, hypotheses, dtype),
        stated=stated,
        best=best,
        hypotheses=tuple(hypotheses),
    )


def _summary(stated, wrong, best, hypotheses, dtype: str) -> str:
    given = ", ".join(SHORT[n] for n in stated)
    if not wrong:
        worst = max(stated.values())
        return (
            f"your {given} match the stated formulas within {fmt(worst)} ULP of {dtype} at "
            "each channel's scale: nothing to explain"
        )
    described = {h.name: h for h in hypotheses}
    sentences = []
    for name in wrong:
        fit = best[name]
        if isinstance(fit, Undefined):
            left = min((h.left[name] for h in hypotheses), default=stated[name])
            closest = min(hypotheses, key=lambda h: h.left[name]) if hypotheses else None
            near = f"; the closest, {closest.name}, leaves {fmt(left)}" if closest else ""
            sentences.append(
                f"no known mistake explains your {SHORT[name]} ({fmt(stated[name])} ULP at "
                f"scale under the stated formulas{near})"
            )
            continue
        h = described[fit]
        others = [x.name for x in hypotheses if name in x.explains and x.name != fit]
        also = f" (equally fitting here: {', '.join(others)})" if others else ""
        sentences.append(
            f"{SHORT[name]}: your backward {h.description}; under that mistake the error "
            f"drops from {fmt(stated[name])} to {fmt(h.left[name])} ULP at scale{also}"
        )
    return "; ".join(sentences)


def build_grad_check(
    inspection: Inspection,
    backward: Backward,
    theirs: list[TheirGradient],
    atol: float | None,
    rtol: float | None,
    top: int,
) -> GradCheckResult:
    """The whole ``check`` report for their gradients."""
    settings = inspection.settings
    torch_name = (
        f"autograd through torch.nn.{settings.module} in {settings.mode} mode, {backward.dtype}"
    )
    checks = tuple(_gradient_check(backward, t, atol, rtol, top, torch_name) for t in theirs)
    diagnosis = diagnose(inspection, backward, theirs)
    passed = all(g.passed for g in checks)
    torch_version = (
        backward.torch.version
        if backward.torch is not None
        else Undefined(f"PyTorch was not run: {backward.no_torch}")
    )
    return GradCheckResult(
        verdict=_verdict(checks, diagnosis, passed, backward.dtype),
        input=inspection.tensor.info,
        settings=settings,
        grad_output=backward.grad_output,
        torch_version=torch_version,
        torch_module=describe_peer(inspection),
        rounding_ulps=GRAD_ROUNDING_ULPS,
        passed=passed,
        gradients=checks,
        diagnosis=diagnosis,
    )


def _verdict(checks, diagnosis: GradDiagnosis, passed: bool, dtype: str) -> Verdict:
    def at_scale(g: GradientCheck) -> str:
        value = g.max_ulp_error_at_scale
        return "n/a" if isinstance(value, Undefined) else fmt(value)

    if passed:
        listed = ", ".join(f"{SHORT[g.name]} {at_scale(g)}" for g in checks)
        first = (
            f"your gradients match the float64 reference within tolerance: {listed} ULP "
            f"of {dtype} at each channel's scale"
        )
        if any(h.explains for h in diagnosis.hypotheses):  # within atol/rtol, yet a mistake fits
            return Verdict("pass", (first, diagnosis.summary))
        return Verdict("pass", (first,))
    failing = [g for g in checks if not g.passed]
    first = "; ".join(
        f"your {SHORT[g.name]} misses the reference at {g.mismatches} of {g.elements} elements "
        f"(max {at_scale(g)} ULP of {dtype} at scale)"
        for g in failing
    )
    return Verdict("fail", (first, diagnosis.summary))
