"""Show the conventions card as rich tables: the rules per framework, where each fact comes
from, and a momentum translation when asked. Formats; never computes."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from bninspect.conventions.card import RULE_LABELS
from bninspect.render.table_output import fmt
from bninspect.results.common import Undefined
from bninspect.results.conventions import ConventionsResult, MomentumTranslation

STATUS_STYLE = {"checked": "green", "source": None, "unverified": "red"}


def _rules_table(result: ConventionsResult) -> Table:
    table = Table(title="Batch norm across frameworks", title_justify="left", show_lines=True)
    table.add_column("convention")
    for label in RULE_LABELS.values():
        table.add_column(label, overflow="fold")
    for card in result.conventions:
        table.add_row(
            Text(card.name, style="bold"),
            *(Text(f.value, style=STATUS_STYLE[f.status]) for f in card.facts),
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


def _translation_table(translation: MomentumTranslation) -> Table:
    given = fmt(translation.momentum)
    if isinstance(translation.momentum, Undefined):
        given = "none"
    table = Table(
        title=f"momentum {given} in {translation.source}: a new batch weighs "
        f"{fmt(translation.batch_weight)}",
        title_justify="left",
    )
    for label in ("convention", "parameter", "value", "note"):
        table.add_column(label, justify="right" if label == "value" else "left")
    for e in translation.equivalents:
        note = e.note
        if isinstance(e.momentum, Undefined):
            note = "; ".join(filter(None, [e.momentum.reason, note]))
        table.add_row(e.convention, e.parameter, fmt(e.momentum), Text(note or ""))
    return table


def render_card(result: ConventionsResult) -> RenderableType:
    """The rules table, the sources table, then the translation if there is one."""
    parts: list[RenderableType] = [
        _rules_table(result),
        Text(
            "green: checked against the framework here; red: not confirmed at the source; "
            "plain: read in the framework's source",
            style="dim",
        ),
        _sources_table(result),
    ]
    if result.translation is not None:
        parts.append(_translation_table(result.translation))
    return Group(*parts)
