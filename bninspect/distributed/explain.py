"""``explain --ranks``: one output element of a batch split over ranks, derived under each
regime: the rank holding it alone (DDP without SyncBatchNorm), SyncBatchNorm's pooling of every
rank's count, mean and m2 (the full batch's statistics), and the per-rank variances averaged
instead of pooled; each beside the value computed as that regime computes it."""

from __future__ import annotations

import math

import numpy as np

from bninspect.distributed.batch import RankRun
from bninspect.distributed.report import Regimes, failed_summary, verified
from bninspect.numerics.agreement import ulp
from bninspect.numerics.pooling import rank_of_sample, shard_bounds
from bninspect.numerics.reference import normalize, std_of
from bninspect.results.common import Number, Undefined, Verdict
from bninspect.results.distributed import DistributedExplainResult, RegimeCheck, RegimeValue
from bninspect.results.explain import Step
from bninspect.text import number

SHOWN_RANKS = 8  # a sum over more ranks is shown by its result alone


def term(value: float) -> str:
    return f"({number(value)})" if math.copysign(1.0, value) < 0 else number(value)


def _sum_text(terms: list[str], count: int) -> str:
    return " + ".join(terms) if count <= SHOWN_RANKS else f"the sum over the {count} ranks"


def _normalized_text(x: float, mean: float, var: float, eps: float, w: float, b: float) -> str:
    return (
        f"({number(x)} - {term(mean)}) / sqrt({number(var)} + {number(eps)}) * {term(w)} "
        f"+ {term(b)}"
    )


def _value(
    regime: str,
    count: int,
    mean: float,
    var: float,
    y: float,
    computed: Number,
    full_y: float,
    scale: float,
    dtype: str,
    eps: float,
    running: tuple[Number, Number],
) -> RegimeValue:
    if isinstance(computed, Undefined) or math.isnan(computed):
        missing = computed if isinstance(computed, Undefined) else Undefined("not computed")
        abs_error: Number = missing
        at_scale: Number = missing
    else:
        abs_error = abs(computed - y)
        at_scale = float(abs_error / ulp(scale, dtype)) if abs_error else 0.0
    with np.errstate(invalid="ignore", divide="ignore"):
        shift = abs(y - full_y) / scale
    return RegimeValue(
        regime=regime,
        count=count,
        mean=float(mean),
        var_biased=float(var),
        inv_std=float(1.0 / std_of(var, eps)),
        reference=float(y),
        torch=computed,
        abs_error=abs_error,
        ulp_error_at_scale=at_scale,
        shift=float(shift),
        running_mean=running[0],
        running_var=running[1],
    )


def build_explain_result(run: RankRun, index: tuple[int, ...]) -> DistributedExplainResult:
    g = Regimes(run)
    inspection, sizes = g.inspection, run.sizes
    c, dtype, eps = index[1], g.dtype, g.eps
    w, b = float(g.params.weight[c]), float(g.params.bias[c])
    x = float(inspection.batch[index])
    rank = rank_of_sample(sizes, index[0])
    first, end = shard_bounds(sizes)[rank]
    local = (index[0] - first, *index[1:])
    own = g.rank_stats[rank]
    assert own is not None  # it holds the element
    report = run.reports[rank]
    element = report.get("element", np.array([np.nan, np.nan]))
    refused = report.get("torch_refused")
    scale = float(g.output_scale[c])
    N = g.count
    mean_f, var_f = float(g.stats.mean[c]), float(g.stats.var_biased[c])
    mean_r, var_r, n_r = float(own.mean[c]), float(own.var_biased[c]), own.count
    pooled_mean, pooled_var = float(g.pooled_mean[c]), float(g.pooled_var[c])
    averaged_var = float(g.averaged_var[c])
    equal_var = float(g.equal_var[c])
    y_full = float(normalize(x, mean_f, float(g.forward.std[c]), w, b))
    y_rank = float(normalize(x, mean_r, float(std_of(var_r, eps)), w, b))
    y_pooled = float(normalize(x, pooled_mean, float(std_of(pooled_var, eps)), w, b))
    y_averaged = float(normalize(x, mean_f, float(std_of(averaged_var, eps)), w, b))
    y_equal = float(normalize(x, mean_f, float(std_of(equal_var, eps)), w, b))

    held = [(k, s) for k, s in enumerate(g.rank_stats) if s is not None]
    per_value = inspection.batch.size // max(
        inspection.batch.shape[0] * inspection.batch.shape[1], 1
    )
    within = sum(float(s.m2[c]) for _, s in held)
    between = sum(s.count * (float(s.mean[c]) - pooled_mean) ** 2 for _, s in held)
    momentum = run.batch_weight
    rv0 = float(g.before[1][c])
    own_buffers = g.rank_running[rank]
    steps = [
        Step("x", f"input[{', '.join(map(str, index))}]", "", x),
        Step(
            "rank",
            f"the rank whose block holds sample {index[0]}",
            f"rank {rank} (samples {first} to {end - 1}; its sample {local[0]})",
            float(rank),
        ),
        Step(
            f"count_{rank}",
            f"values of channel {c} on rank {rank}",
            f"{end - first} samples * {per_value}",
            float(n_r),
        ),
        Step(f"mean_{rank}", f"mean of rank {rank}'s {n_r} values", "", mean_r),
        Step(
            f"var_{rank}",
            f"m2_{rank} / count_{rank} (biased)",
            f"{number(float(own.m2[c]))} / {n_r}",
            var_r,
        ),
        Step(
            f"y_{rank}",
            f"(x - mean_{rank}) / sqrt(var_{rank} + eps) * weight + bias",
            _normalized_text(x, mean_r, var_r, eps, w, b),
            y_rank,
            f"rank {rank} alone: what DDP without SyncBatchNorm outputs",
        ),
        Step(
            "count",
            "sum of count_k (every rank's, gathered)",
            _sum_text([str(s.count) for _, s in held], len(held)),
            float(N),
        ),
        Step(
            "mean",
            "sum of count_k * mean_k / count",
            "("
            + _sum_text([f"{s.count} * {term(float(s.mean[c]))}" for _, s in held], len(held))
            + f") / {N}",
            pooled_mean,
            "weighted by counts: empty ranks add nothing",
        ),
        Step(
            "m2",
            "sum of m2_k + sum of count_k * (mean_k - mean)^2",
            f"{number(within)} + {number(between)}",
            within + between,
            "within the ranks, plus the spread of the rank means, which only pooling counts",
        ),
        Step("var_biased", "m2 / count", f"{number(within + between)} / {N}", pooled_var),
        Step(
            "y",
            "(x - mean) / sqrt(var_biased + eps) * weight + bias",
            _normalized_text(x, pooled_mean, pooled_var, eps, w, b),
            y_pooled,
            "SyncBatchNorm: the full batch's output",
        ),
        Step(
            "var_averaged",
            "sum of m2_k / count (per-rank variances averaged)",
            f"{number(within)} / {N}",
            averaged_var,
            "the mistake: it leaves out the spread of the rank means",
        ),
        Step(
            "y_averaged",
            "(x - mean) / sqrt(var_averaged + eps) * weight + bias",
            _normalized_text(x, mean_f, averaged_var, eps, w, b),
            y_averaged,
        ),
        Step(
            "var_equal",
            f"sum of var_k / {len(held)} (the per-rank variances, equal weights)",
            "("
            + _sum_text([number(float(s.var_biased[c])) for _, s in held], len(held))
            + f") / {len(held)}",
            equal_var,
            "the plain mistake: no spread of the rank means, and every rank weighs the same "
            "whatever its count",
        ),
        Step(
            "y_equal",
            "(x - mean) / sqrt(var_equal + eps) * weight + bias",
            _normalized_text(x, mean_f, equal_var, eps, w, b),
            y_equal,
        ),
    ]
    if own_buffers is not None and N > 1:
        steps.append(
            Step(
                f"running_var_{rank}",
                f"(1 - momentum) * running_var + momentum * m2_{rank} / (count_{rank} - 1)",
                f"{number(1 - momentum)} * {number(rv0)} + {number(momentum)} * "
                f"{number(float(own.m2[c]))} / {n_r - 1}",
                float(own_buffers[1][c]),
                f"rank {rank}'s own buffer, its local Bessel factor",
            )
        )
        steps.append(
            Step(
                "running_var",
                "(1 - momentum) * running_var + momentum * m2 / (count - 1)",
                f"{number(1 - momentum)} * {number(rv0)} + {number(momentum)} * "
                f"{number(within + between)} / {N - 1}",
                float(g.running[1][c]),
                "SyncBatchNorm's: the global count's Bessel factor",
            )
        )
    torch_run = inspection.torch_run
    full_torch: Number = (
        float(torch_run.output[index])
        if torch_run is not None
        else Undefined(f"PyTorch was not run: {inspection.no_peer}")
    )
    rank_torch: Number = (
        Undefined(f"PyTorch's module refused rank {rank}'s block: {refused}")
        if refused is not None
        else float(element[0])
    )
    no_buffers = Undefined("PyTorch's module refused a rank's block: no buffers")

    def buffers(pair) -> tuple[Number, Number]:
        return (no_buffers, no_buffers) if pair is None else (float(pair[0][c]), float(pair[1][c]))

    averaged_buffers = (
        None
        if any(p is None for p in g.rank_running)
        else (
            np.mean([p[0] for p in g.rank_running], axis=0),
            np.mean([p[1] for p in g.rank_running], axis=0),
        )
    )
    common = (y_full, scale, dtype, eps)
    regimes = (
        _value("full batch", N, mean_f, var_f, y_full, full_torch, *common, buffers(g.running)),
        _value(
            "SyncBatchNorm",
            N,
            pooled_mean,
            pooled_var,
            y_pooled,
            float(element[1]),
            *common,
            buffers(g.running),
        ),
        _value(
            f"rank {rank} alone",
            n_r,
            mean_r,
            var_r,
            y_rank,
            rank_torch,
            *common,
            buffers(own_buffers),
        ),  # fmt: skip
        _value(
            "var averaged",
            N,
            mean_f,
            averaged_var,
            y_averaged,
            Undefined("a mistake, not an implementation: its float64 form only"),
            *common,
            buffers(averaged_buffers),
        ),
        _value(
            "var equal",
            N,
            mean_f,
            equal_var,
            y_equal,
            Undefined("a mistake, not an implementation: its float64 form only"),
            *common,
            (float(g.running[0][c]), float(g.equal_running_var[c])),
        ),
    )
    checks = _checks(g, rank, regimes, c)
    return DistributedExplainResult(
        verdict=_verdict(regimes, checks, rank, first, end, own, g, c, scale),
        input=inspection.tensor.info,
        settings=inspection.settings,
        torch_version=torch_run.version
        if torch_run is not None
        else Undefined(f"PyTorch was not run: {inspection.no_peer}"),
        ranks=len(sizes),
        rank_sizes=sizes,
        launcher=run.launcher,
        index=index,
        channel=c,
        x=x,
        rank=rank,
        local_index=local,
        output_scale=scale,
        derivation=tuple(steps),
        regimes=regimes,
        checks=checks,
        verified=verified(run),
    )


def _checks(g: Regimes, rank: int, regimes, c: int) -> tuple[RegimeCheck, ...]:
    """The element's checks, each judged by what a correct computation can leave on the data
    it covers (distributed/bounds.py): the pooled statistics by two float64 computations of
    the full batch's, SyncBatchNorm's y by the full batch's bound with its pooled statistics,
    the rank's y by its block's bound (at the block's scale, carried to the element's)."""
    dtype, scale = g.dtype, float(g.output_scale[c])
    mean_bounds, var_bounds = g.pooled_bounds()
    with np.errstate(invalid="ignore", divide="ignore"):
        rms = float(g.full_cond.rms[c])
        var_f = float(g.stats.var_biased[c])
        mean_error = abs(float(g.pooled_mean[c]) - float(g.stats.mean[c]))
        var_error = abs(float(g.pooled_var[c]) - var_f)
        mean_ulps = mean_error / float(ulp(rms, "float64")) if mean_error else 0.0
        var_ulps = var_error / float(ulp(var_f, "float64")) if var_error else 0.0
    worst = max(
        (_over(mean_ulps, float(mean_bounds[c])), mean_ulps, float(mean_bounds[c]), "mean"),
        (_over(var_ulps, float(var_bounds[c])), var_ulps, float(var_bounds[c]), "variance"),
    )
    checks = [
        RegimeCheck(
            "pooled statistics = full batch's",
            bool(worst[0] <= 1),
            float(worst[1]),
            float(worst[2]),
            "ULP of float64",
            f"the channel's {worst[3]}",
            "the channel's mean and variance pooled from every rank's count, mean and m2, "
            "against the full batch's computed in one process, allowed what two float64 "
            "computations of the full batch's statistics can leave",
        )
    ]
    sync_allowed = float(g.sync_bound(g.output_scale)[c])
    rank_bound, rank_scale = g.rank_bound(rank), g.rank_scale(rank)
    rank_allowed: Number = Undefined("PyTorch's module did not run on the rank's block")
    if rank_bound is not None and rank_scale is not None:
        # the block's bound is in ULPs at its own scale: carried to the element's scale
        rank_allowed = float(
            rank_bound[c] * ulp(float(rank_scale[c]), dtype) / ulp(scale, dtype)
        )
    for value, name, allowed, what in (
        (regimes[1], "SyncBatchNorm's y = its float64 form", sync_allowed,
         "what a correct batch norm of the full batch can leave with SyncBatchNorm's pooled "
         "statistics"),
        (regimes[2], "PyTorch's y on the rank = its float64 form", rank_allowed,
         f"what a correct batch norm of rank {rank}'s block alone can leave"),
    ):  # fmt: skip
        error = value.ulp_error_at_scale
        if isinstance(error, Undefined) or isinstance(allowed, Undefined):
            continue
        checks.append(
            RegimeCheck(
                name,
                bool(_over(error, allowed) <= 1),
                error,
                allowed,
                f"ULP of {dtype} at scale",
                value.regime,
                "the value as the regime computes it in the dtype, against the same formula in "
                f"float64, allowed {what}",
            )
        )
    return tuple(checks)


def _over(error: float, allowed: float) -> float:
    """error / allowed: 0 without an error, inf for one where nothing is allowed or a NaN."""
    if math.isnan(error):
        return math.inf
    if error == 0:
        return 0.0
    return error / allowed if allowed else math.inf


def _verdict(regimes, checks, rank, first, end, own, g: Regimes, c: int, scale) -> Verdict:
    failed = [k for k in checks if not k.passed]
    if failed:
        return Verdict("differs", failed_summary(failed))
    full, alone = regimes[0], regimes[2]
    std = math.sqrt(float(g.stats.var_biased[c]))
    mean_shift = (float(own.mean[c]) - full.mean) / std if std else math.nan
    ratio = float(own.var_biased[c]) / full.var_biased if full.var_biased else math.nan
    return Verdict(
        "within-rounding",
        (
            f"rank {rank} alone gives {number(alone.reference)}; SyncBatchNorm gives the full "
            f"batch's {number(full.reference)}",
            f"shift {100 * alone.shift:.2g}% of scale without sync: rank {rank}'s mean "
            f"{mean_shift:+.2g} std off, var x{ratio:.2g}",
        ),
    )
