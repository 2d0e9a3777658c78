"""A result on screen, answer first: the verdict in a line or two, what was inspected, then the
few tables that support the verdict (all of them with --verbose; the verdict alone with -q).

Every command's view is a function ``(result, verbose) -> list of renderables`` registered in
VIEWS under the result's ``command``; this module puts the verdict and the context above it and
prints the whole with no trailing spaces. Formats; never computes.
"""

from __future__ import annotations

import importlib
import io
import re
import sys
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.text import Text

from bninspect.render.context import context

# command -> (module, function) of its view, imported only when that command prints
VIEWS = {
    "run": ("bninspect.render.run_view", "render_run"),
    "explain": ("bninspect.render.explain_view", "render_explain"),
    "check": ("bninspect.render.check_view", "render_check"),
    "check-grad": ("bninspect.render.grad_output", "render_grad_check"),  # check --grad-input
    "run-ranks": ("bninspect.render.distributed_view", "render_split_run"),  # run --ranks
    "explain-ranks": ("bninspect.render.distributed_view", "render_split_explain"),
    "run-population": ("bninspect.render.distributed_view", "render_population"),
    "conventions": ("bninspect.render.card_view", "render_card"),
    "model": ("bninspect.render.model_output", "render_model"),
}
# The colour of a verdict by its status; statuses not listed print plain.
STATUS_STYLE = {
    "pass": "bold green",
    "agrees": "bold green",
    "exact": "bold green",
    "within-rounding": "bold green",
    "fail": "bold red",
    "differs": "bold red",
    "ok": "bold green",
    "warnings": "bold yellow",
    "diverges": "bold red",
}
_TRAILING = re.compile(r"[ \t]+((?:\x1b\[[0-9;]*m)*)$", re.M)


def verdict_text(result: Any) -> Text:
    verdict = result.verdict
    return Text("\n".join(verdict.summary), style=STATUS_STYLE.get(verdict.status, "bold"))


def render(result: Any, verbose: bool = False, width: int = 80, **options: Any) -> RenderableType:
    """The verdict, what was inspected (for commands that inspect a tensor), then the view
    (given the command's own display ``options``, e.g. model's show_all)."""
    module, name = VIEWS[result.command]
    view = getattr(importlib.import_module(module), name)
    parts: list[RenderableType] = [verdict_text(result)]
    if hasattr(result, "settings"):
        parts.append(Text(""))
        parts.append(context(result, width))
        if hasattr(result, "output") and hasattr(result.output, "sha256"):
            from bninspect.render.cells import labelled
            from bninspect.render.check_view import yours_line

            parts.append(Text(labelled("yours", yours_line(result), width)))
    for part in view(result, verbose, **options):
        parts += [Text(""), part]
    return Group(*parts)


def format_result(result: Any, detail: str = "normal", **options: Any) -> str:
    """``result`` for people, as print_result prints it: rendered in memory as rich would render
    it on stdout (its width, its colours), so the caller writes it in one checked write."""
    terminal = Console()  # what stdout is: its width, whether it takes colours
    text = io.StringIO()
    console = Console(
        file=text,
        width=terminal.width,
        color_system=terminal.color_system,
        force_terminal=terminal.is_terminal,
        no_color=terminal.no_color,
    )
    if detail == "quiet":
        renderable: RenderableType = verdict_text(result)
    else:
        renderable = render(result, detail == "verbose", console.width, **options)
    # crop=False: a table wider than the terminal wraps there instead of losing its edge.
    # The verdict alone (-q) keeps each of its lines whole: one or two lines, for scripts.
    console.print(renderable, crop=False, soft_wrap=detail == "quiet")
    return _TRAILING.sub(r"\1", text.getvalue())


def print_result(result: Any, detail: str = "normal", **options: Any) -> None:
    """Print ``result`` for people on stdout: ``detail`` "quiet" (the verdict alone), "normal"
    or "verbose". Lines end at their last character: rich pads tables to their width."""
    sys.stdout.write(format_result(result, detail, **options))
