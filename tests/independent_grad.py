"""Batch-norm backwards written here, independently of bninspect, as people write them: correct
ones in the working precision (float32 for float16, bfloat16 and float32; float64 for float64)
in several forms and summation orders, and every mistake of the catalogue, in float64 (what a
mistaken backward computes, exactly) or in float32 arithmetic.

Each takes x and dy (N, C, ...) in their dtype and returns (dx, dweight, dbias) as float64
arrays: the values the backward produced, rounded to x's dtype."""

from __future__ import annotations

import numpy as np

EPS = 1e-5


def working(x: np.ndarray) -> type:
    """The precision a correct implementation computes x's dtype in."""
    return np.float64 if x.dtype == np.float64 else np.float32


def _axes(x: np.ndarray) -> tuple[int, ...]:
    return (0, *range(2, x.ndim))


def _pc(values, x: np.ndarray, t=np.float64) -> np.ndarray:
    """Per-channel values (C,) shaped to broadcast over x, in ``t``."""
    return np.asarray(values, dtype=np.float64).astype(t).reshape((1, -1) + (1,) * (x.ndim - 2))


def _out(x: np.ndarray, *arrays) -> tuple[np.ndarray, ...]:
    """Each array rounded to x's dtype, as float64 (beyond float16's range: inf, as any float16
    backward returns there)."""
    with np.errstate(over="ignore"):
        return tuple(np.asarray(a).astype(x.dtype).astype(np.float64) for a in arrays)


def _sum(values: np.ndarray, axes, t, order: str) -> np.ndarray:
    """Sum over ``axes`` (keepdims) in ``t``: numpy's pairwise sum, or one value at a time."""
    if order == "pairwise":
        return values.sum(axis=axes, keepdims=True, dtype=t)
    moved = np.moveaxis(values, 1, 0)
    flat = moved.reshape(moved.shape[0], -1)
    total = np.cumsum(flat, axis=1, dtype=t)[:, -1]
    return total.reshape((1, -1) + (1,) * (values.ndim - 2))


def statistics(x: np.ndarray, train: bool, running_mean=None, running_var=None, t=np.float64,
               order: str = "pairwise"):  # fmt: skip
    """(mean, var, M) in ``t`` as the forward normalizes: the batch's biased statistics (two
    passes) in train mode, the running ones in eval mode."""
    axes = _axes(x)
    M = x.size // x.shape[1]
    if not train:
        return _pc(running_mean, x, t), _pc(running_var, x, t), M
    v = x.astype(t)
    mean = (_sum(v, axes, t, order) / t(M)).astype(t)
    d = v - mean
    var = (_sum(d * d, axes, t, order) / t(M)).astype(t)
    return mean, var, M


def compact(x, dy, weight, train=True, running_mean=None, running_var=None, eps=EPS,
            order="pairwise", form="textbook"):  # fmt: skip
    """CS231n's ``batchnorm_backward_alt`` in the working precision: dx = w * inv_std / M *
    (M dy - sum dy - x_hat sum(dy x_hat)) (eval: w * inv_std * dy); ``order`` of the sums;
    ``form`` of x_hat: "textbook" (x - mean) * inv_std, or "alpha-beta" x * inv_std - mean *
    inv_std (as a forward computing x * alpha + beta caches it)."""
    t = working(x)
    mean, var, M = statistics(x, train, running_mean, running_var, t, order)
    v, g = x.astype(t), dy.astype(t)
    inv_std = (t(1) / np.sqrt(var + t(eps))).astype(t)
    x_hat = (v - mean) * inv_std if form == "textbook" else v * inv_std - mean * inv_std
    w = _pc(weight, x, t)
    axes = _axes(x)
    sum_dy = _sum(g, axes, t, order)
    sum_dy_x_hat = _sum(g * x_hat, axes, t, order)
    if train:
        dx = w * inv_std / t(M) * (t(M) * g - sum_dy - x_hat * sum_dy_x_hat)
    else:
        dx = w * inv_std * g
    return _out(x, dx, sum_dy_x_hat.reshape(-1), sum_dy.reshape(-1))


def staged(x, dy, weight, train=True, running_mean=None, running_var=None, eps=EPS, *,
           t=None, var_ddof=0, var_path_divisor=None, eps_at="inside", mean_path=1.0,
           var_path=True, weight_in_dx=True, axes=None, running=False):  # fmt: skip
    """Kratzert's staged backward through the graph (xmu, var, sqrtvar, ivar, x_hat; then dvar,
    dmu with its part through the variance, dx), in ``t`` (default the working precision),
    with the switches the catalogue's mistakes flip: returns (dx, dweight, dbias)."""
    t = t or working(x)
    stat_axes = _axes(x)
    axes = stat_axes if axes is None else axes
    v, g = x.astype(t), dy.astype(t)
    if train and not running:
        M_all = x.size // x.shape[1]
        mu = v.sum(axis=stat_axes, keepdims=True, dtype=t) / t(M_all)
        xmu = v - mu
        var = (xmu**2).sum(axis=stat_axes, keepdims=True, dtype=t) / t(M_all - var_ddof)
    else:
        xmu, var = v - _pc(running_mean, x, t), _pc(running_var, x, t)
    if eps_at == "inside":
        sqrtvar = np.sqrt(var + t(eps))
    elif eps_at == "outside":
        sqrtvar = np.sqrt(var) + t(eps)
    else:
        sqrtvar = np.sqrt(var)
    ivar = t(1) / sqrtvar
    xhat = xmu * ivar
    dbias = g.sum(axis=stat_axes, dtype=t)
    dweight = (g * xhat).sum(axis=stat_axes, dtype=t)
    dxhat = g * (_pc(weight, x, t) if weight_in_dx else t(1))
    if not train:
        return _out(x, dxhat * ivar, dweight, dbias)
    M = int(np.prod([x.shape[a] for a in axes]))
    divisor = t(M if var_path_divisor is None else var_path_divisor(M))
    divar = (dxhat * xmu).sum(axis=axes, keepdims=True, dtype=t)
    dxmu1 = dxhat * ivar
    dvar = t(-0.5) * divar * ivar**3
    dxmu2 = t(2) * xmu * dvar / divisor if var_path else t(0)
    dx1 = dxmu1 + dxmu2
    dmu = -dx1.sum(axis=axes, keepdims=True, dtype=t) if var_path else -dxmu1.sum(
        axis=axes, keepdims=True, dtype=t)  # fmt: skip
    dx = dx1 + t(mean_path) * dmu / t(M)
    return _out(x, dx, dweight, dbias)


# The correct backwards: name -> (x, dy, weight, train, running_mean, running_var) -> grads
CORRECT = {
    "compact pairwise": lambda *a: compact(*a),
    "compact C loop": lambda *a: compact(*a, order="sequential"),
    "compact a*x+b": lambda *a: compact(*a, form="alpha-beta"),
    "staged": lambda x, dy, w, train, rm, rv: staged(x, dy, w, train, rm, rv),
}


def mistaken(name: str, x, dy, weight, running_mean, running_var, t=np.float64):
    """(dx, dweight, dbias, mode) of a backward with the catalogue's mistake ``name``, written
    here (staged through the graph, or the compact formula where a student writes that), in
    ``t`` arithmetic; None where it does not apply to x (batch-axis-only needs positions)."""
    M = x.size // x.shape[1]

    def run(train=True, **switches):
        return staged(x, dy, weight, train, running_mean, running_var, t=t, **switches)

    if name == "mean-term-dropped":
        return (*run(mean_path=0.0), "train")
    if name == "variance-term-dropped":
        return (*run(var_path=False), "train")
    if name == "statistics-as-constants":
        return (*run(mean_path=0.0, var_path=False), "train")
    if name == "unbiased-variance-forward":
        return (*run(var_ddof=1, var_path_divisor=lambda m: m - 1), "train")
    if name == "unbiased-variance-backward":
        return (*run(var_path_divisor=lambda m: m - 1), "train")
    if name == "no-eps":
        return (*run(eps_at="none"), "train")
    if name == "eps-outside-sqrt":
        return (*run(eps_at="outside"), "train")
    if name == "grad-weight-divided-by-count":
        dx, dw, db = run()
        return dx, dw / M, db, "train"
    if name == "grad-bias-divided-by-count":
        dx, dw, db = run()
        return dx, dw, db / M, "train"
    if name == "batch-axis-only":
        if x.ndim < 3 or x.size // (x.shape[0] * x.shape[1]) < 2:
            return None
        return (*run(axes=(0,)), "train")
    if name == "x-instead-of-x-hat":
        dx, _, db = run()
        v, g = x.astype(t), dy.astype(t)
        return dx, _out(x, (g * v).sum(axis=_axes(x), dtype=t))[0], db, "train"
    if name == "train-formula-in-eval":
        return (*run(running=True), "eval")
    if name == "weight-left-out":
        return (*run(weight_in_dx=False), "train")
    if name == "mean-term-sign":
        return (*run(mean_path=-1.0), "train")
    raise AssertionError(f"no test implementation of {name}")


def compact_train_formula_in_eval(x, dy, weight, running_mean, running_var, t=np.float64):
    """The compact formula with the running statistics, as a student who keeps the train
    formula in eval mode writes it (no dmean part through the variance)."""
    v, g = x.astype(t), dy.astype(t)
    inv_std = t(1) / np.sqrt(_pc(running_var, x, t) + t(EPS))
    x_hat = (v - _pc(running_mean, x, t)) * inv_std
    M = t(x.size // x.shape[1])
    axes = _axes(x)
    sum_dy = g.sum(axis=axes, keepdims=True, dtype=t)
    sum_dy_x_hat = (g * x_hat).sum(axis=axes, keepdims=True, dtype=t)
    dx = _pc(weight, x, t) * inv_std / M * (M * g - sum_dy - x_hat * sum_dy_x_hat)
    return _out(x, dx, sum_dy_x_hat.reshape(-1), sum_dy.reshape(-1))


def compact_batch_axis_only(x, dy, weight, t=np.float64):
    """CS231n's ``batchnorm_backward_alt`` applied to NCHW: the channel's x_hat and inv_std from
    the forward, but dx's sums over axis 0 and N = x.shape[0] for M."""
    mean, var, _ = statistics(x, True, t=t)
    v, g = x.astype(t), dy.astype(t)
    inv_std = t(1) / np.sqrt(var + t(EPS))
    x_hat = (v - mean) * inv_std
    N = t(x.shape[0])
    dx = _pc(weight, x, t) * inv_std / N * (
        N * g - g.sum(axis=0, keepdims=True) - x_hat * (g * x_hat).sum(axis=0, keepdims=True)
    )
    axes = _axes(x)
    return _out(x, dx, (g * x_hat).sum(axis=axes, dtype=t), g.sum(axis=axes, dtype=t))
