"""Data-parallel results as tables, under the verdict and the context screen.py prints: ``run
--ranks`` (the regimes side by side), ``explain --ranks`` (one element under each regime) and
``run --stats-only`` on a pattern of files (population statistics). Each table fits 80
columns. Formats; never computes (a shift, a fraction of the channel's scale, shows as a
percentage)."""

from __future__ import annotations

import textwrap

from rich.console import RenderableType
from rich.text import Text

from bninspect.input.memory import human_bytes
from bninspect.render.cells import fmt, grid, labelled, listing, reasons_note
from bninspect.results.common import Number, Undefined
from bninspect.results.distributed import (
    DistributedExplainResult,
    DistributedRunResult,
    PopulationResult,
    RegimeCheck,
)
from bninspect.text import counted


def percent(share: Number) -> str:
    """A shift (a fraction of the channel's scale) as a percentage, 2 significant digits."""
    if isinstance(share, Undefined):
        return "n/a"
    if share == 0:
        return "0"
    return f"{100 * share:.2g}%"


def _ranks_line(ranks: int, sizes: tuple[int, ...], launcher: str) -> Text:
    return Text(labelled("ranks", f"{ranks}, samples {','.join(map(str, sizes))}: {launcher}"))


def _checks(checks: tuple[RegimeCheck, ...]) -> Text:
    """One line per check (wrapped under its name), a failed one followed by what it compared."""
    lines = []
    for c in checks:
        line = (
            f"{'ok  ' if c.passed else 'FAIL'} {c.name}: {fmt(c.max_error)} {c.unit} "
            f"(allowed {fmt(c.allowed)})"
        )
        lines.append(textwrap.fill(line, width=80, subsequent_indent=" " * 5))
        if not c.passed:
            lines.append(textwrap.fill(c.detail, width=80, initial_indent=" " * 5,
                                       subsequent_indent=" " * 5))  # fmt: skip
    return Text("\n".join(lines))


def _verified(text: str) -> Text:
    return Text(labelled("verified", text), style="dim")


def render_split_run(result: DistributedRunResult, verbose: bool = False) -> list[RenderableType]:
    dtype = result.input.dtype
    parts: list[RenderableType] = [_ranks_line(result.ranks, result.rank_sizes, result.launcher)]
    rows = [
        [
            str(r.channel),
            fmt(r.mean),
            fmt(r.var_biased),
            fmt(r.pooled_mean_ulp_error),
            fmt(r.pooled_var_ulp_error),
            fmt(r.torch_max_ulp_error_at_scale),
            fmt(r.sync_max_ulp_error_at_scale),
        ]
        for r in result.channels
    ]
    parts.append(
        grid(
            "SyncBatchNorm vs the full batch (errors in ULPs; outputs at the channel's scale)",
            [
                "ch",
                "mean",
                "var_biased",
                "pooled mean f64",
                "pooled var f64",
                f"PyTorch full batch {dtype}",
                f"SyncBN output {dtype}",
            ],
            rows,
        )
    )
    if result.ranks == 1:
        parts.append(
            Text(
                "One rank: DDP without SyncBatchNorm, its broadcast of rank 0's buffers and any "
                "average over ranks are the full batch's own computation; there is no effect "
                "of the split to show."
            )
        )
    else:
        parts += _split_effects(result, verbose)
    parts.append(_ranks_alone(result))
    if verbose:
        parts.append(_rank_channels(result))
    refusals = [f"rank {r.rank}: {r.torch_refused}" for r in result.rank_reports if r.torch_refused]
    if refusals:
        parts.append(Text("PyTorch's module refused " + "; ".join(refusals), style="yellow"))
    parts.append(_checks(result.checks))
    parts.append(_verified(result.verified))
    return parts


def _split_effects(result: DistributedRunResult, verbose: bool) -> list[RenderableType]:
    """What the split changes (more than one rank): the train-mode output under each regime
    that is not the full batch's, and the eval-mode output with each regime's buffers."""
    rows = [
        [
            str(r.channel),
            fmt(r.no_sync_worst_rank),
            percent(r.no_sync_max_shift),
            percent(r.averaged_max_shift),
            percent(r.equal_weight_max_shift),
        ]
        for r in result.channels
    ]
    parts: list[RenderableType] = [
        grid(
            "Train-mode output shift from the full batch's, % of the channel's scale",
            ["ch", "no sync: worst rank", "no sync", "variances by count", "variances equal"],
            rows,
        )
    ]
    rows = [
        [
            str(b.channel),
            percent(b.broadcast_eval_shift),
            percent(b.own_eval_shift),
            fmt(b.own_worst_rank),
            percent(b.averaged_eval_shift),
            percent(b.equal_weight_eval_shift),
        ]
        for b in result.buffers
    ]
    parts.append(
        grid(
            "Eval-mode output shift with each regime's running buffers, % of its scale",
            ["ch", "DDP broadcast", "own buffers", "worst rank", "buffers averaged",
             "variances equal"],
            rows,
        )  # fmt: skip
    )
    if verbose:
        rows = [
            [
                str(b.channel),
                fmt(b.running_var),
                fmt(b.broadcast_running_var),
                fmt(b.averaged_running_var),
                fmt(b.equal_weight_running_var),
            ]
            for b in result.buffers
        ]
        parts.append(
            grid(
                "running_var after the step",
                ["ch", "full batch = SyncBN", "rank 0's", "buffers averaged", "variances equal"],
                rows,
            )
        )
    parts.append(Text(SPLIT_KEY, style="dim"))
    return parts


SPLIT_KEY = (
    "no sync: DDP with plain BatchNorm, each rank its own statistics. variances by count: "
    "sum m2_k / N, without the spread of the rank means; variances equal: sum var_k / K, the "
    "ranks weighted alike whatever their sizes (both with the pooled mean, and in eval mode "
    "with the global Bessel factor). DDP broadcast: every rank ends with rank 0's buffers; "
    "own buffers: broadcast_buffers=False; buffers averaged: all_reduce(buffers) / K."
)


def _ranks_alone(result: DistributedRunResult) -> RenderableType:
    """Each rank's block under PyTorch's module, worst channel; beside the full batch only when
    there is more than one rank."""
    dtype, split = result.input.dtype, result.ranks > 1
    rows = []
    for r in result.rank_reports:
        defined = [
            c.max_ulp_error_at_scale
            for c in r.channels
            if not isinstance(c.max_ulp_error_at_scale, Undefined)
        ]
        shifts = [c.output_shift for c in r.channels if not isinstance(c.output_shift, Undefined)]
        means = [abs(c.mean_shift) for c in r.channels if not isinstance(c.mean_shift, Undefined)]
        ratios = [c.var_ratio for c in r.channels if not isinstance(c.var_ratio, Undefined)]
        ulps = "refused" if r.torch_refused else (fmt(max(defined)) if defined else "-")
        row = [
            str(r.rank),
            f"{r.first_sample}-{r.first_sample + r.samples - 1}" if r.samples else "none",
            str(r.count),
            ulps,
        ]
        if split:
            row += [
                fmt(max(means)) if means else "-",
                f"{fmt(min(ratios))}-{fmt(max(ratios))}" if ratios else "-",
                percent(max(shifts)) if shifts and not r.torch_refused else "-",
            ]
        rows.append(row)
    headers = ["rank", "samples", "values per ch", f"PyTorch vs own block, ULP {dtype}"]
    if split:
        headers += ["|mean - full| / std", "var / full var", "output shift"]
    title = "Each rank alone (DDP without SyncBatchNorm), worst channel" if split else (
        "The rank (PyTorch's module in its process)"
    )
    return grid(title, headers, rows)


def _rank_channels(result: DistributedRunResult) -> RenderableType:
    """--verbose: every rank's every channel."""
    rows, ends = [], set()
    for r in result.rank_reports:
        for c in r.channels:
            rows.append(
                [
                    str(r.rank) if c.channel == 0 else "",
                    str(c.channel),
                    fmt(c.mean),
                    fmt(c.var_biased),
                    fmt(c.max_ulp_error_at_scale),
                    percent(c.output_shift),
                    fmt(c.running_var),
                    fmt(c.torch_running_var),
                ]
            )
        ends.add(len(rows) - 1)
    return grid(
        "Every rank and channel (running_var after the step: by hand, and PyTorch's)",
        [
            "rank",
            "ch",
            "mean",
            "var_biased",
            "ULP vs own block",
            "output shift",
            "by hand",
            "PyTorch",
        ],
        rows,
        section_ends=frozenset(ends),
    )


def render_split_explain(
    result: DistributedExplainResult, verbose: bool = False
) -> list[RenderableType]:
    index = ", ".join(map(str, result.index))
    local = ", ".join(map(str, result.local_index))
    parts: list[RenderableType] = [_ranks_line(result.ranks, result.rank_sizes, result.launcher)]
    table = listing(
        f"output[{index}], channel {result.channel}: rank {result.rank}'s [{local}], step by step",
        ["step", "formula, with the numbers", "value"],
        wraps=1,
        right=(2,),
    )
    for step in result.derivation:
        computation = Text(
            f"{step.formula} = {step.substitution}" if step.substitution else step.formula
        )
        if step.note:
            computation.append(f"\n{step.note}", style="dim")
        table.add_row(step.name, computation, fmt(step.value))
    parts.append(table)
    rows = [
        [
            v.regime,
            fmt(v.mean),
            fmt(v.var_biased),
            fmt(v.reference),
            fmt(v.torch),
            fmt(v.ulp_error_at_scale),
            percent(v.shift),
        ]
        for v in result.regimes
    ]
    parts.append(
        grid(
            "The element under each regime (y computed: as the regime computes it, in "
            f"{result.input.dtype})",
            ["regime", "mean", "var (/N)", "y float64", "y computed", "ULP at scale", "shift"],
            rows,
            left=(0,),
        )
    )
    rows = [[v.regime, fmt(v.running_mean), fmt(v.running_var)] for v in result.regimes]
    parts.append(
        grid(
            f"Channel {result.channel}'s running buffers after the step",
            ["regime", "running_mean", "running_var"],
            rows,
            left=(0,),
        )
    )
    notes = reasons_note([("y computed", v.torch) for v in result.regimes])
    if notes is not None:
        parts.append(notes)
    parts.append(_checks(result.checks))
    parts.append(_verified(result.verified))
    return parts


def render_population(result: PopulationResult, verbose: bool = False) -> list[RenderableType]:
    dtypes = ", ".join(result.dtypes)
    parts: list[RenderableType] = [
        Text(
            labelled(
                "input",
                f"{counted(result.files, 'file')} matching '{result.pattern}' "
                f"({human_bytes(result.bytes)}, {dtypes}), memory-mapped",
            )
            + "\n"
            + labelled("ranks", result.launcher)
        )
    ]
    non_finite = any(c.nan_count or c.posinf_count or c.neginf_count for c in result.channels)
    headers = ["ch", "count", "mean", "var_biased (/N)", "var_unbiased (/N-1)"]
    if non_finite:
        headers += ["NaN", "+Inf", "-Inf"]
    rows = []
    for c in result.channels:
        row = [str(c.channel), str(c.count), fmt(c.mean), fmt(c.var_biased), fmt(c.var_unbiased)]
        if non_finite:
            row += [str(c.nan_count), str(c.posinf_count), str(c.neginf_count)]
        rows.append(row)
    parts.append(grid("Population statistics (float64)", headers, rows))
    if result.ranks > 1:
        rows = [
            [str(s.rank), str(len(s.files)), s.files[0], human_bytes(s.bytes), str(s.count)]
            for s in result.shares
        ]
        parts.append(
            grid(
                "What each rank streamed (--json has every file and the seconds)",
                ["rank", "files", "first file", "bytes", "values per ch"],
                rows,
                left=(2,),
            )
        )
    return parts
