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
