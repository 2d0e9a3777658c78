"""The catalogue of known backward-pass mistakes: each recomputes (dx, dweight, dbias) as a
mistaken backward would, in float64, so ``check --grad-input`` can see which one their
gradients follow. Plain data and pure functions of the pass; a variant returns None where it
does not apply (e.g. the train formula in train mode).

A student writes a backward one of two ways: staged, through the graph (dx_hat, dvar, dmean
with its part through the variance, then dx; Kratzert's, CS231n's ``batchnorm_backward``), or
the compact formula w * inv_std / M * (M dy - sum dy - x_hat sum(dy x_hat)) (CS231n's
``batchnorm_backward_alt``). They agree wherever the deviations from the mean sum to 0 over
dx's sums; under a mistake where they do not (the running mean in the train formula, sums over
the batch axis only) they differ, and the variant gives both forms, so either is recognised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from bninspect.grad.reference import channel_sums, normalized_input, per_channel


@dataclass(frozen=True)
class Pass:
    """What a backward needs, float64: the batch x and dy (N, C, ...), and per channel (C,)
    the batch mean and biased and unbiased variances, the mean and variance that normalized
    (running ones in eval mode), eps, weight, the mode."""

    x: np.ndarray
    dy: np.ndarray
    batch_mean: np.ndarray
    var_biased: np.ndarray
    var_unbiased: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    eps: float
    weight: np.ndarray
    train: bool

    @property
    def count(self) -> int:
        return self.x.size // max(self.x.shape[1], 1)

    def along(self, values: np.ndarray) -> np.ndarray:
        return per_channel(values, self.x.ndim)


Gradients = tuple[np.ndarray, np.ndarray, np.ndarray]  # dx, dweight, dbias
Forms = dict[str, Gradients]  # the ways of writing a mistake: form name -> its gradients
STAGED, COMPACT, ONE_FORM = "staged", "compact", "formula"


def backward(
    p: Pass,
    std: np.ndarray,
    mean: np.ndarray | None = None,
    var_divisor: float | None = None,
    mean_sign: float = -1.0,
    mean_term: bool = True,
    var_term: bool = True,
    weight_in_dx: bool = True,
    batch_axis_only: bool = False,
    compact: bool = False,
) -> Gradients:
    """The train-mode backward through the graph (x_hat, var, mean) for normalizing with
    ``mean`` (default the pass's) and ``std``, with the switches a mistake flips: the divisor
    of the variance path (M, or M - 1), the sign the mean term enters with, either term
    dropped, the weight left out of dx, dx's sums over the batch axis only (N for M).

    The mean's gradient keeps its part through the variance, dvar * (-2 / M) * sum(x - mean),
    which vanishes only where ``mean`` is the batch's own (so this equals the compact formula
    there); with the running mean, or per-position sums, it does not. ``compact``: without
    that part, which is the compact formula w * inv_std / M * (M dy - sum dy - x_hat *
    sum(dy x_hat)) with the same switches."""
    mean = p.mean if mean is None else mean
    x_hat = normalized_input(p.x, mean, std)
    with np.errstate(all="ignore"):
        deviation = p.x - p.along(mean)
        inv = p.along(1.0 / std)
        dx_hat = p.dy * (p.along(p.weight) if weight_in_dx else 1.0)
        if batch_axis_only:
            M = p.x.shape[0]

            def total(values):
                return values.sum(axis=0, keepdims=True)
        else:
            M = p.count

            def total(values):
                return p.along(channel_sums(values))

        divisor = M if var_divisor is None else var_divisor
        dvar = -0.5 * total(dx_hat * deviation) * inv**3
        dmean = -inv * total(dx_hat)
        dx = dx_hat * inv
        if var_term:
            dx = dx + 2.0 * deviation * dvar / divisor
            if not compact:
                dmean = dmean - 2.0 * dvar * total(deviation) / divisor
        if mean_term:
            dx = dx - mean_sign * dmean / M
        return dx, channel_sums(p.dy * x_hat), channel_sums(p.dy)


def _std(var: np.ndarray, eps: float, outside: bool = False) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.sqrt(var) + eps if outside else np.sqrt(var + eps)


def _one(gradients: Gradients) -> Forms:
    return {ONE_FORM: gradients}


def _forms(p: Pass, std: np.ndarray, **switches) -> Forms:
    """The staged backward with ``switches``, and the compact formula beside it where the two
    differ: where the deviations from the mean that normalizes do not sum to 0 over dx's sums
    (eval mode's running mean, sums over the batch axis only)."""
    staged = backward(p, std, **switches)
    if p.train and not switches.get("batch_axis_only"):
        return _one(staged)
    return {STAGED: staged, COMPACT: backward(p, std, compact=True, **switches)}


def _stated(p: Pass) -> Gradients:
    if not p.train:
        return _eval(p)
    return backward(p, _std(p.var, p.eps))


def _eval(p: Pass, weight_in_dx: bool = True) -> Gradients:
    std = _std(p.var, p.eps)
    x_hat = normalized_input(p.x, p.mean, std)
    with np.errstate(all="ignore"):
        k = p.along(1.0 / std) * (p.along(p.weight) if weight_in_dx else 1.0)
        return k * p.dy, channel_sums(p.dy * x_hat), channel_sums(p.dy)


def _train_only(make: Callable[[Pass], Forms | None]):
    return lambda p: make(p) if p.train else None


def _mean_term_dropped(p):
    return _forms(p, _std(p.var, p.eps), mean_term=False)


def _variance_term_dropped(p):
    return _forms(p, _std(p.var, p.eps), var_term=False)


def _statistics_constant(p):
    return _forms(p, _std(p.var, p.eps), mean_term=False, var_term=False)


def _unbiased_forward(p):
    if p.count < 2:
        return None
    return _forms(p, _std(p.var_unbiased, p.eps), var_divisor=p.count - 1)


def _unbiased_backward(p):
    if p.count < 2:
        return None
    return _forms(p, _std(p.var, p.eps), var_divisor=p.count - 1)


def _no_eps(p):
    if p.eps == 0:
        return None
    if not p.train:
        return _one(_eval(replace(p, eps=0.0)))
    return _forms(p, _std(p.var, 0.0))


def _eps_outside(p):
    std = _std(p.var, p.eps, outside=True)
    if not p.train:
        x_hat = normalized_input(p.x, p.mean, std)
        with np.errstate(all="ignore"):
            dx = p.along(p.weight / std) * p.dy
        return _one((dx, channel_sums(p.dy * x_hat), channel_sums(p.dy)))
    return _forms(p, std)


def _weight_divided(p):
    dx, dw, db = _stated(p)
    return _one((dx, dw / p.count, db))


def _bias_divided(p):
    dx, dw, db = _stated(p)
    return _one((dx, dw, db / p.count))


def _batch_axis_only(p):
    """dx with its sums over axis 0 only, per channel and position, and N for M."""
    if p.x.ndim < 3 or p.x.size // (p.x.shape[0] * p.x.shape[1]) < 2:
        return None
    return _forms(p, _std(p.var, p.eps), batch_axis_only=True)


def _x_for_x_hat(p):
    dx, _, db = _stated(p)
    return _one((dx, channel_sums(p.dy * np.asarray(p.x, dtype=np.float64)), db))


def _train_in_eval(p):
    if p.train:
        return None
    return _forms(p, _std(p.var, p.eps))


def _weight_left_out(p):
    if np.all(p.weight == 1):
        return None
    if not p.train:
        return _one(_eval(p, weight_in_dx=False))
    return _forms(p, _std(p.var, p.eps), weight_in_dx=False)


def _mean_sign(p):
    return _forms(p, _std(p.var, p.eps), mean_sign=1.0)


@dataclass(frozen=True)
class Mistake:
    """One known backward mistake: its name, what it does, and the gradients it produces in
    each of the forms a student writes it in (or None where it does not apply)."""

    name: str
    description: str
    compute: Callable[[Pass], Forms | None]


CATALOGUE = (
    Mistake(
        "mean-term-dropped",
        "drops the term through the mean: dx = weight * inv_std * (dy - x_hat * "
        "sum(dy * x_hat) / M)",
        _train_only(_mean_term_dropped),
    ),
    Mistake(
        "variance-term-dropped",
        "drops the term through the variance: dx = weight * inv_std * (dy - sum dy / M)",
        _train_only(_variance_term_dropped),
    ),
    Mistake(
        "statistics-as-constants",
        "drops both terms through the batch statistics: dx = weight * inv_std * dy, the eval "
        "formula in train mode",
        _train_only(_statistics_constant),
    ),
    Mistake(
        "unbiased-variance-forward",
        "normalizes with the unbiased variance (divides by M - 1) and differentiates that "
        "forward, as autograd does through torch.var's default (unbiased=True)",
        _train_only(_unbiased_forward),
    ),
    Mistake(
        "unbiased-variance-backward",
        "divides the variance term by M - 1 in the backward: x_hat * sum(dy * x_hat) / (M - 1)",
        _train_only(_unbiased_backward),
    ),
    Mistake("no-eps", "leaves eps out: inv_std = 1 / sqrt(var)", _no_eps),
    Mistake(
        "eps-outside-sqrt", "puts eps outside the square root: 1 / (sqrt(var) + eps)", _eps_outside
    ),
    Mistake(
        "grad-weight-divided-by-count",
        "divides dweight by M: a mean of dy * x_hat instead of the sum",
        _weight_divided,
    ),
    Mistake(
        "grad-bias-divided-by-count",
        "divides dbias by M: a mean of dy instead of the sum",
        _bias_divided,
    ),
    Mistake(
        "batch-axis-only",
        "sums over the batch axis only, per channel and position, instead of every axis but "
        "the channel (dx's sums, and N for M: CS231n's backward applied to NCHW)",
        _train_only(_batch_axis_only),
    ),
    Mistake("x-instead-of-x-hat", "uses x instead of x_hat in dweight: sum(dy * x)", _x_for_x_hat),
    Mistake(
        "train-formula-in-eval",
        "uses the train-mode formula in eval mode, with the running statistics, as if they "
        "depended on x",
        _train_in_eval,
    ),
    Mistake(
        "weight-left-out", "leaves the weight out of dx: inv_std / M * (...)", _weight_left_out
    ),
    Mistake(
        "mean-term-sign",
        "adds sum dy instead of subtracting it: dx = weight * inv_std / M * (M * dy + sum dy - "
        "x_hat * sum(dy * x_hat))",
        _train_only(_mean_sign),
    ),
)
