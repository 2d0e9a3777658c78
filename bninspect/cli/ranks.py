"""The data-parallel options --ranks, --rank-sizes and --rank-timeout, declared once for the
commands that take them (run, explain, check). Kept apart from options.py: only these
commands' own signatures name them."""

from __future__ import annotations

from typing import Annotated

import typer

from bninspect.distributed.environment import DEFAULT_TIMEOUT

PANEL = "Data parallel"

Ranks = Annotated[
    int | None,
    typer.Option(
        "--ranks",
        min=1,
        max=1024,
        metavar="K",
        help="Split the batch over K ranks (K local processes in one gloo group, loopback "
        "only): per-rank batch norm as DDP computes it beside SyncBatchNorm's pooled "
        "statistics (run --stats-only on a pattern of files: K ranks stream the files).",
        rich_help_panel=PANEL,
    ),
]
RankSizes = Annotated[
    str | None,
    typer.Option(
        "--rank-sizes",
        metavar="N,N,...",
        help="Samples per rank, in rank order, e.g. 5,3,0,8 (uneven and empty ranks); they "
        "must add up to the batch. Instead of --ranks.",
        rich_help_panel=PANEL,
    ),
]
RankTimeout = Annotated[
    float,
    typer.Option(
        "--rank-timeout",
        min=0.1,
        metavar="SECONDS",
        help="Seconds a rank waits for the others at the rendezvous and in each collective "
        "before the run ends with an error naming the rank.",
        rich_help_panel=PANEL,
    ),
]
TIMEOUT_DEFAULT = DEFAULT_TIMEOUT


def notice_unused_timeout(ranks: int | None, rank_sizes: str | None, timeout: float) -> None:
    """--rank-timeout without ranks changes nothing: say so (stderr), as for other options."""
    import sys

    from bninspect.distributed.environment import torchrun

    if timeout != TIMEOUT_DEFAULT and ranks is None and rank_sizes is None and not torchrun():
        print(
            f"Notice: --rank-timeout {timeout:g} has no effect without --ranks or --rank-sizes "
            "(one process waits for no other)",
            file=sys.stderr,
        )


def refuse_one_process_options(given: list[str], ranks: int | None) -> None:
    """Options that inspect one process's batch norm, given with a split over ranks: refused
    naming exactly those given, and why (only the forward pass and the running buffers are
    split; the backward across ranks, SyncBatchNorm's all-reduced sum(dy) and
    sum(dy * (x - mean)), is not inspected)."""
    from bninspect.errors import OptionError

    if not given:
        return
    split = "--ranks" if ranks is not None else "--rank-sizes"
    names = " and ".join(given) if len(given) <= 2 else ", ".join(given[:-1]) + f" and {given[-1]}"
    verb = "inspects" if len(given) == 1 else "inspect"
    why = f"{names} {verb} one process's batch norm; {split} splits the forward pass and "
    why += "the running buffers over ranks"
    if any(name.startswith("--grad") for name in given):
        why += ", not the backward pass (whose sums are all-reduced across ranks)"
    raise OptionError(f"{why}: drop {names} or {split}")
