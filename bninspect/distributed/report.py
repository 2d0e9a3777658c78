"""The results of ``run --ranks`` and ``explain --ranks`` from what the ranks reported and the
full batch's inspection in this process. Pure numpy on per-channel vectors: every figure of
a whole output was measured in the rank holding it (regimes.py); here they are joined.

Where an output is linear in x (y = a x + b per channel, in every regime and in eval mode), its
largest shift over the batch is at the channel's smallest or largest value, so a few vectors
give the exact maximum over the whole batch.
"""

from __future__ import annotations

import math

import numpy as np

from bninspect.check.tolerance import Conditioning, conditioning
from bninspect.distributed import bounds
from bninspect.distributed.batch import RankRun
from bninspect.distributed.exchange import array_to_moments
from bninspect.numerics import kernels
from bninspect.numerics.agreement import channel_scale, running_mean_scale, ulp
from bninspect.numerics.pooling import (
    averaged_variance,
    equal_weight_variance,
    shard_bounds,
    statistics_of,
)
from bninspect.numerics.reference import ChannelStatistics, std_of
from bninspect.results.common import Number, Undefined, Verdict
from bninspect.results.distributed import (
    BufferChannel,
    DistributedRunResult,
    RankChannel,
    RankReport,
    RegimeChannel,
    RegimeCheck,
)
from bninspect.text import counted

VERIFIED = (
    "{module} ran on each rank's block in that rank's process, and the ranks exchanged their "
    "statistics with torch.distributed.all_gather over gloo. torch.nn.SyncBatchNorm itself, "
    "tried in the same group, {syncbn}, so its forward is emulated from its CUDA kernels, not "
    "checked on a GPU here"
)


def verified(run: RankRun) -> str:
    """What ran for real in the ranks and what was emulated, with SyncBatchNorm's own answer."""
    said = str(run.reports[0].get("syncbn_on_cpu", "was not tried"))
    syncbn = "ran on CPU (not compared)" if said == "ran" else f"refused the CPU tensors ({said})"
    return VERIFIED.format(module=f"torch.nn.{run.inspection.settings.module}", syncbn=syncbn)


def _number(value) -> Number:
    return float(value)


def _defined(values: list[Number]) -> list[float]:
    return [v for v in values if not isinstance(v, Undefined)]


def _ulps(value: np.ndarray, reference: np.ndarray, scale: np.ndarray, dtype: str) -> np.ndarray:
    """|value - reference| in ULPs of ``dtype`` at ``scale``; NaN against NaN agrees."""
    value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(value - reference)
        same = (np.isnan(value) & np.isnan(reference)) | (np.isinf(value) & (value == reference))
        error = np.where(same, 0.0, np.where(np.isnan(error), np.inf, error))
        return np.where(error == 0, 0.0, error / ulp(scale, dtype))


def _full_errors(run: RankRun) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's full-batch output against the reference: per channel, max |err| and the
    reference's largest |y| (the channel's scale before the weight)."""
    inspection = run.inspection
    if inspection.output_errors is not None:
        found = inspection.output_errors
    else:
        forward, params = inspection.forward, inspection.params
        found = kernels.output_errors(
            inspection.batch,
            inspection.torch_run.output,
            inspection.tensor.info.dtype,
            forward.mean,
            forward.std,
            params.weight,
            params.bias,
        )
    return found.max_abs, found.max_reference


class Regimes:
    """Every per-channel vector the two results are built from, computed once."""

    def __init__(self, run: RankRun) -> None:
        inspection = self.inspection = run.inspection
        self.run, self.sizes = run, run.sizes
        self.dtype = inspection.tensor.info.dtype
        self.params, self.eps = inspection.params, inspection.settings.eps
        self.stats: ChannelStatistics = inspection.stats
        self.forward = inspection.forward
        self.count = self.stats.count
        self.channels = len(self.stats.mean)
        torch_abs, reference_max = _full_errors(run)
        self.output_scale = channel_scale(reference_max, self.params.weight)
        self.torch_ulps = _ulps(torch_abs, 0.0, self.output_scale, self.dtype)
        reports = run.reports
        self.moments = [array_to_moments(r["moments"]) for r in reports]
        self.rank_counts = [int(r["count"]) for r in reports]
        self.rank_stats = [
            statistics_of(m, n) for m, n in zip(self.moments, self.rank_counts, strict=True)
        ]
        self.pooled_mean = reports[0]["pooled_mean"]
        self.pooled_var = reports[0]["pooled_m2"] / self.count
        self.averaged_var = averaged_variance(self.rank_stats)
        self.equal_var = equal_weight_variance(self.rank_stats)
        # what the bounds are derived from (distributed/bounds.py)
        self.full_cond: Conditioning = conditioning(
            count=self.count, mean=self.stats.mean, var=self.stats.var_biased, eps=self.eps,
            data_mean=self.stats.mean, data_var=self.stats.var_biased, low=run.minimum,
            high=run.maximum, weight=self.params.weight, bias=self.params.bias, from_batch=True,
        )  # fmt: skip
        self.sync_errors = bounds.sync_statistics_errors(
            self.rank_stats, self.stats, self.eps, self.dtype
        )
        # what each regime leaves the buffers at
        w = run.batch_weight
        rm0, rv0 = self.params.running_mean, self.params.running_var
        self.before = (rm0, rv0)
        self.running = (self.forward.running_mean, self.forward.running_var)
        self.rank_running: list[tuple[np.ndarray, np.ndarray] | None] = []
        for stats, report in zip(self.rank_stats, reports, strict=True):
            if "torch_refused" in report:
                self.rank_running.append(None)  # the rank's module raised: no buffers
            elif stats is None:
                self.rank_running.append((rm0.copy(), rv0.copy()))  # nothing folded in
            else:
                self.rank_running.append(
                    ((1 - w) * rm0 + w * stats.mean, (1 - w) * rv0 + w * stats.var_unbiased)
                )
        # SyncBatchNorm with the equal-weight variance: its buffers take it with the global
        # count's Bessel factor, as they would the pooled one
        bessel = self.count / (self.count - 1) if self.count > 1 else 1.0
        self.equal_running_var = (1 - w) * rv0 + w * self.equal_var * bessel

    def rank_scale(self, rank: int) -> np.ndarray | None:
        """Per channel, the output scale of PyTorch's module on this rank's block alone (None
        where it did not run or the rank holds nothing)."""
        report = self.run.reports[rank]
        if self.rank_stats[rank] is None or "own_errors" not in report:
            return None
        return channel_scale(report["own_errors"][2], self.params.weight)

    def rank_bound(self, rank: int) -> np.ndarray | None:
        """Per channel, what a correct batch norm of this rank's block alone can leave on its
        output, in ULPs of the dtype at the block's scale (None as rank_scale)."""
        scale, stats = self.rank_scale(rank), self.rank_stats[rank]
        if scale is None or stats is None:
            return None
        cond = bounds.block_conditioning(
            stats, self.run.reports[rank]["own_errors"][2], self.params.weight,
            self.params.bias, self.eps,
        )  # fmt: skip
        found = bounds.rank_output_bound(cond, scale, self.dtype)
        return bounds.in_ulps_of(found, scale, self.dtype)

    def sync_bound(self, scale: np.ndarray) -> np.ndarray:
        """Per channel, what SyncBatchNorm's output can leave, in ULPs of the dtype at
        ``scale`` (the full batch's output scale, or one element's)."""
        normalizer = bounds.sync_normalizer_errors(
            self.sync_errors, self.stats.var_biased, self.eps, self.dtype
        )
        found = bounds.sync_output_bound(self.full_cond, normalizer, scale, self.dtype)
        return bounds.in_ulps_of(found, scale, self.dtype)

    def pooled_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per channel, how far the pooled mean and variance may be from the full batch's, in
        ULPs of float64 at the scales their errors are measured at (the channel's root mean
        square, the variance itself)."""
        dm, dvar = bounds.pooled_room(self.full_cond)
        return (
            bounds.in_ulps_of(dm, self.full_cond.rms, "float64"),
            bounds.in_ulps_of(dvar, self.stats.var_biased, "float64"),
        )

    def rank_shift(self, rank: int) -> np.ndarray | None:
        """Per channel: how far PyTorch's output on this rank alone is from the full batch's
        (max |y_rank - y_full| over the rank's block, over the channel's scale)."""
        report = self.run.reports[rank]
        if "full_errors" not in report:
            return None
        with np.errstate(invalid="ignore", divide="ignore"):
            return report["full_errors"][0] / self.output_scale

    def linear_shift(self, mean, std, reference_mean, reference_std, scale) -> np.ndarray:
        """max over the batch's values of |w (x - mean) / std - w (x - ref_mean) / ref_std|
        (both outputs linear in x: the largest gap is at the channel's smallest or largest
        value), over ``scale``."""
        w = np.abs(self.params.weight)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            gaps = [
                np.abs((x - mean) / std - (x - reference_mean) / reference_std)
                for x in (self.run.minimum, self.run.maximum)
            ]
            return w * np.maximum(*gaps) / scale

    def eval_scale(self) -> np.ndarray:
        """The eval-mode output's scale over this batch with the full batch's buffers."""
        rm, rv = self.running
        std = std_of(rv, self.eps)
        w, b = self.params.weight, self.params.bias
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            ends = [np.abs(w * (x - rm) / std + b) for x in (self.run.minimum, self.run.maximum)]
        return channel_scale(np.maximum(*ends), w)

    def eval_shift(self, buffers: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray | None:
        """How far eval mode's output over this batch moves with ``buffers`` in place of the
        full batch's, over the eval output's scale; None without buffers."""
        if buffers is None:
            return None
        rm, rv = self.running
        return self.linear_shift(
            buffers[0],
            std_of(buffers[1], self.eps),
            rm,
            std_of(rv, self.eps),
            self.eval_scale(),
        )


def _worst(shifts: list[np.ndarray | None], channel: int) -> tuple[Number, int | Undefined]:
    """The largest shift of one channel over the ranks that have one, and which rank."""
    held = [(float(s[channel]), r) for r, s in enumerate(shifts) if s is not None]
    held = [(v, r) for v, r in held if not math.isnan(v)] or held
    if not held:
        missing = Undefined("PyTorch's module refused every rank's block")
        return missing, missing
    value, rank = max(held)
    return value, rank


def _regime_channels(g: Regimes) -> tuple[RegimeChannel, ...]:
    stats, dtype = g.stats, g.dtype
    rms = np.sqrt(stats.mean**2 + stats.var_biased)
    with np.errstate(invalid="ignore", over="ignore"):
        mean_ulps = _ulps(g.pooled_mean, stats.mean, rms, "float64")
        var_ulps = _ulps(g.pooled_var, stats.var_biased, stats.var_biased, "float64")
    sync_abs = np.max([r["sync_errors"][0] for r in g.run.reports], axis=0)
    sync_ulps = _ulps(sync_abs, 0.0, g.output_scale, dtype)
    rank_shifts = [g.rank_shift(r) for r in range(len(g.sizes))]
    full_std = g.forward.std
    averaged = g.linear_shift(
        stats.mean, std_of(g.averaged_var, g.eps), stats.mean, full_std, g.output_scale
    )
    equal = g.linear_shift(
        stats.mean, std_of(g.equal_var, g.eps), stats.mean, full_std, g.output_scale
    )
    mean_bound, var_bound = g.pooled_bounds()
    sync_bound = g.sync_bound(g.output_scale)
    rows = []
    for c in range(g.channels):
        shift, rank = _worst(rank_shifts, c)
        rows.append(
            RegimeChannel(
                channel=c,
                count=stats.count,
                mean=_number(stats.mean[c]),
                var_biased=_number(stats.var_biased[c]),
                pooled_mean_ulp_error=_number(mean_ulps[c]),
                pooled_mean_bound_ulps=_number(mean_bound[c]),
                pooled_var_ulp_error=_number(var_ulps[c]),
                pooled_var_bound_ulps=_number(var_bound[c]),
                output_scale=_number(g.output_scale[c]),
                torch_max_ulp_error_at_scale=_number(g.torch_ulps[c]),
                sync_max_ulp_error_at_scale=_number(sync_ulps[c]),
                sync_bound_ulps=_number(sync_bound[c]),
                no_sync_max_shift=shift,
                no_sync_worst_rank=rank,
                averaged_max_shift=_number(averaged[c]),
                equal_weight_var=_number(g.equal_var[c]),
                equal_weight_max_shift=_number(equal[c]),
            )
        )
    return tuple(rows)


def _buffer_channels(g: Regimes) -> tuple[BufferChannel, ...]:
    dtype, report0 = g.dtype, g.run.reports[0]
    rm, rv = g.running
    rm0 = g.before[0]
    w = g.run.batch_weight
    rms = np.sqrt(g.stats.mean**2 + g.stats.var_biased)
    mean_scale = running_mean_scale(rm0, rm, (w, g.stats.mean, rms), dtype)
    sync_mean_ulps = _ulps(report0["sync_running_mean"], rm, mean_scale, dtype)
    sync_var_ulps = _ulps(report0["sync_running_var"], rv, rv, dtype)
    mean_room, var_room = bounds.sync_buffer_bounds(g.sync_errors, g.stats, w, rm, rv, dtype)
    sync_mean_bound = bounds.in_ulps_of(mean_room, mean_scale, dtype)
    sync_var_bound = bounds.in_ulps_of(var_room, rv, dtype)
    broadcast = g.rank_running[0]
    own_shifts = [g.eval_shift(b) for b in g.rank_running]
    if any(b is None for b in g.rank_running):
        averaged = None
    else:
        averaged = (
            np.mean([b[0] for b in g.rank_running], axis=0),
            np.mean([b[1] for b in g.rank_running], axis=0),
        )
    broadcast_shift, averaged_shift = g.eval_shift(broadcast), g.eval_shift(averaged)
    equal_shift = g.eval_shift((rm, g.equal_running_var))
    refused = Undefined("PyTorch's module refused rank 0's block: it has no buffers")
    some_refused = Undefined("PyTorch's module refused a rank's block: not every rank has buffers")

    def pick(vector, c, missing):
        return missing if vector is None else _number(vector[c])

    rows = []
    for c in range(g.channels):
        own, rank = _worst(own_shifts, c)
        rows.append(
            BufferChannel(
                channel=c,
                running_mean=_number(rm[c]),
                running_var=_number(rv[c]),
                sync_running_mean_ulp_error=_number(sync_mean_ulps[c]),
                sync_running_mean_bound_ulps=_number(sync_mean_bound[c]),
                sync_running_var_ulp_error=_number(sync_var_ulps[c]),
                sync_running_var_bound_ulps=_number(sync_var_bound[c]),
                broadcast_running_mean=pick(
                    None if broadcast is None else broadcast[0], c, refused
                ),
                broadcast_running_var=pick(None if broadcast is None else broadcast[1], c, refused),
                broadcast_eval_shift=pick(broadcast_shift, c, refused),
                own_eval_shift=own,
                own_worst_rank=rank,
                averaged_running_mean=pick(
                    None if averaged is None else averaged[0], c, some_refused
                ),
                averaged_running_var=pick(
                    None if averaged is None else averaged[1], c, some_refused
                ),
                averaged_eval_shift=pick(averaged_shift, c, some_refused),
                equal_weight_running_var=_number(g.equal_running_var[c]),
                equal_weight_eval_shift=_number(equal_shift[c]),
            )
        )
    return tuple(rows)


def _rank_reports(g: Regimes) -> tuple[RankReport, ...]:
    dtype, w = g.dtype, g.run.batch_weight
    full_std = np.sqrt(g.stats.var_biased)
    rm0 = g.before[0]
    reports = []
    for rank, ((first, end), report) in enumerate(
        zip(shard_bounds(g.sizes), g.run.reports, strict=True)
    ):
        stats = g.rank_stats[rank]
        refused = str(report["torch_refused"]) if "torch_refused" in report else None
        shift = g.rank_shift(rank)
        hand = g.rank_running[rank]
        no_values = Undefined(f"rank {rank} holds no samples")
        why_not = Undefined(f"PyTorch's module refused rank {rank}'s block: {refused}")
        output_scale, output_bound = g.rank_scale(rank), g.rank_bound(rank)
        if hand is not None and not refused:
            held = stats is not None
            rms = np.sqrt(stats.mean**2 + stats.var_biased) if held else np.zeros_like(rm0)
            mean_scale = running_mean_scale(
                rm0, hand[0], (w if held else 0.0, stats.mean if held else rms, rms), dtype
            )
            mean_room, var_room = bounds.rank_buffer_bounds(
                stats, w, hand[0], hand[1], dtype
            )
            mean_ulps = _ulps(report["torch_running_mean"], hand[0], mean_scale, dtype)
            var_ulps = _ulps(report["torch_running_var"], hand[1], hand[1], dtype)
            mean_bound = bounds.in_ulps_of(mean_room, mean_scale, dtype)
            var_bound = bounds.in_ulps_of(var_room, hand[1], dtype)
        channels = []
        for c in range(g.channels):
            if stats is None:
                own: dict[str, Number] = dict.fromkeys(
                    ("mean", "var_biased", "var_unbiased", "mean_shift", "var_ratio"), no_values
                )
            else:
                with np.errstate(invalid="ignore", divide="ignore"):
                    own = {
                        "mean": _number(stats.mean[c]),
                        "var_biased": _number(stats.var_biased[c]),
                        "var_unbiased": _number(stats.var_unbiased[c])
                        if stats.count > 1
                        else Undefined("one value per channel: dividing by N - 1 = 0"),
                        "mean_shift": _number((stats.mean[c] - g.stats.mean[c]) / full_std[c])
                        if full_std[c] > 0
                        else Undefined("the full batch's variance is 0"),
                        "var_ratio": _number(stats.var_biased[c] / g.stats.var_biased[c])
                        if g.stats.var_biased[c] > 0
                        else Undefined("the full batch's variance is 0"),
                    }
            if output_scale is not None and output_bound is not None:
                errors = report["own_errors"]
                max_abs: Number = _number(errors[0][c])
                at_scale: Number = _number(_ulps(errors[0][c], 0.0, output_scale[c], dtype))
                bound: Number = _number(output_bound[c])
            else:
                max_abs = at_scale = bound = why_not if refused else no_values
            if hand is None or refused:
                buffers: dict[str, Number] = dict.fromkeys(
                    (
                        "running_mean",
                        "running_var",
                        "torch_running_mean",
                        "torch_running_var",
                        "running_mean_ulp_error_at_scale",
                        "running_mean_bound_ulps",
                        "running_var_ulp_error",
                        "running_var_bound_ulps",
                    ),
                    why_not,
                )
            else:
                buffers = {
                    "running_mean": _number(hand[0][c]),
                    "running_var": _number(hand[1][c]),
                    "torch_running_mean": _number(report["torch_running_mean"][c]),
                    "torch_running_var": _number(report["torch_running_var"][c]),
                    "running_mean_ulp_error_at_scale": _number(mean_ulps[c]),
                    "running_mean_bound_ulps": _number(mean_bound[c]),
                    "running_var_ulp_error": _number(var_ulps[c]),
                    "running_var_bound_ulps": _number(var_bound[c]),
                }
            channels.append(
                RankChannel(
                    channel=c,
                    **own,
                    max_abs_error=max_abs,
                    max_ulp_error_at_scale=at_scale,
                    bound_ulps=bound,
                    output_shift=(why_not if refused else no_values)
                    if shift is None or stats is None
                    else _number(shift[c]),
                    **buffers,
                )
            )
        reports.append(
            RankReport(
                rank=rank,
                first_sample=first,
                samples=end - first,
                count=g.rank_counts[rank],
                torch_refused=refused,
                torch_threads=int(report["torch_threads"])
                if "torch_threads" in report
                else Undefined(f"PyTorch's module refused rank {rank}'s block"),
                seconds=float(report["seconds"]),
                channels=tuple(channels),
            )
        )
    return tuple(reports)


def _ratio(error: float, allowed: float) -> float:
    """error / allowed; 0 for no error, inf for an error where nothing is allowed or for a NaN
    where a number belongs (the worst error)."""
    if math.isnan(error):
        return math.inf
    if error == 0:
        return 0.0
    return error / allowed if allowed else math.inf


Found = tuple[Number, Number, str]  # (error, what a correct result may leave there, where)


def _judged(name: str, found: list[Found], unit: str, detail: str) -> RegimeCheck:
    """A check over every place it covers: passed if each error is within what may be left
    there; it reports the place whose error is largest against that."""
    held = [f for f in found if not isinstance(f[0], Undefined) and not isinstance(f[1], Undefined)]
    if not held:
        nothing = Undefined("nothing to compare here")
        return RegimeCheck(name, True, nothing, nothing, unit, "nowhere", detail)
    ratios = [_ratio(float(error), float(bound)) for error, bound, _ in held]
    worst = max(range(len(held)), key=lambda k: ratios[k])
    error, bound, where = held[worst]
    passed = bool(all(r <= 1 for r in ratios))
    return RegimeCheck(name, passed, _number(error), _number(bound), unit, where, detail)


def _checks(
    g: Regimes,
    regimes: tuple[RegimeChannel, ...],
    buffers: tuple[BufferChannel, ...],
    ranks: tuple[RankReport, ...],
) -> tuple[RegimeCheck, ...]:
    """The checks the verdict rests on, each error judged by what a correct computation can
    leave on the data it covers (distributed/bounds.py), never a fixed count of ULPs."""
    dtype = g.dtype
    at_scale = f"ULP of {dtype} at scale"
    pooled: list[Found] = [
        (r.pooled_mean_ulp_error, r.pooled_mean_bound_ulps, f"channel {r.channel}, mean")
        for r in regimes
    ] + [
        (r.pooled_var_ulp_error, r.pooled_var_bound_ulps, f"channel {r.channel}, variance")
        for r in regimes
    ]
    per_rank: list[Found] = [
        (c.max_ulp_error_at_scale, c.bound_ulps, f"rank {r.rank}, channel {c.channel}")
        for r in ranks
        for c in r.channels
    ]
    ran = sum(r.torch_refused is None for r in ranks)
    refusal = next((r.torch_refused for r in ranks if r.torch_refused), None)
    sync: list[Found] = [
        (r.sync_max_ulp_error_at_scale, r.sync_bound_ulps, f"channel {r.channel}")
        for r in regimes
    ]
    sync_detail = (
        "SyncBatchNorm's forward (its CUDA formulas, emulated) over the gathered statistics, "
        "against the full batch's float64 reference, allowed what a correct batch norm of the "
        "full batch can leave with SyncBatchNorm's pooled statistics"
    )
    if dtype == "float16" and any(
        isinstance(v, float) and not math.isfinite(v) for v, _, _ in sync
    ):
        sync_detail += (
            "; its output is not finite: SyncBatchNorm casts the counts to the layer's "
            "float16, which overflows above 65504 values per channel on a rank (pytorch#70901)"
        )
    hand: list[Found] = [
        (
            c.running_mean_ulp_error_at_scale,
            c.running_mean_bound_ulps,
            f"rank {r.rank}, channel {c.channel}, running_mean",
        )
        for r in ranks
        for c in r.channels
    ] + [
        (
            c.running_var_ulp_error,
            c.running_var_bound_ulps,
            f"rank {r.rank}, channel {c.channel}, running_var",
        )
        for r in ranks
        for c in r.channels
    ]
    sync_buffers: list[Found] = [
        (
            b.sync_running_mean_ulp_error,
            b.sync_running_mean_bound_ulps,
            f"channel {b.channel}, running_mean",
        )
        for b in buffers
    ] + [
        (
            b.sync_running_var_ulp_error,
            b.sync_running_var_bound_ulps,
            f"channel {b.channel}, running_var",
        )
        for b in buffers
    ]
    return (
        _judged(
            "pooled statistics = full batch's",
            pooled,
            "ULP of float64",
            "every rank's float64 count, mean and m2, gathered with all_gather and pooled by "
            "counts, against the full batch's statistics computed in one process, allowed "
            "what two float64 computations of the full batch's statistics can leave",
        ),
        _judged(
            "PyTorch per rank = its block's batch norm",
            per_rank,
            at_scale,
            "PyTorch's module in each rank's process against the float64 reference of that "
            "rank's block alone, allowed what a correct batch norm of that block can leave; "
            f"{ran} of {counted(len(ranks), 'rank')} ran it"
            + ("" if refusal is None else f", the others refused ({refusal})"),
        ),
        _judged("SyncBatchNorm output = full batch's", sync, at_scale, sync_detail),
        _judged(
            "rank buffers = own update by hand",
            hand,
            f"ULP of {dtype}",
            "PyTorch's buffers after the step in each rank against (1 - momentum) * before + "
            "momentum * the rank's mean and unbiased variance (its own count's Bessel factor), "
            "by hand in float64, allowed what a correct update from that rank's block can "
            "leave",
        ),
        _judged(
            "SyncBatchNorm buffers = full batch's",
            sync_buffers,
            f"ULP of {dtype}",
            "SyncBatchNorm's buffers (emulated) against the full batch's update, whose "
            f"variance takes the global count's Bessel factor, N - 1 = {g.count - 1}, allowed "
            "what a correct update from SyncBatchNorm's pooled statistics can leave (each "
            "rank's variance rebuilt from 1 / invstd^2 - eps)",
        ),
    )


def problem_line(check: RegimeCheck) -> str:
    """A failed check as the verdict's first line: what failed, where, by how much (its detail,
    what was compared with what, is under the checks)."""
    return (
        f"problem: {check.name} fails at {check.where}: {fmt_number(check.max_error)} "
        f"{check.unit} (allowed {fmt_number(check.allowed)})"
    )


def failed_summary(failed: list[RegimeCheck]) -> tuple[str, ...]:
    """The verdict of failed checks: the first, and how many more."""
    more = len(failed) - 1
    return (problem_line(failed[0]),) + (
        (f"and {counted(more, 'more check')} failed; see the checks",) if more else ()
    )


def fmt_number(value: Number) -> str:
    return "n/a" if isinstance(value, Undefined) else f"{value:.3g}"


def _percent(share: float) -> str:
    return f"{100 * share:.2g}%"


def _verdict(
    g: Regimes, checks: tuple[RegimeCheck, ...], regimes, buffers, sizes: tuple[int, ...]
) -> Verdict:
    """Two lines at most: whether SyncBatchNorm reproduces the full batch, and (more than one
    rank) how far DDP without it moves the outputs, train and eval."""
    failed = [c for c in checks if not c.passed]
    if failed:
        return Verdict("differs", failed_summary(failed))
    sync = max(_defined([r.sync_max_ulp_error_at_scale for r in regimes]), default=0.0)
    ranks = counted(len(sizes), "rank")
    line1 = f"SyncBatchNorm over {ranks} reproduces the full batch ({sync:.2g} ULP of {g.dtype})"
    if len(sizes) == 1:
        return Verdict(
            "agrees",
            (line1, "with one rank, DDP without sync and its buffer broadcast are the full batch"),
        )
    shifts = [(r.no_sync_max_shift, r.no_sync_worst_rank, r.channel) for r in regimes]
    held = [s for s in shifts if not isinstance(s[0], Undefined) and not math.isnan(s[0])]
    eval_shifts = _defined([b.broadcast_eval_shift for b in buffers])
    if held:
        shift, rank, channel = max(held)
        line2 = f"without sync, rank {rank} shifts channel {channel} by {_percent(shift)}"
    else:
        line2 = "without sync, PyTorch's module refuses every rank's block"
    if eval_shifts:
        line2 += f"; eval {_percent(max(eval_shifts))} (DDP's broadcast)"
    return Verdict("agrees", (line1, line2))


def build_run_result(run: RankRun) -> DistributedRunResult:
    g = Regimes(run)
    regimes = _regime_channels(g)
    buffers = _buffer_channels(g)
    ranks = _rank_reports(g)
    checks = _checks(g, regimes, buffers, ranks)
    inspection = g.inspection
    torch_run = inspection.torch_run
    return DistributedRunResult(
        verdict=_verdict(g, checks, regimes, buffers, run.sizes),
        input=inspection.tensor.info,
        settings=inspection.settings,
        torch_version=torch_run.version
        if torch_run is not None
        else Undefined(f"PyTorch was not run: {inspection.no_peer}"),
        ranks=len(run.sizes),
        rank_sizes=run.sizes,
        launcher=run.launcher,
        checks=checks,
        channels=regimes,
        buffers=buffers,
        rank_reports=ranks,
        verified=verified(run),
    )
