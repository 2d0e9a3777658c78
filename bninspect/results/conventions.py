"""The result of ``bninspect conventions``: the reference card of every framework's rules, and
momentum translated between them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bninspect.results.common import Number, Verdict


@dataclass(frozen=True)
class CardFact:
    """One cell of the conventions card: a framework's rule, where it comes from, and how sure
    bninspect is of it: "checked" (run against the framework here), "source" (read in its
    source) or "unverified"."""

    rule: str
    value: str
    source: str
    status: str


@dataclass(frozen=True)
class ConventionCard:
    """One framework's row of the card: the rules as data and as sentences with sources."""

    name: str
    framework: str
    normalizes: str  # "biased" or "unbiased"
    stores: str
    momentum_meaning: str  # "batch", "keep" or "caffe"
    momentum_parameter: str
    momentum_default: float
    eps_default: float
    eps_floor: Number
    one_value: str  # "refuse", "normalize" or "pass_through"
    checked_against: str | None
    facts: tuple[CardFact, ...]
    notes: tuple[str, ...]


@dataclass(frozen=True)
class MomentumEquivalent:
    """The momentum in one convention that gives the same running-statistics rule."""

    convention: str
    parameter: str
    momentum: Number
    note: str | None


@dataclass(frozen=True)
class MomentumTranslation:
    """``momentum`` given in ``source`` convention's meaning, as every convention writes it."""

    source: str
    momentum: Number
    batch_weight: Number  # the weight of a new batch: PyTorch's meaning
    equivalents: tuple[MomentumEquivalent, ...]


@dataclass(frozen=True)
class ConventionsResult:
    """Everything ``bninspect conventions`` reports: the card, and a momentum translation when
    asked for one."""

    command: ClassVar[str] = "conventions"
    verdict_statuses: ClassVar[tuple[str, ...]] = ("ok",)

    verdict: Verdict  # always "ok": the card itself
    conventions: tuple[ConventionCard, ...]
    translation: MomentumTranslation | None
