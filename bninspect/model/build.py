"""The result object from the runs' measurements: one LayerReport per batch-norm call, the first
divergent layer, the verdict. Pure: formats nothing, runs nothing."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from bninspect.model.analysis import (
    LEGEND,
    LayerEvidence,
    PopulationAccumulator,
    evidence,
    gap_limit,
    layer_flags,
    log_distance,
    name_cause,
    nonfinite_cause,
    output_move,
    short_cause,
    worst_index,
)
from bninspect.model.probe import LayerMeasure, SiteInfo
from bninspect.results.common import CUMULATIVE, NOT_ASKED, Number, Undefined, Verdict
from bninspect.results.model import (
    BatchSource,
    ChannelDetail,
    DumpRecord,
    FirstDivergence,
    FoldReport,
    LayerReport,
    ModelResult,
    ModelSource,
    PopulationChoice,
    PopulationReport,
)

NO_BATCH = Undefined("no batch: --weights alone shows the stored buffers")
ONE_VALUE = Undefined("one value per channel: train mode cannot run (PyTorch raises)")
NO_BUFFERS = Undefined("track_running_stats=False: no running buffers")


def _number(value: float) -> Number:
    return float(value)


def _max(values: np.ndarray | None, missing: Undefined) -> Number:
    if values is None:
        return missing
    if values.size == 0:
        return Undefined("no channels")
    return float(np.max(values))  # NaN if a channel is NaN: shown as NaN, never as inf


def _details(m: LayerMeasure, ev: LayerEvidence | None, flags_by_channel) -> tuple:
    site, stats = m.site, m.stats
    rows = []
    for c in range(len(site.weight)):

        def pick(array, missing=NO_BUFFERS, c=c):
            return missing if array is None else float(array[c])

        rows.append(
            ChannelDetail(
                channel=c,
                mean=float(stats.mean[c]),
                var_biased=float(stats.var_biased[c]),
                var_unbiased=float(stats.var_unbiased[c])
                if m.count > 1
                else Undefined("the unbiased variance of one value does not exist"),
                running_mean=pick(site.running_mean),
                running_var=pick(site.running_var),
                weight=float(site.weight[c]),
                bias=float(site.bias[c]),
                mean_drift=NO_BUFFERS if ev is None else float(ev.mean_drift[c]),
                var_ratio=NO_BUFFERS if ev is None else float(ev.var_ratio[c]),
                output_scale=float(m.output_scale[c]),
                own_gap=pick(m.own_gap, ONE_VALUE),
                gap=pick(m.gap, ONE_VALUE),
                flags=flags_by_channel(c),
            )
        )
    return tuple(rows)


def _channel_flags(site: SiteInfo, eps: float):
    def flags(c: int) -> tuple[str, ...]:
        found = []
        rm, rv = site.running_mean, site.running_var
        if rm is not None and not (np.isfinite(rm[c]) and np.isfinite(rv[c])):
            found.append("nan-buffers")
        elif rv is not None and rv[c] < eps:
            found.append("var-tiny")
        if site.affine and abs(site.weight[c]) == 0:
            found.append("dead")
        return tuple(found)

    return flags


def population_report(
    acc: PopulationAccumulator, site: SiteInfo, with_channels: bool
) -> PopulationReport:
    choices = acc.choices(site.running_mean, site.running_var, site.eps)
    _, _, mean, var = choices[0]
    reports = []
    for name, how, choice_mean, choice_var in choices:
        move = output_move(mean, var, choice_mean, choice_var, site.eps)
        worst = worst_index(move, how=lambda v: v)
        reports.append(
            PopulationChoice(
                name=name,
                how=how,
                max_output_move=float(move[worst]) if move.size else Undefined("no channels"),
                worst_channel=worst if move.size else Undefined("no channels"),
                mean=tuple(map(float, choice_mean))
                if with_channels
                else Undefined(f"{NOT_ASKED}: --layer NAME lists every channel"),
                var=tuple(map(float, choice_var))
                if with_channels
                else Undefined(f"{NOT_ASKED}: --layer NAME lists every channel"),
            )
        )
    return PopulationReport(acc.batches, acc.count, tuple(reports))


def layer_report(
    index: int,
    m: LayerMeasure,
    *,
    model_mode: str,
    typical: int | None,
    calls: int,
    threshold: float,
    full: bool,
    population: PopulationAccumulator | None,
    fold: FoldReport | Undefined,
    dump: DumpRecord | Undefined,
) -> LayerReport:
    site, stats = m.site, m.stats
    ev = None
    if site.running_mean is not None:
        ev = evidence(stats.mean, stats.var_biased, site.running_mean, site.running_var, site.eps)
    flags = layer_flags(
        eps=site.eps,
        momentum=site.momentum,
        track=site.track_running_stats,
        layer_mode=site.mode,
        model_mode=model_mode,
        num_batches_tracked=site.num_batches_tracked,
        typical_batches=typical,
        calls=calls,
        weight=site.weight,
        affine=site.affine,
        running_mean=site.running_mean,
        running_var=site.running_var,
        count=m.count,
    )
    max_gap = _max(m.gap, ONE_VALUE)
    max_own = _max(m.own_gap, ONE_VALUE)
    if m.own_gap is not None and m.own_gap.size:
        worst: int | Undefined = worst_index(m.own_gap, how=lambda v: v)
    elif ev is not None and ev.mean_drift.size:
        worst = worst_index(ev.mean_drift)
    else:
        worst = Undefined("no gap to rank channels by")
    cause = None
    limit = gap_limit(m.count, threshold)
    passes = [g for g in (max_gap, max_own) if not isinstance(g, Undefined)]
    above = any(g >= limit or math.isnan(g) for g in passes)
    if above or "one-value" in flags or "nan-buffers" in flags:
        cause = name_cause(
            flags=flags,
            max_gap=max_gap if isinstance(max_gap, float) and not math.isnan(max_gap) else 0.0,
            max_own_gap=None if isinstance(max_own, Undefined) else max_own,
            channel=0 if isinstance(worst, Undefined) else worst,
            count=m.count,
            mean=stats.mean,
            var_biased=stats.var_biased,
            running_mean=site.running_mean,
            running_var=site.running_var,
            eps=site.eps,
            ev=ev,
            num_batches_tracked=site.num_batches_tracked,
            threshold=limit,
        )
    if ev is None:
        max_drift: Number = NO_BUFFERS
        worst_ratio: Number = NO_BUFFERS
    else:
        max_drift = _max(np.abs(ev.mean_drift), NO_BUFFERS)
        worst_ratio = float(ev.var_ratio[worst_index(log_distance(ev.var_ratio), how=lambda v: v)])
    not_asked = Undefined(f"{NOT_ASKED}: --layer {site.name} lists every channel")
    return LayerReport(
        index=index,
        name=site.name,
        call=site.call,
        module=site.module,
        channels=len(site.weight),
        eps=site.eps,
        momentum=Undefined(CUMULATIVE) if site.momentum is None else site.momentum,
        affine=site.affine,
        track_running_stats=site.track_running_stats,
        mode=site.mode,
        num_batches_tracked=Undefined("no num_batches_tracked buffer")
        if site.num_batches_tracked is None
        else site.num_batches_tracked,
        count=m.count,
        max_mean_drift=max_drift,
        worst_var_ratio=worst_ratio,
        gap_limit=limit,
        max_gap=max_gap,
        max_own_gap=max_own,
        worst_channel=worst,
        flags=flags,
        cause=cause,
        details=_details(m, ev, _channel_flags(site, site.eps)) if full else not_asked,
        population=population_report(population, site, full)
        if population is not None and population.batches > 1
        else Undefined(
            f"{NOT_ASKED}: give several batches (--input a.npy --input b.npy, or a directory)"
        ),
        fold=fold,
        dump=dump,
    )


NO_EPS = Undefined("a state_dict holds no eps: the module's setting")
NO_MOMENTUM = Undefined("a state_dict holds no momentum: the module's setting")
NO_MODE = Undefined("a state_dict holds no mode: the module's, set by .train() or .eval()")


def weights_layer_report(
    index: int,
    name: str,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    weight: np.ndarray,
    affine: bool,
    num_batches_tracked: int | None,
    flags: tuple[str, ...],
) -> LayerReport:
    """A batch norm found in a state_dict alone: its buffers and parameters, no batch."""
    cause = None
    if "nan-buffers" in flags:
        cause = nonfinite_cause(running_mean, running_var)
    return LayerReport(
        index=index,
        name=name,
        call=1,
        module="BatchNorm",
        channels=len(running_mean),
        eps=NO_EPS,
        momentum=NO_MOMENTUM,
        affine=affine,
        track_running_stats=True,
        mode=NO_MODE,
        num_batches_tracked=Undefined("no num_batches_tracked in the state_dict")
        if num_batches_tracked is None
        else num_batches_tracked,
        count=NO_BATCH,
        max_mean_drift=NO_BATCH,
        worst_var_ratio=NO_BATCH,
        gap_limit=NO_BATCH,
        max_gap=NO_BATCH,
        max_own_gap=NO_BATCH,
        worst_channel=NO_BATCH,
        flags=flags,
        cause=cause,
        details=NO_BATCH,
        population=NO_BATCH,
        fold=NO_BATCH,
        dump=NO_BATCH,
    )


def diverges(layer: LayerReport) -> bool:
    """The layer's gap (the whole network's, or its own where that is all there is) reaches
    its limit, or its buffers hold NaN."""
    gap = layer.max_gap if not isinstance(layer.max_gap, Undefined) else layer.max_own_gap
    if isinstance(layer.gap_limit, Undefined):  # no batch: --weights alone
        return False
    if "nan-buffers" in layer.flags or "one-value" in layer.flags:
        return True
    return not isinstance(gap, Undefined) and (math.isnan(gap) or gap >= layer.gap_limit)


def first_divergence(layers: Sequence[LayerReport]) -> FirstDivergence | None:
    for layer in layers:
        if diverges(layer):
            return FirstDivergence(
                layer.index,
                layer.name,
                layer.max_gap,
                layer.max_own_gap,
                layer.gap_limit,
                layer.cause or "",
            )
    return None


def _label(layer: LayerReport) -> str:
    return layer.name + (f" (call {layer.call})" if layer.call > 1 else "")


def _gap_text(value: Number) -> str:
    return "n/a" if isinstance(value, Undefined) else "NaN" if math.isnan(value) else f"{value:.3g}"


def _one_value_lines(stuck: list[LayerReport], total: int) -> tuple[str, str]:
    """The verdict when a layer sees one value per channel: PyTorch's train mode raises
    there, whatever else the layers show, so it comes first, with the fix."""
    layer = stuck[0]
    more = f" and {len(stuck) - 1} more" if len(stuck) > 1 else ""
    where = _label(layer) if len(stuck) == 1 else "them"
    return (
        f"train mode fails at {_label(layer)}{more} (layer {layer.index + 1} of {total}): one "
        "value per channel (PyTorch raises)",
        f"fix: 2+ samples per batch (DataLoader drop_last=True) or {where} in eval mode",
    )


def verdict(
    layers: Sequence[LayerReport],
    first: FirstDivergence | None,
    threshold: float,
    output_gap: Number,
    weights_alone: bool,
    other_norms: Sequence[str],
) -> Verdict:
    """At most two lines: what is wrong first (or that nothing is), then the numbers."""
    if not layers:
        others = (
            f" ({len(other_norms)} other normalizations: no running statistics)"
            if other_norms
            else ""
        )
        return Verdict(
            "no-batchnorm", (f"no batch-norm layer in the model: nothing to inspect{others}",)
        )
    total = len(layers)
    flagged = [layer for layer in layers if layer.flags]
    counts: dict[str, int] = {}
    for layer in flagged:
        for flag in layer.flags:
            counts[flag] = counts.get(flag, 0) + 1
    flag_text = ", ".join(
        f"{flag} {n}" for flag, n in sorted(counts.items(), key=lambda kv: -kv[1])
    )
    stuck = [layer for layer in layers if "one-value" in layer.flags]
    if stuck:
        return Verdict("diverges", _one_value_lines(stuck, total))
    if first is not None:
        passing = sum(1 for layer in layers if diverges(layer))
        others = f"{passing} of {total} layers are" if passing > 1 else "the only one"
        if isinstance(first.max_gap, Undefined):
            measured = f"{others} above the gap threshold"
        elif math.isnan(first.max_gap):
            measured = f"its eval-mode output is NaN ({others} above the gap threshold)"
        else:
            measured = (
                f"gap {_gap_text(first.max_gap)}, above the gap threshold "
                f"{_gap_text(first.gap_limit)} ({others}); output gap {_gap_text(output_gap)}"
            )
        return Verdict(
            "diverges",
            (
                f"train and eval part first at {first.name} (layer {first.index + 1} of "
                f"{total}): {short_cause(first.cause)}",
                measured,
            ),
        )
    if weights_alone:
        broken = [layer for layer in layers if "nan-buffers" in layer.flags]
        if broken:
            more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
            return Verdict(
                "warnings",
                (
                    f"{_label(broken[0])}{more}: {broken[0].cause}",
                    f"{len(flagged)} of {total} batch norms' buffers raise flags: {flag_text}",
                ),
            )
        if flagged:
            return Verdict(
                "warnings",
                (f"{len(flagged)} of {total} batch norms' buffers raise flags: {flag_text}",),
            )
        return Verdict("ok", (f"all {total} batch norms' buffers look healthy",))
    gapped = [layer for layer in layers if not isinstance(layer.max_gap, Undefined)]
    closest = max(gapped, key=lambda layer: layer.max_gap / layer.gap_limit, default=None)
    largest = (
        f"largest gap: {_label(closest)}, {_gap_text(closest.max_gap)}"
        if closest is not None
        else "no train/eval gap could be measured"
    )
    threshold_text = f" (threshold {_gap_text(closest.gap_limit)})" if closest is not None else ""
    if flagged:
        return Verdict(
            "warnings",
            (
                "no train/eval gap above the gap threshold; "
                + largest.replace("largest gap:", "largest:")
                + threshold_text,
                f"{len(flagged)} of {total} layers raise flags: {flag_text}",
            ),
        )
    scale = " of its output scale" if closest is not None else ""
    return Verdict(
        "ok",
        (
            f"all {total} batch norms agree between train and eval mode",
            largest + scale + threshold_text,
        ),
    )


def legend_for(layers: Sequence[LayerReport]) -> dict[str, str]:
    raised = {flag for layer in layers for flag in layer.flags}
    return {flag: meaning for flag, meaning in LEGEND.items() if flag in raised}


def model_result(
    *,
    source: ModelSource,
    batches: BatchSource | Undefined,
    layers: tuple[LayerReport, ...],
    threshold: float,
    output_gap: Number,
    unpaired: tuple[str, ...] | Undefined,
    pairing: str | Undefined,
    dump_dir: str | Undefined,
    notices: tuple[str, ...],
) -> ModelResult:
    first = first_divergence(layers)
    return ModelResult(
        verdict=verdict(
            layers, first, threshold, output_gap, isinstance(batches, Undefined), source.other_norms
        ),
        source=source,
        batches=batches,
        gap_threshold=threshold,
        first_divergence=first if first is not None else Undefined("no layer passes the threshold"),
        output_gap=output_gap,
        layers=layers,
        flag_legend=legend_for(layers),
        unpaired=unpaired,
        pairing=pairing,
        dump_dir=dump_dir,
        notices=notices,
    )
