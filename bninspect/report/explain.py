"""``explain``: derive one output element step by step, in the article's style, from the same
float64 quantities ``run`` reports, under a framework's convention, and set PyTorch's value
beside it. Steps where frameworks differ name the convention's rule and what PyTorch does
instead."""

from __future__ import annotations

import math

import numpy as np

from bninspect.check.against import TheirValue, against_report, from_file
from bninspect.check.buffers import buffer_bounds
from bninspect.check.tolerance import channel_bound, in_ulps, inspection_conditioning
from bninspect.conventions.rules import (
    PYTORCH,
    UPDATE_WEIGHTS,
    Convention,
    batch_weight,
    effective_eps,
)
from bninspect.dtypes import shortest_text
from bninspect.input.layout import to_user_index
from bninspect.numerics.agreement import compare_value, mean_update_scale, output_scale
from bninspect.numerics.reference import ReferenceForward, channel_values, forward_output, normalize
from bninspect.numerics.running import coefficients
from bninspect.pytorch.cpu_emulation import STRIDED
from bninspect.pytorch.inspection import Inspection
from bninspect.pytorch.peer import describe_peer, no_torch_value
from bninspect.report.precision import precision_report
from bninspect.results.common import CUMULATIVE, NOT_ASKED, Comparison, Number, Undefined, Verdict
from bninspect.results.explain import AgainstReport, ExplainResult, Step
from bninspect.text import digits_to_resolve, number

PREVIEW_VALUES = 12  # a channel this small is listed in full, as the article does
# The sum and m2 list their terms up to this many values (the article's channel has 12).
TERMS_LISTED = 16


fmt = number  # a number inside a formula reads as it does in the tables


def term(value: float, digits: int = 5) -> str:
    """A number as a later operand: negatives in parentheses, so '0.9 * (-2)' reads right."""
    text = fmt(value, digits)
    return f"({text})" if math.copysign(1.0, value) < 0 else text


def location_digits(
    inspection: Inspection, c: int, value: float | None = None, spread_share: float = 1.0
) -> int:
    """Digits that show ``value`` (default channel c's mean: its values alike) to 1e-4 of the
    channel's spread (times ``spread_share``, for a sum): at --offset 1e4, x = 10000.5678 and
    mean = 9999.2345 show the 1.333 between them, which 10001 and 9999.2 would hide."""
    forward = inspection.forward
    value = float(forward.mean[c]) if value is None else value
    return digits_to_resolve([value], 1e-4 * float(forward.std[c]) * spread_share)


def _values_preview(values: np.ndarray, digits: int = 5) -> str:
    shown = ", ".join(fmt(v, digits) for v in values[:PREVIEW_VALUES])
    more = ", ..." if values.size > PREVIEW_VALUES else ""
    return f"[{shown}{more}]"


def _index_text(index: tuple[int, ...]) -> str:
    return "input[" + ", ".join(map(str, index)) + "]"


def _sum_text(terms: np.ndarray, digits: int = 5) -> str:
    """The terms written out, as in a hand derivation: -2.4308 + (-1.0281) + 0.9819 ...
    (``digits`` significant digits each)."""

    def shown(value: float) -> str:
        text = f"{value:.{digits}g}"
        return f"({text})" if math.copysign(1.0, value) < 0 else text

    return " + ".join([f"{float(terms[0]):.{digits}g}", *(shown(float(t)) for t in terms[1:])])


def _batch_steps(inspection: Inspection, c: int) -> list[Step]:
    """From the channel's values to its biased and unbiased variance (train mode). A channel of
    at most TERMS_LISTED values has its sum and m2 written out term by term."""
    stats, convention = inspection.stats, inspection.convention
    values = channel_values(inspection.batch, c)
    shape = inspection.batch.shape
    axes = " * ".join(str(size) for axis, size in enumerate(shape) if axis != 1)
    channel_axis = inspection.tensor.info.channel_axis
    count, m2 = stats.count, float(stats.m2[c])
    mean = float(stats.mean[c])
    digits = location_digits(inspection, c)
    if count <= TERMS_LISTED and bool(np.all(np.isfinite(values))):
        count_text = f"{axes} = {count}" if " * " in axes else f"{count}"
        sum_text = _sum_text(values, digits)
        with np.errstate(over="ignore"):
            squares = (values - mean) ** 2
        # 3 digits: the article's twelve squares take two lines, its screen 80 x 40
        m2_text = _sum_text(squares, 3)
    else:
        count_text = f"{axes} = {count}: {_values_preview(values, digits)}"
        sum_text, m2_text = f"sum of the {count} values", f"sum over the {count} values"
    unbiased_formula = "var_unbiased = m2 / (count - 1)"
    if count > 1:
        var_unbiased: Number = float(stats.var_unbiased[c])
        unbiased_text = f"{fmt(m2)} / {count - 1}"
    else:
        var_unbiased = Undefined("one value per channel: dividing by N - 1 = 0")
        unbiased_text = f"{fmt(m2)} / 0"
    if convention.stores == "unbiased":
        unbiased_note = (
            f"unbiased (/(N-1)): {_who(convention)} stores it in running_var; it never normalizes"
        )
        unbiased_differs = None
    else:
        unbiased_note = f"unbiased (divide by N - 1): {convention.name} does not use it"
        unbiased_differs = "PyTorch writes this one into running_var"
    update = inspection.forward.update
    divides_by_one = convention.stores == "unbiased" and convention.one_value != "refuse"
    if count == 1 and divides_by_one and update is not None:
        # TensorFlow (n / max(n - 1, 1)) and Caffe (m / (m - 1), 1 when m = 1) store 0.
        unbiased_formula = "var_unbiased = m2 / max(count - 1, 1)"
        var_unbiased, unbiased_text = float(update.batch_var[c]), f"{fmt(m2)} / 1"
        unbiased_note = (
            f"unbiased, but {convention.name} divides by max(N - 1, 1): one value per channel "
            "stores 0 in running_var; it does not normalize with it"
        )
        unbiased_differs = (
            "PyTorch leaves it undefined (0 / 0) and refuses one value per channel in train mode"
        )
    return [
        Step(
            "count",
            f"count = values in channel {c} (every axis but {channel_axis})",
            count_text,
            count,
        ),
        Step("sum", "sum = sum of x_i", sum_text, float(stats.total[c])),
        Step(
            "mean",
            "mean = sum / count",
            f"{fmt(stats.total[c], location_digits(inspection, c, stats.total[c], count))} / "
            f"{count}",
            float(stats.mean[c]),
            "the exact sum / count, rounded once",
        ),
        Step("m2", "m2 = sum (x_i - mean)^2", m2_text, m2),
        Step(
            "var_biased",
            "var = m2 / count",
            f"{fmt(m2)} / {count}",
            float(stats.var_biased[c]),
            "biased (/N): what normalizes in train mode",
            rule=f"{convention.name} normalizes with the biased variance, as every framework does",
        ),
        Step(
            "var_unbiased",
            unbiased_formula,
            unbiased_text,
            var_unbiased,
            unbiased_note,
            rule=f"{convention.name} stores the {convention.stores} variance",
            differs_from_pytorch=unbiased_differs,
        ),
    ]


def _who(convention: Convention) -> str:
    return "PyTorch" if convention is PYTORCH else convention.name


def _eval_steps(inspection: Inspection, c: int) -> list[Step]:
    forward, convention = inspection.forward, inspection.convention
    before = forward.before
    if convention.has_scale_factor:
        where = (
            f"mean_sum[{c}] / scale_factor = {term(before.stored_mean[c])} / "
            f"{fmt(before.scale_factor)}",
            f"var_sum[{c}] / scale_factor = {term(before.stored_var[c])} / "
            f"{fmt(before.scale_factor)}",
        )
        rule = "Caffe stores sums and a scale factor and divides at inference (0 if it is 0)"
    else:
        where, rule = (f"running_mean[{c}]", f"running_var[{c}]"), None
    return [
        Step(
            "mean",
            "mean = running_mean",
            where[0],
            float(forward.mean[c]),
            "eval mode: the running mean replaces the batch mean",
            rule=rule,
        ),
        Step(
            "var",
            "var = running_var",
            where[1],
            float(forward.var[c]),
            "eval mode: the running variance replaces the batch variance",
            rule=rule,
        ),
    ]


def _update_text(inspection: Inspection, c: int, buffer: str, batch_symbol: str):
    """The formula of one running buffer's update under the convention, with the numbers, and
    what PyTorch would do differently."""
    convention, update = inspection.convention, inspection.forward.update
    before, after = inspection.forward.before, update.after
    old = float(getattr(before, f"stored_{buffer}")[c])
    new = float(getattr(update, f"batch_{buffer}")[c])
    momentum = inspection.settings.momentum
    name = convention.momentum_parameter
    digits = location_digits(inspection, c) if buffer == "mean" else 5
    keep, take = coefficients(
        convention, None if isinstance(momentum, Undefined) else momentum, after.num_batches_tracked
    )
    if isinstance(momentum, Undefined):
        n = after.num_batches_tracked
        formula = (
            f"running_{buffer} = (1 - 1/n) * running_{buffer} + (1/n) * {batch_symbol}, "
            "n = num_batches_tracked"
        )
        numbers = f"{fmt(keep)} * {term(old, digits)} + {fmt(take)} * {term(new, digits)}, n = {n}"
        return formula, numbers, CUMULATIVE, None
    keep_name, take_name = (w.format(m=name) for w in UPDATE_WEIGHTS[convention.momentum_meaning])
    if convention.has_scale_factor:
        formula = f"running_{buffer} = ({batch_symbol} + {name} * {buffer}_sum) / scale_factor"
        numbers = (
            f"({fmt(new, digits)} + {fmt(keep)} * {term(old, digits)}) / "
            f"{fmt(after.scale_factor)}"
        )
        differs = (
            "PyTorch has no scale factor: its momentum would be 1 / scale_factor = "
            f"{fmt(update.batch_weight)} for this step"
        )
        rule = f"Caffe: {buffer}_sum = {batch_symbol} + {name} * {buffer}_sum, then divide"
        return formula, numbers, rule, differs
    formula = f"running_{buffer} = {keep_name} * running_{buffer} + {take_name} * {batch_symbol}"
    numbers = f"{fmt(keep)} * {term(old, digits)} + {fmt(take)} * {term(new, digits)}"
    differs = None
    if convention.momentum_meaning == "keep":
        differs = (
            f"PyTorch's momentum is the batch's weight: this rule is momentum "
            f"{fmt(batch_weight(convention, momentum))} in PyTorch"
        )
    rule = f"{convention.name}: {name} {fmt(momentum)} weighs the " + (
        "new batch" if convention.momentum_meaning == "batch" else "old value"
    )
    return formula, numbers, rule, differs


BACKWARD_UPDATE = (
    "MXNet's CPU operator updates both running buffers in the backward pass (a forward pass "
    "alone leaves them unchanged); PyTorch updates them in the forward pass"
)


def _running_steps(inspection: Inspection, c: int) -> list[Step]:
    forward, convention, stats = inspection.forward, inspection.convention, inspection.stats
    if forward.passes_through:
        return [
            Step(
                name,
                f"{name} = {name}",
                f"unchanged: {fmt(float(getattr(forward, name)[c]))}",
                float(getattr(forward, name)[c]),
                "Paddle returns before updating when a channel has one value",
                rule="paddle: one value per channel passes through",
                differs_from_pytorch="PyTorch refuses one value per channel in train mode",
            )
            for name in ("running_mean", "running_var")
        ]
    steps = []
    if convention.has_scale_factor:
        before, after = forward.before, forward.update.after
        momentum = inspection.settings.momentum
        steps.append(
            Step(
                "scale_factor",
                f"scale_factor = 1 + {convention.momentum_parameter} * scale_factor",
                f"1 + {fmt(momentum)} * {fmt(before.scale_factor)}",
                after.scale_factor,
                "Caffe's third blob: what the sums are divided by at inference",
            )
        )
    var_symbol = "var_unbiased" if convention.stores == "unbiased" else "var"
    mean_formula, mean_numbers, mean_rule, mean_differs = _update_text(
        inspection, c, "mean", "mean"
    )
    var_formula, var_numbers, var_rule, var_differs = _update_text(inspection, c, "var", var_symbol)
    if convention.updates_in_backward:
        mean_differs = "; ".join(filter(None, [mean_differs, BACKWARD_UPDATE]))
    if convention.stores == "unbiased":
        var_note = "takes var_unbiased, not the variance that normalized"
        if stats.count == 1:
            var_note += f"; {convention.name} divides by max(N - 1, 1), giving 0"
    else:
        var_note = f"{convention.name} stores the biased variance, the one that normalized"
        var_differs = "; ".join(
            filter(None, [var_differs, "PyTorch stores the unbiased variance instead"])
        )
    return steps + [
        Step(
            "running_mean",
            mean_formula,
            mean_numbers,
            float(forward.running_mean[c]),
            rule=mean_rule,
            differs_from_pytorch=mean_differs,
        ),
        Step(
            "running_var",
            var_formula,
            var_numbers,
            float(forward.running_var[c]),
            var_note,
            rule=var_rule,
            differs_from_pytorch=var_differs,
        ),
    ]


def _output_steps(inspection: Inspection, c: int, x: float, train: bool) -> list[Step]:
    """sqrt(var + eps), x_hat and y; or y = x where the layer passes its input through."""
    forward, params, convention = inspection.forward, inspection.params, inspection.convention
    if forward.passes_through:
        return [
            Step(
                "y",
                "y = x",
                fmt(x),
                x,
                "Paddle's CPU kernel copies the input when a channel has one value",
                rule="paddle: one value per channel passes through",
                differs_from_pytorch="PyTorch refuses one value per channel in train mode",
            )
        ]
    mean, std, weight, bias = forward.mean[c], forward.std[c], params.weight[c], params.bias[c]
    eps = inspection.settings.eps
    eps_differs = []
    if convention.eps_default != PYTORCH.eps_default:
        eps_differs.append(
            f"PyTorch's default eps is {PYTORCH.eps_default:g}, {convention.name}'s "
            f"{convention.eps_default:g}"
        )
    requested = inspection.requested_eps
    raised = effective_eps(convention, requested)[1] if requested is not None else None
    if raised:  # the convention's floor raised it
        eps_differs.append(
            f"PyTorch has no eps floor: it would use eps {requested:g} as given, "
            f"{convention.name} raises it to {eps:g}"
        )
    one_value = None
    if train and inspection.stats.count == 1:
        one_value = "PyTorch refuses one value per channel in train mode; here var is 0, y = bias"
    var_name = "var" if train else "running_var"
    digits = location_digits(inspection, c)
    return [
        Step(
            "std",
            f"std = sqrt({var_name} + eps)",
            f"sqrt({fmt(forward.var[c])} + {fmt(eps)})",
            float(std),
            "eps sits inside the square root",
            rule="; ".join(filter(None, [f"{convention.name}: eps {eps:g}", raised])),
            differs_from_pytorch="; ".join(eps_differs) or None,
        ),
        Step(
            "x_hat",
            "x_hat = (x - mean) / std",
            f"({fmt(x, digits)} - {term(mean, digits)}) / {term(std)}",
            float(normalize(x, mean, std, 1.0, 0.0)),
        ),
        Step(
            "y",
            "y = x_hat * weight + bias",
            f"{fmt(float(normalize(x, mean, std, 1.0, 0.0)))} * {term(weight)} + {term(bias)}",
            float(normalize(x, mean, std, weight, bias)),
            differs_from_pytorch=one_value,
        ),
    ]


NO_PRECISION = Undefined(f"{NOT_ASKED}: add --precision")
NO_AGAINST = Undefined(
    f"{NOT_ASKED}: add --against your_output.npy, or --against-value with your number"
)
CHANNELS_MOVED = (
    "the input has its channels on axis {axis}, so PyTorch ran on a view with channels-last "
    "strides (its channels-last kernel for rank 4 and 5, its generic strided loops otherwise), "
    "which --precision does not emulate; save the input with its channels on axis 1 "
    "(numpy.moveaxis(x, {axis}, 1), C-contiguous) to see the contiguous kernel's bits"
)


def _precision(inspection: Inspection, index: tuple[int, ...]):
    """PyTorch's own arithmetic for the element, when PyTorch ran."""
    if inspection.torch_run is None:
        return no_torch_value(inspection)
    c, stats = index[1], inspection.stats
    if stats.nan_count[c] or stats.posinf_count[c] or stats.neginf_count[c]:
        return Undefined(
            "the element's channel holds NaN or Inf: PyTorch's arithmetic on it is not finite, "
            "so there are no bits to attribute"
        )
    std = float(inspection.forward.std[c])
    if not (math.isfinite(std) and std > 0):  # eval mode with running_var + eps <= 0
        return Undefined(
            f"sqrt(var + eps) is {fmt(std)} for the element's channel: PyTorch divides by it, "
            "its output is not finite, so there are no bits to attribute"
        )
    if not np.isfinite(inspection.torch_run.output[index]):
        return Undefined(
            "PyTorch's output for the element is not finite, so there are no bits to attribute"
        )
    if not inspection.batch.flags.c_contiguous:
        axis = inspection.tensor.info.channel_axis
        return Undefined(CHANNELS_MOVED.format(axis=axis) if axis != 1 else STRIDED)
    return precision_report(inspection, index)


def _buffer_scales(forward: ReferenceForward, c: int, dtype: str) -> tuple[float, float]:
    """The scales channel c's running mean and variance are counted at after a training step:
    the mean's update's (agreement.running_mean_scale), the variance's own value."""
    mean_scale = mean_update_scale(
        forward.before.running_mean, forward.update, forward.running_mean, dtype
    )
    return float(mean_scale[c]), abs(float(forward.running_var[c]))


def _against(
    inspection: Inspection, index: tuple[int, ...], against, first: int, bound_ulps: float
):
    if against is None:
        return NO_AGAINST
    their = against if isinstance(against, TheirValue) else from_file(*against, index, first)
    return against_report(inspection, index, their, bound_ulps)


def _buffer_bound_ulps(
    inspection: Inspection, cond, c: int, scales: tuple[float, float]
) -> tuple[Number, Number]:
    """What a correct update can leave on channel c's running mean and variance, in ULPs at
    each one's scale (check.buffers' bound; Caffe's sums divided by its scale factor)."""
    dtype, forward = inspection.tensor.info.dtype, inspection.forward
    bounds = buffer_bounds(inspection, cond, dtype)
    factor = forward.update.after.scale_factor if forward.update else 1.0
    out = []
    for bound, scale in zip(bounds, scales, strict=True):
        with np.errstate(divide="ignore", invalid="ignore"):
            value = float(in_ulps(np.array([bound[c] / factor]), np.array([scale]), dtype)[0])
        out.append(value if math.isfinite(value) else Undefined("no finite bound here"))
    return out[0], out[1]


def derive_element(
    inspection: Inspection, index: tuple[int, ...], precision: bool = False, against=None
) -> ExplainResult:
    """The derivation of output[index] of the last step's batch (an index in the core's layout,
    channels on axis 1, already checked against the batch's shape and made non-negative); with
    ``precision``, also PyTorch's own arithmetic for it (precision.precision_report); with
    ``against`` (their output as float64 and its OutputInfo, or a TheirValue typed by hand),
    their value beside it (against.against_report)."""
    c = index[1]
    forward, params, dtype = inspection.forward, inspection.params, inspection.tensor.info.dtype
    train = inspection.settings.mode == "train"
    steps_taken = max(len(inspection.history), 1)
    first = (steps_taken - 1) * inspection.settings.batch_size
    x = float(inspection.batch[index])
    w, b = params.weight[c], params.bias[c]
    y = float(forward_output(forward, x, c, w, b))
    where = _index_text(
        to_user_index((first + index[0], *index[1:]), inspection.tensor.info.channel_axis)
    )
    if steps_taken > 1:
        where = f"{where}: batch {steps_taken}, sample {index[0]}"
    steps = [Step("x", "x = the input element", where, x)]
    steps += _batch_steps(inspection, c) if train else _eval_steps(inspection, c)
    steps += _output_steps(inspection, c, x, train)
    torch_run = inspection.torch_run
    missing = no_torch_value(inspection)
    cond = inspection_conditioning(inspection)
    running = ()
    if train:
        steps += _running_steps(inspection, c)
        scales = _buffer_scales(forward, c, dtype)
        bounds = _buffer_bound_ulps(inspection, cond, c, scales)
        running = tuple(
            compare_value(
                name,
                getattr(forward, name)[c],
                missing if torch_run is None else getattr(torch_run, name)[c],
                dtype,
                scale,
                bound,
            )
            for name, scale, bound in zip(
                ("running_mean", "running_var"), scales, bounds, strict=True
            )
        )
    channel_y = forward_output(forward, channel_values(inspection.batch, c), c, w, b)
    scale = output_scale(channel_y, w)
    y_bound = float(in_ulps(channel_bound(cond.only(c), [scale], dtype).total, [scale], dtype)[0])
    y_bound_ulps: Number = y_bound if math.isfinite(y_bound) else Undefined(
        "the channel's spread is below what the dtype's sums resolve: any value is rounding"
    )
    output = compare_value(
        "y",
        y,
        missing if torch_run is None else float(torch_run.output[index]),
        dtype,
        scale,
        y_bound_ulps,
    )
    against_result = _against(inspection, index, against, first, y_bound)
    return ExplainResult(
        verdict=explain_verdict(inspection, index, output, against_result),
        input=inspection.tensor.info,
        settings=inspection.settings,
        torch_version=torch_run.version if torch_run else missing,
        index=index,
        channel=c,
        x=x,
        derivation=tuple(steps),
        y=output,
        running_buffers=running,
        precision=_precision(inspection, index) if precision else NO_PRECISION,
        against=against_result,
        torch_module=describe_peer(inspection),
        training_step=steps_taken,
    )


def explain_verdict(
    inspection: Inspection,
    index: tuple[int, ...],
    output: Comparison,
    against: AgainstReport | Undefined,
) -> Verdict:
    """explain's answer: y, and whether PyTorch's y is the reference correctly rounded (to the
    last bit), within rounding of it, or beyond; with --against, their value's verdict too."""
    dtype = inspection.tensor.info.dtype
    user_index = to_user_index(index, inspection.tensor.info.channel_axis)
    where = f"output[{', '.join(map(str, user_index))}]"
    lines = []
    if isinstance(output.torch, Undefined):
        status = "not-compared"
        lines.append(
            f"{where} = {output.reference:.9g} by the float64 reference; PyTorch did not run "
            f"({output.torch.reason})."
        )
    else:
        y = f"{where} = {shortest_text(output.torch, dtype)} in {dtype}"
        if output.correctly_rounded:
            status = "exact"
            lines.append(
                f"{y}: PyTorch's value is the float64 reference {output.reference:.9g} "
                "correctly rounded, equal to the last bit."
            )
        else:
            scaled, bound = output.ulp_error_at_scale, output.bound_ulps
            within = isinstance(bound, Undefined) or (
                not isinstance(scaled, Undefined) and scaled <= bound
            )
            status = "within-rounding" if within else "differs"
            how = "within rounding of" if within else "beyond rounding from"
            limit = "" if isinstance(bound, Undefined) else f" (bound {bound:.3g})"
            lines.append(
                f"{y}: {fmt_ulps(scaled)} of {dtype} at the channel's scale{limit}, {how} the "
                f"float64 reference {output.reference:.9g}."
            )
    if not isinstance(against, Undefined):
        lines.append(f"Yours ({against.theirs!r}): {against.conclusion}.")
    return Verdict(status, tuple(lines))


def fmt_ulps(value: Number) -> str:
    """An error in ULPs for a sentence: "0.42 ULP", or why there is none."""
    return f"n/a ULP ({value.reason})" if isinstance(value, Undefined) else f"{value:.3g} ULP"
