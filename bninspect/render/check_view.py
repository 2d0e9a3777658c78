"""``check``'s result as tables: the largest errors, the error per channel, the mistakes that
explain it; every element's decade, the rejected mistakes and, for a pass, the worst elements
under --verbose. Formats; never computes."""

from __future__ import annotations

import dataclasses

from rich.console import Group, RenderableType
from rich.text import Text

from bninspect.render.cells import fmt, grid, reasons_note
from bninspect.results.check import WHERE_FINITE, ChannelCheck, CheckResult, ElementError
from bninspect.results.common import Undefined
from bninspect.text import number_apart

BAR_WIDTH = 40


def _where(e: ElementError | Undefined) -> str:
    if isinstance(e, Undefined):
        return fmt(e)
    index = ", ".join(map(str, e.index))
    return f"at [{index}]: yours {fmt(e.theirs)}, reference {fmt(e.reference)}"


def _largest(result: CheckResult) -> str:
    """The largest |err| with its element, its channel, and its error at that channel's scale:
    one element's numbers, never mixed with another channel's."""
    e = result.worst_by_abs_error
    if isinstance(e, Undefined):
        return f"largest |err|: {fmt(e)}"
    channel = e.index[result.input.channel_axis] if len(e.index) > 1 else 0
    return (
        f"largest |err| {fmt(e.abs_error)} {_where(e)} (channel {channel}: "
        f"{fmt(e.ulp_error_at_scale)} ULP of {result.input.dtype} at its scale)"
    )


def _pattern(c: ChannelCheck) -> str:
    """The error's shape with its fitted numbers: 'scale x0.995', 'shift +0.02'."""
    if isinstance(c.factor, Undefined) or isinstance(c.offset, Undefined):
        return c.pattern  # "not finite": nothing was fitted
    shape = c.pattern.removesuffix(WHERE_FINITE)
    where = c.pattern[len(shape) :]
    offset = f"{'+' if shape != 'noise' and c.offset >= 0 else ''}{fmt(c.offset)}"
    factor = number_apart(c.factor, 1.0)
    if shape == "scale":
        return f"scale x{factor}{where}"
    if shape == "shift":
        return f"shift {offset}{where}"
    if shape == "scale and shift":
        return f"scale x{factor}, shift {offset}{where}"
    return c.pattern


def _histogram(result: CheckResult) -> Text:
    bins = [b for b in result.histogram if b.count]
    most = max((b.count for b in bins), default=1)
    lines = ["|error| of your output, elements per decade:"]
    for b in bins:
        if b.upper == 0:
            label = "exact"
        elif b.lower == 0:
            label = f"< {b.upper:.0e}"
        elif b.upper == float("inf"):
            label = f">= {b.lower:.0e} or NaN"
        else:
            label = f"{b.lower:.0e}"
        bar = "#" * max(1, round(BAR_WIDTH * b.count / most))
        lines.append(f"  {label:>14} {bar} {b.count}")
    return Text("\n".join(lines))


def yours_line(result: CheckResult) -> str:
    out = result.output
    return f"{out.path} ({out.dtype}, sha256 {out.sha256[:16]}...)"


def render_check(result: CheckResult, verbose: bool = False) -> list[RenderableType]:
    """The largest errors, the worst elements, the per-channel table, the tolerance that would
    pass (only where that is the right fix), the diagnosis; the histogram under --verbose."""
    out = result.output
    tol = result.tolerance
    parts: list[RenderableType] = []
    dtype = result.input.dtype
    largest_rel = getattr(result.worst_by_rel_error, "rel_error", result.worst_by_rel_error)
    lines = [_largest(result)]
    worst = max(
        (c for c in result.channels if not isinstance(c.max_ulp_error_at_scale, Undefined)),
        key=lambda c: c.max_ulp_error_at_scale,
        default=None,
    )
    if worst is not None:
        lines.append(
            f"worst channel at its scale: {worst.channel}, {fmt(worst.max_ulp_error_at_scale)} "
            f"ULP of {dtype} (PyTorch's: {fmt(result.torch_max_ulp_error_at_scale)})"
        )
    if verbose:
        where = _where(result.worst_by_rel_error)
        lines.insert(1, f"largest relative error {fmt(largest_rel)} {where}")
    if not isinstance(result.diagnosis.note, Undefined):
        lines.append(f"note: {result.diagnosis.note}")
    parts.append(Text("\n".join(lines)))
    rows = [
        [
            ", ".join(map(str, e.index)),
            fmt(e.theirs),
            fmt(e.reference),
            fmt(e.torch),
            fmt(e.abs_error),
            fmt(e.rel_error),
            fmt(e.ulp_error_at_scale),
        ]
        for e in result.worst
    ]
    if rows and (verbose or result.mismatches):  # the output's worst, where it fails
        parts.append(
            grid(
                f"The {len(result.worst)} largest errors (ULP: of {dtype} at the channel's scale)",
                ["index", "yours", "reference", "PyTorch", "|err|", "rel err", "ULP"],
                rows,
            )
        )
    fields = [
        f
        for f in dataclasses.fields(ChannelCheck)
        if f.metadata.get("label")
        and (f.name != "non_finite" or any(c.non_finite for c in result.channels))
    ]
    rows = [
        [
            str(c.channel),
            *(_pattern(c) if f.name == "pattern" else fmt(getattr(c, f.name)) for f in fields),
        ]
        for c in result.channels
    ]
    parts.append(
        grid(
            "Your output vs the reference, per channel",
            ["ch", *(f.metadata["label"] for f in fields)],
            rows,
        )
    )
    note = reasons_note(
        [(f.metadata["label"], getattr(c, f.name)) for f in fields for c in result.channels]
    )
    if note:
        parts.append(note)
    if verbose:
        parts.append(_histogram(result))
    if not isinstance(result.non_finite, Undefined):
        parts.append(non_finite_note(result.non_finite))
    if isinstance(result.suggested, Undefined):
        # The verdict already says to fix the mistake, not the tolerance; the reason in full:
        if not result.passed and verbose:
            parts.append(Text(f"no assert_close line: {result.suggested.reason}"))
    elif not result.passed:
        suggested = result.suggested
        other = (
            f"or keep atol={tol.atol!r} and use rtol={suggested.rtol!r}"
            if not isinstance(suggested.rtol, Undefined)
            else f"no rtol alone passes it: {suggested.rtol.reason}"
        )
        parts.append(
            Text(
                f"to pass as it is, with mine = numpy.load({out.path!r}) and expected = "
                f"{suggested.expected}:\n{suggested.assert_close}\n({other})"
            )
        )
    diagnosis = result.diagnosis
    tried = diagnosis.hypotheses if verbose else [h for h in diagnosis.hypotheses if h.explains]
    if tried:
        rows = [
            [
                h.name,
                h.description + (f" ({h.detail})" if h.detail else ""),
                fmt(h.max_ulp_error_at_scale) + (f" {h.precision}" if h.precision != dtype else ""),
                fmt(h.max_over_bound),
                fmt(h.explains),
            ]
            for h in tried
        ]
        title = (
            "Known mistakes tried: those that explain it, then the closest"
            if verbose
            else "Known mistakes that explain it"
        )
        parts.append(
            grid(
                f"{title} (left: {dtype} ULPs at scale; x bound)",
                ["variant", "what it does", "error left", "x bound", "explains"],
                rows,
                left=(0, 1),
            )
        )
    if not isinstance(result.buffers, Undefined):
        parts.append(_buffers(result, verbose))
    if not verbose and len(tried) < len(diagnosis.hypotheses):
        rejected = len(diagnosis.hypotheses) - len(tried)
        parts.append(
            Text(f"--verbose lists the {rejected} other known mistakes tried", style="dim")
        )
    return parts


def _buffers(result: CheckResult, verbose: bool) -> RenderableType:
    """Their running buffers against the reference's update; the buffer mistakes that explain
    them (every one tried under --verbose)."""
    check = result.buffers
    rows = [
        [
            b.name,
            fmt(b.max_ulp_error_at_scale),
            fmt(b.bound_ulps),
            fmt(b.passed),
            fmt(b.explained_by)
            if not isinstance(b.explained_by, Undefined)
            else b.explained_by.reason,
        ]
        for b in check.buffers
    ]
    if not isinstance(check.num_batches_tracked, Undefined):
        t = check.num_batches_tracked
        rows.append(["num_batches_tracked", "", "", fmt(t.passed), t.detail])
    table = grid(
        f"Your buffers after the pass: {check.conclusion}",
        ["buffer", "ULP at scale", "correct can leave", "passed", "explained by"],
        rows,
        left=(0, 4),
    )
    tried = [h for h in check.hypotheses if verbose or h.explains]
    if not tried:
        return table
    rows = [
        [
            h.name,
            h.description,
            fmt(h.max_ulp_error_at_scale),
            fmt(h.max_over_bound),
            fmt(h.explains),
        ]
        for h in tried
    ]
    return Group(
        table,
        grid(
            "Known buffer mistakes " + ("tried" if verbose else "that explain them"),
            ["variant", "what it does", "ULP left", "x bound", "explains"],
            rows,
            left=(0, 1),
        ),
    )


def non_finite_note(nf) -> Text:
    """The elements NaN or infinite on one side only (a NonFinite, of check or check --grad-input):
    how many on each side, the first ones, and why they count as they do."""
    shown = "; ".join("[" + ", ".join(map(str, i)) + "]" for i in nf.indices)
    return Text(
        f"NaN/Inf on one side only: {nf.reference_only} where the reference is, "
        f"{nf.theirs_only} where yours is (first at {shown}): {nf.reason}"
    )
