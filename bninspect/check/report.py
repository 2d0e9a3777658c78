"""``check``'s report: their output against the reference (and PyTorch's beside it), the shape of
the error per channel, the tolerance that would pass it, and the diagnosis."""

from __future__ import annotations

import numpy as np

from bninspect.check.compare import (
    absolute_errors,
    channel_checks,
    element,
    histogram,
    largest_errors,
    mismatched,
    reference_output,
    scaled_errors,
    suggested_tolerance,
    worst_indices,
)
from bninspect.check.diagnosis import diagnose
from bninspect.check.variants import CATALOGUE
from bninspect.dtypes import float_format
from bninspect.pytorch.inspection import Inspection, PhaseProgress
from bninspect.pytorch.peer import describe_peer
from bninspect.results.check import CheckResult, Diagnosis, OutputInfo, Tolerance
from bninspect.results.common import Undefined, Verdict


def tolerance_for(dtype: str, atol: float | None, rtol: float | None) -> Tolerance:
    """The given atol/rtol, each defaulting to torch.testing.assert_close's for ``dtype``."""
    form = float_format(dtype)
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
        form.atol if atol is None else atol, form.rtol if rtol is None else rtol, source
    )


def build_check_result(
    inspection: Inspection,
    theirs: np.ndarray,
    output: OutputInfo,
    tolerance: Tolerance,
    top: int,
    progress: PhaseProgress | None = None,
) -> CheckResult:
    """The whole ``check`` report for their output (float64, the batch's shape), with a
    progress phase for the diagnosis (which tries every catalogued mistake) if ``progress``."""
    dtype, weight = inspection.tensor.info.dtype, inspection.params.weight
    reference = reference_output(inspection)
    torch_run = inspection.torch_run
    torch_out = torch_run.output if torch_run is not None else None
    abs_error = absolute_errors(theirs, reference, dtype)
    mismatch = mismatched(abs_error, reference, tolerance)
    stated = scaled_errors(theirs, reference, weight, dtype)
    tell = None
    if progress is not None:
        tell = progress("diagnosis", len(CATALOGUE) * inspection.batch.nbytes)
    diagnosis, best = diagnose(inspection, theirs, stated, tell)
    shape = theirs.shape

    def at(flat: int):
        return element(flat, shape, theirs, reference, torch_out, abs_error, dtype)

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
    passed, mismatches = bool(not mismatch.any()), int(mismatch.sum())
    return CheckResult(
        verdict=check_verdict(passed, mismatches, int(theirs.size), tolerance, diagnosis),
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
        max_abs_error=largest["abs"],
        max_rel_error=largest["rel"],
        max_ulp_error=largest["ulp"],
        max_scaled_error=float(stated.max()),
        worst=tuple(at(int(i)) for i in order),
        channels=channel_checks(theirs, reference, abs_error, mismatch, weight, dtype, best),
        suggested=suggested_tolerance(
            theirs,
            output.dtype,
            reference,
            abs_error,
            torch_out,
            dtype,
            tolerance,
            f"torch.nn.{inspection.settings.module} in {inspection.settings.mode} mode, {dtype}",
        ),
        histogram=histogram(abs_error),
        torch_max_scaled_error=torch_error,
        diagnosis=diagnosis,
    )


def check_verdict(
    passed: bool, mismatches: int, elements: int, tolerance: Tolerance, diagnosis: Diagnosis
) -> Verdict:
    """check's answer: PASS or FAIL with the count against the tolerance, then the diagnosis
    (the mistake named, or that there is nothing to explain)."""
    bound = f"atol {tolerance.atol:.3g} + rtol {tolerance.rtol:.3g} * |reference|"
    if passed:
        first = f"PASS: all {elements} elements within {bound} ({tolerance.source})."
    else:
        first = f"FAIL: {mismatches} of {elements} elements beyond {bound} ({tolerance.source})."
    summary = diagnosis.summary[0].upper() + diagnosis.summary[1:]
    return Verdict("pass" if passed else "fail", (first, summary.rstrip(".") + "."))
