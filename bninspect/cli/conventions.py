"""``bninspect conventions``: the reference card of every framework's rules."""

from __future__ import annotations

from typing import Annotated

import typer

from bninspect.cli.app import app
from bninspect.cli.options import (
    ConventionName,
    JsonFlag,
    QuietFlag,
    VerboseFlag,
    detail_level,
    resolve_momentum,
)
from bninspect.cli.output import emit
from bninspect.conventions.rules import CONVENTIONS
from bninspect.errors import OptionError


@app.command(short_help="How each framework's batch norm differs, with sources.")
def conventions(
    momentum: Annotated[
        str | None,
        typer.Option(
            metavar="M",
            help="Translate this momentum (in --from's meaning; none: PyTorch's cumulative "
            "average) into every convention's.",
        ),
    ] = None,
    source: Annotated[
        ConventionName | None,
        typer.Option(
            "--from",
            metavar="NAME",
            help=f"The convention --momentum is given in ({', '.join(CONVENTIONS)}; default "
            "pytorch).",
        ),
    ] = None,
    json_output: JsonFlag = False,
    quiet: QuietFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """The reference card: how each framework's batch norm differs, and where each fact
    comes from.

    Which variance normalizes and which is stored, the momentum rule and its default, the eps
    default, one value per channel; each with its source and whether it was checked against
    the real framework here. With --momentum, the same running-statistics rule in every
    convention's terms.
    """
    detail = detail_level(quiet, verbose, json_output)
    from bninspect.conventions.card import build_card

    if source is not None and momentum is None:
        raise OptionError(
            "--from names the convention --momentum is given in; give --momentum too, or drop "
            "--from"
        )
    rules = CONVENTIONS[source.value if source is not None else "pytorch"]
    translated = resolve_momentum(momentum, rules) if momentum is not None else None
    emit(build_card(translated, rules, translate=momentum is not None), json_output, detail)
