"""``run``'s result as tables: the per-channel statistics, what normalizes, and PyTorch beside
the reference; per-step histories and the measures that support no verdict under --verbose.

The per-channel tables iterate the fields of ``ChannelReport`` that carry a table label, grouped
as the metadata says, so a field added to the result shows up here without a second list.
Formats; never computes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

from rich.console import Group, RenderableType
from rich.text import Text

from bninspect.render.cells import fmt, grid, reasons_note
from bninspect.results.common import Undefined
from bninspect.results.run import (
    AGREEMENT,
    BUFFERS,
    CAFFE_BLOBS,
    HISTORY,
    HISTORY_VS_TORCH,
    MEASURES_AGAINST_BOUND,
    ChannelReport,
    RunResult,
    StepChannel,
    VarianceMethods,
)
from bninspect.text import digits_to_resolve

NON_FINITE_COUNTS = ("nan_count", "posinf_count", "neginf_count")
# Shown with the digits it takes to tell them apart at the channel's spread (a mean of 10000.0034
# with std 1 must not read as 10000).
LOCATION_FIELDS = ("mean", "running_mean")
SHOWN_STEPS = 5  # a long history shows its first and last steps; --json has every one


def _channel_fields(group: str, result: RunResult, verbose: bool) -> Iterator[dataclasses.Field]:
    """ChannelReport's table fields of ``group``, leaving out all-zero non-finite counts, an
    empty flags column, and verbose-only measures unless ``verbose``."""
    for f in dataclasses.fields(ChannelReport):
        if f.metadata.get("group") != group or (f.metadata["verbose"] and not verbose):
            continue
        if f.name in (*NON_FINITE_COUNTS, "flags") and not any(
            getattr(c, f.name) for c in result.channels
        ):
            continue
        yield f


def _has_values(group: str, result: RunResult) -> bool:
    return any(
        not isinstance(getattr(report, f.name), Undefined)
        for f in _channel_fields(group, result, True)
        for report in result.channels
    )


def _location_digits(result: RunResult) -> int:
    """Digits for the means: enough to resolve 1e-4 of the smallest spread among the channels."""
    spreads = [
        math.sqrt(c.var_biased)
        for c in result.channels
        if isinstance(c.var_biased, float) and math.isfinite(c.var_biased) and c.var_biased > 0
    ]
    values = [
        v
        for c in result.channels
        for name in LOCATION_FIELDS
        if isinstance(v := getattr(c, name), float)
    ]
    return digits_to_resolve(values, 1e-4 * min(spreads)) if spreads else 5


# Past this many channels the tables show the ones nearest their bounds, --verbose every one: a
# 512-channel layer would otherwise bury the verdict under four tables of 512 rows.
MOST_CHANNELS_SHOWN = 16
WORST_CHANNELS_SHOWN = 8
def _closeness(report: ChannelReport) -> float:
    """How much of its bound the channel's worst measure uses (non-finite channels and NaN
    errors first, as the verdict counts a NaN error beyond its bound)."""
    if any(getattr(report, name) for name in NON_FINITE_COUNTS):
        return math.inf
    used = [
        math.inf if math.isnan(error) else error / bound
        for error, bound in (
            (getattr(report, e), getattr(report, b)) for _, e, b in MEASURES_AGAINST_BOUND
        )
        if isinstance(error, float) and isinstance(bound, float) and bound > 0
    ]
    return max(used, default=0.0)


def shown_channels(result: RunResult, verbose: bool) -> list[ChannelReport]:
    """Every channel, or past MOST_CHANNELS_SHOWN the few nearest their bounds, in channel order."""
    if verbose or len(result.channels) <= MOST_CHANNELS_SHOWN:
        return list(result.channels)
    nearest = sorted(result.channels, key=_closeness, reverse=True)[:WORST_CHANNELS_SHOWN]
    return sorted(nearest, key=lambda report: report.channel)


def _channel_table(
    group: str, result: RunResult, channels: list[ChannelReport], verbose: bool
) -> RenderableType:
    fields = list(_channel_fields(group, result, verbose))
    digits = _location_digits(result)

    def cell(report: ChannelReport, f: dataclasses.Field) -> str:
        value = getattr(report, f.name)
        return fmt(value, digits if f.name in LOCATION_FIELDS else 5)

    rows = [[str(report.channel), *(cell(report, f) for f in fields)] for report in channels]
    styles = [
        "red" if any(getattr(report, name) for name in NON_FINITE_COUNTS) else None
        for report in channels
    ]
    title = group
    if group in (AGREEMENT, BUFFERS):
        title = f"{group} (ULPs of {result.input.dtype})"
    table = grid(title, ["ch", *(f.metadata["label"] for f in fields)], rows, styles)
    note = reasons_note(
        [(f.metadata["label"], getattr(report, f.name)) for f in fields for report in channels]
    )
    return Group(table, note) if note else table


def render_run(result: RunResult, verbose: bool = False) -> list[RenderableType]:
    """One table per field group, then the history (with --verbose), --var-method's table, and
    the meanings of the flags raised."""
    groups = dict.fromkeys(
        f.metadata["group"] for f in dataclasses.fields(ChannelReport) if f.metadata.get("group")
    )
    # A table with nothing in it (no PyTorch run, no --steps) would be a grid of "n/a".
    channels = shown_channels(result, verbose)
    parts: list[RenderableType] = [
        _channel_table(group, result, channels, verbose)
        for group in groups
        if _has_values(group, result)
    ]
    shown = len(channels)
    if shown < len(result.channels):
        parts.insert(
            0,
            Text(
                f"{shown} of {len(result.channels)} channels shown: those nearest their bounds "
                "(--verbose shows every one; --json has them all)",
                style="dim",
            ),
        )
    if len(result.running_history) > 1:
        if verbose:
            parts += _history_tables(result)
        else:
            parts.append(
                Text(
                    f"{len(result.running_history)} training steps: --verbose shows the running "
                    "statistics step by step (--json has them all)",
                    style="dim",
                )
            )
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
        legend = (f"flag {flag:<8} {meaning}" for flag, meaning in result.flag_legend.items())
        parts.append(Text("\n".join(legend)))
    if not isinstance(result.grad, Undefined):  # run --grad: the backward, after the forward
        from bninspect.render.grad_output import render_grad_run

        parts += render_grad_run(result.grad, result.input.dtype)
    return parts


def _variance_table(methods: tuple[VarianceMethods, ...]) -> RenderableType:
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


def _history_table(
    result: RunResult, title: str, per_step: dict[str, str], fields: list[dataclasses.Field]
) -> RenderableType:
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
            step_cells = [fmt(getattr(record, name)) for name in ("training_step", *per_step)]
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
    if shown is history:
        return table
    return Group(
        table,
        Text(
            f"steps {SHOWN_STEPS + 1} to {len(history) - SHOWN_STEPS} not shown; "
            "--json has every step",
            style="dim",
        ),
    )


def _history_tables(result: RunResult) -> list[RenderableType]:
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
