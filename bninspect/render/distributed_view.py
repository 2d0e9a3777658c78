"""Data-parallel results as tables, under the verdict and the context screen.py prints: ``run
--ranks`` (the regimes side by side), ``explain --ranks`` (one element under each regime) and
``run --stats-only`` on a pattern of files (population statistics). Each table fits 80
columns. Formats; never computes (a shift, a fraction of the channel's scale, shows as a
percentage)."""

from __future__ import annotations

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
    lines = [
        f"{'ok  ' if c.passed else 'FAIL'} {c.name}: {fmt(c.max_error)} {c.unit} "
        f"(allowed {fmt(c.allowed)})"
        for c in checks
    ]
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
    rows = [
        [
            str(r.channel),
            fmt(r.no_sync_worst_rank),
            percent(r.no_sync_max_shift),
            percent(r.averaged_max_shift),
        ]
        for r in result.channels
    ]
    parts.append(
        grid(
            "Output shift from the full batch's, % of the channel's scale",
            ["ch", "no sync: worst rank", "no sync: shift", "variances averaged: shift"],
            rows,
        )
    )
    rows = [
        [
            str(b.channel),
            fmt(b.running_var),
            fmt(b.broadcast_running_var),
            percent(b.broadcast_eval_shift),
            percent(b.own_eval_shift),
            fmt(b.own_worst_rank),
            fmt(b.averaged_running_var),
            percent(b.averaged_eval_shift),
        ]
        for b in result.buffers
    ]
    parts.append(
        grid(
            "running_var after the step; eval output shift, % of its scale",
            [
                "ch",
                "full batch = SyncBN",
                "rank 0's (DDP broadcast)",
                "shift",
                "own per rank: worst shift",
                "worst rank",
                "averaged over ranks",
                "shift",
            ],
            rows,
        )
    )
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
        rows.append(
            [
                str(r.rank),
                f"{r.first_sample}-{r.first_sample + r.samples - 1}" if r.samples else "none",
                str(r.count),
                fmt(max(means)) if means else "-",
                f"{fmt(min(ratios))}-{fmt(max(ratios))}" if ratios else "-",
                ulps,
                percent(max(shifts)) if shifts and not r.torch_refused else "-",
            ]
        )
    parts.append(
        grid(
            "Each rank alone (DDP without SyncBatchNorm), worst channel",
            [
                "rank",
                "samples",
                "values per ch",
                "|mean - full| / std",
                "var / full var",
                f"PyTorch vs own block, ULP {dtype}",
                "output shift",
            ],
            rows,
        )
    )
    if verbose:
        parts.append(_rank_channels(result))
    refusals = [f"rank {r.rank}: {r.torch_refused}" for r in result.rank_reports if r.torch_refused]
    if refusals:
        parts.append(Text("PyTorch's module refused " + "; ".join(refusals), style="yellow"))
    parts.append(_checks(result.checks))
    parts.append(_verified(result.verified))
    return parts


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
        "Every rank and channel",
        [
            "rank",
            "ch",
            "mean",
            "var_biased",
            "ULP vs own block",
            "output shift",
            "running_var by hand",
            "PyTorch's running_var",
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
                f"{result.files} files matching '{result.pattern}' "
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
