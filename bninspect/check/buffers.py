"""``check --their-running-mean/--their-running-var/--their-num-batches-tracked``: their running
buffers after the pass against the reference's update, judged by the same rule as the output
(what a correct update in the dtype can leave, from tolerance.statistics_errors), and their
mistakes named: the biased variance stored, the momentum flipped (1 - m), Keras'/ONNX's
convention (both), Caffe's unnormalized sums, the cumulative average, no update at all.

A correct update computes keep * old + take * batch in the working precision W from a batch mean
and variance that err as the output's statistics do (dm, dvar), and rounds it to the dtype D:

    |error| <= take * d(batch) + 2 u_W (keep |old| + take |batch| + |new|) + (D != W) ulp_D(new) / 2

(the two products and the sum each round once in W). Buffers held in a reduced-precision D may
be updated in D itself (PyTorch's float16/bfloat16 modules are): the two products then round in
D too, adding u_D (keep |old| + take |batch|). Errors are counted in ULPs of D at the
buffer's scale: for the running mean the largest of its update's terms (a correct update's
error follows them where they cancel), for the running variance its own value.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bninspect.errors import BnInspectError
from bninspect.input.npy_files import read_array, read_header
from bninspect.results.check import (
    BufferCheck,
    BufferComparison,
    ChannelGroup,
    Hypothesis,
    TrackedComparison,
)
from bninspect.results.common import Number, Undefined


@dataclass(frozen=True)
class TheirBuffers:
    """Their buffers after the pass, as given (None: not given), float64, shape (C,)."""

    running_mean: np.ndarray | None
    running_var: np.ndarray | None
    num_batches_tracked: int | None
    mean_path: str | None = None
    var_path: str | None = None


def load_buffer(path: Path, option: str, channels: int) -> np.ndarray:
    """A per-channel buffer from a .npy file: C numbers (any shape holding C values, as (C,) or
    (1, C, 1, 1)), as float64; refuses anything else in one line."""
    header = read_header(path, option)
    if header.dtype.kind not in "fiu":
        raise BnInspectError(
            f"{option} {path}: holds {header.dtype.name}, not numbers; save the buffer as a "
            f"float array of {channels} values (module.running_mean.numpy())"
        )
    size = int(np.prod(header.shape)) if header.shape else 1
    if size != channels or sum(d != 1 for d in header.shape) > 1:
        shape = "x".join(map(str, header.shape)) or "a scalar"
        raise BnInspectError(
            f"{option} {path}: shape {shape}, but the input has {channels} channels; give one "
            "value per channel"
        )
    with np.errstate(over="ignore"):
        return np.asarray(read_array(path, option), dtype=np.float64).reshape(-1)


def load_buffers(
    mean_path: Path | None, var_path: Path | None, num_batches: int | None, channels: int
) -> TheirBuffers | None:
    """Their buffers from the options, or None when none was given."""
    if mean_path is None and var_path is None and num_batches is None:
        return None
    return TheirBuffers(
        load_buffer(mean_path, "--their-running-mean", channels) if mean_path else None,
        load_buffer(var_path, "--their-running-var", channels) if var_path else None,
        num_batches,
        str(mean_path) if mean_path else None,
        str(var_path) if var_path else None,
    )


@dataclass(frozen=True)
class _Update:
    """One way of updating the buffers: (mean, var) after, from the batch statistics."""

    name: str
    description: str
    mean: np.ndarray
    var: np.ndarray


def _updates(inspection) -> tuple[_Update, list[_Update]]:
    """The reference's update and the known mistaken ones (those that differ from it)."""
    forward, stats, convention = inspection.forward, inspection.stats, inspection.convention
    before, update = forward.before, forward.update
    old_mean, old_var = before.stored_mean, before.stored_var
    if update is None:  # eval mode: nothing changes
        right = _Update("stated settings", "leaves them unchanged", old_mean, old_var)
        return right, []
    after = update.after
    right = _Update("stated settings", "the stated update", after.stored_mean, after.stored_var)
    take = update.batch_weight * after.scale_factor  # the batch's coefficient (Caffe: 1)
    stored_unbiased = convention.stores == "unbiased"
    other_kind = stats.var_biased if stored_unbiased else stats.var_unbiased
    other_name = "biased" if stored_unbiased else "unbiased"
    # The old value's coefficient: 1 - take, or Caffe's moving_average_fraction.
    momentum = inspection.settings.momentum
    keep = float(momentum) if convention.has_scale_factor else 1 - take
    mistakes = [
        _Update(
            f"{other_name}-variance-stored",
            f"stores the {other_name} variance in running_var",
            after.stored_mean,
            keep * old_var + take * other_kind,
        ),
        _Update(
            "momentum-flipped",
            f"weighs the batch 1 - momentum ({1 - take:g}) instead of {take:g}",
            take * old_mean + (1 - take) * update.batch_mean,
            take * old_var + (1 - take) * update.batch_var,
        ),
    ]
    if convention.momentum_meaning == "batch" and stored_unbiased:
        mistakes.append(
            _Update(
                "keras-onnx-convention",
                "follows Keras'/ONNX's convention: momentum weighs the old value, and the "
                "biased variance is stored",
                take * old_mean + (1 - take) * update.batch_mean,
                take * old_var + (1 - take) * stats.var_biased,
            )
        )
    if not convention.has_scale_factor:
        mistakes.append(
            _Update(
                "caffe-sums",
                "stores Caffe's unnormalized sums (batch + (1 - momentum) * old) without "
                "dividing by the scale factor",
                (1 - take) * old_mean + update.batch_mean,
                (1 - take) * old_var + update.batch_var,
            )
        )
    steps = after.num_batches_tracked
    if not isinstance(inspection.settings.momentum, Undefined) and steps >= 1:
        mistakes.append(
            _Update(
                "cumulative-average",
                f"takes the cumulative average (momentum None: the batch weighs 1/{steps})",
                (1 - 1 / steps) * old_mean + update.batch_mean / steps,
                (1 - 1 / steps) * old_var + update.batch_var / steps,
            )
        )
    mistakes.append(_Update("not-updated", "leaves the buffers unchanged", old_mean, old_var))
    return right, mistakes


def update_bound(
    take: float | np.ndarray,
    batch: np.ndarray,
    new: np.ndarray,
    batch_error: np.ndarray,
    dtype: str,
) -> np.ndarray:
    """What a correct update keep * old + take * batch can leave on a buffer held in
    ``dtype``, absolute, per channel (the module's derivation): ``batch`` the batch statistic
    folded in (as the buffer stores it), ``new`` the buffer after the update, ``batch_error``
    how far a correct implementation's batch statistic can be from ``batch``."""
    from bninspect.check.tolerance import unit_roundoff, working_precision
    from bninspect.numerics.agreement import ulp

    working = working_precision(dtype)
    u = unit_roundoff(working)
    with np.errstate(invalid="ignore", over="ignore"):
        old_term = np.abs(new - take * batch)
        bound = take * batch_error + 2 * u * (old_term + take * np.abs(batch) + np.abs(new))
        if dtype != working:
            # Buffers held in the dtype are updated in it too (PyTorch's float16/bfloat16
            # modules do: each product and the sum round to the buffer's dtype), so each of
            # the update's three roundings is the dtype's, not the working precision's; and
            # the factors 1 - momentum and momentum are the dtype's too (bfloat16 holds 0.9 as
            # 0.8984375): each product rounds twice, its factor and itself.
            held = unit_roundoff(dtype)
            bound = bound + 2 * held * (old_term + take * np.abs(batch)) + 0.5 * ulp(new, dtype)
    return bound


def stored_variance_error(var_error: np.ndarray, count: int) -> np.ndarray:
    """A biased variance's error carried to the unbiased one a buffer stores (times
    count / (count - 1); unchanged for one value, where nothing is divided)."""
    return var_error * (count / (count - 1) if count > 1 else 1.0)


def buffer_bounds(inspection, cond, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """What a correct update can leave on each buffer, absolute, per channel (the module's
    derivation)."""
    from bninspect.check.tolerance import statistics_errors

    forward, stats = inspection.forward, inspection.stats
    update = forward.update
    if update is None:
        zero = np.zeros_like(forward.before.stored_mean)
        return zero, zero
    dm, dvar = statistics_errors(cond, dtype)
    after = update.after
    take = update.batch_weight * after.scale_factor
    with np.errstate(invalid="ignore", over="ignore"):
        dvar_stored = stored_variance_error(dvar, stats.count)
    return (
        update_bound(take, update.batch_mean, after.stored_mean, dm, dtype),
        update_bound(take, update.batch_var, after.stored_var, dvar_stored, dtype),
    )


def buffer_scales(inspection, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The scale each buffer's error is counted at (module docstring)."""
    from bninspect.numerics.agreement import running_mean_scale

    forward = inspection.forward
    update = forward.update
    before = forward.before
    if update is None:
        return np.abs(before.stored_mean), np.abs(before.stored_var)
    after = update.after
    batch = (update.batch_weight * after.scale_factor, update.batch_mean, update.batch_rms)
    mean_scale = running_mean_scale(before.stored_mean, after.stored_mean, batch, dtype)
    return mean_scale, np.abs(after.stored_var)


def _in_ulps(error: np.ndarray, scale: np.ndarray, dtype: str) -> np.ndarray:
    from bninspect.numerics.agreement import ulp

    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        out = np.where(error == 0, 0.0, error / ulp(scale, dtype))
    return np.where(np.isnan(out), np.inf, out)


def _errors(theirs: np.ndarray, expected: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        agree = (np.isnan(theirs) & np.isnan(expected)) | (theirs == expected)
        error = np.where(agree, 0.0, np.abs(theirs - expected))
    return np.where(np.isnan(error), np.inf, error)


def _max(values: np.ndarray) -> Number:
    return float(values.max()) if values.size else 0.0


def check_buffers(inspection, theirs: TheirBuffers, cond) -> BufferCheck:
    """Their buffers against the reference's update, and the mistake that explains them."""
    dtype = inspection.tensor.info.dtype
    right, mistakes = _updates(inspection)
    mean_bound, var_bound = buffer_bounds(inspection, cond, dtype)
    mean_scale, var_scale = buffer_scales(inspection, dtype)
    given = [
        (name, values, path, bound, scale, attr)
        for name, values, path, bound, scale, attr in (
            ("running_mean", theirs.running_mean, theirs.mean_path, mean_bound, mean_scale, "mean"),
            ("running_var", theirs.running_var, theirs.var_path, var_bound, var_scale, "var"),
        )
        if values is not None
    ]

    def judged(update: _Update):
        """Per given buffer: (errors in ULPs, limits in ULPs), at the larger of the stated and
        the update's scale."""
        out = []
        for _, values, _, bound, scale, attr in given:
            expected = getattr(update, attr)
            wide = np.maximum(scale, np.abs(expected))
            wide = np.where(np.isfinite(wide), wide, scale)
            out.append(
                (
                    _in_ulps(_errors(values, expected), wide, dtype),
                    np.nan_to_num(_in_ulps(bound, wide, dtype), nan=0.0),
                )
            )
        return out

    stated = judged(right)
    channels = inspection.batch.shape[1]
    stated_fit = _channel_fits(stated, channels)
    stated_fits = bool(stated_fit.all())
    tried = []  # (hypothesis, per-channel fit)
    for mistake in mistakes:
        if all(np.array_equal(getattr(mistake, attr), getattr(right, attr)) for *_, attr in given):
            continue  # the same update as the stated one here
        measured = judged(mistake)
        fit = _channel_fits(measured, channels)
        worst = max((_max(e) for e, _ in measured), default=0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            over = max(
                (_max(np.where(e == 0, 0.0, e / limit)) for e, limit in measured), default=0.0
            )
        # Explains: every buffer given within what a correct update can leave, on every
        # channel (the error left over the bound at most 1), where the stated update is not.
        explains = bool(not stated_fits and given and fit.all() and over <= 1.0)
        hypothesis = Hypothesis(
            mistake.name, mistake.description, dtype, worst, explains, None, False, None, over
        )
        tried.append((hypothesis, fit))
    tried.sort(key=lambda t: (not t[0].explains, t[0].max_over_bound))
    hypotheses = [h for h, _ in tried]
    explaining = [h for h in hypotheses if h.explains]
    best: list[str | Undefined] = []
    for c in range(channels):
        if stated_fit[c]:
            best.append(STATED)
            continue
        fits = [h.name for h, fit in tried if fit[c]]
        best.append(fits[0] if fits else Undefined("no known buffer mistake fits this channel"))
    if explaining:  # one mistake explains every channel: name it on all of them
        best = [explaining[0].name] * channels
    described = {h.name: h.description for h in hypotheses}
    groups = _groups(best, described, "the stated update")
    comparisons = []
    for (name, values, path, _, _, attr), (errors, limits) in zip(given, stated, strict=True):
        fits = bool(np.all(errors <= limits))
        comparisons.append(
            BufferComparison(
                name,
                path,
                tuple(float(v) for v in getattr(right, attr)),
                tuple(float(v) for v in values),
                _max(errors),
                _max(limits),
                fits,
                _explained_by(errors > limits, best, channels)
                if not fits
                else Undefined("matches the stated update"),
                f"{_max(errors):.3g} ULP of {dtype} at the buffer's scale; a correct update can "
                f"leave {_max(limits):.3g}",
            )
        )
    tracked: TrackedComparison | Undefined = Undefined("not given: --their-num-batches-tracked")
    tracked_ok = True
    if theirs.num_batches_tracked is not None:
        update = inspection.forward.update
        expected = int((update.after if update else inspection.forward.before).num_batches_tracked)
        tracked_ok = theirs.num_batches_tracked == expected
        tracked = TrackedComparison(
            expected,
            int(theirs.num_batches_tracked),
            tracked_ok,
            f"theirs {theirs.num_batches_tracked}, the reference's {expected}"
            + ("" if tracked_ok else " (each training pass adds 1)"),
        )
    passed = stated_fits and tracked_ok
    unexplained = [g for g in groups if isinstance(g.name, Undefined)]
    if passed:
        conclusion = "your running buffers match the stated update"
    elif not stated_fits and explaining:
        conclusion = f"your running buffers: {explaining[0].description}"
    elif not stated_fits and len(unexplained) < len(groups):
        conclusion = "your running buffers: " + _mixed(groups, channels)
    elif not stated_fits:
        conclusion = (
            "your running buffers differ from the stated update; no known buffer mistake "
            "explains them"
        )
    else:
        conclusion = "your num_batches_tracked differs from the reference's"
    if not tracked_ok and not stated_fits:
        conclusion += "; and num_batches_tracked differs"
    explained = bool(not stated_fits and not unexplained)
    return BufferCheck(
        passed, conclusion, tuple(comparisons), tuple(hypotheses), groups, tracked, explained
    )


STATED = "stated settings"


def _channel_fits(measured, channels: int) -> np.ndarray:
    """Per channel, whether every given buffer is within its limit there."""
    fit = np.ones(channels, dtype=bool)
    for errors, limits in measured:
        fit &= errors <= limits
    return fit


def _groups(best, described: dict[str, str], stated_text: str) -> tuple[ChannelGroup, ...]:
    """The channels of each explanation: mistakes in the order of their first channel, then the
    stated update's, then those nothing explains."""
    order: dict[str | None, list[int]] = {}
    for c, name in enumerate(best):
        order.setdefault(None if isinstance(name, Undefined) else name, []).append(c)
    names = [n for n in order if n not in (STATED, None)]
    names += [n for n in (STATED, None) if n in order]
    nothing = Undefined("no known buffer mistake explains these channels")
    return tuple(
        ChannelGroup(
            nothing if n is None else n,
            described.get(n, stated_text if n == STATED else "no known buffer mistake"),
            tuple(order[n]),
        )
        for n in names
    )


def _mixed(groups, channels: int) -> str:
    """The per-channel explanations in a line: "stores the biased variance in running_var on
    channel 3; channels 0-2 and 4-7 match the stated update"."""
    from bninspect.check.diagnosis import channel_list

    parts = []
    for g in groups:
        where = channel_list(g.channels, channels)
        if g.name == STATED:
            parts.append(
                f"{where} {'matches' if len(g.channels) == 1 else 'match'} the stated update"
            )
        elif isinstance(g.name, Undefined):
            parts.append(f"no known buffer mistake explains {where}")
        else:
            parts.append(f"{g.description} on {where}")
    return "; ".join(parts)


def _explained_by(failing: np.ndarray, best, channels: int) -> str | Undefined:
    """What explains a buffer on the channels where it fails: a mistake's name, with its
    channels where they are not all of them, or why nothing does."""
    from bninspect.check.diagnosis import channel_list

    names = {best[c] for c in np.flatnonzero(failing) if not isinstance(best[c], Undefined)}
    if any(isinstance(best[c], Undefined) for c in np.flatnonzero(failing)) or not names:
        return Undefined("no known buffer mistake explains it")
    parts = []
    for name in sorted(names, key=lambda n: best.index(n)):
        on = [c for c in range(channels) if best[c] == name]
        parts.append(name if len(on) == channels else f"{name} on {channel_list(on, channels)}")
    return "; ".join(parts)
