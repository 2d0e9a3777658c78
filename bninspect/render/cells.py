"""The pieces every view is made of: a value as people read it, a grid that never cuts a number,
and a labelled line that wraps under itself. Formats; never computes a result."""

from __future__ import annotations

import textwrap

from rich import box
from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from bninspect.results.common import Comparison, Undefined
from bninspect.text import number


def fmt(value: object, digits: int = 5) -> str:
    """A value for people: ``digits`` significant digits, 'n/a' for an undefined one."""
    if isinstance(value, Undefined):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return " ".join(map(str, value)) or "-"
    if isinstance(value, float):
        return number(value, digits)
    return str(value)


def labelled(label: str, text: str, width: int = 80, pad: int = 8) -> str:
    """``label`` then ``text``, wrapped to ``width`` with later lines under the text's start."""
    lead = f"{label:<{pad - 1}} "
    return textwrap.fill(
        text,
        width=width,
        initial_indent=lead,
        subsequent_indent=" " * len(lead),
        break_on_hyphens=False,
        break_long_words=False,
    )


def grid(
    title: str | None,
    headers: list[str],
    rows: list[list[str]],
    styles: list | None = None,
    left: tuple[int, ...] = (),
    section_ends: frozenset[int] = frozenset(),
) -> RenderableType:
    """A table whose cells are never cut off: every column is at least as wide as its longest
    word, so numbers keep all their digits on a narrow terminal; headers fold instead (and the
    CLI never crops a table wider than the terminal). Cells are plain text, never rich markup.
    ``left``: indices of left-justified columns; ``section_ends``: rows followed by a rule.
    Drawn light (a rule under the header, no frame) so a screen holds more of the answer."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    natural, words, header_words = [], [], []
    for k, header in enumerate(headers):
        cells = [row[k] for row in rows]
        widest = max((len(word) for cell in cells for word in cell.split()), default=1)
        justify = "left" if k in left else "right"
        table.add_column(Text(header, overflow="fold"), justify=justify, min_width=widest)
        lines = [line for text in [*cells, header] for line in text.split("\n")]
        natural.append(max(map(cell_len, lines)))
        words.append(widest)
        header_words.append(max((len(word) for word in header.split()), default=1))
    for i, (row, style) in enumerate(zip(rows, styles or [None] * len(rows), strict=True)):
        table.add_row(*(Text(cell) for cell in row), style=style, end_section=i in section_ends)
    fitted = _Fitted(table, natural, words, header_words)
    # The title above the table, at the screen's width: rich would wrap it at the table's.
    return Group(Text(title, style="bold"), fitted) if title else fitted


class _Fitted:
    """A grid laid out for the width it is drawn at. Rich narrows every wrappable column alike
    and then widens the ones that cannot go below their longest word again, past the terminal's
    edge; this narrows the widest column that can still give first, keeping header words whole
    while it can, then letting headers fold. Wider than that, it is drawn whole, never cut."""

    def __init__(self, table: Table, natural, words, header_words) -> None:
        self.table, self.natural = table, natural
        self.soft = [max(w, h) for w, h in zip(words, header_words, strict=True)]
        self.hard = words

    def _widths(self, available: int) -> list[int]:
        widths = list(self.natural)
        for least in (self.soft, self.hard):
            while sum(widths) > available:
                slack = [k for k, w in enumerate(widths) if w > least[k]]
                if not slack:
                    break
                widths[max(slack, key=lambda k: widths[k])] -= 1
        return widths

    def __rich_console__(self, console, options):
        columns = len(self.table.columns)
        frame = 3 * columns - 3  # a space either side of each cell and the rule between cells
        widths = self._widths(options.max_width - frame)
        for column, width in zip(self.table.columns, widths, strict=True):
            column.width = width
        yield from console.render(
            self.table, options.update_width(max(options.max_width, sum(widths) + frame))
        )


def reasons_note(pairs: list[tuple[str, object]]) -> Text | None:
    """Why cells read n/a: one line per column and reason (JSON has them in null_reasons)."""
    reasons = dict.fromkeys(
        (label.replace("\n", " "), value.reason)
        for label, value in pairs
        if isinstance(value, Undefined)
    )
    if not reasons:
        return None
    return Text("\n".join(f"n/a {label}: {reason}" for label, reason in reasons), style="dim")


def listing(title: str, columns: list[str], wraps: int, right: tuple[int, ...] = ()) -> Table:
    """A borderless table of labelled rows (a derivation, a card): column ``wraps`` takes the
    width that is left and wraps; the others keep their text on one line (``right``: justified
    right)."""
    table = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=None,
        pad_edge=False,
        show_header=False,
    )
    for k, name in enumerate(columns):
        justify = "right" if k in right else "left"
        if k == wraps:
            table.add_column(name, justify=justify, ratio=1)
        else:
            table.add_column(name, justify=justify, no_wrap=True)
    return table


def comparison_table(
    title: str, comparisons: tuple[Comparison, ...], implementation: str = "PyTorch"
) -> RenderableType:
    """One column per compared value, one row per measure: fits 80 columns whatever the
    numbers (``implementation`` names the row of the values under inspection)."""
    measures = [
        ("reference", lambda c: c.reference),
        (implementation, lambda c: c.torch),
        ("|err|", lambda c: c.abs_error),
        ("scale", lambda c: c.scale),
        ("ULP at scale", lambda c: c.ulp_error_at_scale),
        ("bound", lambda c: c.bound_ulps),
        ("ULP at own value", lambda c: c.ulp_error),
        ("correctly rounded", _rounded_text),
    ]
    headers = ["", *(c.name for c in comparisons)]
    rows = [[label, *(_cell(value(c)) for c in comparisons)] for label, value in measures]
    return grid(title, headers, rows, left=(0,))


def _cell(value: object) -> str:
    return value if isinstance(value, str) else fmt(value)


def _rounded_text(c: Comparison) -> str:
    """'yes', or 'no' with its reason beside it: a value one rounding off the correctly
    rounded one is no error when it is within what a correct implementation can leave."""
    if c.correctly_rounded is not False:
        return fmt(c.correctly_rounded)
    error, bound = c.ulp_error_at_scale, c.bound_ulps
    if isinstance(error, float) and isinstance(bound, float) and error <= bound:
        return "no: within rounding"
    return "no"
