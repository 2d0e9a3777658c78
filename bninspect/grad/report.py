"""``run --grad`` and ``explain --grad``: autograd's backward against the float64 reference, per
channel and for one element derived step by step."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from bninspect.grad.backward import (
    GRADIENTS,
    NO_SCALE,
    Backward,
    as_number,
    bound_number,
    channel_errors_at_scale,
    cs231n,
    within_bounds,
)
from bninspect.input.layout import to_user_index
from bninspect.numerics.agreement import compare_value
from bninspect.pytorch.inspection import Inspection
from bninspect.results.common import NOT_ASKED, Comparison, Number, Undefined, Verdict
from bninspect.results.grad import (
    CS231N_CAVEAT,
    CS231N_FORMULA,
    DxTerm,
    GradChannel,
    GradExplain,
    GradRun,
    Step,
)
from bninspect.text import number as fmt

SHORT = {"grad_input": "dx", "grad_weight": "dweight", "grad_bias": "dbias"}


def _torch_version(backward: Backward) -> str | Undefined:
    if backward.torch is None:
        return Undefined(f"PyTorch was not run: {backward.no_torch}")
    return backward.torch.version


def _errors(backward: Backward, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Autograd's per-channel max |error| and error in ULPs at scale for one gradient, or None
    where autograd did not give it."""
    torch_values = backward.torch_of(name)
    if isinstance(torch_values, Undefined):
        return None
    return channel_errors_at_scale(
        torch_values, backward.reference_of(name), backward.scale_of(name), backward.dtype
    )


def _max(values: np.ndarray, unscaled: Undefined) -> Number:
    if np.isnan(values).any():
        return unscaled
    return float(values.max()) if values.size else Undefined("no channels")


def build_grad_run(inspection: Inspection, backward: Backward) -> GradRun:
    """Per channel: the sums the gradients are made of, the reference dweight and dbias,
    autograd's beside them, and autograd's errors at each channel's scale."""
    ref = backward.reference
    errors = {name: _errors(backward, name) for name in GRADIENTS}
    bounds = {name: backward.bound_ulps_of(name) for name in GRADIENTS}
    torch_dx = backward.torch_of("grad_input")
    no_torch = torch_dx if isinstance(torch_dx, Undefined) else None
    channels = []
    for c in range(ref.grad_weight.shape[0]):

        def at(name: str, c=c) -> Number:
            e = errors[name]
            if e is None:
                missing = backward.torch_of(name)
                return missing if isinstance(missing, Undefined) else Undefined(NO_SCALE)
            return as_number(e[1][c], NO_SCALE)

        def torch_value(name: str, c=c) -> Number:
            values = backward.torch_of(name)
            return values if isinstance(values, Undefined) else float(values[c])

        param = (lambda v: float(v)) if backward.affine else (lambda v: Undefined(
            "--no-affine: the layer has no weight or bias"))  # fmt: skip

        def bound(name: str, c=c) -> Number:
            missing = backward.torch_of(name)
            if isinstance(missing, Undefined) and name != "grad_input":
                return missing
            return bound_number(bounds[name][c])

        channels.append(
            GradChannel(
                channel=c,
                count=ref.count,
                sum_grad_output=float(ref.sum_grad_output[c]),
                sum_grad_output_x_hat=float(ref.sum_grad_output_x_hat[c]),
                grad_weight=param(ref.grad_weight[c]),
                grad_bias=param(ref.grad_bias[c]),
                grad_weight_torch=torch_value("grad_weight"),
                grad_bias_torch=torch_value("grad_bias"),
                grad_input_scale=float(ref.input_scale[c]),
                grad_weight_scale=float(ref.weight_scale[c]),
                grad_bias_scale=float(ref.bias_scale[c]),
                grad_input_max_abs_error=no_torch or float(errors["grad_input"][0][c]),
                grad_input_ulp_error_at_scale=at("grad_input"),
                grad_weight_ulp_error_at_scale=at("grad_weight"),
                grad_bias_ulp_error_at_scale=at("grad_bias"),
                grad_input_bound_ulps=bound("grad_input"),
                grad_weight_bound_ulps=bound("grad_weight"),
                grad_bias_bound_ulps=bound("grad_bias"),
                grad_input_cs231n=cs231n(torch_dx[:, c], ref.grad_input[:, c])
                if no_torch is None
                else cs231n(np.array([]), np.array([])),
            )
        )
    maxima = {
        name: _max(errors[name][1], Undefined(NO_SCALE))
        if errors[name] is not None
        else backward.torch_of(name)
        for name in GRADIENTS
    }
    scores = {
        name: cs231n(backward.torch_of(name), backward.reference_of(name))
        for name in GRADIENTS
        if not isinstance(backward.torch_of(name), Undefined)
    }
    return GradRun(
        verdict=_run_verdict(backward, errors, bounds, scores),
        grad_output=backward.grad_output,
        mode=inspection.settings.mode,
        channels=tuple(channels),
        max_grad_input_ulp_error_at_scale=maxima["grad_input"],
        max_grad_weight_ulp_error_at_scale=maxima["grad_weight"],
        max_grad_bias_ulp_error_at_scale=maxima["grad_bias"],
        cs231n=scores,
        cs231n_formula=CS231N_FORMULA,
        cs231n_caveat=CS231N_CAVEAT,
        torch_version=_torch_version(backward),
    )


def _largest_with_bound(at_scale: np.ndarray, bounds: np.ndarray) -> str:
    """'22.1 (bound 1.08e+03)': the largest error over the channels beside that channel's
    bound."""
    if not at_scale.size or np.isnan(at_scale).all():
        return "n/a"
    c = int(np.nanargmax(at_scale))
    limit = bounds[c]
    limit_text = f"{limit:.3g}" if np.isfinite(limit) else "n/a"
    return f"{fmt(at_scale[c])} (bound {limit_text})"


def _run_verdict(backward: Backward, errors, bounds, scores) -> Verdict:
    """Whether autograd's dx, dweight and dbias are, on every channel, within what a correct
    backward in the dtype can leave (grad/tolerance.py)."""
    dtype = backward.dtype
    if backward.torch is None:
        return Verdict(
            "not-compared",
            (f"the float64 reference gradients alone: PyTorch was not run ({backward.no_torch})",),
        )
    given = [n for n in GRADIENTS if errors[n] is not None]
    unscaled = [SHORT[n] for n in given if np.isnan(errors[n][1]).any()]
    within = not unscaled and all(within_bounds(errors[n][1], bounds[n]) for n in given)
    listed = ", ".join(f"{SHORT[n]} {_largest_with_bound(errors[n][1], bounds[n])}" for n in given)
    dx_score = scores.get("grad_input")
    cs = ""
    if dx_score is not None and not isinstance(dx_score.rel_error, Undefined):
        cs = f"; CS231n relative error of dx {fmt(dx_score.rel_error)} ('{dx_score.reading}')"
    where = (
        f"ULP of {dtype} at each channel's scale (the bound: what a correct backward in "
        f"{dtype} can leave there)"
    )
    unbounded = sum(
        bool(np.isinf(bounds["grad_input"][c]) or np.isinf(bounds["grad_weight"][c]))
        for c in range(len(bounds["grad_input"]))
    )
    if unbounded:  # a pass that says nothing there: say so
        where += (
            f"; on {unbounded} of {len(bounds['grad_input'])} channels the data's spread is below "
            f"what {dtype}'s statistics resolve, so any dx and dweight agree there"
        )
    if within:
        first = (
            f"autograd's gradients agree with the float64 reference to rounding: {listed} "
            f"{where}"
        )
        if dx_score is not None and dx_score.reading != "good":
            cs += ": that reading misleads here, see the caveat"
        return Verdict("agrees", (first, cs.lstrip("; ")) if cs else (first,))
    first = (
        f"autograd's gradients differ from the float64 reference beyond rounding: {listed} "
        f"{where}"
    )
    if unscaled:
        first += f"; {', '.join(unscaled)} differ where the gradient is 0"
    return Verdict("differs", (first, cs.lstrip("; ")) if cs else (first,))


# explain --grad ------------------------------------------------------------------------------


def term(value: float) -> str:
    """A number as a later operand: negatives in parentheses."""
    return f"({fmt(value)})" if math.copysign(1.0, value) < 0 else fmt(value)


def _comparison(backward: Backward, name: str, label: str, where, c: int) -> Comparison:
    reference = float(backward.reference_of(name)[where])
    torch_values = backward.torch_of(name)
    torch_value = torch_values if isinstance(torch_values, Undefined) else float(
        torch_values[where])  # fmt: skip
    scale = float(backward.scale_of(name)[c])
    bound = bound_number(backward.bound_ulps_of(name)[c])
    return compare_value(label, reference, torch_value, backward.dtype, scale, bound)


def build_grad_explain(
    inspection: Inspection, backward: Backward, index: tuple[int, ...], precision: bool
) -> GradExplain:
    """dx at ``index`` (of the inspected batch), dweight and dbias of its channel, derived
    through the graph and by the compact formula, then autograd's values beside them."""
    ref, c = backward.reference, index[1]
    x_batch, dy = inspection.batch, backward.dy
    M = ref.count
    x = float(np.asarray(x_batch[index], dtype=np.float64))
    dy_i = float(np.asarray(dy[index], dtype=np.float64))
    mean, inv_std, w = float(ref.mean[c]), float(ref.inv_std[c]), float(ref.weight[c])
    var = float(inspection.forward.var[c])
    eps = inspection.settings.eps
    x_hat = float(ref.x_hat[index])
    sum_dy, s = float(ref.sum_grad_output[c]), float(ref.sum_grad_output_x_hat[c])
    train = ref.train and not ref.passes_through
    where = f"the {M} values of channel {c}"
    staged = [
        Step("x_hat", "x_hat = (x - mean) * inv_std",
             f"({fmt(x)} - {term(mean)}) * {fmt(inv_std)}", x_hat,
             "the normalized input, as the forward pass computed it"),
        Step("dx_hat", "dx_hat = dy * weight", f"{fmt(dy_i)} * {term(w)}", dy_i * w,
             "the gradient flowing into x_hat: y = x_hat * weight + bias"),
    ]  # fmt: skip
    terms: list[DxTerm] = []
    if train:
        channel_x = np.asarray(x_batch[:, c], dtype=np.float64)
        channel_dy = np.asarray(dy[:, c], dtype=np.float64)
        deviation = channel_x - mean
        sum_dxhat_dev = math.fsum((channel_dy * w * deviation).reshape(-1))
        sum_dxhat = math.fsum((channel_dy * w).reshape(-1))
        sum_dev = math.fsum(deviation.reshape(-1))
        var_eps = var + eps
        dvar = sum_dxhat_dev * -0.5 * var_eps**-1.5
        dmean_direct = -inv_std * sum_dxhat
        dmean_var = dvar * (-2.0 / M) * sum_dev
        dmean = dmean_direct + dmean_var
        t_direct, t_var, t_mean = (
            (dy_i * w) * inv_std, dvar * 2.0 * (x - mean) / M, dmean / M)  # fmt: skip
        staged += [
            Step("dvar", "dvar = sum(dx_hat * (x - mean)) * -1/2 * (var + eps)^(-3/2)",
                 f"{fmt(sum_dxhat_dev)} * -0.5 * ({fmt(var)} + {fmt(eps)})^(-1.5)", dvar,
                 f"summed over {where}"),
            Step("dmean",
                 "dmean = -inv_std * sum(dx_hat) + dvar * (-2/M) * sum(x - mean)",
                 f"-{fmt(inv_std)} * {term(sum_dxhat)} + {term(dvar)} * (-2/{M}) * "
                 f"{term(sum_dev)}", dmean,
                 "the second part is 0 in exact arithmetic: the deviations from the mean sum "
                 "to 0" + (" (here exactly)" if sum_dev == 0 else
                           f" (here {fmt(sum_dev)}, from rounding the mean)")),
            Step("dx", "dx = dx_hat * inv_std + dvar * 2 * (x - mean) / M + dmean / M",
                 f"{fmt(t_direct)} + {term(t_var)} + {term(t_mean)}",
                 t_direct + t_var + t_mean, "three terms: direct, through the variance, "
                 "through the mean"),
        ]  # fmt: skip
        c_direct, c_var, c_mean = w * inv_std * dy_i, -w * inv_std * x_hat * s / M, (
            -w * inv_std * sum_dy / M)  # fmt: skip
        compact = [
            Step("sum dy", "sum dy", f"sum over {where}", sum_dy, "= dbias"),
            Step("sum dy*x_hat", "sum(dy * x_hat)", f"sum over {where}", s, "= dweight"),
            Step("dx",
                     "dx = weight * inv_std / M * (M * dy - sum dy - x_hat * sum(dy * x_hat))",
                 f"{term(w)} * {fmt(inv_std)} / {M} * ({M} * {term(dy_i)} - {term(sum_dy)} - "
                 f"{term(x_hat)} * {term(s)})", float(ref.grad_input[index]),
                 "the reference dx (float64)"),
        ]  # fmt: skip
        terms = [
            DxTerm("direct", "dx_hat * inv_std", t_direct, "weight * inv_std * dy", c_direct),
            DxTerm("through the variance", "dvar * 2 * (x - mean) / M", t_var,
                   "-weight * inv_std * x_hat * sum(dy * x_hat) / M", c_var),
            DxTerm("through the mean", "dmean / M", t_mean,
                   "-weight * inv_std * sum dy / M", c_mean),
        ]  # fmt: skip
    elif ref.passes_through:
        staged = [Step("dx", "dx = dy", f"{fmt(dy_i)}", dy_i,
                       "the layer copied x to y (one value per channel): dx = dy")]  # fmt: skip
        compact = list(staged)
    else:
        staged.append(
            Step("dx", "dx = dx_hat * inv_std", f"{fmt(dy_i * w)} * {fmt(inv_std)}",
                 dy_i * w * inv_std, "eval mode: mean and var are the running statistics, "
                 "constants, so no gradient flows through them")
        )  # fmt: skip
        compact = [
            Step("sum dy", "sum dy", f"sum over {where}", sum_dy, "= dbias"),
            Step("sum dy*x_hat", "sum(dy * x_hat)", f"sum over {where}", s, "= dweight"),
            Step("dx", "dx = weight * inv_std * dy",
                     f"{term(w)} * {fmt(inv_std)} * {term(dy_i)}",
                 float(ref.grad_input[index]), "the reference dx (float64)"),
        ]  # fmt: skip
    if backward.affine and not ref.passes_through:
        staged += [
            Step("dweight", f"dweight[{c}] = sum(dy * x_hat)", f"sum over {where}", s),
            Step("dbias", f"dbias[{c}] = sum dy", f"sum over {where}", sum_dy),
        ]
    user_index = to_user_index(index, inspection.tensor.info.channel_axis)  # as the user gave it
    label = "grad_input[" + ", ".join(map(str, user_index)) + "]"
    comparisons = [_comparison(backward, "grad_input", label, index, c)]
    if backward.affine:
        comparisons += [
            _comparison(backward, "grad_weight", f"grad_weight[{c}]", c, c),
            _comparison(backward, "grad_bias", f"grad_bias[{c}]", c, c),
        ]
    dx_cmp = comparisons[0]
    score = (
        cs231n(np.array([dx_cmp.torch]), np.array([dx_cmp.reference]))
        if not isinstance(dx_cmp.torch, Undefined)
        else cs231n(np.array([]), np.array([]))
    )
    precision_report: object = Undefined(f"{NOT_ASKED}: --precision")
    if precision:
        from bninspect.grad.precision import grad_precision

        precision_report = grad_precision(inspection, backward, index)
    return GradExplain(
        verdict=_explain_verdict(
            backward,
            comparisons,
            [float(backward.bound_ulps_of(n)[c]) for n in GRADIENTS[: len(comparisons)]],
        ),
        grad_output=backward.grad_output,
        index=index,
        channel=c,
        mode=inspection.settings.mode,
        count=M,
        x=x,
        x_hat=x_hat,
        grad_output_value=dy_i,
        derivation=tuple(staged),
        compact_derivation=tuple(compact),
        terms=tuple(terms),
        comparisons=tuple(comparisons),
        cs231n=score,
        precision=precision_report,
        torch_version=_torch_version(backward),
    )


def _explain_verdict(
    backward: Backward, comparisons: list[Comparison], limits: list[float]
) -> Verdict:
    """autograd's dx, dweight, dbias against the reference, each beside its channel's bound
    (``limits``, in ULPs at scale: inf where any finite value passes, NaN where only an exact
    agreement does)."""
    dtype = backward.dtype
    if backward.torch is None:
        return Verdict(
            "not-compared",
            (f"the float64 reference gradients alone: PyTorch was not run ({backward.no_torch})",),
        )
    parts, ok = [], True
    for cmp, limit in zip(comparisons, limits, strict=True):
        value, bound = cmp.ulp_error_at_scale, cmp.bound_ulps
        if isinstance(value, Undefined):
            ok = False
            parts.append(f"{cmp.name} differs where its scale is 0")
            continue
        ok = ok and within_bounds(np.array([value]), np.array([limit]))
        bound_text = "n/a" if isinstance(bound, Undefined) else f"{bound:.3g}"
        parts.append(f"{cmp.name} {fmt(value)} (bound {bound_text})")
    exact = all(c.correctly_rounded is True for c in comparisons)
    status = ("exact" if exact else "within-rounding") if ok else "differs"
    how = "agree with" if ok else "differ from"
    return Verdict(
        status,
        (
            f"autograd's values {how} the float64 reference: "
            + ", ".join(parts)
            + f" ULP of {dtype} at the channel's scale (the bound: what a correct backward in "
            f"{dtype} can leave there)",
        ),
    )


# The order in which a verdict's status outranks another when the forward and the backward are
# folded into one: a difference anywhere is the answer; then a value not compared; then a value
# only within rounding.
_STATUS_RANK = ("differs", "not-compared", "within-rounding", "exact", "agrees", "statistics")


def with_backward(result, grad):
    """``result`` (run's or explain's) with its backward report, the two verdicts folded into
    one: the worse status, the forward's first line, then the backward's."""
    forward, backward = result.verdict, grad.verdict
    status = min(forward.status, backward.status, key=_STATUS_RANK.index)
    summary = (forward.summary[0], backward.summary[0], *forward.summary[1:])
    return dataclasses.replace(result, grad=grad, verdict=Verdict(status, summary))
