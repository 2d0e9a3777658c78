"""``check``'s diagnosis: try every known mistake in the catalogue against their output and keep
the ones that explain it, best first.

A mistake explains a channel when, under it, the remaining error is within what a correct
implementation in the precision the mistake computes in could leave on that channel's data
(tolerance.Judge: the dtype and the data's conditioning, as the default tolerance), while the
error under the stated settings is not. It explains the output when it explains every channel.
Where no single mistake does, the pairs of formula mistakes that can happen together are tried
(variants.PAIRS); where different channels follow different explanations, the diagnosis names
each with its channels. Fitted mistakes (which estimate an eps, or a mean and variance, from the
output) can mimic specific ones, so they rank after those.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bninspect.check.tolerance import Judge
from bninspect.check.variants import CATALOGUE, PAIRS, Outcome, Variant
from bninspect.numerics.kernels import Progress
from bninspect.pytorch.inspection import Inspection
from bninspect.results.check import ChannelGroup, Diagnosis, Hypothesis
from bninspect.results.common import Undefined

STATED = "stated settings"


def channel_list(channels: list[int] | tuple[int, ...], total: int) -> str:
    """ "all 16 channels", "channel 7", "channels 1, 3 and 5", "channels 0-6 and 8-15"."""
    channels = sorted(channels)
    if len(channels) == total:
        if total <= 2:
            return "its one channel" if total == 1 else "both channels"
        return f"all {total} channels"
    runs: list[list[int]] = []
    for c in channels:
        if runs and c == runs[-1][-1] + 1:
            runs[-1].append(c)
        else:
            runs.append([c])
    parts = [
        part for r in runs for part in ([str(c) for c in r] if len(r) <= 2 else [f"{r[0]}-{r[-1]}"])
    ]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return ("channel " if len(channels) == 1 else "channels ") + text


def _try(
    variants, inspection, theirs, judge, needed_channels, tell
) -> list[tuple[Hypothesis, np.ndarray, np.ndarray, bool]]:
    """Each applicable variant as (hypothesis, errors, limits, plausible), per channel errors
    and limits in ULPs of its precision at its scale."""
    dtype = inspection.tensor.info.dtype
    tried = []
    for variant in variants:
        outcome = variant.compute(inspection, theirs, judge)
        if tell is not None:
            tell(inspection.batch.nbytes)
        if outcome is None:
            continue
        if not isinstance(outcome, Outcome):
            outcome = Outcome(outcome)
        precision = variant.precision or dtype
        errors, limits = judge.measure(theirs, outcome.output, precision)
        fits = errors <= limits
        explains = bool(needed_channels.any() and fits.all() and outcome.plausible)
        tried.append(
            (
                _hypothesis(variant, outcome, precision, errors, limits, explains),
                errors,
                limits,
                outcome.plausible,
            )
        )
    return tried


def _hypothesis(
    variant: Variant, outcome: Outcome, precision: str, errors, limits, explains: bool
) -> Hypothesis:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(errors == 0, 0.0, errors / limits)
    return Hypothesis(
        variant.name,
        variant.description,
        precision,
        float(errors.max()) if errors.size else 0.0,
        explains,
        outcome.detail,
        variant.fitted,
        outcome.eps_per_channel,
        float(ratios.max()) if ratios.size else 0.0,
    )


def diagnose(
    inspection: Inspection,
    theirs: np.ndarray,
    stated: np.ndarray,
    stated_limits: np.ndarray,
    judge: Judge,
    tell: Progress | None = None,
) -> tuple[Diagnosis, list[str | Undefined]]:
    """Every applicable mistake with its remaining error, best first, and per channel the best
    explaining one. ``stated`` is the per-channel error under the stated settings (ULPs of the
    input dtype at the channel's scale), ``stated_limits`` what a correct implementation can
    leave there in the same ULPs. ``tell`` is called with the input's bytes after each mistake
    is tried."""
    dtype = inspection.tensor.info.dtype
    channels = theirs.shape[1]
    stated_fits = stated <= stated_limits
    needed = ~stated_fits
    tried = _try(CATALOGUE, inspection, theirs, judge, needed, tell)
    if needed.any() and not any(h.explains for h, *_ in tried):
        tried += _try(PAIRS, inspection, theirs, judge, needed, None)
    tried = _without_freedom(tried, needed)
    # Those that explain: the specific before the fitted, one mistake before a pair, then by
    # what they leave against the bound; those that do not: by that alone (the closest first),
    # the ones whose fitted values no such mistake can produce last.
    tried.sort(
        key=lambda t: (
            (False, t[0].fitted, "+" in t[0].name, 0, _ratio(t[0]))
            if t[0].explains
            else (True, False, False, not t[3], _ratio(t[0]))
        )
    )
    hypotheses = [t[0] for t in tried]
    # Per channel: the stated settings if they fit, else the first that fits it, specific
    # mistakes before fitted ones (a fitted mistake fits many channels by its freedom).
    by_specificity = sorted(
        tried, key=lambda t: (not t[0].explains, t[0].fitted, "+" in t[0].name, _ratio(t[0]))
    )
    best: list[str | Undefined] = []
    for c in range(channels):
        if stated_fits[c]:
            best.append(STATED)
            continue
        fits = [h.name for h, e, limit, ok in by_specificity if ok and e[c] <= limit[c]]
        best.append(fits[0] if fits else Undefined("no known variant fits this channel"))
    groups = _groups(best, hypotheses)
    stated_max = float(np.max(stated)) if stated.size else 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(stated == 0, 0.0, stated / stated_limits)
        stated_ratio = float(np.max(ratios)) if ratios.size else 0.0
    limit_max = float(np.max(stated_limits)) if stated_limits.size else 0.0
    explaining = [h for h in hypotheses if h.explains]
    unexplained = [g for g in groups if isinstance(g.name, Undefined)]
    at_scale = f"ULP of {dtype} at the channel's scale"
    note: str | Undefined = Undefined("no known mistake fits the output markedly better")
    if not needed.any():
        summary = (
            f"matches the stated settings on {channel_list(range(channels), channels)}: "
            f"{stated_max:.3g} {at_scale}, within what a correct implementation can leave"
        )
        detail = (
            f"your output matches the stated settings within {stated_max:.3g} {at_scale} (a "
            f"correct {dtype} implementation can leave up to {limit_max:.3g} on this data): "
            "nothing to explain"
        )
        note = _better_fit(tried, stated_ratio) or note
    elif explaining:
        first = explaining[0]
        summary = f"{_what(first)} on {channel_list(range(channels), channels)}"
        how = f" ({first.detail})" if first.detail else ""
        detail = (
            f"your output {first.description}{how}: under that mistake the error drops from "
            f"{stated_max:.3g} to {first.max_ulp_error_at_scale:.3g} {at_scale}, within what a "
            "correct implementation can leave"
        )
    elif len(unexplained) < len(groups) or not unexplained:
        parts = []
        for g in groups:
            where = channel_list(g.channels, channels)
            if g.name == STATED:
                verb = "matches" if len(g.channels) == 1 else "match"
                parts.append(f"{where} {verb} the stated settings")
            elif isinstance(g.name, Undefined):
                parts.append(f"no known mistake explains {where}")
            else:
                parts.append(f"{g.description} on {where}")
        summary = "; ".join(parts)
        detail = (
            "different channels follow different explanations (see each channel's best known "
            "variant): " + summary
        )
    else:
        closest = next(
            (h for h, *_, ok in tried if ok and not h.explains and _ratio(h) < stated_ratio),
            None,
        )
        near = (
            f"; the closest, {closest.name}, leaves {_ratio(closest):.3g} times the bound"
            if closest is not None
            else ""
        )
        summary = (
            f"no known mistake explains it: {stated_max:.3g} {at_scale}, beyond the "
            f"{limit_max:.3g} a correct implementation can leave{near}"
        )
        detail = summary + "; see the per-channel evidence"
    explained = bool(needed.any() and not unexplained)
    return Diagnosis(explained, summary, tuple(hypotheses), detail, groups, note), best


# A passing output is fitted "markedly better" by a mistake when the stated settings leave at
# least this share of the bound and the mistake at most MARKEDLY times what they leave.
NOTABLE_SHARE, MARKEDLY = 0.25, 0.1


def _better_fit(tried, stated_ratio: float) -> str | None:
    """For an output within the bound: the one line that says a specific known mistake fits it
    markedly better than the stated settings (the error a fair share of the bound, the
    mistake leaving a tenth of it or less), or None. Fitted mistakes are left out: their
    freedom fits a correct output's rounding too."""
    if stated_ratio < NOTABLE_SHARE:
        return None
    better = [
        h for h, *_, ok in tried if ok and not h.fitted and _ratio(h) <= MARKEDLY * stated_ratio
    ]
    if not better:
        return None
    h = min(better, key=_ratio)
    return (
        f"{h.name} fits it markedly better: {_ratio(h):.2g} of the bound left, against "
        f"{stated_ratio:.2g}"
    )


def _without_freedom(tried, needed: np.ndarray):
    """A fitted mistake that explains every channel only because its freedom lets it equal the
    stated settings where they fit, while specific mistakes explain each channel that needs
    explaining, explains nothing: the channels are named with their specific mistakes."""
    if not any(h.explains and h.fitted for h, *_ in tried):
        return tried
    if any(h.explains and not h.fitted for h, *_ in tried):
        return tried  # a specific mistake explains every channel: it ranks first anyway
    specific = [(e, limit) for h, e, limit, ok in tried if ok and not h.fitted]
    covered = all(any(e[c] <= limit[c] for e, limit in specific) for c in np.flatnonzero(needed))
    if not covered:
        return tried
    out = []
    for h, e, limit, ok in tried:
        if h.explains and h.fitted:
            why = (
                "fits every channel by its freedom, but specific mistakes explain each channel "
                "that needs explaining"
            )
            h = dataclasses.replace(
                h, explains=False, detail=f"{h.detail}; {why}" if h.detail else why
            )
        out.append((h, e, limit, ok))
    return out


def _ratio(h: Hypothesis) -> float:
    r = h.max_over_bound
    return r if isinstance(r, float) else float("inf")


def _what(h: Hypothesis) -> str:
    """The mistake for the one-line summary: its description, and for another eps which."""
    if h.name == "other-eps" and h.detail:
        return f"{h.description}: {h.detail.split(';')[0]}"
    return h.description


def _groups(best: list[str | Undefined], hypotheses: list[Hypothesis]) -> tuple[ChannelGroup, ...]:
    """The channels of each explanation, mistakes first (in the order of their first channel),
    then the channels the stated settings fit, then those nothing explains."""
    described = {h.name: _what(h) for h in hypotheses}
    order: dict[str | None, list[int]] = {}
    for c, name in enumerate(best):
        order.setdefault(None if isinstance(name, Undefined) else name, []).append(c)
    names = [n for n in order if n not in (STATED, None)]
    names += [n for n in (STATED, None) if n in order]
    nothing = Undefined("no known mistake explains these channels")
    return tuple(
        ChannelGroup(
            nothing if n is None else n,
            described.get(n, "the stated settings" if n == STATED else "no known mistake"),
            tuple(order[n]),
        )
        for n in names
    )
