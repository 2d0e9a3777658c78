"""``explain``'s result as a derivation table, PyTorch's y beside the reference, and the running
buffers; the buffers' full comparison under --verbose, --precision's and --against's tables when
asked for. Formats; never computes."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text

from bninspect import dtypes
from bninspect.render.cells import comparison_table, fmt, grid, listing
from bninspect.results.common import Comparison, Number, Undefined
from bninspect.results.explain import AgainstReport, ExplainResult, PrecisionReport, Step
from bninspect.text import digits_to_resolve


def full(value: Number) -> str:
    """Every digit of a float64 (repr), or n/a."""
    return fmt(value) if isinstance(value, Undefined) else repr(value)


in_dtype = dtypes.shortest_text


def _formula(step: Step) -> str:
    """'mean = sum / count' with the numbers: 'sum / count = 1.6809 / 12'."""
    formula = step.formula.removeprefix(f"{step.name} = ")
    if formula.startswith(step.name.split("_")[0] + " = "):  # e.g. "var = m2 / count"
        formula = formula.split(" = ", 1)[1]
    return f"{formula} = {step.substitution}"


def _derivation_table(result: ExplainResult) -> RenderableType:
    index = ", ".join(map(str, result.index))
    table = listing(
        f"output[{index}], channel {result.channel}, step by step",
        ["step", "formula, with the numbers", "value"],
        wraps=1,
        right=(2,),
    )
    other_rules = result.settings.convention != "pytorch"
    digits = _location_digits(result)
    for step in result.derivation:
        computation = Text(_formula(step))
        if step.note:
            computation.append(f"\n{step.note}", style="dim")
        if step.rule and other_rules:
            computation.append(f"\nrule: {step.rule}", style="cyan")
        if step.differs_from_pytorch:
            computation.append(f"\nPyTorch differs: {step.differs_from_pytorch}", style="yellow")
        table.add_row(step.name, computation, fmt(step.value, digits.get(step.name, 5)))
    return table


# The steps that sit at the data's location (x, the mean, their sum, the running mean) and the
# share of the channel's spread each must be resolved to: the view shows them with the digits
# that tell x from the mean, as the derivation's own substitutions do.
LOCATION_STEPS = {"x": 1.0, "mean": 1.0, "running_mean": 0.1, "stored_mean": 0.1}


def _location_digits(result: ExplainResult) -> dict[str, int]:
    values = {step.name: step.value for step in result.derivation}
    std = values.get("std")
    if not isinstance(std, float) or not std > 0:
        return {}
    digits = {
        name: digits_to_resolve([values[name]], 1e-4 * std * share)
        for name, share in LOCATION_STEPS.items()
        if isinstance(values.get(name), float)
    }
    count = values.get("count")
    if isinstance(values.get("sum"), float) and isinstance(count, (int, float)):
        digits["sum"] = digits_to_resolve([values["sum"]], 1e-4 * std * count)
    return digits


def _y_lines(result: ExplainResult) -> Text:
    y, dtype = result.y, result.input.dtype
    rounded = y.reference_rounded
    shown = rounded if isinstance(rounded, Undefined) else in_dtype(rounded, dtype)
    lines = [f"reference y  {full(y.reference)} (float64), {shown} rounded to {dtype}"]
    if isinstance(y.torch, Undefined):
        lines.append(f"PyTorch's y  {y.torch.reason}")
        return Text("\n".join(lines))
    lines.append(
        f"PyTorch's y  {in_dtype(y.torch, dtype)} ({short_hex(y.torch_hex)}): |err| "
        f"{fmt(y.abs_error, 3)}, {fmt(y.ulp_error_at_scale, 3)} ULP at scale"
    )
    return Text("\n".join(lines))


def short_hex(text: str | Undefined) -> str:
    """float.hex without the zeros a narrower dtype leaves: -0x1.1fa3160000000p+0 ->
    -0x1.1fa316p+0."""
    if isinstance(text, Undefined) or "p" not in text:
        return fmt(text)
    mantissa, exponent = text.split("p")
    return f"{mantissa.rstrip('0').rstrip('.')}p{exponent}"


def _buffers_line(comparisons: tuple[Comparison, ...], dtype: str) -> Text:
    """One line on the running buffers, with the reason beside any that is not correctly
    rounded: PyTorch rounds its update's terms, so an ULP or so at scale is rounding."""
    parts = ", ".join(f"{c.name} {fmt(c.ulp_error_at_scale, 3)} ULP" for c in comparisons)
    text = f"running buffers: PyTorch's {parts} of {dtype} from the reference at scale"
    off = [c.name for c in comparisons if c.correctly_rounded is False]
    if off:
        text += (
            f" ({' and '.join(off)} not correctly rounded: PyTorch rounds each term of the update)"
        )
    return Text(text)


def _precision_table(report: PrecisionReport, dtype: str) -> RenderableType:
    title = (
        f"PyTorch's arithmetic ({report.path}; {report.cpu_capability} kernel, "
        f"{report.threads} threads)"
    )
    headers = [
        "step",
        "how PyTorch computes it",
        "PyTorch",
        "exact (9 digits)",
        f"effect on y (ULP at scale {fmt(report.scale)})",
    ]
    work = "float64" if dtype == "float64" else "float32"  # PyTorch's steps run in these
    rows = [
        [
            step.name,
            step.how,
            in_dtype(step.torch, work),
            f"{step.reference:.9g}",
            fmt(step.effect_on_y),
        ]
        for step in report.emulation
    ]
    table = grid(title, headers, rows, left=(0, 1))
    if report.bit_exact:
        verdict = f"the emulation reproduces PyTorch's y bit for bit ({full(report.torch)})"
    else:
        verdict = (
            f"the emulation gives {full(report.emulated)}, PyTorch "
            f"{full(report.torch)}: {fmt(report.difference_ulps)} ULP of {dtype} apart"
        )
    verdict += f"\nemulation on this path: {report.claim}"
    return Group(table, Text(verdict, style=None if report.bit_exact else "yellow"))


def _against_table(against: AgainstReport) -> RenderableType:
    if isinstance(against.path, Undefined):  # typed by hand: judged to its last digit
        title = (
            f"Your value: {full(against.theirs)}, |err| {fmt(against.abs_error)} "
            f"({fmt(against.digit_error)} units of your last digit, {fmt(against.digit_unit)})"
        )
    else:
        title = (
            f"Your value from {against.path}: {full(against.theirs)}, |err| "
            f"{fmt(against.abs_error)} ({fmt(against.ulp_error_at_scale)} ULP at the channel's "
            "scale)"
        )
    rows = [
        [step.name, fmt(step.reference), fmt(step.implied), step.note or ""]
        for step in against.implied
    ]
    return grid(title, ["step", "reference", "your value implies", "solved as"], rows, left=(0, 3))


def render_explain(result: ExplainResult, verbose: bool = False) -> list[RenderableType]:
    """The derivation, PyTorch's value against it, the running buffers, then what was asked."""
    dtype = result.input.dtype
    parts: list[RenderableType] = [_derivation_table(result), _y_lines(result)]
    if result.running_buffers and not isinstance(result.y.torch, Undefined):
        parts.append(
            comparison_table("PyTorch's running buffers vs reference", result.running_buffers)
            if verbose
            else _buffers_line(result.running_buffers, dtype)
        )
    if not isinstance(result.precision, Undefined):
        parts.append(_precision_table(result.precision, dtype))
    elif result.precision.asked_for:  # asked for, but there is nothing to show: say why
        parts.append(Text(f"--precision: {result.precision.reason}", style="yellow"))
    if not isinstance(result.against, Undefined):
        parts.append(_against_table(result.against))
    if not isinstance(result.grad, Undefined):  # explain --grad: the backward, after the forward
        from bninspect.render.grad_output import render_grad_explain

        parts += render_grad_explain(result.grad, dtype)
    return parts
