"""``run --stats-only --input 'PATTERN'``: population statistics of many files, in one process,
in K local ranks (``--ranks K``), or in the ranks torchrun started (its env:// rendezvous used
as it is; each rank reads its share of the files and rank 0 prints the result)."""

from __future__ import annotations

import os
from pathlib import Path

from bninspect.distributed.environment import (
    KERNEL_THREADS,
    threads_per_rank,
    torchrun,
)
from bninspect.distributed.exchange import array_to_moments
from bninspect.distributed.launch import LocalRanks
from bninspect.distributed.population import Population, Share, population
from bninspect.distributed.sharding import expand_pattern, file_split
from bninspect.errors import BnInspectError, OptionError
from bninspect.input.memory import human_bytes
from bninspect.numerics.reference import statistics_from_moments
from bninspect.results.common import Number, Undefined, Verdict
from bninspect.results.distributed import PopulationChannel, PopulationResult, RankShare
from bninspect.text import counted, items_verb

LOCAL = "{world} local processes, one gloo group over loopback (file:// rendezvous)"


def population_statistics(
    pattern: str, ranks: int | None, timeout: float
) -> tuple[PopulationResult, bool]:
    """The population statistics of the files ``pattern`` names, and whether this process
    should print them (under torchrun only rank 0 does)."""
    launched = torchrun()
    if launched is not None:
        if ranks is not None:
            raise OptionError(
                f"--ranks {ranks}: under torchrun the ranks are torchrun's "
                f"({launched.world}); drop --ranks"
            )
        return _under_torchrun(pattern, timeout, launched), launched.rank == 0
    files = expand_pattern(pattern)
    if ranks is None:
        return build_population_result(
            population(files, pattern), files, pattern, "one process"
        ), True
    file_split([os.stat(p).st_size for p in files], ranks, pattern)  # refuse K > files now
    with LocalRanks(ranks, timeout) as local:
        local.start([{"kind": "population", "files": [str(p) for p in files], "pattern": pattern}])
        local.wait()
        stored = local.report(0)
    shares = tuple(
        Share(r, int(row[0]), int(row[1]), int(row[2]), int(row[3]), float(row[4]))
        for r, row in enumerate(stored["shares"])
    )
    found = Population(
        array_to_moments(stored["moments"]),
        int(stored["values"]),
        int(stored["moments"].shape[1]),
        shares,
        tuple(str(d) for d in stored["dtypes"]),
        float(stored["seconds"]),
    )
    return build_population_result(found, files, pattern, LOCAL.format(world=ranks)), True


def _under_torchrun(pattern: str, timeout: float, launched) -> PopulationResult:
    from bninspect.distributed import group  # torch loads here

    os.environ.setdefault(KERNEL_THREADS, str(threads_per_rank(launched.local_world)))
    who = f"rank {launched.rank} of {launched.world}"
    try:
        files = expand_pattern(pattern)
        group.join_from_environment(timeout)
        try:
            found = population(
                files, pattern, launched.rank, launched.world, group.all_gather_array
            )
        finally:
            group.leave()
    except BnInspectError as exc:
        raise type(exc)(f"{who}: {exc}") from None
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    launcher = f"torchrun: {counted(launched.world, 'rank')}, env:// rendezvous at {where} as given"
    return build_population_result(found, files, pattern, launcher)


def _number(value) -> Number:
    return float(value)


def build_population_result(
    found: Population, files: list[Path], pattern: str, launcher: str
) -> PopulationResult:
    stats = statistics_from_moments(found.moments, found.values)
    m = found.moments
    channels = []
    for c in range(found.channels):
        finite = int(m.count[c])
        left_out = int(m.nan[c] + m.posinf[c] + m.neginf[c])
        if finite < 2 or left_out:
            reason = (
                f"{left_out} of the channel's values are NaN or infinite"
                if left_out
                else "one value per channel: dividing by N - 1 = 0"
            )
            unbiased: Number = Undefined(reason) if finite < 2 else _number(stats.var_unbiased[c])
        else:
            unbiased = _number(stats.var_unbiased[c])
        channels.append(
            PopulationChannel(
                channel=c,
                count=finite,
                mean=_number(stats.mean[c]),
                var_biased=_number(stats.var_biased[c]),
                var_unbiased=unbiased,
                nan_count=int(m.nan[c]),
                posinf_count=int(m.posinf[c]),
                neginf_count=int(m.neginf[c]),
            )
        )
    shares = tuple(
        RankShare(
            s.rank, tuple(str(p) for p in files[s.first : s.end]), s.nbytes, s.values, s.seconds
        )
        for s in found.shares
    )
    total = sum(s.nbytes for s in found.shares)
    return PopulationResult(
        verdict=_verdict(channels, len(files), total, found, launcher),
        pattern=pattern,
        files=len(files),
        bytes=total,
        dtypes=found.dtypes,
        count=found.values,
        ranks=len(found.shares),
        launcher=launcher,
        seconds=found.seconds,
        shares=shares,
        channels=tuple(channels),
    )


def _verdict(channels, files: int, nbytes: int, found: Population, launcher: str) -> Verdict:
    """At most two lines of 80 (the answer first): what was read and whether every channel's
    statistics exist; who streamed it is in the context under it."""
    head = (
        f"{counted(len(channels), 'channel')} of {found.values:,} values each, from "
        f"{counted(files, 'file')} ({human_bytes(nbytes)})"
    )
    bad = [c.channel for c in channels if c.nan_count or c.posinf_count or c.neginf_count]
    if bad:
        holding = items_verb("channel", bad, "holds", "hold")
        return Verdict(
            "statistics",
            (
                f"{head}: {holding} NaN or Inf, so {'its' if len(bad) == 1 else 'their'} "
                "statistics are not finite",
            ),
        )
    if found.values < 2:
        return Verdict("statistics", (f"{head}: one value per channel has no unbiased variance",))
    constant = [c.channel for c in channels if c.var_biased == 0]
    tail = (
        f"; {items_verb('channel', constant, 'is', 'are')} constant (variance 0)"
        if constant
        else ""
    )
    return Verdict(
        "statistics",
        (
            f"{head}: every channel finite{tail}",
            "precise BN statistics: load mean as running_mean, var_unbiased as running_var",
        ),
    )
