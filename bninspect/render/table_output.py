"""Show a result object as rich tables for people. Formats numbers; never computes one.

The per-channel tables iterate the fields of ``ChannelReport`` that carry a table label, grouped
as the metadata says, so a field added to the result shows up here without a second list.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from bninspect.results.common import Comparison, Number, Undefined
from bninspect.results.conventions import ConventionsResult
from bninspect.results.explain import AgainstReport, ExplainResult, PrecisionReport
from bninspect.results.run import (
    CAFFE_BLOBS,
    HISTORY,
    HISTORY_VS_TORCH,
    ChannelReport,
    RunResult,
    StepChannel,
    VarianceMethods,
)
from bninspect.text import number
from bninspect.text import shape as shape_text

NON_FINITE_COUNTS = ("nan_count", "posinf_count", "neginf_count")


def fmt(value: object) -> str:
    """A value for people: about 5 significant digits, 'n/a' for an undefined one."""
    if isinstance(value, Undefined):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return " ".join(map(str, value)) or "-"
    if isinstance(value, float):
        return number(value)
    return str(value)


def _momentum_text(momentum: Number) -> str:
    return "none (cumulative average)" if isinstance(momentum, Undefined) else f"{momentum:g}"


def header(result) -> Text:
    info, settings = result.input, result.settings
    shape = shape_text(info.shape)
    if info.source == "generated":
        spread = (
            ""
            if (info.offset, info.scale) == (0.0, 1.0)
            else (f" * {info.scale:g} + {info.offset:g}")
        )
        source = f"generated standard normal{spread}, seed {info.seed}"
    elif isinstance(info.sha256, Undefined):
        source = f"{info.path} (memory-mapped; sha256 not computed)"
    else:
        source = f"{info.path} (sha256 {info.sha256[:16]}...)"
    layer = (
        f"{settings.module}, {settings.mode} mode, eps {settings.eps:g}, "
        f"momentum {_momentum_text(settings.momentum)}, "
        + (f"weight {settings.weight}, bias {settings.bias}" if settings.affine else "no affine")
        + f", running_mean {settings.running_mean}, running_var {settings.running_var}"
    )
    lines = [f"input   {shape} {info.dtype}: {source}"]
    if settings.steps > 1:
        last = (settings.steps - 1) * settings.batch_size
        lines.append(
            f"steps   {settings.steps} training steps of {settings.batch_size} samples; the "
            f"tables below show the last batch (samples {last} to "
            f"{last + settings.batch_size - 1})"
        )
    lines.append(f"layer   {layer}")
    if settings.mode == "train":
        lines.append("uses    the batch mean and biased variance (divide by N) to normalize")
    else:
        lines.append("uses    running_mean and running_var as given to normalize (eval mode)")
    if settings.convention != "pytorch":
        lines.append(f"rules   {settings.convention} (see 'bninspect conventions')")
    if isinstance(result.torch_version, Undefined):
        lines.append(f"PyTorch not run: {result.torch_version.reason}")
    elif settings.convention != "pytorch":
        lines.append(f"PyTorch {result.torch_version} beside it: {result.peer}")
    else:
        lines.append(f"PyTorch {result.torch_version} (reference: float64)")
    lines += [f"notice  {notice}" for notice in (*info.notices, *settings.notices)]
    return Text("\n".join(lines))


def _channel_fields(group: str, result: RunResult) -> Iterator[dataclasses.Field]:
    """ChannelReport's table fields of ``group``, leaving out all-zero non-finite counts."""
    for f in dataclasses.fields(ChannelReport):
        if f.metadata.get("group") != group:
            continue
        if f.name in NON_FINITE_COUNTS and not any(getattr(c, f.name) for c in result.channels):
            continue
        yield f


def _has_values(group: str, result: RunResult) -> bool:
    return any(
        not isinstance(getattr(report, f.name), Undefined)
        for f in _channel_fields(group, result)
        for report in result.channels
    )


def grid(
    title: str,
    headers: list[str],
    rows: list[list[str]],
    styles: list | None = None,
    left: tuple[int, ...] = (),
    section_ends: frozenset[int] = frozenset(),
) -> RenderableType:
    """A table whose cells are never cut off: every column is at least as wide as its longest
    word, so numbers keep all their digits on a narrow terminal; headers fold instead (and the
    CLI never crops a table wider than the terminal). Cells are plain text, never rich markup.
    ``left``: indices of left-justified columns; ``section_ends``: rows followed by a rule."""
    table = Table(title=title, title_justify="left")
    natural, words, header_words = [], [], []
    for k, header in enumerate(headers):
        cells = [row[k] for row in rows]
        widest = max((len(word) for cell in cells for word in cell.split()), default=1)
        justify = "left" if k in left else "right"
        table.add_column(Text(header, overflow="fold"), justify=justify, min_width=widest)
        lines = [line for text in [*cells, header] for line in text.split("\n")]
        natural.append(max(map(cell_len, lines)))
        words.append(widest)
        header_words.append(max((len(word) for word in header.split()), default=1))
    for i, (row, style) in enumerate(zip(rows, styles or [None] * len(rows), strict=True)):
        table.add_row(*(Text(cell) for cell in row), style=style, end_section=i in section_ends)
    return _Fitted(table, natural, words, header_words)


class _Fitted:
    """A grid laid out for the width it is drawn at. Rich narrows every wrappable column alike
    and then widens the ones that cannot go below their longest word again, past the terminal's
    edge; this narrows the widest column that can still give first, keeping header words whole
    while it can, then letting headers fold. Wider than that, it is drawn whole, never cut."""

    def __init__(self, table: Table, natural, words, header_words) -> None:
        self.table, self.natural = table, natural
        self.soft = [max(w, h) for w, h in zip(words, header_words, strict=True)]
        self.hard = words

    def _widths(self, available: int) -> list[int]:
        widths = list(self.natural)
        for least in (self.soft, self.hard):
            while sum(widths) > available:
                slack = [k for k, w in enumerate(widths) if w > least[k]]
                if not slack:
                    break
                widths[max(slack, key=lambda k: widths[k])] -= 1
        return widths

    def __rich_console__(self, console, options):
        columns = len(self.table.columns)
        frame = 3 * columns + 1  # a space either side of each cell, and the rules
        widths = self._widths(options.max_width - frame)
        for column, width in zip(self.table.columns, widths, strict=True):
            column.width = width
        yield from console.render(
            self.table, options.update_width(max(options.max_width, sum(widths) + frame))
        )


def _channel_table(group: str, result: RunResult) -> RenderableType:
    fields = list(_channel_fields(group, result))
    rows = [
        [str(report.channel), *(fmt(getattr(report, f.name)) for f in fields)]
        for report in result.channels
    ]
    styles = [
        "red" if any(getattr(report, name) for name in NON_FINITE_COUNTS) else None
        for report in result.channels
    ]
    table = grid(group, ["ch", *(f.metadata["label"] for f in fields)], rows, styles)
    # Why a cell reads n/a, once per column and reason (JSON has them under null_reasons).
    reasons = dict.fromkeys(
        (f.metadata["label"].replace("\n", " "), value.reason)
        for f in fields
        for report in result.channels
        if isinstance(value := getattr(report, f.name), Undefined)
    )
    if not reasons:
        return table
    return Group(table, Text("\n".join(f"n/a {label}: {reason}" for label, reason in reasons)))


def render_run(result: RunResult) -> RenderableType:
    """The header, then one table per field group, then the overall agreement."""
    parts: list[RenderableType] = [header(result)]
    groups = dict.fromkeys(
        f.metadata["group"] for f in dataclasses.fields(ChannelReport) if f.metadata.get("group")
    )
    # A table with nothing in it (no PyTorch run, no --steps) would be a grid of "n/a".
    parts += [_channel_table(group, result) for group in groups if _has_values(group, result)]
    if len(result.running_history) > 1:
        parts += _history_tables(result)
    if not isinstance(result.variance_methods, Undefined):
        parts.append(_variance_table(result.variance_methods))
    flagged = [c.channel for c in result.channels if any(getattr(c, n) for n in NON_FINITE_COUNTS)]
    if flagged:
        parts.append(
            Text(
                f"channels {', '.join(map(str, flagged))} hold NaN or Inf: their statistics and "
                "outputs are not finite (errors count matching NaN/Inf as agreement)",
                style="red",
            )
        )
    if result.flag_legend:
        legend = (f"flag {flag:<14} {meaning}" for flag, meaning in result.flag_legend.items())
        parts.append(Text("\n".join(legend)))
    parts.append(_run_summary(result))
    return Group(*parts)


def _run_summary(result: RunResult) -> Text:
    if isinstance(result.torch_version, Undefined):
        return Text(f"PyTorch vs reference: {result.torch_version.reason}")
    return Text(
        f"PyTorch vs reference, all channels: max error {fmt(result.max_scaled_error)} ULP of "
        f"{result.input.dtype} at the channel's scale (max |err| {fmt(result.max_abs_error)}); "
        f"elementwise up to {fmt(result.max_ulp_error)} ULP, counted at each output's own "
        f"magnitude, which inflates it near 0; num_batches_tracked {result.num_batches_tracked}"
    )


def _variance_table(methods: tuple[VarianceMethods, ...]) -> Table:
    working = methods[0].working_precision if methods else ""
    headers = ["ch", "reference", "two-pass", "naive E[x^2]-E[x]^2", "Welford"]
    rows = [
        [
            str(m.channel),
            fmt(m.reference),
            *(
                f"{fmt(value)}\n({fmt(error)})"  # each method's value over its relative error
                for value, error in (
                    (m.two_pass, m.two_pass_rel_error),
                    (m.naive, m.naive_rel_error),
                    (m.welford, m.welford_rel_error),
                )
            ),
        ]
        for m in methods
    ]
    styles = ["red" if m.naive < 0 else None for m in methods]  # a negative variance
    title = f"Variance in {working} three ways (relative error below)"
    return grid(title, headers, rows, styles)


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
        f"effect on y (ULP at scale {fmt(report.channel_scale)})",
    ]
    work = "float64" if dtype == "float64" else "float32"  # PyTorch's steps run in these
    rows = [
        [
            step.name,
            step.how,
            _in_dtype(step.torch_value, work),
            f"{step.exact:.9g}",
            fmt(step.effect_on_y),
        ]
        for step in report.steps
    ]
    table = grid(title, headers, rows, left=(0, 1))
    if report.bit_exact:
        verdict = f"the emulation reproduces PyTorch's y bit for bit ({_full(report.y_torch)})"
    else:
        verdict = (
            f"the emulation gives {_full(report.y_emulated)}, PyTorch "
            f"{_full(report.y_torch)}: {fmt(report.difference_ulps)} ULP of {dtype} apart"
        )
    verdict += f"\nemulation on this path: {report.claim}"
    return Group(table, Text(verdict, style=None if report.bit_exact else "yellow"))


SHOWN_STEPS = 5  # a long history shows its first and last steps; --json has every one


def _history_table(
    result: RunResult, title: str, per_step: dict[str, str], fields: list[dataclasses.Field]
) -> Table:
    """One row per step and channel: the StepRecord fields of ``per_step`` (name -> label),
    then the given StepChannel fields; a long history shows its first and last steps."""
    history = result.running_history
    headers = ["step", *per_step.values(), "ch", *(f.metadata["label"] for f in fields)]
    shown = history
    if len(history) > 2 * SHOWN_STEPS:
        shown = (*history[:SHOWN_STEPS], None, *history[-SHOWN_STEPS:])
    rows: list[list[str]] = []
    ends = set()
    for record in shown:
        if record is None:
            rows.append(["...", *[""] * (len(headers) - 1)])
        else:
            step_cells = [fmt(getattr(record, name)) for name in ("step", *per_step)]
            for channel in record.channels:
                rows.append(
                    [
                        *(step_cells if channel.channel == 0 else [""] * len(step_cells)),
                        str(channel.channel),
                        *(fmt(getattr(channel, f.name)) for f in fields),
                    ]
                )
        ends.add(len(rows) - 1)
    table = grid(title, headers, rows, section_ends=frozenset(ends))
    if shown is not history:
        table.caption = (
            f"steps {SHOWN_STEPS + 1} to {len(history) - SHOWN_STEPS} not shown; "
            "--json has every step"
        )
        table.caption_justify = "left"
    return table


def _history_tables(result: RunResult) -> list[Table]:
    """The running statistics per step; for Caffe also its blobs (the unnormalized sums), which
    differ from the statistics by the scale factor; then PyTorch's buffers against them."""
    history = result.running_history

    def group(name: str) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(StepChannel) if f.metadata.get("group") == name]

    weights = {record.batch_weight for record in history}
    if len(weights) == 1:  # the same for every step: said once in the title, not on each row
        title, per_step = f"{HISTORY} (each batch weighs {fmt(weights.pop())})", {}
    else:
        title, per_step = HISTORY, {"batch_weight": "batch\nweight"}
    tables = [_history_table(result, title, per_step, group(HISTORY))]
    if any(record.scale_factor != 1 for record in history):
        scale = {"scale_factor": "scale\nfactor"}
        tables.append(_history_table(result, CAFFE_BLOBS, scale, group(CAFFE_BLOBS)))
    torch_errors = group(HISTORY_VS_TORCH)
    if any(
        not isinstance(getattr(channel, f.name), Undefined)
        for record in history
        for channel in record.channels
        for f in torch_errors
    ):
        tables.append(_history_table(result, HISTORY_VS_TORCH, {}, torch_errors))
    return tables


def _against_table(against: AgainstReport) -> RenderableType:
    title = (
        f"Your value from {against.path}: {_full(against.theirs)}, |err| "
        f"{fmt(against.abs_error)} ({fmt(against.ulp_error)} ULP at the channel's scale)"
    )
    rows = [
        [step.name, fmt(step.reference), fmt(step.implied), step.note or ""]
        for step in against.implied
    ]
    table = grid(title, ["step", "reference", "your value implies", "solved as"], rows, left=(0, 3))
    return Group(table, Text(against.verdict, style="bold"))


def _comparison_table(comparisons: tuple[Comparison, ...]) -> Table:
    """One column per buffer, one row per measure: fits 80 columns whatever the numbers."""
    measures = [
        ("reference", lambda c: c.reference),
        ("PyTorch", lambda c: c.torch),
        ("|err|", lambda c: c.abs_error),
        ("ULP at scale", lambda c: c.scaled_error),
        ("ULP at own value", lambda c: c.ulp_error),
        ("correctly rounded", lambda c: c.correctly_rounded),
    ]
    headers = ["", *(c.name for c in comparisons)]
    rows = [[label, *(fmt(value(c)) for c in comparisons)] for label, value in measures]
    return grid("PyTorch's running buffers vs reference", headers, rows, left=(0,))


def _verdict(result: ExplainResult) -> Text:
    dtype = result.input.dtype
    lines = [
        f"reference y          {_full(result.y_reference)} (float64)",
        f"rounded to {dtype:<9} {_full(result.y_reference_rounded)}",
    ]
    if isinstance(result.y_torch, Undefined):
        lines.append(f"PyTorch's y          {result.y_torch.reason}")
        return Text("\n".join(lines))
    lines.append(f"PyTorch's y          {_full(result.y_torch)} ({result.y_torch_hex})")
    difference = f"{fmt(result.abs_error)} ({fmt(result.ulp_error)} ULP of {dtype} at y)"
    lines.append(f"difference           {difference}")
    lines.append(f"at channel's scale   {fmt(result.scaled_error)} ULP of {dtype}")
    if result.correctly_rounded:
        lines.append(
            f"PyTorch's y is the reference correctly rounded to {dtype}: equal to the last bit"
        )
    else:
        lines.append(f"PyTorch's y is not the reference correctly rounded to {dtype}")
    return Text("\n".join(lines), style=None if result.correctly_rounded else "yellow")


def _full(value: Number) -> str:
    return fmt(value) if isinstance(value, Undefined) else repr(value)


def _in_dtype(value: float, dtype: str) -> str:
    """The shortest text that reads back as the same ``dtype`` number: every bit, few digits."""
    from bninspect.dtypes import float_format

    return str(float_format(dtype).numpy.type(value))


def render_explain(result: ExplainResult) -> RenderableType:
    """The header, the derivation table, PyTorch's value against it, then the running buffers."""
    index = ", ".join(map(str, result.index))
    table = Table(title=f"output[{index}], channel {result.channel}", title_justify="left")
    table.add_column("step")
    table.add_column("formula, then with the numbers")
    table.add_column("value", justify="right")
    for step in result.steps:
        computation = Text(f"{step.formula}\n  = {step.substitution}")
        if step.note:
            computation.append(f"\n{step.note}", style="dim")
        if step.rule and result.settings.convention != "pytorch":
            computation.append(f"\nrule: {step.rule}", style="cyan")
        if step.differs_from_pytorch:
            computation.append(f"\nPyTorch differs: {step.differs_from_pytorch}", style="yellow")
        table.add_row(step.name, computation, fmt(step.value))
    parts: list[RenderableType] = [header(result), table, _verdict(result)]
    if result.running and not isinstance(result.y_torch, Undefined):
        parts.append(_comparison_table(result.running))
    if not isinstance(result.precision, Undefined):
        parts.append(_precision_table(result.precision, result.input.dtype))
    elif result.precision.asked_for:  # asked for, but there is nothing to show: say why
        parts.append(Text(f"--precision: {result.precision.reason}", style="yellow"))
    if not isinstance(result.against, Undefined):
        parts.append(_against_table(result.against))
    return Group(*parts)


def render(result: RunResult | ExplainResult | ConventionsResult) -> RenderableType:
    """The rich view of any command's result."""
    if type(result).__module__ == "bninspect.results.distributed":
        from bninspect.render.distributed_output import render_distributed

        return render_distributed(result)
    if isinstance(result, ConventionsResult):
        from bninspect.render.card_output import render_card

        return render_card(result)
    if result.command == "check":
        from bninspect.render.check_output import render_check

        return render_check(result)
    if isinstance(result, RunResult):
        return render_run(result)
    return render_explain(result)
