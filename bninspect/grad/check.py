"""``check --grad-input``: their dx (and optionally dweight, dbias) against the float64
reference, with autograd's beside it, and the backward mistake that explains them, if any.

Their gradients pass where every element is within what a correct backward in the dtype can
leave on this data, per channel (grad/tolerance.py: the bound, from the dtype and the data's
conditioning, as the forward's check/tolerance.py). A mistake explains a gradient when, under
it, every channel's error is within what a correct implementation of the mistake can leave
while under the stated formulas it is not, and every gradient right under the stated formulas
stays right. Elements NaN or infinite in theirs where the reference is finite are reported as
such (counts, first indices) and left out of the diagnosis: no mistake in the catalogue makes a
NaN or an infinity from finite input, so none is ranked for them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from bninspect.check.compare import (
    absolute_errors,
    mismatched,
    relative_error,
    suggested_tolerance,
    ulp_error,
    worst_indices,
)
from bninspect.check.report import NAN_BOUND, non_finite_report, tolerance_for
from bninspect.grad.backward import (
    NO_BOUND,
    Backward,
    as_number,
    bound_number,
    cs231n,
    within_range,
)
from bninspect.grad.tolerance import GradientBounds
from bninspect.grad.variants import CATALOGUE, ONE_FORM, Pass
from bninspect.numerics.agreement import ulp
from bninspect.pytorch.inspection import Inspection
from bninspect.pytorch.peer import describe_peer
from bninspect.results.check import NonFinite, Tolerance
from bninspect.results.common import Number, Undefined, Verdict
from bninspect.results.grad import (
    Cs231nError,
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
ONE_FORM_REASON = "one form: the staged backward and the compact formula agree under it"
NON_FINITE_REASON = (
    "a NaN or infinity on one side against a finite value on the other is a mismatch: no "
    "tolerance makes them equal"
)
CS231N_NON_FINITE = "your {} holds NaN or infinities where the reference is finite: CS231n's "
CS231N_NON_FINITE += "relative error is NaN or inf there, whatever the other elements"


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


@dataclass(frozen=True)
class Measure:
    """One candidate against their gradient, per channel (C,): the largest |theirs - candidate|
    over the elements finite in theirs, it in ULPs at the gradient's scale, and it over what a
    correct implementation of the candidate can leave (at most 1: within rounding)."""

    largest: np.ndarray
    at_scale: np.ndarray
    over_bound: np.ndarray

    @property
    def within(self) -> bool:
        return bool(np.all(self.over_bound <= 1))


def measure(theirs: np.ndarray, candidate: np.ndarray, name: str, bounds: GradientBounds
            ) -> Measure:  # fmt: skip
    """``theirs`` against ``candidate`` (float64, elementwise (N, C, ...) or per channel (C,))
    for gradient ``name``. Elements NaN or infinite in theirs are left out (reported apart); a
    candidate NaN or infinite where theirs is finite is an infinite error. The allowance is
    the bound with its arithmetic taken at the candidate's own size (GradientBounds.limits)."""
    dtype, scale = bounds.dtype, bounds.scales[name]
    t, y = _as_grid(theirs), _as_grid(within_range(candidate, dtype))
    axes = (0, *range(2, t.ndim))
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        judged = np.isfinite(t)
        error = np.where(judged, np.abs(t - y), 0.0)
        error = np.where(np.isnan(error), np.inf, error)
        largest = np.max(error, axis=axes, initial=0.0)
        own = np.max(np.where(np.isfinite(y), np.abs(y), 0.0), axis=axes, initial=0.0)
        limits = bounds.limits(name, own)
        limits = np.where(np.isnan(limits), 0.0, limits)  # statistics not finite: exact only
        at_scale = np.where(
            largest == 0, 0.0, np.where(scale > 0, largest / ulp(scale, dtype), np.inf)
        )
        over = np.where(largest == 0, 0.0, np.where(limits > 0, largest / limits, np.inf))
        over = np.where(np.isinf(largest), np.inf, over)  # a non-finite candidate: never within
    return Measure(largest, at_scale, over)


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
    bounds: GradientBounds, name: str, atol: float | None, rtol: float | None
) -> Tolerance:
    """The given --atol/--rtol (the other torch.testing's default), or by default, per channel,
    what a correct backward in the dtype can leave on this data (grad/tolerance.py), rtol 0."""
    dtype = bounds.dtype
    if atol is not None or rtol is not None:
        return tolerance_for(dtype, atol, rtol)
    total = bounds.total(name)
    finite = total[np.isfinite(total)]
    return Tolerance(
        float(finite.max()) if finite.size else 0.0,
        0.0,
        f"derived from {dtype} and the data's conditioning: per channel, what a correct "
        "backward can leave (docs/grad.md)",
        tuple(float(b) if not np.isnan(b) else Undefined(NAN_BOUND) for b in total),
    )


def _gradient_check(backward: Backward, their: TheirGradient, atol, rtol, top: int,
                    torch_name: str) -> GradientCheck:  # fmt: skip
    dtype, name = backward.dtype, their.name
    bounds = backward.bounds
    tolerance = gradient_tolerance(bounds, name, atol, rtol)
    per_channel = name != "grad_input"
    theirs = _as_grid(their.values)
    reference = _as_grid(within_range(backward.reference_of(name), dtype))
    scale = backward.scale_of(name)
    torch_values = backward.torch_of(name)
    torch_grid = None if isinstance(torch_values, Undefined) else _as_grid(torch_values)
    abs_error = absolute_errors(theirs, reference, dtype)
    mismatch = mismatched(abs_error, reference, tolerance)
    axes = (0, *range(2, theirs.ndim))
    finite_error = np.where(np.isfinite(abs_error), abs_error, 0.0)
    largest = np.max(finite_error, axis=axes, initial=0.0)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        at_scale = np.where(largest == 0, 0.0, largest / ulp(scale, dtype))
        at_scale = np.where((largest != 0) & ~(scale > 0), np.nan, at_scale)
        theirs_only = (~np.isfinite(theirs) & np.isfinite(reference)).sum(axis=axes)
    bound_ulps = backward.bound_ulps_of(name)
    channels = tuple(
        GradChannelCheck(c, float(largest[c]), as_number(at_scale[c], NO_SCALE),
                         int(mismatch[:, c].sum()), float(scale[c]),
                         bound_number(bound_ulps[c]), int(theirs_only[c]))  # fmt: skip
        for c in range(theirs.shape[1])
    )
    shown_torch = torch_values if torch_grid is None else torch_grid
    # Their NaN and infinities are reported apart (non_finite, the verdict): the worst are the
    # largest errors of the elements that have one.
    worst = tuple(
        _element(int(i), theirs.shape, per_channel, theirs, reference, shown_torch, abs_error,
                 scale, dtype)  # fmt: skip
        for i in worst_indices(finite_error, top)
    )
    if torch_grid is None:
        torch_max: Number = torch_values
    else:
        torch_max = float(measure(torch_grid, reference, name, bounds).at_scale.max(initial=0.0))
    overall = (
        Undefined(NO_SCALE) if np.isnan(at_scale).any() else float(np.max(at_scale, initial=0.0))
    )
    finite_bounds = bound_ulps[np.isfinite(bound_ulps)]
    non_finite = non_finite_report(theirs, reference, counted=True)
    if isinstance(non_finite, NonFinite):  # check's reason names a forward-only option
        indices = non_finite.indices
        if per_channel:  # a channel's index, not (0, c)
            indices = tuple((i[1],) for i in indices)
        non_finite = replace(non_finite, indices=indices, reason=NON_FINITE_REASON)
    score = cs231n(theirs, reference)
    if (~np.isfinite(theirs) & np.isfinite(reference)).any():
        score = Cs231nError(Undefined(CS231N_NON_FINITE.format(SHORT[name])), "n/a")
    return GradientCheck(
        name=name,
        path=their.path,
        sha256=their.sha256,
        dtype=their.dtype,
        tolerance=tolerance,
        passed=bool(not mismatch.any()),
        elements=int(theirs.size),
        mismatches=int(mismatch.sum()),
        max_abs_error=float(np.max(finite_error, initial=0.0)),
        max_ulp_error_at_scale=overall,
        torch_max_ulp_error_at_scale=torch_max,
        cs231n=score,
        worst=worst,
        channels=channels,
        suggested=suggested_tolerance(
            theirs, their.dtype, reference, abs_error, torch_grid, dtype, tolerance, torch_name
        ),
        max_bound_ulps=float(finite_bounds.max()) if finite_bounds.size else Undefined(
            "no channel has a finite bound"),  # fmt: skip
        non_finite=non_finite,
    )


def diagnose(inspection: Inspection, backward: Backward, theirs: list[TheirGradient]
             ) -> GradDiagnosis:  # fmt: skip
    """Every applicable mistake, in the form that fits it best, with the error left under it,
    best first (most gradients explained, then least error over the bound), and per wrong
    gradient the first one explaining it. Their non-finite elements are left out."""
    bounds = backward.bounds
    the_pass = pass_of(inspection, backward)
    order = {"grad_input": 0, "grad_weight": 1, "grad_bias": 2}

    def measures(candidate) -> dict[str, Measure]:
        return {t.name: measure(t.values, candidate[order[t.name]], t.name, bounds)
                for t in theirs}  # fmt: skip

    stated = measures(tuple(backward.reference_of(n) for n in order))
    wrong = [name for name, m in stated.items() if not m.within]
    hypotheses = []
    for mistake in CATALOGUE:
        forms = mistake.compute(the_pass)
        if forms is None:
            continue
        tried = []
        for form, candidate in forms.items():
            got = measures(candidate)
            keeps_right = all(got[n].within for n in got if n not in wrong)
            explains = tuple(n for n in wrong if got[n].within) if keeps_right else ()
            worst = max(float(m.over_bound.max(initial=0.0)) for m in got.values())
            tried.append((-len(explains), worst, form, got, explains))
        _, _, form, got, explains = min(tried, key=lambda t: (t[0], t[1]))
        hypotheses.append(
            GradHypothesis(
                name=mistake.name,
                description=mistake.description,
                max_ulp_error_at_scale=max(_largest(m.at_scale) for m in got.values()),
                left={n: _largest(m.at_scale) for n, m in got.items()},
                explains=explains,
                over_bound={n: _largest(m.over_bound) for n, m in got.items()},
                form=Undefined(ONE_FORM_REASON) if form == ONE_FORM else form,
            )
        )
    hypotheses.sort(key=lambda h: (-len(h.explains), max(h.over_bound.values())))
    best: dict[str, str | Undefined] = {}
    for name in order:
        if name not in stated:
            continue
        if name not in wrong:
            best[name] = "stated formulas"
            continue
        fits = [h for h in hypotheses if name in h.explains]
        best[name] = fits[0].name if fits else Undefined("no known mistake fits this gradient")
    stated_left = {n: _largest(m.at_scale) for n, m in stated.items()}
    partial = {t.name for t in theirs if not np.isfinite(t.values).all()}
    return GradDiagnosis(
        explained=bool(wrong) and all(isinstance(best[n], str) for n in wrong),
        conclusion=_summary(stated_left, wrong, best, hypotheses, backward, partial),
        stated=stated_left,
        explained_by=best,
        hypotheses=tuple(hypotheses),
        stated_over_bound={n: _largest(m.over_bound) for n, m in stated.items()},
    )


def _largest(values: np.ndarray) -> float:
    """The largest per-channel value (inf stays inf: the JSON says why it is null)."""
    return float(np.max(values, initial=0.0))


def _summary(stated, wrong, best, hypotheses, backward: Backward, partial: set[str]) -> str:
    """The diagnosis in a sentence or two; ``partial``: the gradients holding NaN or
    infinities, judged on their finite elements."""
    dtype = backward.dtype
    given = ", ".join(SHORT[n] + (" (its finite elements)" if n in partial else "")
                      for n in stated)  # fmt: skip
    if not wrong:
        worst = max(stated.values())
        bounds = [backward.bound_ulps_of(n) for n in stated]
        bound = max(float(np.max(b[np.isfinite(b)], initial=0.0)) for b in bounds)
        verb = "matches" if len(stated) == 1 else "match"
        return (
            f"your {given} {verb} the stated formulas within {fmt(worst)} ULP of {dtype} at "
            f"each channel's scale (a correct backward can leave up to {bound:.3g} here): "
            "nothing to explain"
        )
    described = {h.name: h for h in hypotheses}
    sentences = []
    for name in wrong:
        fit = best[name]
        if isinstance(fit, Undefined):
            closest = min(hypotheses, key=lambda h: h.over_bound[name]) if hypotheses else None
            near = (
                f"; the closest, {closest.name}, leaves {fmt(closest.left[name])}"
                if closest is not None
                else ""
            )
            sentences.append(
                f"no known mistake explains your {SHORT[name]} ({fmt(stated[name])} ULP at "
                f"scale under the stated formulas{near})"
            )
            continue
        h = described[fit]
        form = "" if isinstance(h.form, Undefined) else f", in the {h.form} form"
        others = [x.name for x in hypotheses if name in x.explains and x.name != fit]
        also = f" (equally fitting here: {', '.join(others)})" if others else ""
        sentences.append(
            f"{SHORT[name]}: your backward {h.description}{form}; under that mistake the error "
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
    compared = {n: within_range(backward.reference_of(n), backward.dtype) for n in SHORT}
    torch_version = (
        backward.torch.version
        if backward.torch is not None
        else Undefined(f"PyTorch was not run: {backward.no_torch}")
    )
    return GradCheckResult(
        verdict=_verdict(checks, theirs, compared, diagnosis, passed, backward.dtype),
        input=inspection.tensor.info,
        settings=settings,
        grad_output=backward.grad_output,
        torch_version=torch_version,
        torch_module=describe_peer(inspection),
        passed=passed,
        gradients=checks,
        diagnosis=diagnosis,
    )


def _where(mask: np.ndarray, per_channel: bool) -> str:
    """The first index where ``mask`` (N, C, ...) holds, as '[n, c, ...]' ('[c]' per channel)."""
    at = [int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape)]
    return "[" + ", ".join(map(str, [at[1]] if per_channel else at)) + "]"


def _non_finite_text(name: str, values: np.ndarray, reference: np.ndarray) -> str | None:
    """'2 NaN (first at [1, 2, 3, 0]) and 1 infinity (first at [0, 0, 0, 1]) where the
    reference is finite', or None: their gradient's NaN and infinities, counted apart."""
    t, r = _as_grid(values), _as_grid(reference)
    per_channel = name != "grad_input"
    with np.errstate(invalid="ignore"):
        finite_reference = np.isfinite(r)
        nan = np.isnan(t) & finite_reference
        inf = np.isinf(t) & finite_reference
        agree = (np.isnan(t) & np.isnan(r)) | (np.isinf(t) & (t == r))
        off_reference = ~finite_reference & ~agree
    kinds = []
    for mask, one, many in ((nan, "NaN", "NaN"), (inf, "infinity", "infinities")):
        n = int(mask.sum())
        if n:
            kinds.append(f"{n} {one if n == 1 else many} (first at {_where(mask, per_channel)})")
    parts = [f"{' and '.join(kinds)} where the reference is finite"] if kinds else []
    n = int(off_reference.sum())
    if n:
        parts.append(f"{n} other value{'s' if n > 1 else ''} where the reference is NaN or "
                     f"infinite (first at {_where(off_reference, per_channel)})")  # fmt: skip
    return " and ".join(parts) if parts else None


def _unbounded(channel: GradChannelCheck) -> bool:
    """Whether the channel's bound is infinite (its reason says why), not NaN."""
    bound = channel.bound_ulps
    return isinstance(bound, Undefined) and bound.reason == NO_BOUND


def _verdict(checks, theirs, reference, diagnosis: GradDiagnosis, passed: bool, dtype: str
             ) -> Verdict:  # fmt: skip
    def at_scale(g: GradientCheck) -> str:
        value = g.max_ulp_error_at_scale
        return "n/a" if isinstance(value, Undefined) else fmt(value)

    def bound(g: GradientCheck) -> str:
        value = g.max_bound_ulps
        return "n/a" if isinstance(value, Undefined) else f"{value:.3g}"

    if passed:
        listed = ", ".join(f"{SHORT[g.name]} {at_scale(g)} (bound {bound(g)})" for g in checks)
        first = (
            f"your gradients match the float64 reference within tolerance: {listed} ULP "
            f"of {dtype} at each channel's scale"
        )
        unbounded = sorted({c.channel for g in checks if g.name != "grad_bias"
                            for c in g.channels if _unbounded(c)})  # fmt: skip
        if unbounded:  # a pass that says nothing: say so
            first += (
                f"; on {len(unbounded)} of {len(checks[0].channels)} channels the data's spread "
                f"is below what {dtype}'s statistics resolve, so any dx and dweight pass there "
                "(no mistake can be told apart)"
            )
        if any(h.explains for h in diagnosis.hypotheses):  # within atol/rtol, yet a mistake fits
            return Verdict("pass", (first, diagnosis.conclusion))
        return Verdict("pass", (first,))
    values = {t.name: t.values for t in theirs}
    texts = {g.name: _non_finite_text(g.name, values[g.name], reference[g.name]) for g in checks}
    failing = [g for g in checks if not g.passed]
    sentences = []
    for g in failing:
        text = (
            f"your {SHORT[g.name]} misses the reference at {g.mismatches} of {g.elements} "
            "elements"
        )
        non_finite = texts[g.name]
        if non_finite is not None:
            text += f": it holds {non_finite}"
            finite_wrong = g.mismatches - g.non_finite.theirs_only - g.non_finite.reference_only
            if finite_wrong > 0:
                text += (f", and {finite_wrong} finite ones are beyond the bound (max "
                         f"{at_scale(g)} ULP of {dtype} at scale, bound {bound(g)})")  # fmt: skip
        else:
            text += f" (max {at_scale(g)} ULP of {dtype} at scale, bound {bound(g)})"
        sentences.append(text)
    first = "; ".join(sentences)
    if any(text is not None for text in texts.values()):
        # No mistake of the catalogue makes a NaN or an infinity from finite input: their
        # non-finite elements are reported as such, the diagnosis is of the finite ones.
        none_finite = [SHORT[n] for n, v in values.items() if not np.isfinite(v).any()]
        rest = (
            "no known mistake makes a NaN or an infinity from finite input, so none is ranked "
            "for those elements"
        )
        if none_finite:
            verb = "has" if len(none_finite) == 1 else "have"
            rest += f"; your {' and '.join(none_finite)} {verb} no finite element to judge"
        judged = [n for n in diagnosis.stated if SHORT[n] not in none_finite]
        if not judged:
            pass
        elif not diagnosis.explained and all(
            diagnosis.stated_over_bound[n] <= 1 for n in judged
        ):
            rest += "; the finite ones match the stated formulas within rounding"
        else:
            rest += f"; of the finite ones: {diagnosis.conclusion}"
        return Verdict("fail", (first, rest))
    return Verdict("fail", (first, diagnosis.conclusion))
