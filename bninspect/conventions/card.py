"""``conventions``: the reference card of every framework's batch-norm rules, with the source of
each fact, and momentum translated between conventions. Pure functions over ``conventions``."""

from __future__ import annotations

from bninspect.conventions.rules import (
    CONVENTIONS,
    PYTORCH,
    RULES,
    UPDATE_WEIGHTS,
    Convention,
    batch_weight,
    momentum_for,
    scale_factor_weights,
)
from bninspect.results.common import CUMULATIVE, Number, Undefined, Verdict
from bninspect.results.conventions import (
    CardFact,
    ConventionCard,
    ConventionsResult,
    MomentumEquivalent,
    MomentumTranslation,
)
from bninspect.text import short

RULE_LABELS = {
    "normalizes": "normalizes with",
    "stores": "running_var stores",
    "momentum": "running update",
    "eps": "eps default",
    "one_value": "one value/channel",
}
_ONE_VALUE = {
    "refuse": "error",
    "normalize": "no error: variance 0, y = bias",
    "pass_through": "y = x, no update",
}


def describe(convention: Convention, rule: str) -> str:
    """The convention's ``rule`` (one of RULES) in a few words."""
    if rule == "normalizes":
        return f"{convention.normalizes} (/N)"
    if rule == "stores":
        if convention.stores == "biased":
            return "biased (/N)"
        return "unbiased (/(N-1))" if convention.one_value == "refuse" else "unbiased (/max(N-1,1))"
    if rule == "momentum":
        symbol = "f" if convention.has_scale_factor else "m"
        old, batch = (w.format(m=symbol) for w in UPDATE_WEIGHTS[convention.momentum_meaning])
        update = f"{old} * old + {batch} * batch"
        if convention.has_scale_factor:
            update = f"sum = {old} * sum + {batch} * batch, s = f * s + 1; running = sum / s"
        text = (
            f"{update}; {convention.momentum_parameter} {symbol} = "
            f"{short(convention.momentum_default)}"
        )
        return text + ("; none: m = 1/n" if convention.accepts_cumulative else "")
    if rule == "eps":
        floor = convention.eps_floor
        return short(convention.eps_default) + (f", raised to >= {short(floor)}" if floor else "")
    return _ONE_VALUE[convention.one_value]


def _status(convention: Convention, rule: str) -> str:
    if rule in convention.unverified:
        return "unverified"
    return "checked" if convention.checked_against else "source"


def convention_card(convention: Convention) -> ConventionCard:
    """One framework's card: its rules as data, and as sentences with their sources."""
    floor = convention.eps_floor
    return ConventionCard(
        name=convention.name,
        framework=convention.framework,
        normalizes=convention.normalizes,
        stores=convention.stores,
        momentum_meaning=convention.momentum_meaning,
        momentum_parameter=convention.momentum_parameter,
        momentum_default=convention.momentum_default,
        eps_default=convention.eps_default,
        eps_floor=floor if floor is not None else Undefined(f"{convention.display} has no floor"),
        one_value=convention.one_value,
        checked_against=convention.checked_against,
        facts=tuple(
            CardFact(
                rule,
                describe(convention, rule),
                convention.sources[rule],
                _status(convention, rule),
            )
            for rule in RULES
        ),
        notes=convention.notes,
    )


def _steady_state_only(fraction: float) -> str | None:
    """The caveat on a constant weight translated from Caffe's ``fraction``: Caffe's batch
    weight changes every step (except with f = 0, which weighs every batch 1)."""
    if fraction == 0:
        return None
    early = ", ".join(f"{w:.2g}" for w in scale_factor_weights(fraction, 3))
    return (
        f"matches Caffe only in the steady state: its first steps weigh the batch {early}, ... "
        "(1/scale_factor, from 1)"
    )


def _equivalent(
    target: Convention, weight: float | None, source: Convention, momentum: float | None
) -> MomentumEquivalent:
    parameter = target.momentum_parameter
    if weight is None:
        if target.accepts_cumulative:
            return MomentumEquivalent(target.name, parameter, Undefined(CUMULATIVE), None)
        note = (
            "moving_average_fraction 1 from a fresh layer (scale factor 0) gives the same average"
            if target.has_scale_factor
            else None
        )
        reason = f"no constant {parameter} gives a cumulative average"
        return MomentumEquivalent(target.name, parameter, Undefined(reason), note)
    note = None
    if source.has_scale_factor:  # into Caffe itself: the same rule, step for step
        note = None if target.has_scale_factor else _steady_state_only(momentum)
    elif target.has_scale_factor:
        note = (
            "the same weight once the scale factor has settled at 1/(1 - f); earlier steps "
            "weigh the batch 1/scale_factor, more"
        )
    # 1 - 0.99 is 0.010000000000000009 in binary; people write 0.01.
    value = float(f"{momentum_for(target, weight):.12g}")
    return MomentumEquivalent(target.name, parameter, value, note)


def translate_momentum(momentum: float | None, source: Convention) -> MomentumTranslation:
    """``momentum`` in ``source``'s meaning (None: PyTorch's cumulative average) as every
    convention writes the same rule."""
    weight = None if momentum is None else float(f"{batch_weight(source, momentum):.12g}")
    given: Number = Undefined(CUMULATIVE) if momentum is None else momentum
    return MomentumTranslation(
        source=source.name,
        momentum=given,
        batch_weight=Undefined(CUMULATIVE) if weight is None else weight,
        equivalents=tuple(_equivalent(c, weight, source, momentum) for c in CONVENTIONS.values()),
    )


def build_card(
    momentum: float | None = None, source: Convention = PYTORCH, translate: bool = False
) -> ConventionsResult:
    """The whole card; with ``translate``, ``momentum`` (in ``source``'s meaning) as every
    convention writes it."""
    translation = translate_momentum(momentum, source) if translate else None
    return ConventionsResult(
        verdict=card_verdict(translation),
        conventions=tuple(convention_card(c) for c in CONVENTIONS.values()),
        translation=translation,
    )


def card_verdict(translation: MomentumTranslation | None) -> Verdict:
    """The card's answer: what every framework shares and where they part; with a momentum to
    translate, that momentum in the most asked-for conventions' terms."""
    normalizing = {c.normalizes for c in CONVENTIONS.values()}
    shared = (
        f"all normalize with the {normalizing.pop()} variance and put eps inside the square root"
        if len(normalizing) == 1
        else "they normalize with different variances"
    )
    first = (
        f"{len(CONVENTIONS)} conventions: {shared}; they part on the variance stored, what "
        "momentum means, and the eps default."
    )
    if translation is None:
        return Verdict("ok", (first,))
    given = CONVENTIONS[translation.source]
    said = [
        f"{CONVENTIONS[e.convention].display} {e.parameter} {short(e.momentum)}"
        for e in translation.equivalents
        if e.convention != given.name and not isinstance(e.momentum, Undefined)
    ]
    momentum = (
        "none" if isinstance(translation.momentum, Undefined) else short(translation.momentum)
    )
    second = (
        f"{given.display} {given.momentum_parameter} {momentum} is the same rule as "
        + ", ".join(said[:4])
        + (f" and {len(said) - 4} more." if len(said) > 4 else ".")
    )
    return Verdict("ok", (first, second))
