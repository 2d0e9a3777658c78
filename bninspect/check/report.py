"""``check``'s report: their output against the reference (and PyTorch's beside it), the shape of
the error per channel, the tolerance that would pass it, and the diagnosis."""

from __future__ import annotations

import dataclasses

import numpy as np

from bninspect.check.buffers import check_buffers
from bninspect.check.compare import (
    absolute_errors,
    channel_checks,
    channel_chunks,
    element,
    histogram,
    largest_errors,
    mismatched,
    non_finite_disagreements,
    reference_output,
    scaled_errors,
    suggested_tolerance,
    worst_indices,
)
from bninspect.check.diagnosis import diagnose
from bninspect.check.tolerance import Judge, channel_bound, in_ulps, inspection_conditioning
from bninspect.check.variants import CATALOGUE
from bninspect.dtypes import float_format
from bninspect.numerics.agreement import output_scale
from bninspect.pytorch.inspection import Inspection, PhaseProgress
from bninspect.pytorch.peer import describe_peer
from bninspect.results.check import CheckResult, NonFinite, OutputInfo, Tolerance
from bninspect.results.common import Undefined, Verdict


def tolerance_for(
    dtype: str,
    atol: float | None,
    rtol: float | None,
    bound: np.ndarray | None = None,
    allow_nonfinite: bool = False,
) -> Tolerance:
    """The given atol/rtol, the one not given torch.testing.assert_close's for ``dtype``; with
    neither given and ``bound`` (per channel, what a correct implementation can leave), that
    bound as a per-channel atol and rtol 0."""
    form = float_format(dtype)
    if atol is None and rtol is None and bound is not None:
        finite = bound[np.isfinite(bound)]
        return Tolerance(
            float(finite.max()) if finite.size else 0.0,
            0.0,
            f"derived from {dtype} and the data's conditioning: per channel, what a correct "
            f"implementation can leave (docs/check.md)",
            tuple(float(b) if not np.isnan(b) else Undefined(NAN_BOUND) for b in bound),
            allow_nonfinite,
        )
    if atol is None and rtol is None:
        source = f"torch.testing's defaults for {dtype}"
    elif atol is not None and rtol is not None:
        source = "given"
    else:
        source = (
            f"{'atol' if atol is not None else 'rtol'} given, the other torch.testing's "
            f"default for {dtype}"
        )
    return Tolerance(
        form.atol if atol is None else atol,
        form.rtol if rtol is None else rtol,
        source,
        allow_nonfinite_mismatch=allow_nonfinite,
    )


NAN_BOUND = "the channel's statistics are not finite: only NaN against NaN or the same infinity"
MAX_NON_FINITE_SHOWN = 10


def non_finite_report(theirs, reference, counted: bool) -> NonFinite | Undefined:
    """The elements NaN or infinite on one side only, as a NonFinite (Undefined if none)."""
    reference_only, theirs_only = non_finite_disagreements(theirs, reference)
    if reference_only + theirs_only == 0:
        return Undefined("no element is NaN or infinite on one side only")
    indices = []
    for s in channel_chunks(theirs.shape):
        t, r = theirs[:, s], reference[:, s]
        with np.errstate(invalid="ignore"):
            agree = (np.isnan(t) & np.isnan(r)) | (np.isinf(t) & (t == r))
        at = np.argwhere((~np.isfinite(t) | ~np.isfinite(r)) & ~agree)
        for row in at[: MAX_NON_FINITE_SHOWN - len(indices)]:
            indices.append((int(row[0]), int(row[1]) + s.start, *map(int, row[2:])))
        if len(indices) >= MAX_NON_FINITE_SHOWN:
            break
    why = (
        "a NaN or infinity on one side against another value on the other is a mismatch: no "
        "tolerance makes them equal (--allow-nonfinite-mismatch leaves them out of the count)"
        if counted
        else "--allow-nonfinite-mismatch: not counted as mismatches"
    )
    return NonFinite(reference_only, theirs_only, tuple(indices), counted, why)


def _channel_scales(reference: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return np.array([output_scale(reference[:, c], weight[c]) for c in range(reference.shape[1])])


def build_check_result(
    inspection: Inspection,
    theirs: np.ndarray,
    output: OutputInfo,
    atol: float | None,
    rtol: float | None,
    top: int,
    progress: PhaseProgress | None = None,
    allow_nonfinite: bool = False,
    their_buffers=None,
) -> CheckResult:
    """The whole ``check`` report for their output (float64, the batch's shape), with a
    progress phase for the diagnosis (which tries every catalogued mistake) if ``progress``.
    ``their_buffers``: their running buffers after the pass (buffers.TheirBuffers), or None."""
    dtype, weight = inspection.tensor.info.dtype, inspection.params.weight
    reference = reference_output(inspection)
    torch_run = inspection.torch_run
    torch_out = torch_run.output if torch_run is not None else None
    cond = inspection_conditioning(inspection)
    scales = _channel_scales(reference, weight)
    bound = channel_bound(cond, scales, dtype).total
    if inspection.forward.passes_through:
        bound = np.zeros_like(bound)  # y is x itself: nothing to round
    tolerance = tolerance_for(dtype, atol, rtol, bound, allow_nonfinite)
    abs_error = absolute_errors(theirs, reference, dtype)
    mismatch = mismatched(abs_error, reference, tolerance, allow_nonfinite)
    stated = scaled_errors(theirs, reference, weight, dtype)
    limits = in_ulps(bound, scales, dtype)
    limits = np.where(np.isnan(limits), 0.0, limits)
    judge = Judge(cond, weight, dtype)
    tell = None
    if progress is not None:
        tell = progress("diagnosis", len(CATALOGUE) * inspection.batch.nbytes)
    diagnosis, best = diagnose(inspection, theirs, stated, limits, judge, tell)
    shape = theirs.shape
    passed_output = bool(not mismatch.any())
    hint = narrower_dtype_hint(inspection.batch, theirs, dtype) if not passed_output else None
    if hint is not None:
        output = dataclasses.replace(output, notices=(*output.notices, hint))
    non_finite = non_finite_report(theirs, reference, not allow_nonfinite)
    buffers = (
        check_buffers(inspection, their_buffers, cond)
        if their_buffers is not None
        else Undefined(
            "not asked for: give --their-running-mean, --their-running-var or "
            "--their-num-batches-tracked"
        )
    )
    passed = passed_output and (isinstance(buffers, Undefined) or buffers.passed)
    given = atol is not None or rtol is not None
    allowed = 0  # elements NaN or infinite on one side only, let pass by the option
    needed_stated = stated
    if allow_nonfinite and isinstance(non_finite, NonFinite):
        allowed = non_finite.reference_only + non_finite.theirs_only
        if allowed:  # whether a tolerance is needed is a question about the finite elements
            one_sided = np.isfinite(reference) != np.isfinite(theirs)
            with np.errstate(invalid="ignore"):
                one_sided |= np.isinf(reference) & np.isinf(theirs) & (reference != theirs)
            needed_stated = scaled_errors(np.where(one_sided, reference, theirs), reference,
                                          weight, dtype)  # fmt: skip
    needed = bool(np.any(needed_stated > limits))
    summary = _summary(passed_output, given, diagnosis, needed, non_finite, mismatch, theirs.size)
    if allowed and passed_output:
        summary += (
            f"; {allowed} element{'s' if allowed > 1 else ''} NaN or infinite on one side "
            "only, allowed by --allow-nonfinite-mismatch"
        )
    if not isinstance(buffers, Undefined) and not buffers.passed:
        if passed_output:
            output_part = summary.split(": ", 1)[1]
            summary = f"FAIL: {buffers.conclusion}; your output {output_part}"
        else:
            summary += f"; {buffers.conclusion}"
    named = diagnosis  # its conclusion says what, without PASS/FAIL
    diagnosis = dataclasses.replace(diagnosis, conclusion=summary)

    def at(flat: int):
        return element(flat, shape, theirs, reference, torch_out, abs_error, dtype, scales)

    order = worst_indices(abs_error, top)
    found = largest_errors(abs_error, reference, dtype) if abs_error.size else {}
    largest = {
        name: at(found[name]) if found else Undefined("no elements")
        for name in ("abs", "rel", "ulp")
    }
    torch_error = (
        float(scaled_errors(torch_out, reference, weight, dtype).max())
        if torch_out is not None
        else Undefined(f"PyTorch was not run: {inspection.no_peer}")
    )
    channels = channel_checks(theirs, reference, abs_error, mismatch, weight, dtype, best, bound)
    channels = tuple(
        dataclasses.replace(c, bound_ulps=float(limit))
        for c, limit in zip(channels, limits, strict=True)
    )
    mismatches = int(mismatch.sum())
    return CheckResult(
        verdict=check_verdict(
            passed, mismatches, int(theirs.size), tolerance, summary, allowed
        ),
        input=inspection.tensor.info,
        output=output,
        settings=inspection.settings,
        torch_version=torch_run.version
        if torch_run
        else Undefined(f"PyTorch was not run: {inspection.no_peer}"),
        torch_module=describe_peer(inspection),
        tolerance=tolerance,
        passed=passed,
        elements=int(theirs.size),
        mismatches=mismatches,
        max_ulp_error_at_scale=float(stated.max()),
        max_abs_error=float(abs_error.max()) if abs_error.size else 0.0,
        worst_by_abs_error=largest["abs"],
        worst_by_rel_error=largest["rel"],
        worst_by_ulp_error=largest["ulp"],
        worst=tuple(at(int(i)) for i in order),
        channels=channels,
        suggested=_suggestion(
            passed_output,
            needed,
            named,
            dtype,
            stated,
            limits,
            theirs,
            output,
            reference,
            abs_error,
            torch_out,
            tolerance,
            inspection,
            buffers,
        ),  # fmt: skip
        histogram=histogram(abs_error),
        torch_max_ulp_error_at_scale=torch_error,
        diagnosis=diagnosis,
        max_bound_ulps=float(limits.max()) if limits.size else 0.0,
        non_finite=non_finite,
        buffers=buffers,
    )


def narrower_dtype_hint(x: np.ndarray, theirs: np.ndarray, dtype: str) -> str | None:
    """For float32 data whose every value, input and output, is a bfloat16 (or float16)
    number: the likely story (a batch norm in that dtype, saved as float32 because .npy holds
    no bfloat16) and the option that judges it by that dtype's rounding. None otherwise."""
    if dtype != "float32":
        return None
    held = [
        name for name in ("bfloat16", "float16") if _all_held(x, name) and _all_held(theirs, name)
    ]
    if not held:
        return None
    names = " and ".join(held)
    return (
        f"every value of the input and of your output is exactly representable in {names}: if "
        f"they come from a {held[0]} batch norm saved as float32"
        + (" (.npy holds no bfloat16)" if held[0] == "bfloat16" else "")
        + f", give --dtype {held[0]} to judge it by {held[0]}'s rounding"
    )


def _all_held(a: np.ndarray, name: str) -> bool:
    """Whether every finite value of ``a`` is exactly a number of dtype ``name``."""
    narrow = float_format(name).numpy
    for s in channel_chunks(a.shape):
        part = np.asarray(a[:, s], dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            back = part.astype(narrow).astype(np.float64)
            if not np.all((back == part) | ~np.isfinite(part)):
                return False
    return True


def _summary(passed, given, diagnosis, needed, non_finite, mismatch, elements) -> str:
    """check's one-line verdict: PASS or FAIL, and why (the diagnosis' summary behind it)."""
    mismatches = int(mismatch.sum())
    if not passed and isinstance(non_finite, NonFinite) and non_finite.counted:
        count = non_finite.reference_only + non_finite.theirs_only
        more = "" if count == mismatches else f", {mismatches - count} more beyond the tolerance"
        return (
            f"FAIL: {count} of {elements} elements are NaN or infinite on one side only{more}; "
            + diagnosis.conclusion
        )
    if passed and not needed:
        return f"PASS: {diagnosis.conclusion}"
    if passed:
        which = "the given tolerance" if given else "the derived tolerance"
        return f"PASS within {which}, but {diagnosis.conclusion}"
    if diagnosis.explained:
        return f"FAIL: {diagnosis.conclusion}; fix that, not the tolerance"
    if not needed and given:
        return (
            "FAIL under the given tolerance, though the error is at the level of rounding: "
            + diagnosis.conclusion
        )
    return f"FAIL: {diagnosis.conclusion}"


def _suggestion(
    passed, needed, diagnosis, dtype, stated, limits,
    theirs, output, reference, abs_error, torch_out, tolerance, inspection, buffers,
):  # fmt: skip
    """The assert_close line, only where the output passes or its error is at the level of
    rounding, and their buffers (if given) pass; for a named mistake, why not (fix it, not
    the test)."""
    if not isinstance(buffers, Undefined) and not buffers.passed:
        return Undefined(
            f"{buffers.conclusion}: fix that; an assert_close line on the output would pass "
            "the wrong buffers"
        )
    if needed and not passed and np.all(np.isfinite(abs_error)):
        if diagnosis.explained:
            return Undefined(
                f"your output {diagnosis.conclusion}: fix that, not the tolerance; a tolerance "
                "that passes it would hide the mistake"
            )
        return Undefined(
            f"the error, {float(stated.max()):.3g} ULP of {dtype} at the channel's scale, is "
            f"beyond the {float(limits.max()):.3g} a correct implementation can leave on this "
            "data: a tolerance that passes it would hide a mistake"
        )
    return suggested_tolerance(
        theirs,
        output.dtype,
        reference,
        abs_error,
        torch_out,
        dtype,
        tolerance,
        f"torch.nn.{inspection.settings.module} in {inspection.settings.mode} mode, {dtype}",
    )


def check_verdict(
    passed: bool,
    mismatches: int,
    elements: int,
    tolerance: Tolerance,
    summary: str,
    allowed: int = 0,
) -> Verdict:
    """check's answer: the one-line verdict (PASS or FAIL, the mistake named and its channels,
    or that there is nothing to explain: the diagnosis' summary), then the count against the
    tolerance; ``allowed``: elements NaN or infinite on one side only that
    --allow-nonfinite-mismatch let pass, which are not "within" anything."""
    if tolerance.per_channel_atol is not None:
        bound = "the derived tolerance (docs/check.md)"
    else:
        bound = f"atol {tolerance.atol:.3g} + rtol {tolerance.rtol:.3g} * |reference|"
        bound += f" ({tolerance.source})"
    if not mismatches and not allowed:
        count = f"All {elements} elements within {bound}."
    elif not mismatches:
        count = (
            f"{elements - allowed} of {elements} elements within {bound}; {allowed} NaN or "
            "infinite on one side only, allowed by --allow-nonfinite-mismatch."
        )
    else:
        count = f"{mismatches} of {elements} elements beyond {bound}."
        if allowed:
            count += f" {allowed} NaN or infinite on one side only allowed."
    return Verdict("pass" if passed else "fail", (summary, count))
