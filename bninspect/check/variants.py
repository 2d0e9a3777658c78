"""The catalogue of known batch-norm mistakes: each recomputes the output as a mistaken
implementation would, in float64, so ``check`` can see which one their output follows.

A variant is plain data (name, description, the precision whose ULPs measure it) and a pure
function of the inspection; it returns None where it does not apply (e.g. instance norm on
(N, C) input, where there is nothing to average per sample).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bninspect.check.compare import scaled_errors
from bninspect.pytorch.inspection import Inspection
from bninspect.results.common import Number, Undefined

# Defaults people carry between frameworks, for naming an estimated eps.
KNOWN_EPS = {
    1e-3: "Keras' and TensorFlow's default",
    1e-5: "PyTorch's default",
    1.001e-5: "TensorFlow fused batch norm's floor",
    1e-4: "a common choice",
    1e-6: "a common choice",
    1e-12: "BERT's LayerNorm",
}


@dataclass(frozen=True)
class Outcome:
    """What a variant makes of their output: the mistaken output (float64, the batch's shape),
    a detail for the report, and for a fitted variant whether the values it fitted are ones the
    mistake can produce (if not, it explains nothing however small the error left) and the
    per-channel eps it estimated."""

    output: np.ndarray
    detail: str | None = None
    plausible: bool = True
    eps_per_channel: tuple[Number, ...] | None = None


@dataclass(frozen=True)
class Variant:
    """One known mistake. ``fitted``: it estimates something (an eps, a mean and variance)
    from their output, so it can explain more than the one mistake it names, and ranks after
    the variants that fit nothing."""

    name: str
    description: str
    # The mistaken output, or None where the mistake does not apply; told the Judge of what a
    # correct implementation can leave (tolerance.Judge), for variants that choose by it.
    compute: Callable[..., np.ndarray | Outcome | None]
    precision: str | None = None  # None: the input's dtype
    fitted: bool = False


def along_channels(values: np.ndarray, ndim: int) -> np.ndarray:
    """Per-channel values (C,) shaped to broadcast over (N, C, ...)."""
    return np.asarray(values, dtype=np.float64).reshape((1, -1) + (1,) * (ndim - 2))


def normalized(x, mean, var, eps, weight, bias, eps_outside=False) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * weight + bias in float64, broadcasting (C,) vectors or
    keepdims statistics; eps_outside: / (sqrt(var) + eps)."""
    ndim = x.ndim

    def shaped(v):
        v = np.asarray(v, dtype=np.float64)
        return along_channels(v, ndim) if v.ndim == 1 else v

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        denominator = np.sqrt(shaped(var)) + eps if eps_outside else np.sqrt(shaped(var) + eps)
        # In place: the same operations in the same order, without a temporary per step.
        y = np.subtract(x, shaped(mean), dtype=np.float64)
        if y.shape != np.broadcast_shapes(y.shape, denominator.shape):
            return y / denominator * shaped(weight) + shaped(bias)
        y /= denominator
        y *= shaped(weight)
        y += shaped(bias)
        return y


def _layer(inspection: Inspection):
    s = inspection.settings
    return inspection.batch, inspection.stats, inspection.params, s.eps, s.mode == "train"


def _used(inspection: Inspection):
    """The mean and variance the stated settings normalize with."""
    return inspection.forward.mean, inspection.forward.var


def _unbiased(inspection, theirs, judge=None):
    x, stats, p, eps, train = _layer(inspection)
    if not train or stats.count < 2:
        return None
    return normalized(x, stats.mean, stats.var_unbiased, eps, p.weight, p.bias)


def _eps_outside(inspection, theirs, judge=None):
    x, _, p, eps, _ = _layer(inspection)
    mean, var = _used(inspection)
    return normalized(x, mean, var, eps, p.weight, p.bias, eps_outside=True)


def _no_eps(inspection, theirs, judge=None):
    x, _, p, eps, _ = _layer(inspection)
    if eps == 0:
        return None
    mean, var = _used(inspection)
    return normalized(x, mean, var, 0.0, p.weight, p.bias)


def estimate_eps(inspection: Inspection, theirs: np.ndarray) -> tuple[Number, ...]:
    """Per channel, the eps their output implies: y = (x - mean) / sqrt(var + eps) * w + b
    solved for eps at every element far from the mean (where y says most about the spread),
    the median over the channel; undefined where no element can be solved."""
    x, _, p, _, _ = _layer(inspection)
    mean, var = _used(inspection)
    estimates: list[Number] = []
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for c in range(x.shape[1]):
            deviation = np.asarray(x[:, c], dtype=np.float64).reshape(-1) - mean[c]
            their_y = theirs[:, c].reshape(-1)
            implied_std = deviation * p.weight[c] / (their_y - p.bias[c])
            implied = implied_std**2 - var[c]
            spread = math.sqrt(abs(var[c])) if np.isfinite(var[c]) else math.inf
            useful = np.isfinite(implied) & (np.abs(deviation) > 0.5 * spread) & (implied_std > 0)
            estimates.append(
                float(np.median(implied[useful]))
                if useful.any()
                else Undefined("no element far enough from the mean to solve for eps")
            )
    return tuple(estimates)


def eps_text(value: float) -> str:
    """An eps for people, with the digits that tell 1.001e-05 from 1e-05."""
    return f"{value:.5g}"


def _other_eps(inspection, theirs, judge=None):
    """One eps for the whole layer: a known default if it fits every channel to rounding, else
    the median of the per-channel estimates."""
    estimates = estimate_eps(inspection, theirs)
    solved = [e for e in estimates if not isinstance(e, Undefined)]
    if not solved:
        return None
    x, _, p, eps, _ = _layer(inspection)
    mean, var = _used(inspection)
    overall = float(np.median(solved))

    def under(value: float) -> np.ndarray:
        return normalized(x, mean, var, value, p.weight, p.bias)

    low, high = eps_text(min(solved)), eps_text(max(solved))
    spread = (
        f"estimated {low}{' in every channel' if len(solved) > 1 else ''}"
        if low == high
        else f"estimated per channel {low} to {high}"
    )
    # A default that fits every channel is the likelier truth than the estimate; of several
    # (when eps hardly matters), the one nearest the estimate.
    fitting = [
        known
        for known in KNOWN_EPS
        if known != eps and judge is not None and np.all(judge.fits(theirs, under(known)))
    ]
    if fitting:
        known = min(fitting, key=lambda k: abs(math.log(k) - math.log(max(overall, 1e-300))))
        return Outcome(
            under(known),
            f"eps {known:g}, {KNOWN_EPS[known]}, instead of the stated {eps:g}; {spread}",
            eps_per_channel=estimates,
        )
    if overall <= 0:
        return Outcome(
            under(0.0),
            f"the fit needs eps {eps_text(overall)}, not above 0: not an eps; {spread}",
            plausible=False,
            eps_per_channel=estimates,
        )
    return Outcome(
        under(overall),
        f"eps {eps_text(overall)} instead of the stated {eps:g}; {spread}",
        eps_per_channel=estimates,
    )


def _over_axes(axes: tuple[int, ...], affine_axis: int = 1):
    """Statistics over ``axes``, weight and bias along ``affine_axis``."""

    def compute(inspection, theirs, judge=None):
        x, _, p, eps, _ = _layer(inspection)
        if any(a >= x.ndim for a in axes):
            return None
        wide = x.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf in x: NaN/Inf statistics
            mean = wide.mean(axis=axes, keepdims=True)
            var = wide.var(axis=axes, keepdims=True)
        shape = [1] * x.ndim
        shape[affine_axis] = -1
        return normalized(x, mean, var, eps, p.weight.reshape(shape), p.bias.reshape(shape))

    return compute


def _channels_last(inspection, theirs, judge=None):
    """Statistics per index of the last axis, as if the data were (N, ..., C); weight and bias
    along axis 1 (only the statistics read channels-last) or, where the last axis has C
    entries, along the last axis too (a whole channels-last implementation): the closer one."""
    x, _, p, _, _ = _layer(inspection)
    if x.ndim < 3:
        return None
    axes = tuple(range(x.ndim - 1))
    on_axis_1 = _over_axes(axes)(inspection, theirs)
    if x.shape[-1] != x.shape[1]:
        return on_axis_1
    on_last = _over_axes(axes, affine_axis=x.ndim - 1)(inspection, theirs)
    dtype = inspection.tensor.info.dtype
    left = [float(np.max(scaled_errors(theirs, y, p.weight, dtype))) for y in (on_axis_1, on_last)]
    if left[1] < left[0]:
        return Outcome(on_last, "weight and bias along the last axis too")
    return Outcome(on_axis_1, "weight and bias along axis 1")


def _per_sample(inspection, theirs, judge=None):
    x = inspection.batch
    if x.ndim < 3 or np.prod(x.shape[2:]) < 2:
        return None
    return _over_axes(tuple(range(2, x.ndim)))(inspection, theirs)


def _per_layer(inspection, theirs, judge=None):
    x = inspection.batch
    return _over_axes(tuple(range(1, x.ndim)))(inspection, theirs)


def _batch_only(inspection, theirs, judge=None):
    x = inspection.batch
    if x.ndim < 3 or x.shape[0] < 2:
        return None
    return _over_axes((0,))(inspection, theirs)


def _other_statistics(inspection, theirs, judge=None):
    """Running statistics in train mode, batch statistics in eval mode."""
    x, stats, p, eps, train = _layer(inspection)
    before = inspection.forward.before
    if train:
        y = normalized(x, before.running_mean, before.running_var, eps, p.weight, p.bias)
        return Outcome(y, "running statistics in train mode")
    y = normalized(x, stats.mean, stats.var_biased, eps, p.weight, p.bias)
    return Outcome(y, "batch statistics in eval mode")


def _untrained(inspection, theirs, judge=None):
    x, _, p, eps, _ = _layer(inspection)
    before = inspection.forward.before
    channels = x.shape[1]
    if np.all(before.running_mean == 0) and np.all(before.running_var == 1):
        return None  # the stated buffers are these already
    return normalized(x, np.zeros(channels), np.ones(channels), eps, p.weight, p.bias)


def _no_affine(inspection, theirs, judge=None):
    x, _, p, eps, _ = _layer(inspection)
    if np.all(p.weight == 1) and np.all(p.bias == 0):
        return None
    mean, var = _used(inspection)
    return normalized(x, mean, var, eps, np.ones_like(p.weight), np.zeros_like(p.bias))


def _swapped(inspection, theirs, judge=None):
    x, _, p, eps, _ = _layer(inspection)
    if np.all(p.weight == p.bias):
        return None
    mean, var = _used(inspection)
    return normalized(x, mean, var, eps, p.bias, p.weight)


def _weight_first(inspection, theirs, judge=None):
    """Statistics of weight * x, then bias: the weight cancels but for eps and its sign."""
    x, _, p, eps, _ = _layer(inspection)
    if np.all(p.weight == 1):
        return None
    mean, var = _used(inspection)
    w = p.weight
    scaled = np.asarray(x, dtype=np.float64) * along_channels(w, x.ndim)
    return normalized(scaled, mean * w, var * w * w, eps, np.ones_like(w), p.bias)


# How far a one-pass variance E[x^2] - E[x]^2 in working precision (unit roundoff u) can be
# off, for the naive-variance variant. Summing n terms one by one, the k-th addition rounds by
# up to u times the partial sum, ~k times a term; taken as independent and uniform, those
# roundings give the sum a relative error of standard deviation u * sqrt(n) / 3, so within
# 2 * u * sqrt(n) at six standard deviations (pairwise sums, as numpy's, stay far inside). With
# the few further roundings (the squares, the divisions by n, mean^2, the subtraction):
#   |error of E[x]|   <= (2 sqrt(n) + 3) u (|mean| + std) <= 1.5 (2 sqrt(n) + 3) u sqrt(E[x^2])
#   |error of E[x^2]| <= (2 sqrt(n) + 3) u E[x^2]
#   |error of var|    <= that + 2 |mean| |error of E[x]| + u mean^2
#                     <= 3 (2 sqrt(n) + 3) u (E[x^2] + mean^2)     (2 |mean| std <= E[x^2])
# and a stable two-pass variance stays within 3 (2 sqrt(n) + 3) u var: only an error beyond
# that, which needs |mean| >> std, is the one-pass formula's signature.
NAIVE_MEAN_BOUND, NAIVE_VAR_BOUND = 1.5, 3.0


def naive_reach(count: int, working: str) -> float:
    """(2 sqrt(n) + 3) u: the one-pass sums' relative error bound (see NAIVE_VAR_BOUND)."""
    return (2 * math.sqrt(count) + 3) * float(np.finfo(working).eps) / 2


def _fit_line(x: np.ndarray, y: np.ndarray, centre: float) -> tuple[float, float] | None:
    """Least squares y ~ slope * (x - centre) + value over the finite pairs: (slope, value),
    or None where x does not vary."""
    keep = np.isfinite(x) & np.isfinite(y)
    d, y = x[keep] - centre, y[keep]
    if d.size < 2 or np.ptp(d) == 0:
        return None
    d_mean, y_mean = d.mean(), y.mean()
    slope = float(np.dot(d - d_mean, y - y_mean) / np.dot(d - d_mean, d - d_mean))
    return slope, float(y_mean - slope * d_mean)


def _naive_variance(inspection, theirs, judge=None):
    """Their output read as the formula with its own mean and variance (a line in x per
    channel), accepted as far as one-pass cancellation can move them: the naive formula's
    result depends chaotically on the order of summation, so only its reach is checked."""
    x, stats, p, eps, train = _layer(inspection)
    if not train or stats.count < 2 or inspection.forward.passes_through:
        return None
    working = "float64" if x.dtype == np.float64 else "float32"
    reach = naive_reach(stats.count, working)
    mean_ref, var_ref = stats.mean, stats.var_biased
    with np.errstate(over="ignore"):  # a mean near the largest float: its square is inf
        square_mean = var_ref + mean_ref**2
    mean, var = mean_ref.copy(), var_ref.copy()
    rows = []  # (channel, relative variance error, mean error in std, |mean| / std, clamped)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for c in range(x.shape[1]):
            w = float(p.weight[c])
            line = _fit_line(
                np.asarray(x[:, c], dtype=np.float64).reshape(-1),
                theirs[:, c].reshape(-1),
                float(mean_ref[c]),
            )
            if line is None or not np.isfinite(var_ref[c]) or var_ref[c] <= 0 or w == 0:
                continue  # nothing to fit: the channel keeps the stated statistics
            slope, at_mean = line
            if not (slope * w > 0 and math.isfinite(slope)):
                continue  # a line the formula cannot draw with any variance
            ratio = w / slope
            fitted_var = ratio * ratio - eps  # ** would raise past float64's range
            fitted_mean = float(mean_ref[c]) - (at_mean - float(p.bias[c])) / slope
            var_bound = NAIVE_VAR_BOUND * reach * (square_mean[c] + mean_ref[c] ** 2)
            mean_bound = NAIVE_MEAN_BOUND * reach * math.sqrt(square_mean[c])
            var[c] = np.clip(fitted_var, var_ref[c] - var_bound, var_ref[c] + var_bound)
            mean[c] = np.clip(fitted_mean, mean_ref[c] - mean_bound, mean_ref[c] + mean_bound)
            clamped = var[c] != fitted_var or mean[c] != fitted_mean
            std = math.sqrt(var_ref[c])
            rows.append(
                (
                    c,
                    (fitted_var - var_ref[c]) / var_ref[c],
                    abs(fitted_mean - mean_ref[c]) / std,
                    abs(mean_ref[c]) / std,
                    clamped,
                )
            )
    output = normalized(x, mean, var, eps, p.weight, p.bias)
    if not rows:
        return Outcome(output, "no channel to fit", plausible=False)
    c, relative, _, ratio, _ = max(rows, key=lambda r: abs(r[1]))
    stable = NAIVE_VAR_BOUND * reach
    cancellation = stable * (square_mean[c] + mean_ref[c] ** 2) / var_ref[c]
    detail = (
        f"variance off by {relative:+.3g} relative (channel {c}) and mean by up to "
        f"{max(r[2] for r in rows):.3g} std; at |mean|/std {ratio:.4g}, {working} one-pass "
        f"cancellation reaches {cancellation:.3g}"
    )
    if any(r[4] for r in rows):
        detail += "; a channel needs more than cancellation reaches"
    beyond_stable = any(abs(r[1]) > stable for r in rows)
    if not beyond_stable:
        detail += f"; within a stable variance's rounding ({stable:.2g}): not the one-pass formula"
    return Outcome(output, detail, plausible=beyond_stable)


def _per_rank(inspection, theirs, judge=None):
    """Data parallel without SyncBatchNorm: each rank's block of the batch normalized with its
    own batch statistics (check --ranks / --rank-sizes)."""
    from bninspect.numerics.pooling import rank_statistics, shard_bounds

    x, _, p, eps, train = _layer(inspection)
    sizes = inspection.rank_sizes
    if not train or sizes is None or len(sizes) < 2:
        return None
    y = np.empty(x.shape, dtype=np.float64)
    for (first, end), own in zip(shard_bounds(sizes), rank_statistics(x, sizes), strict=True):
        if own is not None:
            y[first:end] = normalized(x[first:end], own.mean, own.var_biased, eps, p.weight, p.bias)
    return Outcome(y, f"{len(sizes)} ranks of {','.join(map(str, sizes))} samples")


def _averaged_variances(inspection, theirs, judge=None):
    """SyncBatchNorm done wrong: the batch mean, but the per-rank variances averaged (by
    count) instead of pooled, losing the spread of the rank means."""
    from bninspect.numerics.pooling import averaged_variance, rank_statistics

    x, stats, p, eps, train = _layer(inspection)
    sizes = inspection.rank_sizes
    if not train or sizes is None or len(sizes) < 2:
        return None
    variance = averaged_variance(rank_statistics(x, sizes))
    return Outcome(
        normalized(x, stats.mean, variance, eps, p.weight, p.bias),
        f"{len(sizes)} ranks of {','.join(map(str, sizes))} samples",
    )


def _equal_weight_variances(inspection, theirs, judge=None):
    """SyncBatchNorm done wrong plainly: the batch mean, but the per-rank variances averaged
    with equal weights (all_reduce(var) / K over the ranks holding values), losing the spread
    of the rank means and the ranks' counts. The same as by count on equal ranks: tried only
    where the ranks' counts differ."""
    from bninspect.numerics.pooling import equal_weight_variance, rank_statistics

    x, stats, p, eps, train = _layer(inspection)
    sizes = inspection.rank_sizes
    if not train or sizes is None or len({s for s in sizes if s}) < 2:
        return None
    variance = equal_weight_variance(rank_statistics(x, sizes))
    return Outcome(
        normalized(x, stats.mean, variance, eps, p.weight, p.bias),
        f"{len(sizes)} ranks of {','.join(map(str, sizes))} samples",
    )


def _in_dtype(dtype: str):
    def compute(inspection, theirs, judge=None):
        if inspection.tensor.info.dtype in ("float16", "bfloat16") or dtype == (
            inspection.tensor.info.dtype
        ):
            return None
        from bninspect.dtypes import float_format
        from bninspect.pytorch.batchnorm import run_batchnorm

        low_type = float_format(dtype).numpy
        finite = theirs[np.isfinite(theirs)]
        with np.errstate(over="ignore"):
            if not np.array_equal(finite.astype(low_type).astype(np.float64), finite):
                return None  # an output computed in that dtype holds only its numbers
        x, _, p, eps, train = _layer(inspection)
        with np.errstate(over="ignore"):
            low = x.astype(low_type)
        momentum = inspection.settings.momentum
        momentum = None if not isinstance(momentum, float) else momentum
        run = run_batchnorm(
            low,
            low.shape[0],
            [momentum],
            inspection.settings.module,
            p,
            eps,
            inspection.settings.affine,
            train,
        )
        return run.output.astype(np.float64)

    return compute


CATALOGUE = (
    Variant(
        "unbiased-variance", "normalizes with the unbiased variance (divides by N - 1)", _unbiased
    ),
    Variant(
        "eps-outside-sqrt", "puts eps outside the square root: / (sqrt(var) + eps)", _eps_outside
    ),
    Variant("no-eps", "leaves eps out: / sqrt(var)", _no_eps),
    Variant("other-eps", "uses another eps", _other_eps, fitted=True),
    Variant(
        "channels-last",
        "takes statistics per index of the last axis, as if the data were "
        "channels-last (N, ..., C)",
        _channels_last,
    ),
    Variant(
        "per-sample",
        "takes statistics per sample and channel over the spatial axes (instance norm)",
        _per_sample,
    ),
    Variant(
        "per-layer", "takes statistics per sample over channels and space (layer norm)", _per_layer
    ),
    Variant(
        "batch-axis-only",
        "takes statistics over the batch axis only, per channel and position",
        _batch_only,
    ),
    Variant("other-statistics", "swaps batch and running statistics", _other_statistics),
    Variant(
        "untrained-running",
        "normalizes with untrained running statistics (mean 0, var 1)",
        _untrained,
    ),
    Variant("no-affine", "leaves out weight and bias", _no_affine),
    Variant("weight-bias-swapped", "swaps weight and bias", _swapped),
    Variant(
        "weight-before-normalizing",
        "multiplies by the weight before normalizing, so it cancels (but for its sign and eps)",
        _weight_first,
    ),
    Variant(
        "naive-variance",
        "computes the variance as E[x^2] - E[x]^2 in one pass in float32 (float64 for float64 "
        "input), losing digits to cancellation",
        _naive_variance,
        fitted=True,
    ),
    Variant(
        "per-rank-statistics",
        "normalizes each data-parallel rank's samples with that rank's own statistics, no "
        "sync (DDP without SyncBatchNorm)",
        _per_rank,
    ),
    Variant(
        "averaged-variances",
        "averages the per-rank variances weighted by count (sum m2_k / N) instead of pooling "
        "them: the spread of the rank means is missing",
        _averaged_variances,
    ),
    Variant(
        "equal-weight-variances",
        "averages the per-rank variances with equal weights (all_reduce(var) / K) instead of "
        "pooling them: the spread of the rank means is missing and small ranks weigh as much "
        "as large ones",
        _equal_weight_variances,
    ),
    Variant("float16", "computes in float16", _in_dtype("float16"), precision="float16"),
    Variant("bfloat16", "computes in bfloat16", _in_dtype("bfloat16"), precision="bfloat16"),
)


# Mistakes in the formula itself, which compose: a real implementation can make two at once
# (the unbiased variance and eps outside the root is one). Each is (options, the test that it
# changes nothing here).
FORMULA_MISTAKES = {
    "unbiased-variance": {"unbiased": True},
    "eps-outside-sqrt": {"eps_mode": "outside"},
    "no-eps": {"eps_mode": "none"},
    "no-affine": {"affine": "none"},
    "weight-bias-swapped": {"affine": "swapped"},
}


def _formula(inspection, unbiased=False, eps_mode="inside", affine="stated"):
    """The output under the formula mistakes given (see FORMULA_MISTAKES), or None where one of
    them changes nothing here (so the pair would be the other mistake alone)."""
    x, stats, p, eps, train = _layer(inspection)
    mean, var = _used(inspection)
    if unbiased:
        if not train or stats.count < 2:
            return None
        var = stats.var_unbiased
    weight, bias = p.weight, p.bias
    if affine == "none":
        if np.all(weight == 1) and np.all(bias == 0):
            return None
        weight, bias = np.ones_like(weight), np.zeros_like(bias)
    elif affine == "swapped":
        if np.all(weight == bias):
            return None
        weight, bias = bias, weight
    if eps_mode == "none":
        if eps == 0:
            return None
        eps = 0.0
    return normalized(x, mean, var, eps, weight, bias, eps_outside=eps_mode == "outside")


def _pair(first: str, second: str) -> Variant:
    options = {**FORMULA_MISTAKES[first], **FORMULA_MISTAKES[second]}
    described = {v.name: v.description for v in CATALOGUE}

    def compute(inspection, theirs, judge=None):
        return _formula(inspection, **options)

    return Variant(f"{first}+{second}", f"{described[first]}, and {described[second]}", compute)


# Every pair of formula mistakes that can happen together (not two eps placements, not two
# affine mistakes): tried when no single mistake explains every channel.
PAIRS = tuple(
    _pair(first, second)
    for i, first in enumerate(FORMULA_MISTAKES)
    for second in list(FORMULA_MISTAKES)[i + 1 :]
    if not set(FORMULA_MISTAKES[first]) & set(FORMULA_MISTAKES[second])
)
