"""The conventions card: each framework's rules, a momentum translation when asked, and where
each fact comes from under --verbose. Formats; never computes."""

from __future__ import annotations

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from bninspect.conventions.card import RULE_LABELS
from bninspect.render.cells import fmt, grid, listing
from bninspect.results.common import Undefined
from bninspect.results.conventions import ConventionsResult, MomentumTranslation

STATUS_STYLE = {"checked": "green", "source": None, "unverified": "red"}


def _rules_table(result: ConventionsResult, verbose: bool) -> Table:
    """One block per convention, one line per rule: fits 80 columns without folding a word."""
    table = listing("Batch norm across frameworks", ["convention", "rule", "value"], wraps=2)
    labels = {rule: label.replace("\n", " ") for rule, label in RULE_LABELS.items()}
    # A rule every convention shares is said once, in the verdict (all of them with --verbose).
    shared = {
        fact.rule
        for fact in result.conventions[0].facts
        if all(
            other.value == fact.value
            for card in result.conventions
            for other in card.facts
            if other.rule == fact.rule
        )
    }
    for card in result.conventions:
        facts = [f for f in card.facts if verbose or f.rule not in shared]
        for k, fact in enumerate(facts):
            table.add_row(
                Text(card.name, style="bold") if k == 0 else "",
                labels.get(fact.rule, fact.rule),
                Text(fact.value, style=STATUS_STYLE[fact.status]),
                end_section=k == len(facts) - 1,
            )
    return table


def _sources_table(result: ConventionsResult) -> Table:
    table = Table(title="Where each fact comes from", title_justify="left")
    for label in ("convention", "rule", "source", "status"):
        table.add_column(label, overflow="fold")
    for card in result.conventions:
        # Text(...) throughout: sources hold brackets that rich would read as markup.
        table.add_row(Text(card.name, style="bold"), "framework", Text(card.framework), "")
        checked = card.checked_against or "not run here: bninspect's reading of the source"
        table.add_row("", "checked against", Text(checked), "")
        for fact in card.facts:
            table.add_row(
                "",
                fact.rule,
                Text(fact.source),
                Text(fact.status, style=STATUS_STYLE[fact.status]),
            )
        for note in card.notes:
            table.add_row("", "note", Text(note), "")
        table.add_section()
    return table


def _translation_table(translation: MomentumTranslation) -> RenderableType:
    given = fmt(translation.momentum)
    if isinstance(translation.momentum, Undefined):
        given = "none"
    rows = []
    for e in translation.equivalents:
        note = e.note
        if isinstance(e.momentum, Undefined):
            note = "; ".join(filter(None, [e.momentum.reason, note]))
        rows.append([e.convention, e.parameter, fmt(e.momentum), note or ""])
    return grid(
        f"momentum {given} in {translation.source}: a new batch weighs "
        f"{fmt(translation.batch_weight)}",
        ["convention", "parameter", "value", "note"],
        rows,
        left=(0, 1, 3),
    )


def render_card(result: ConventionsResult, verbose: bool = False) -> list[RenderableType]:
    """The translation if there is one, the rules, then (--verbose) where each fact comes from."""
    parts: list[RenderableType] = []
    if result.translation is not None:
        parts.append(_translation_table(result.translation))
    parts += [
        _rules_table(result, verbose),
        Text(
            "green: checked against the framework here; red: not confirmed at the source; "
            "plain: read in the framework's source"
            + ("" if verbose else "; --verbose lists the sources"),
            style="dim",
        ),
    ]
    if verbose:
        parts.append(_sources_table(result))
    return parts
