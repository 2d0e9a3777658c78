"""What a correct backward can leave: the error bound ``check --grad-input`` passes their
gradients by (its default tolerance) and judges a hypothesis by (the diagnosis' "within
rounding"), and ``run --grad`` and ``explain --grad`` judge autograd by, per channel and per
gradient, from the dtype and the data's conditioning. The backward's counterpart of
check/tolerance.py, whose model of the forward it extends; docs/grad.md ("The bound") gives it
for people, with measurements (scripts/grad_tolerance_sweep.py).

A correct backward in dtype D computes in a working precision W (float32 for float16, bfloat16
and float32; float64 for float64; u its unit roundoff) from the statistics its forward found,
and rounds its results to D. Per channel, with M values, s = sqrt(var + eps), k = 1 / s, w the
weight, x_hat = (x - mean) k, X = max |x_hat|, B = |sum dy|, S = |sum dy * x_hat|, and T = max
over the channel of |dy| + B / M + |x_hat| S / M (the size of dx's three terms; eval: max |dy|),
the reference

    dx = w k / M (M dy - sum dy - x_hat sum(dy x_hat)),  dweight = sum dy x_hat,  dbias = sum dy

is met within E_stats + E_arith + R:

- E_stats, the forward's statistics' error carried through the three terms. The forward's bound
  (check/tolerance.py, statistics_errors) gives |dm| and dvar, so s' >= s_low and every x_hat'
  of the channel is x_hat shifted by at most delta = |dm| / s_low and stretched by at most
  rho = s / s_low - 1, the same shift and stretch for every element (one mean, one std per
  channel). A correct float32 backward on data whose |mean| / std is large thus loses about
  log2(|mean| / std) bits in x_hat, and through it in sum(dy x_hat), as the forward does. To
  first order:
    - sum(dy x_hat) moves by delta B + rho S (the shift times sum dy, the stretch times S);
    - k moves by rho k: every term of dx by rho times its size, rho T;
    - the third term x_hat S / M by (delta + rho X) S / M from x_hat and X (delta B + rho S) / M
      from the sum.
  So E_stats(dx) = |w| k (rho T + delta (S + X B) / M + 2 rho X S / M), E_stats(dweight) =
  delta B + rho S, E_stats(dbias) = 0. (The staged form through dvar and dmean leaves the same
  or less: its dmean's part through the variance, dvar (-2/M) sum(x - mean'), cancels the
  shift's delta S.) In eval mode the statistics are given: |dm| = 0 and dvar is var + eps
  rounded, so rho ~ u; eval's dx = w k dy has E_stats = |w| k rho max|dy|.
- E_arith, the backward's own roundings in W:
    - each x_hat rounds by a = u (3 |mean| / s + 3 X) (either form, (x - m) k or x k - m k, the
      forward's E_arith per unit weight). Statistics held in D (PyTorch's float16 module keeps
      its saved mean and invstd in float16) move every x_hat of the channel alike: that is the
      shift and stretch of E_stats (statistics_errors counts the mean's and var's rounding to
      D), not a rounding per element, so it is not counted again here;
    - a sum of M terms of RMS A errs by at most SUM_SIGMAS sqrt(M) / 3 u M A, the forward's
      model of a sum (check/tolerance.py: sum_reach), plus u times its value:
      E(sum dy) = sum_reach M rms(dy) + u B, E(sum dy x_hat) = sum_reach M rms(dy x_hat)
      + 2 u sum |dy x_hat| + a sum |dy| (the products' roundings and x_hat's);
    - dx combines them: |w| k (E(sum dy) / M + X E(sum dy x_hat) / M + a S / M + sum_reach S / M
      + 6 u T): the sums' errors through their terms, x_hat's own rounding in the third term,
      the staged form's sum(x - mean') (a sum of M deviations of size s), six roundings of
      values of size T (M dy, the two subtractions, x_hat S, the products by k and w, / M), and
      in float16 and bfloat16 two roundings to D of the per-channel coefficients a kernel may
      hold in the parameters' dtype (HELD_COEFFICIENTS u_D T);
      eval: 4 u |w| k max|dy| (k's square root and division, the two products);
    - dweight: E(sum dy x_hat), plus in float16 and bfloat16 one rounding to D at its scale
      (an intermediate a reduced-precision kernel holds in D); dbias: E(sum dy).
- R, the rounding of the result to D: half a ULP of D at the gradient's scale (0 when D = W,
  where the last rounding is already in E_arith).

The bound is absolute, per channel: in ULPs of D at the gradient's scale (grad/reference.py:
|w| k T for dx, sum |dy x_hat| for dweight, sum |dy| for dbias) it is a few tens of ULPs in
float32 at offset 0, growing with |mean| / std as the forward's (its delta), and a little over
half a ULP in float16 and bfloat16. Like the forward's, the sums' part is a probabilistic bound
(six standard deviations of a sum rounded value by value), not a worst case; real data and
every correct implementation measured stay far inside (docs/grad.md).

A mistaken backward computes another quantity; its roundings grow with its own size. Judging a
hypothesis (``limits``), the arithmetic and the final rounding are taken at the larger of the
gradient's scale and the mistaken gradient's own largest |value|; the statistics' part stays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bninspect.check.tolerance import (
    Bound,
    Conditioning,
    statistics_errors,
    sum_reach,
    unit_roundoff,
    working_precision,
)
from bninspect.grad.reference import ReferenceBackward
from bninspect.numerics.agreement import ulp

# Roundings of values of dx's size when its three terms are combined (M dy, the two
# subtractions, x_hat * S, the products by inv_std and weight, the division by M).
COMBINING_ROUNDINGS = 6.0
# Roundings to the dtype of dx's per-channel coefficients where a reduced-precision kernel holds
# them in its parameters' dtype (grad_mean, k = dotp inv_std^2 / M, weight * inv_std): each moves
# a term of dx by up to u_D of its size. Measured: PyTorch's bfloat16 autograd on 8192 values per
# channel left 1.14 ULP at dx's scale where the bound without them was 1.11. Likewise dweight
# gets one rounding to the dtype at its scale (held * sum |dy x_hat|): PyTorch's bfloat16
# autograd left 1.003 ULP at dweight's scale on 20 values per channel (-8.0 for -8.0627), more
# than dotp * inv_std held in bfloat16 and rounded once can (0.75).
HELD_COEFFICIENTS = 2.0
GRADIENT_NAMES = ("grad_input", "grad_weight", "grad_bias")


@dataclass(frozen=True)
class GradientBounds:
    """Per gradient (grad_input, grad_weight, grad_bias), the bound of each channel (C,) and its
    parts, absolute, and the scale it is counted at; ``dtype`` the gradients' dtype."""

    bounds: dict[str, Bound]
    scales: dict[str, np.ndarray]
    dtype: str

    def total(self, name: str) -> np.ndarray:
        return self.bounds[name].total

    def in_ulps(self, name: str) -> np.ndarray:
        """The bound of gradient ``name`` per channel in ULPs of the dtype at its scale: inf
        where the scale is 0 and the bound is not, NaN where the statistics are not finite."""
        return bound_in_ulps(self.total(name), self.scales[name], self.dtype)

    def limits(self, name: str, own: np.ndarray) -> np.ndarray:
        """The absolute bound per channel for a gradient whose largest |value| in the channel is
        ``own`` (a mistaken backward's): the statistics' part as it is, the arithmetic and the
        final rounding at the larger of the scale and ``own``."""
        bound, scale = self.bounds[name], self.scales[name]
        working = working_precision(self.dtype)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            own = np.where(np.isfinite(own), np.abs(own), 0.0)
            at = np.maximum(scale, own)
            grow = np.where(at > scale, np.where(scale > 0, at / scale, np.inf), 1.0)
            arithmetic = np.where(bound.arithmetic == 0, 0.0, bound.arithmetic * grow)
            before = bound.statistics + arithmetic
            if self.dtype == working:
                return np.where(np.isnan(bound.total), np.nan, before)
            rounding = 0.5 * ulp(at + before, self.dtype)
            return np.where(np.isnan(bound.total), np.nan, before + rounding)


def bound_in_ulps(bound: np.ndarray, scale: np.ndarray, dtype: str) -> np.ndarray:
    """``bound`` in ULPs of ``dtype`` at ``scale`` (per channel); NaN stays NaN, and a bound at
    a scale of 0 is inf unless it is 0 too."""
    scale = np.asarray(scale, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        out = np.where(scale > 0, bound / ulp(scale, dtype), np.where(bound == 0, 0.0, np.inf))
    return np.where(np.isnan(bound), np.nan, out)


def gradient_bounds(ref: ReferenceBackward, cond: Conditioning, dtype: str) -> GradientBounds:
    """Per channel and gradient, what a correct backward in ``dtype`` can leave on this pass
    (the module's derivation): ``ref`` the reference backward, ``cond`` the forward's
    conditioning of the same batch (check/tolerance.py)."""
    working = working_precision(dtype)
    u = unit_roundoff(working)
    held = unit_roundoff(dtype) if dtype != working else 0.0
    M = ref.count
    reach = sum_reach(M, working)
    dm, dvar = statistics_errors(cond, dtype)
    w, k, X = np.abs(ref.weight), ref.inv_std, cond.x_hat_max
    B, S = np.abs(ref.sum_grad_output), np.abs(ref.sum_grad_output_x_hat)
    abs_B, abs_S = ref.sum_abs_grad_output, ref.sum_abs_grad_output_x_hat
    T = ref.input_terms
    scales = {
        "grad_input": ref.input_scale,
        "grad_weight": ref.weight_scale,
        "grad_bias": ref.bias_scale,
    }
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        s = np.sqrt(cond.var + cond.eps)
        s_low = np.sqrt(np.maximum(cond.var + cond.eps - dvar, 0.0)) * (1 - u)
        rho = np.where(s == s_low, 0.0, s / s_low - 1)
        delta = np.where(dm == 0, 0.0, dm / s_low)
        mean_to_std = np.where(cond.mean == 0, 0.0, np.abs(cond.mean) / s)
        a = u * (3 * mean_to_std + 3 * X)
        e_sum_dy = reach * M * ref.grad_output_rms + u * B
        e_sum_dy_x_hat = reach * M * ref.grad_output_x_hat_rms + 2 * u * abs_S + a * abs_B
        wk = np.where(w == 0, 0.0, w * k)
        if ref.passes_through:
            dx_stats = np.zeros_like(T)
            dx_arith = np.zeros_like(T)
        elif ref.train:
            dx_stats = wk * (rho * T + delta * (S + X * B) / M + 2 * rho * X * S / M)
            dx_arith = wk * (
                e_sum_dy / M
                + X * e_sum_dy_x_hat / M
                + (a + reach) * S / M
                + COMBINING_ROUNDINGS * u * T
                + HELD_COEFFICIENTS * held * T
            )
        else:
            dx_stats = wk * rho * T
            dx_arith = wk * 4 * u * T
        parts = {
            "grad_input": (dx_stats, dx_arith),
            "grad_weight": (delta * B + rho * S, e_sum_dy_x_hat + held * abs_S),
            "grad_bias": (np.zeros_like(B), e_sum_dy),
        }
        if ref.passes_through:  # dweight and dbias are 0: nothing to round
            zero = np.zeros_like(B)
            parts["grad_weight"] = parts["grad_bias"] = (zero, zero)
        # Where the spread is below what the dtype's statistics resolve (var + eps - dvar <= 0:
        # a correct x_hat can be anything), the statistics' part is unbounded even where the
        # reference's x_hat is 0 (its 0 * inf products); NaN only where the statistics are not
        # finite (only an exact agreement matches there).
        finite = np.isfinite(cond.mean) & np.isfinite(cond.var)
        unresolved = finite & ~(s_low > 0)
        bounds = {}
        for name, (statistics, arithmetic) in parts.items():
            if name != "grad_bias" and not ref.passes_through:
                statistics = np.where(unresolved, np.inf, statistics)
            statistics = np.where(finite & np.isnan(statistics), 0.0, statistics)
            statistics = np.where(finite, statistics, np.nan)
            before = statistics + arithmetic
            if dtype == working:
                rounding = np.zeros_like(before)
            else:
                rounding = 0.5 * ulp(scales[name] + before, dtype)
            total = before + rounding
            bounds[name] = Bound(total, statistics, arithmetic, rounding)
    return GradientBounds(bounds, scales, dtype)
