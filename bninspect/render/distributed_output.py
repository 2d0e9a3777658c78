"""Data-parallel results as rich tables: the verdict first, then the few tables behind it, each
within 80 columns. Formats; never computes (a shift, a fraction of the scale, shows as a
percentage)."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.text import Text

from bninspect.input.memory import human_bytes
from bninspect.render.table_output import fmt, grid, header
from bninspect.results.common import Number, Undefined, Verdict
from bninspect.results.distributed import (
    Check,
    DistributedExplainResult,
    DistributedRunResult,
    PopulationResult,
)


def percent(share: Number) -> str:
    """A shift (a fraction of the channel's scale) as a percentage, 2 significant digits."""
    if isinstance(share, Undefined):
        return "n/a"
    if share == 0:
        return "0"
    return f"{100 * share:.2g}%"


def _verdict(verdict: Verdict) -> Text:
    style = "bold" if verdict.status in ("ok", "pass") else "bold red"
    return Text("\n".join(verdict.summary), style=style)


def _split(sizes: tuple[int, ...]) -> str:
    return ",".join(map(str, sizes))


def _checks(checks: tuple[Check, ...]) -> Text:
    lines = [
        f"{'ok  ' if c.passed else 'FAIL'} {c.name}: {fmt(c.max_error)} {c.unit} "
        f"(allowed {fmt(c.allowed)})"
        for c in checks
    ]
    return Text("\n".join(lines))


def _reasons(rows: list[tuple[str, Number]]) -> Text | None:
    """Why a cell reads n/a, once per reason."""
    reasons = dict.fromkeys(
        f"n/a {label}: {v.reason}" for label, v in rows if isinstance(v, Undefined)
    )
    return Text("\n".join(reasons)) if reasons else None


def render_distributed_run(result: DistributedRunResult) -> RenderableType:
    dtype = result.input.dtype
    parts: list[RenderableType] = [
        _verdict(result.verdict),
        header(result),
        Text(f"ranks   {result.ranks}, samples {_split(result.rank_sizes)}: {result.launcher}"),
    ]
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
            "SyncBatchNorm vs the full batch",
            [
                "ch",
                "mean",
                "var_biased",
                "pooled mean ULP f64",
                "pooled var ULP f64",
                f"PyTorch full batch ULP {dtype}",
                f"SyncBN output ULP {dtype}",
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
        defined = [c for c in r.channels if not isinstance(c.max_ulp_error_at_scale, Undefined)]
        shifts = [c.output_shift for c in r.channels if not isinstance(c.output_shift, Undefined)]
        means = [abs(c.mean_shift) for c in r.channels if not isinstance(c.mean_shift, Undefined)]
        ratios = [c.var_ratio for c in r.channels if not isinstance(c.var_ratio, Undefined)]
        rows.append(
            [
                str(r.rank),
                f"{r.first_sample}-{r.first_sample + r.samples - 1}" if r.samples else "none",
                str(r.count),
                fmt(max(means)) if means else "-",
                f"{fmt(min(ratios))}-{fmt(max(ratios))}" if ratios else "-",
                "refused" if r.torch_refused else (
                    fmt(max(c.max_ulp_error_at_scale for c in defined)) if defined else "-"
                ),
                percent(max(shifts)) if shifts and not r.torch_refused else "-",
            ]
        )  # fmt: skip
    parts.append(
        grid(
            "Each rank alone (DDP without SyncBatchNorm), worst channel",
            [
                "rank",
                "samples",
                "values per ch",
                "|mean - full| / std",
                "var / full var",
                f"PyTorch vs own block ULP {dtype}",
                "output shift",
            ],
            rows,
        )
    )
    refusals = [f"rank {r.rank}: {r.torch_refused}" for r in result.rank_reports if r.torch_refused]
    if refusals:
        parts.append(Text("PyTorch's module refused " + "; ".join(refusals), style="yellow"))
    parts.append(_checks(result.checks))
    parts.append(Text(f"verified: {result.verified}", style="dim"))
    return Group(*parts)


def render_distributed_explain(result: DistributedExplainResult) -> RenderableType:
    index = ", ".join(map(str, result.index))
    local = ", ".join(map(str, result.local_index))
    parts: list[RenderableType] = [
        _verdict(result.verdict),
        header(result),
        Text(f"ranks   {result.ranks}, samples {_split(result.rank_sizes)}: {result.launcher}"),
    ]
    rows = [[s.name, f"{s.formula}\n  = {s.substitution}", fmt(s.value)] for s in result.steps]
    parts.append(
        grid(
            f"output[{index}], channel {result.channel}: rank {result.rank}'s [{local}]",
            ["step", "formula, then with the numbers", "value"],
            rows,
            left=(0, 1),
        )
    )
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
            "The element under each regime",
            ["regime", "mean", "var_biased", "y (float64)", "y computed", "ULP at scale", "shift"],
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
    notes = _reasons([("y computed", v.torch) for v in result.regimes])
    if notes is not None:
        parts.append(notes)
    parts.append(_checks(result.checks))
    parts.append(Text(f"verified: {result.verified}", style="dim"))
    return Group(*parts)


def render_population(result: PopulationResult) -> RenderableType:
    dtypes = ", ".join(result.dtypes)
    parts: list[RenderableType] = [
        _verdict(result.verdict),
        Text(
            f"input   {result.files} files matching '{result.pattern}' "
            f"({human_bytes(result.bytes)}, {dtypes}), memory-mapped\n"
            f"ranks   {result.launcher}"
        ),
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
                "What each rank streamed (--json has the files and the seconds)",
                ["rank", "files", "first file", "bytes", "values per ch"],
                rows,
                left=(2,),
            )
        )
    return Group(*parts)


def render_distributed(result) -> RenderableType:
    if isinstance(result, PopulationResult):
        return render_population(result)
    if isinstance(result, DistributedExplainResult):
        return render_distributed_explain(result)
    return render_distributed_run(result)
