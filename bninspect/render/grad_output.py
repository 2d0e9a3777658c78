"""The backward pass's results as rich tables: ``run --grad``, ``explain --grad`` and ``check
--grad-input``. Verdict first; every table fits 80 columns. Formats; never computes."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text

from bninspect.render.cells import comparison_table, fmt, grid, listing
from bninspect.render.check_view import non_finite_note
from bninspect.results.common import Comparison, Undefined, Verdict
from bninspect.results.grad import (
    CS231N_CAVEAT,
    CS231N_FORMULA,
    Cs231nError,
    GradCheckResult,
    GradExplain,
    GradientCheck,
    GradOutputInfo,
    GradPrecision,
    GradRun,
)

SHORT = {"grad_input": "dx", "grad_weight": "dweight", "grad_bias": "dbias"}
SHOWN_HYPOTHESES = 4  # rejected ones beyond the explaining: the closest few; --json has all


GOOD = ("pass", "agrees", "exact", "within-rounding")


def verdict_text(verdict: Verdict, label: str) -> Text:
    """A section's own verdict (the backward's, under run's or explain's), labelled."""
    style = "bold green" if verdict.status in GOOD else (
        "bold" if verdict.status == "not-compared" else "bold red")  # fmt: skip
    return Text(f"{label}: " + "\n".join(verdict.summary), style=style)


def grad_output_text(info: GradOutputInfo) -> str:
    if info.source == "generated":
        return (
            f"dy      standard normal, numpy.random.default_rng([{info.seed}, {info.stream}]) "
            f"(--seed {info.seed}, stream {info.stream}), {info.dtype}"
        )
    return f"dy      {info.path} (sha256 {(info.sha256 or '')[:16]}...), {info.dtype}"


def _cs231n_text(scores: dict[str, Cs231nError]) -> Text:
    listed = ", ".join(
        f"{SHORT[name]} {fmt(s.rel_error)} ({s.reading})" for name, s in scores.items()
    )
    return Text(
        f"CS231n relative error, {CS231N_FORMULA}: {listed}\n"
        f"(above 1e-2 reads wrong, below 1e-7 good; {CS231N_CAVEAT})",
        style="dim",
    )


def _with_bound(value, bound) -> str:
    """'22.1 (1.08e+03)': an error beside its bound, three digits each."""
    if isinstance(value, Undefined):
        return "n/a"
    return f"{fmt(value, 3)} ({fmt(bound, 3)})"


def render_grad_run(result: GradRun, dtype: str) -> list[RenderableType]:
    """The backward's verdict, then one table per channel, then the CS231n figures."""
    parts: list[RenderableType] = [
        verdict_text(result.verdict, "backward"),
        Text(grad_output_text(result.grad_output)),
    ]
    headers = [
        "ch",
        "sum dy\n(= dbias)",
        "sum dy*x_hat\n(= dweight)",
        "dx ULP\n(bound)",
        "dweight ULP\n(bound)",
        "dbias ULP\n(bound)",
    ]
    rows = [
        [
            str(c.channel),
            fmt(c.sum_grad_output),
            fmt(c.sum_grad_output_x_hat),
            _with_bound(c.grad_input_ulp_error_at_scale, c.grad_input_bound_ulps),
            _with_bound(c.grad_weight_ulp_error_at_scale, c.grad_weight_bound_ulps),
            _with_bound(c.grad_bias_ulp_error_at_scale, c.grad_bias_bound_ulps),
        ]
        for c in result.channels
    ]
    title = (
        f"Backward ({result.mode} mode): autograd's error in ULP of {dtype} at scale, and "
        "what a correct backward can leave"
    )
    parts.append(grid(title, headers, rows))
    reasons = dict.fromkeys(
        value.reason
        for c in result.channels
        for value in (c.grad_input_ulp_error_at_scale, c.grad_weight_ulp_error_at_scale)
        if isinstance(value, Undefined)
    )
    if reasons:
        parts.append(Text("\n".join(f"n/a: {reason}" for reason in reasons)))
    if result.cs231n:
        parts.append(_cs231n_text(result.cs231n))
    return parts


def _steps_table(title: str, steps) -> RenderableType:
    """A derivation as explain's: step, the formula with the numbers, the value."""
    table = listing(title, ["step", "formula, with the numbers", "value"], wraps=1, right=(2,))
    for step in steps:
        computation = Text(f"{step.formula}\n  = {step.substitution}")
        if step.note:
            computation.append(f"\n{step.note}", style="dim")
        table.add_row(step.name, computation, fmt(step.value))
    return table


def _precision_table(report: GradPrecision, dtype: str) -> RenderableType:
    title = (
        f"Autograd's CPU backward redone ({report.path}; {report.cpu_capability} kernel, "
        f"{report.threads} threads)"
    )
    rows = [[s.name, s.how, repr(s.torch), f"{s.reference:.9g}"] for s in report.emulation]
    table = grid(title, ["step", "how PyTorch computes it", "PyTorch", "exact"], rows,
                 left=(0, 1))  # fmt: skip
    if report.bit_exact:
        line = "the emulation reproduces autograd's dx, dweight and dbias bit for bit"
    else:
        line = "the emulation does not reproduce autograd's values bit for bit here"
    return Group(table, Text(f"{line}\nemulation on this path: {report.claim}"))


def render_grad_explain(result: GradExplain, dtype: str) -> list[RenderableType]:
    """Verdict, dy, the staged derivation, the compact one, the three terms side by side,
    autograd's values against the reference, and --precision's steps."""
    index = ", ".join(map(str, result.index))
    parts: list[RenderableType] = [
        verdict_text(result.verdict, "backward"),
        Text(
            grad_output_text(result.grad_output)
            + f"\n        dy[{index}] = {fmt(result.grad_output_value)}; M = {result.count} "
            f"values per channel; {result.mode} mode"
        ),
        _steps_table(f"Backward through the graph, dx[{index}]", result.derivation),
        _steps_table("The compact formula", result.compact_derivation),
    ]
    if result.terms:
        rows = [[t.name, fmt(t.staged), fmt(t.compact)] for t in result.terms]
        rows.append(
            ["dx", fmt(sum(t.staged for t in result.terms)),
             fmt(sum(t.compact for t in result.terms))]  # fmt: skip
        )
        parts.append(
            grid("The three terms of dx, side by side", ["term", "staged", "compact"], rows,
                 left=(0,), section_ends=frozenset({len(rows) - 2}))  # fmt: skip
        )
    if not isinstance(result.torch_version, Undefined):
        parts.append(_autograd_table(result.comparisons, dtype))
        cs = result.cs231n
        parts.append(
            Text(
                f"CS231n relative error of autograd's dx here: {fmt(cs.rel_error)} "
                f"({cs.reading}); {CS231N_CAVEAT}",
                style="dim",
            )
        )
    if not isinstance(result.precision, Undefined):
        parts.append(_precision_table(result.precision, dtype))
    elif result.precision.asked_for:
        parts.append(Text(f"--precision (backward): {result.precision.reason}", style="yellow"))
    return parts


def _gradient_tables(g: GradientCheck, dtype: str) -> list[RenderableType]:
    status = "PASS" if g.passed else "FAIL"
    title = (
        f"{status} your {SHORT[g.name]}: {g.mismatches} of {g.elements} beyond tolerance"
    )
    rows = [
        [str(c.channel), fmt(c.max_abs_error), fmt(c.ulp_error_at_scale), fmt(c.bound_ulps, 3),
         str(c.mismatches), fmt(c.scale)]  # fmt: skip
        for c in g.channels
    ]
    headers = ["ch", "max |err|", "ULP at\nscale", "bound", "mismatches", "scale"]
    if any(c.non_finite for c in g.channels):
        for row, c in zip(rows, g.channels, strict=True):
            row.insert(4, str(c.non_finite))
        headers.insert(4, "NaN/Inf\nof yours")
    tol = g.tolerance
    if tol.per_channel_atol is not None:
        tolerance = f"tolerance {tol.source}"
    else:
        tolerance = (
            f"tolerance atol {fmt(tol.atol)} + rtol {fmt(tol.rtol)} * |reference| ({tol.source})"
        )
    parts: list[RenderableType] = [
        Text(
            f"{tolerance}\n"
            f"yours   {g.path} ({g.dtype}, sha256 {g.sha256[:16]}...): max "
            f"{fmt(g.max_ulp_error_at_scale)} ULP of {dtype} at scale (autograd's "
            f"{fmt(g.torch_max_ulp_error_at_scale)}; a correct backward can leave up to "
            f"{fmt(g.max_bound_ulps, 3)})"
        ),
        grid(title, headers, rows),
    ]
    if not isinstance(g.non_finite, Undefined):
        parts.append(non_finite_note(g.non_finite))
    worst = [e for e in g.worst if e.abs_error != 0]
    if worst:
        rows = [
            [",".join(map(str, e.index)), fmt(e.theirs), fmt(e.reference),
             fmt(e.torch), fmt(e.abs_error), fmt(e.ulp_error_at_scale)]  # fmt: skip
            for e in worst
        ]
        parts.append(
            grid(f"Largest errors of your {SHORT[g.name]}",
                 ["index", "yours", "reference", "autograd", "|err|", "ULP at scale"], rows,
                 left=(0,))  # fmt: skip
        )
    if not isinstance(g.suggested, Undefined) and not g.passed:
        parts.append(Text(f"to pass as it is (vs {g.suggested.expected}):\n"
                          f"  {g.suggested.assert_close}", style="dim"))  # fmt: skip
    score = g.cs231n.rel_error
    cs = (
        f"CS231n relative error n/a: {score.reason}"
        if isinstance(score, Undefined)
        else f"CS231n relative error {fmt(score)} ({g.cs231n.reading})"
    )
    parts.append(Text(cs, style="dim"))
    return parts


def render_grad_check(result: GradCheckResult, verbose: bool = False) -> list[RenderableType]:
    """(Under the verdict and what was inspected, from screen.py:) dy, each gradient's tables,
    then the diagnosis; every rejected mistake with --verbose."""
    dtype = result.input.dtype
    parts: list[RenderableType] = [Text(grad_output_text(result.grad_output))]
    for g in result.gradients:
        parts += _gradient_tables(g, dtype)
    hypotheses = result.diagnosis.hypotheses
    explaining = [h for h in hypotheses if h.explains]
    rejected = [h for h in hypotheses if not h.explains]
    nothing_wrong = all(v <= 1 for v in result.diagnosis.stated_over_bound.values())
    if nothing_wrong and not verbose:  # nothing to explain: the ranking would be noise
        parts.append(Text(result.diagnosis.conclusion, style="bold"))
        return parts
    shown = explaining + (rejected if verbose else rejected[:SHOWN_HYPOTHESES])
    names = [g.name for g in result.gradients]
    rows = [
        [h.name + ("" if isinstance(h.form, Undefined) else f" ({h.form})"),
         *(fmt(h.left[n]) for n in names), ", ".join(SHORT[n] for n in h.explains) or "-"]
        for h in shown
    ]  # fmt: skip
    table = grid(
        "Known backward mistakes, best first",
        ["mistake", *(f"{SHORT[n]}\nleft" for n in names), "explains"],
        rows,
        left=(0,),
    )
    parts.append(table)
    if len(shown) < len(hypotheses):
        more = len(hypotheses) - len(shown)
        parts.append(Text(f"{more} more rejected: --verbose shows them", style="dim"))
    parts.append(Text(result.diagnosis.conclusion, style="bold"))
    return parts


def _autograd_table(comparisons: tuple[Comparison, ...], dtype: str) -> RenderableType:
    return comparison_table(f"Autograd ({dtype}) vs the float64 reference", comparisons, "autograd")
