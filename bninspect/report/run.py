"""``run``'s report: per channel, the reference statistics of the last batch, their health,
PyTorch's distance from the reference, the train/eval gap, and the running statistics step by
step."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

import numpy as np

from bninspect.check.buffers import buffer_bounds
from bninspect.check.diagnosis import channel_list
from bninspect.check.tolerance import channel_bound, in_ulps, output_conditioning
from bninspect.numerics import kernels
from bninspect.numerics.agreement import (
    channel_scale,
    elementwise_errors,
    errors_at_scale,
    max_errors,
    mean_update_scale,
    ulp,
)
from bninspect.numerics.health import channel_health, legend
from bninspect.numerics.reference import (
    ReferenceForward,
    channel_values,
    forward_output,
    reference_forward,
)
from bninspect.numerics.running import StepUpdate, initial_state
from bninspect.numerics.variance_methods import compare_variance_methods
from bninspect.pytorch.inspection import STATS_ONLY, Inspection, PhaseProgress
from bninspect.pytorch.peer import describe_peer, no_torch_value
from bninspect.results.common import NOT_ASKED, Number, Undefined, Verdict
from bninspect.results.run import (
    MEASURES_AGAINST_BOUND,
    ChannelReport,
    RunResult,
    StepChannel,
    StepRecord,
)

if TYPE_CHECKING:
    from bninspect.pytorch.batchnorm import TorchStep

AGREEMENT_FIELDS = (
    "output_scale",
    "max_ulp_error_at_scale",
    "bound_ulps",
    "max_abs_error",
    "max_ulp_error",
    "worst_index",
    "running_mean_abs_error",
    "running_mean_ulp_error_at_scale",
    "running_mean_bound_ulps",
    "running_mean_ulp_error",
    "running_var_abs_error",
    "running_var_ulp_error_at_scale",
    "running_var_bound_ulps",
)


def _largest(values: list[Number]) -> Number:
    defined = [v for v in values if not isinstance(v, Undefined)]
    return max(defined) if defined else Undefined("no channel had elements to compare")


def _errors(
    inspection: Inspection, actual: np.ndarray | None, reference: np.ndarray
) -> tuple[Number, Number]:
    """Largest absolute and ULP error of PyTorch's ``actual`` against ``reference``; undefined
    when PyTorch's module did not run."""
    if actual is None:
        missing = no_torch_value(inspection)
        return missing, missing
    return max_errors(actual, reference, inspection.tensor.info.dtype)


def _at_scale(abs_error: Number, scale: float, inspection: Inspection) -> Number:
    """One buffer's |err| in ULPs at ``scale``, or why it is missing."""
    if isinstance(abs_error, Undefined):
        return abs_error
    return float(
        errors_at_scale(np.float64(abs_error), np.float64(scale), inspection.tensor.info.dtype)
    )


def _train_and_eval(inspection: Inspection) -> tuple[ReferenceForward, ReferenceForward]:
    """The last batch's pass in train mode (batch statistics) and in eval mode with the running
    statistics after the pass (after the update in train mode, as given in eval mode)."""
    forward, settings, stats = inspection.forward, inspection.settings, inspection.stats
    momentum = None if isinstance(settings.momentum, Undefined) else settings.momentum
    train = forward
    if forward.update is None:
        train = reference_forward(
            stats, forward.before, settings.eps, momentum, True, inspection.convention
        )
    after = forward.update.after if forward.update else forward.before
    evaluated = reference_forward(stats, after, settings.eps, None, False, inspection.convention)
    return train, evaluated


NO_GAP = Undefined(
    f"{NOT_ASKED}: --steps K or --batch-size B (train mode) compares train and eval outputs "
    "after the training steps"
)


def _gap(inspection: Inspection, c: int, train, evaluated) -> tuple[Number, Number, Number]:
    """Max and mean |y_train - y_eval| of channel c (reference), and PyTorch's eval output's
    largest error against the reference's."""
    params, x = inspection.params, inspection.batch
    values = channel_values(x, c)
    y_eval = forward_output(evaluated, values, c, params.weight[c], params.bias[c])
    torch_run = inspection.torch_run
    torch_eval = None
    if torch_run is not None:
        evaluated_by_torch = torch_run.eval_output if inspection.history else torch_run.output
        torch_eval = evaluated_by_torch[:, c].reshape(-1)
    eval_error, _ = _errors(inspection, torch_eval, y_eval)
    if inspection.stats.count == 1 and inspection.convention.one_value == "refuse":
        refused = Undefined("PyTorch refuses train mode with one value per channel")
        return refused, refused, eval_error
    y_train = forward_output(train, values, c, params.weight[c], params.bias[c])
    with np.errstate(invalid="ignore"):  # inf - inf: NaN input gives a NaN gap on purpose
        gap = np.abs(y_train - y_eval)
    return float(gap.max()), float(gap.mean()), eval_error


def _step_channel(
    inspection: Inspection,
    update: StepUpdate,
    torch_step: TorchStep | None,
    c: int,
    mean_scale: np.ndarray,
) -> StepChannel:
    """Channel c after one step; ``mean_scale`` is the step's running_mean_scale, shape (C,)."""
    after = update.after
    compared = {}
    for name in ("running_mean", "running_var"):
        reference = getattr(after, name)[c : c + 1]
        torch_value = None if torch_step is None else getattr(torch_step, name)[c : c + 1]
        errors = _errors(inspection, torch_value, reference)
        shown = no_torch_value(inspection) if torch_value is None else float(torch_value[0])
        compared[name] = (shown, *errors)
    return StepChannel(
        channel=c,
        batch_mean=float(update.batch_mean[c]),
        batch_var=float(update.batch_var[c]),
        stored_mean=float(after.stored_mean[c]),
        stored_var=float(after.stored_var[c]),
        running_mean=float(after.running_mean[c]),
        running_var=float(after.running_var[c]),
        torch_running_mean=compared["running_mean"][0],
        torch_running_var=compared["running_var"][0],
        running_mean_scale=float(mean_scale[c]),
        running_mean_abs_error=compared["running_mean"][1],
        running_mean_ulp_error_at_scale=_at_scale(
            compared["running_mean"][1], mean_scale[c], inspection
        ),
        running_mean_ulp_error=compared["running_mean"][2],
        running_var_abs_error=compared["running_var"][1],
        running_var_ulp_error_at_scale=compared["running_var"][2],
    )


def step_records(inspection: Inspection) -> tuple[StepRecord, ...]:
    """Every training step's running statistics, per channel, beside PyTorch's buffers."""
    size, channels = inspection.settings.batch_size, inspection.batch.shape[1]
    torch_steps = inspection.torch_run.steps if inspection.torch_run else ()
    params = inspection.params
    before = initial_state(params.running_mean, params.running_var).running_mean
    records = []
    for k, update in enumerate(inspection.history):
        torch_step = torch_steps[k] if torch_steps else None
        after = update.after.running_mean
        mean_scale = mean_update_scale(before, update, after, inspection.tensor.info.dtype)
        before = after
        records.append(
            StepRecord(
                training_step=k + 1,
                first_sample=k * size,
                num_batches_tracked=update.after.num_batches_tracked,
                batch_weight=update.batch_weight,
                scale_factor=update.after.scale_factor,
                channels=tuple(
                    _step_channel(inspection, update, torch_step, c, mean_scale)
                    for c in range(channels)
                ),
            )
        )
    return tuple(records)


VAR_METHOD_HINT = "; add --var-method to see what it does to the naive one-pass variance"


def _flag_legend(mode: str, dtype: str, raised: set[str], var_method: bool) -> dict[str, str]:
    """The meanings of the flags raised; where cancellation is, a pointer to --var-method,
    which shows the classic trap on these very channels."""
    meanings = {flag: meaning for flag, meaning in legend(mode, dtype).items() if flag in raised}
    if "cancel" in meanings and not var_method:
        meanings["cancel"] += VAR_METHOD_HINT
    return meanings


def build_run_result(
    inspection: Inspection, progress: PhaseProgress | None = None, var_method: bool = False
) -> RunResult:
    """The whole ``run`` report, for the last step's batch. Without a PyTorch run, every
    comparison with PyTorch is Undefined and says why; ``var_method`` adds the
    variance-methods comparison."""
    x, stats, forward, params = (
        inspection.batch,
        inspection.stats,
        inspection.forward,
        inspection.params,
    )
    dtype, eps, torch_run = (
        inspection.tensor.info.dtype,
        inspection.settings.eps,
        inspection.torch_run,
    )
    channels = x.shape[1]
    mean_scale = mean_update_scale(
        forward.before.running_mean, forward.update, forward.running_mean, dtype
    )  # the reference's own: defined with or without PyTorch
    if torch_run is not None:
        errors = inspection.output_errors  # compared as PyTorch produced it, or now:
        if errors is None:
            tell = progress("comparing", x.nbytes) if progress else None
            vectors = (forward.mean, forward.std, params.weight, params.bias)
            errors = kernels.output_errors(x, torch_run.output, dtype, *vectors, tell)
        mean_abs, mean_ulp = elementwise_errors(torch_run.running_mean, forward.running_mean, dtype)
        var_abs, var_ulp = elementwise_errors(torch_run.running_var, forward.running_var, dtype)
        buffers = {
            "running_mean_abs_error": mean_abs,
            "running_mean_ulp_error_at_scale": errors_at_scale(mean_abs, mean_scale, dtype),
            "running_mean_ulp_error": mean_ulp,
            "running_var_abs_error": var_abs,
            "running_var_ulp_error_at_scale": var_ulp,
        }
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            scales = channel_scale(errors.max_reference, params.weight)
            scaled = errors.max_abs / ulp(scales, dtype)
        bounds = _bounds(inspection, errors.max_reference, scales, mean_scale)
        buffers.update(
            running_mean_bound_ulps=bounds["running_mean"],
            running_var_bound_ulps=bounds["running_var"],
        )
    train, evaluated = _train_and_eval(inspection) if inspection.train_eval else (None, None)
    reports = []
    for c in range(channels):
        health = channel_health(
            count=stats.count,
            batch_mean=float(stats.mean[c]),
            batch_m2=float(stats.m2[c]),
            nan=int(stats.nan_count[c]),
            inf=int(stats.posinf_count[c] + stats.neginf_count[c]),
            mean=float(forward.mean[c]),
            var=float(forward.var[c]),
            eps=eps,
            dtype=dtype,
        )
        if torch_run is None:
            agreement = dict.fromkeys(AGREEMENT_FIELDS, no_torch_value(inspection))
        else:
            agreement = _agreement(c, errors, scales[c], scaled[c], x.shape, buffers)
            agreement["bound_ulps"] = float(bounds["output"][c])
        if stats.count > 1:
            var_unbiased: Number = float(stats.var_unbiased[c])
        else:
            var_unbiased = Undefined("one value per channel: dividing by N - 1 = 0")
        with np.errstate(divide="ignore"):  # std 0 (eps 0, constant channel) gives inf on purpose
            std, inv_std = float(forward.std[c]), float(1.0 / forward.std[c])
        if forward.passes_through:
            std = inv_std = Undefined("the layer copies one value per channel through: no std")
        if inspection.train_eval:
            max_gap, mean_gap, eval_error = _gap(inspection, c, train, evaluated)
        else:
            max_gap = mean_gap = eval_error = NO_GAP
        reports.append(
            ChannelReport(
                channel=c,
                count=stats.count,
                mean=float(stats.mean[c]),
                var_biased=float(stats.var_biased[c]),
                var_unbiased=var_unbiased,
                std=std,
                inv_std=inv_std,
                nan_count=int(stats.nan_count[c]),
                posinf_count=int(stats.posinf_count[c]),
                neginf_count=int(stats.neginf_count[c]),
                **dataclasses.asdict(health),  # flags, eps_share, mean_to_std, ...
                eps=eps,
                weight=float(params.weight[c]),
                bias=float(params.bias[c]),
                running_mean=float(forward.running_mean[c]),
                running_var=float(forward.running_var[c]),
                running_mean_scale=float(mean_scale[c]),
                **agreement,
                train_eval_max_gap=max_gap,
                train_eval_mean_gap=mean_gap,
                eval_max_abs_error=eval_error,
            )
        )
    raised = {flag for report in reports for flag in report.flags}
    missing = no_torch_value(inspection)
    return RunResult(
        verdict=run_verdict(inspection, reports),
        input=inspection.tensor.info,
        settings=inspection.settings,
        torch_version=torch_run.version if torch_run else missing,
        num_batches_tracked=torch_run.num_batches_tracked if torch_run else missing,
        channels=tuple(reports),
        max_ulp_error_at_scale=_largest([r.max_ulp_error_at_scale for r in reports]),
        max_abs_error=_largest([r.max_abs_error for r in reports]),
        max_ulp_error=_largest([r.max_ulp_error for r in reports]),
        flag_legend=_flag_legend(inspection.settings.mode, dtype, raised, var_method),
        variance_methods=(
            compare_variance_methods(x, stats, inspection.release_region)
            if var_method
            else Undefined(f"{NOT_ASKED}: add --var-method")
        ),
        torch_module=describe_peer(inspection),
        running_history=step_records(inspection),
    )


def _bounds(
    inspection: Inspection, max_reference: np.ndarray, scales: np.ndarray, mean_scale: np.ndarray
) -> dict[str, np.ndarray]:
    """What a correct implementation in the dtype can leave, in ULPs at each one's scale, per
    channel: on the output (check.tolerance's bound, the data's conditioning from the output's
    own comparison) and on each running buffer (check.buffers' bound for the update)."""
    dtype, forward = inspection.tensor.info.dtype, inspection.forward
    cond = output_conditioning(inspection, max_reference)
    output = in_ulps(channel_bound(cond, scales, dtype).total, scales, dtype)
    mean_bound, var_bound = buffer_bounds(inspection, cond, dtype)
    # The bounds are of the buffers as stored (Caffe: sums); eval mode divides by scale_factor.
    factor = forward.update.after.scale_factor if forward.update else 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_bound, var_bound = mean_bound / factor, var_bound / factor
    return {
        "output": np.where(np.isnan(output), 0.0, output),
        "running_mean": in_ulps(mean_bound, mean_scale, dtype),
        "running_var": in_ulps(var_bound, np.abs(forward.running_var), dtype),
    }


def _agreement(c, errors, scale, scaled, shape, buffers: dict[str, np.ndarray]) -> dict:
    """Channel c's comparison fields from the whole-tensor kernel results and the buffers'
    per-channel errors (``buffers``: field name -> shape (C,))."""
    scale = float(scale)
    if errors.argmax_ulp[c] >= 0 and errors.max_ulp[c] > 0:
        worst = tuple(int(i) for i in np.unravel_index(int(errors.argmax_ulp[c]), shape))
    else:
        worst = Undefined("no element differs from the reference")
    return {
        "output_scale": scale,
        "max_ulp_error_at_scale": float(scaled)
        if scale > 0
        else Undefined("weight 0 and every reference output 0 (or not finite): no scale"),
        "max_abs_error": float(errors.max_abs[c]),
        "max_ulp_error": float(errors.max_ulp[c]),
        "worst_index": worst,
        **{name: float(values[c]) for name, values in buffers.items()},
    }


def health_line(reports: list[ChannelReport]) -> str | None:
    """The health flags raised, each with the channels that raise it, in one line."""
    flagged: dict[str, list[int]] = {}
    for report in reports:
        for flag in report.flags:
            flagged.setdefault(flag, []).append(report.channel)
    if not flagged:
        return None
    parts = [f"{flag} on {channel_list(c, len(reports))}" for flag, c in flagged.items()]
    return "Flags: " + "; ".join(parts) + "."


def _beyond(reports: list[ChannelReport], error: str, bound: str) -> list[ChannelReport]:
    """The channels where ``error`` exceeds ``bound`` (a NaN error counts as beyond; an
    undefined one does not)."""
    out = []
    for r in reports:
        value, limit = getattr(r, error), getattr(r, bound)
        if isinstance(value, Undefined) or isinstance(limit, Undefined):
            continue
        if math.isnan(value) or value > limit:
            out.append(r)
    return out


def _largest_measured(reports: list[ChannelReport], measures) -> tuple[float, Number] | None:
    """The largest error among ``measures`` ((error, bound) field names) over the channels, and
    the bound where it is."""
    found = [
        (value, getattr(r, bound))
        for error, bound in measures
        for r in reports
        if not isinstance(value := getattr(r, error), Undefined) and not math.isnan(value)
    ]
    return max(found, key=lambda pair: pair[0]) if found else None


def _largest_text(reports: list[ChannelReport], measures, unit: str = "") -> str:
    """'1.02 ULP of float32 (bound 8.53)': the largest error, beside the bound there."""
    largest = _largest_measured(reports, measures)
    if largest is None:
        return "n/a"
    value, limit = largest
    limit_text = "n/a" if isinstance(limit, Undefined) else f"{limit:.3g}"
    return f"{value:.3g}{unit} (bound {limit_text})"


def run_verdict(inspection: Inspection, reports: list[ChannelReport]) -> Verdict:
    """run's answer: whether PyTorch's output and running buffers are within what a correct
    implementation in the dtype can leave (each channel's bound, check.tolerance), and which
    health flags the data raises."""
    dtype, settings = inspection.tensor.info.dtype, inspection.settings
    health = health_line(reports)
    extra = (health,) if health else ()
    values = f"{reports[0].count} values each" if reports else "no values"
    if inspection.torch_run is None:
        if inspection.no_peer == STATS_ONLY:
            first = (
                f"Float64 statistics of {len(reports)} channels, {values}, streamed; PyTorch "
                "not run (--stats-only)."
            )
            return Verdict("statistics", (first, *extra))
        first = f"PyTorch did not run ({inspection.no_peer}); the float64 reference is below."
        return Verdict("not-compared", (first, *extra))
    # Eval mode updates no buffer: the output alone is judged.
    judged = MEASURES_AGAINST_BOUND if settings.mode == "train" else MEASURES_AGAINST_BOUND[:1]
    fields = {name: (error, bound) for name, error, bound in judged}
    output, buffers = fields["output"], [fields[name] for name in fields if name != "output"]
    unit = f" ULP of {dtype} at scale"
    beyond = {name: _beyond(reports, *fields[name]) for name in fields}
    if not any(beyond.values()):
        text = f"output {_largest_text(reports, [output], unit)}"
        if buffers:
            text += f", running buffers {_largest_text(reports, buffers)}"
        who = "PyTorch" if settings.convention == "pytorch" else "PyTorch, on this rule,"
        first = f"{who} matches the float64 reference to rounding: {text}."
        return Verdict("agrees", (first, *extra))
    parts = [
        f"{name} on {channel_list([r.channel for r in found], len(reports))}, "
        f"{_largest_text(found, [fields[name]], unit if k == 0 else ' ULP')}"
        for k, (name, found) in enumerate((n, f) for n, f in beyond.items() if f)
    ]
    first = f"PyTorch differs from the float64 reference beyond rounding: {'; '.join(parts)}"
    if settings.convention != "pytorch":
        first += f"; {settings.convention}'s rules and PyTorch's part here"
    return Verdict("differs", (first + ".", *extra))
