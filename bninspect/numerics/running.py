"""Running statistics over training steps, by each framework's rule, in float64. Pure functions.

A ``RunningState`` holds the buffers as the framework stores them: Caffe keeps unnormalized sums
and a scale factor and divides one by the other at inference; every other framework stores the
statistics themselves, which is the same with a scale factor fixed at 1. Per-channel arrays are
shape (C,).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bninspect.conventions.rules import Convention


@dataclass(frozen=True)
class RunningState:
    """The running buffers before or after a step: ``stored_mean``/``stored_var`` as the framework
    keeps them (Caffe: sums), ``scale_factor`` (Caffe's third blob; 1 elsewhere) and the number of
    training steps taken so far (PyTorch's num_batches_tracked)."""

    stored_mean: np.ndarray
    stored_var: np.ndarray
    scale_factor: float
    num_batches_tracked: int

    @property
    def running_mean(self) -> np.ndarray:
        """What eval mode normalizes with: stored / scale_factor (0 when it is 0, as in Caffe)."""
        return _unscaled(self.stored_mean, self.scale_factor)

    @property
    def running_var(self) -> np.ndarray:
        return _unscaled(self.stored_var, self.scale_factor)


def _unscaled(stored: np.ndarray, scale_factor: float) -> np.ndarray:
    if scale_factor == 0:
        return np.zeros_like(stored)
    return stored / scale_factor


def initial_state(
    running_mean: np.ndarray, running_var: np.ndarray, num_batches_tracked: int = 0
) -> RunningState:
    """A layer holding these running statistics, before any step (scale factor 1: for Caffe, the
    blobs hold the statistics themselves), PyTorch's counter at ``num_batches_tracked``: the
    cumulative average then weighs the next step's batch 1/(num_batches_tracked + 1), as if the
    statistics were the average of that many batches."""
    return RunningState(
        np.asarray(running_mean, dtype=np.float64),
        np.asarray(running_var, dtype=np.float64),
        1.0,
        num_batches_tracked,
    )


def variance_of(m2: np.ndarray, count: int, kind: str) -> np.ndarray:
    """m2 / count ("biased") or m2 / max(count - 1, 1) ("unbiased", as TensorFlow and Caffe guard
    a single value; the variance of one value is 0 either way)."""
    return m2 / (count if kind == "biased" else max(count - 1, 1))


def blend(old: np.ndarray, new: np.ndarray, keep: float, take: float) -> np.ndarray:
    """keep * old + take * new, in float64: every framework's running update has this form."""
    return keep * np.asarray(old, dtype=np.float64) + take * np.asarray(new, dtype=np.float64)


def coefficients(convention: Convention, momentum: float | None, step: int) -> tuple[float, float]:
    """(keep, take) of step ``step`` (1-based, counted as PyTorch's num_batches_tracked after
    the step) in ``convention``'s rule for ``momentum`` in its own meaning; None is PyTorch's
    cumulative average, which weighs that step's batch by 1/step."""
    meaning = convention.momentum_meaning
    if momentum is None:
        weight = 1.0 / step
        return 1.0 - weight, weight
    if meaning == "batch":
        return 1.0 - momentum, momentum
    if meaning == "keep":
        return momentum, 1.0 - momentum
    return momentum, 1.0  # Caffe: sum = batch + f * sum


def _next_scale(convention: Convention, scale: float, keep: float, take: float) -> float:
    """Caffe's scale factor after a step (keep * scale + take); 1 in every other framework."""
    return keep * scale + take if convention.has_scale_factor else 1.0


def torch_momenta(convention: Convention, momentum: float | None, steps: int) -> list[float | None]:
    """PyTorch's momentum at each of ``steps`` training steps that weighs every batch as
    ``convention`` does (from scale factor 1): the batch weights depend on the rule alone, not
    on the data. None stays None: PyTorch's own cumulative average."""
    if convention.momentum_meaning == "batch":
        return [momentum] * steps
    weights, scale = [], 1.0
    for step in range(1, steps + 1):
        keep, take = coefficients(convention, momentum, step)
        scale = _next_scale(convention, scale, keep, take)
        weights.append(take / scale)
    return weights


@dataclass(frozen=True)
class StepUpdate:
    """One training step's effect on the running statistics: the batch statistics folded in
    (mean, and the variance of the kind the convention stores), the weight the batch got in the
    running statistics (PyTorch's momentum for the same step), the state after, and the batch's
    root mean square sqrt(mean^2 + biased var) per channel, the size of the values its mean
    summed (a float sum errs relative to them, not to their mean)."""

    batch_mean: np.ndarray
    batch_var: np.ndarray
    batch_weight: float
    after: RunningState
    batch_rms: np.ndarray


def advance(
    state: RunningState,
    batch_mean: np.ndarray,
    batch_m2: np.ndarray,
    count: int,
    convention: Convention,
    momentum: float | None,
) -> StepUpdate:
    """The running statistics after one training step on a batch with per-channel ``batch_mean``
    and sum of squared deviations ``batch_m2`` over ``count`` values per channel.

    Paddle passes a single value per channel through and leaves the statistics as they were;
    the step still counts.
    """
    batch_var = variance_of(batch_m2, count, convention.stores)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # NaN, Inf, empty batch
        batch_rms = np.sqrt(batch_mean * batch_mean + batch_m2 / count)
    step = state.num_batches_tracked + 1
    if count == 1 and convention.one_value == "pass_through":
        after = RunningState(state.stored_mean, state.stored_var, state.scale_factor, step)
        return StepUpdate(batch_mean, batch_var, 0.0, after, batch_rms)
    keep, take = coefficients(convention, momentum, step)
    scale = _next_scale(convention, state.scale_factor, keep, take)
    # NaN and Inf in a batch poison the running statistics from here on, as in every framework.
    with np.errstate(invalid="ignore", over="ignore"):
        after = RunningState(
            blend(state.stored_mean, batch_mean, keep, take),
            blend(state.stored_var, batch_var, keep, take),
            scale,
            step,
        )
    return StepUpdate(batch_mean, batch_var, take / scale, after, batch_rms)
