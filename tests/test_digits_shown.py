"""Numbers wide enough to show the digits that differ: at --offset 1e4 the hand check still
works from the printed numbers, in explain's derivation and run's tables."""

from __future__ import annotations

import re

import numpy as np
import pytest


@pytest.mark.parametrize("offset", ["0", "1e4", "-3e5"])
def test_the_printed_x_hat_step_recomputes_x_hat(cli, offset):
    """(x - mean) / std with the numbers as printed gives x_hat to 4 digits, independently of
    the offset: the digits that part x from the mean are shown."""
    args = ("explain", "--shape", "2,2,3,3", "--offset", offset, "--index", "1,0,2,1")
    doc = cli.json(*args)
    step = next(s for s in doc["derivation"] if s["name"] == "x_hat")
    x, mean, std = map(
        float, re.fullmatch(r"\((\S+) - \(?(\S+?)\)?\) / (\S+)", step["substitution"]).groups()
    )
    assert (x - mean) / std == pytest.approx(step["value"], rel=2e-4), step
    table = cli(*args).stdout
    row = next(line for line in table.splitlines() if line.startswith("x_hat"))
    assert f"({step['substitution'].split('(', 1)[1].split(' - ')[0]} - " in row


def test_run_shows_a_mean_near_1e4_to_its_spread(cli):
    doc = cli.json("run", "--shape", "4,2,3,3", "--offset", "1e4")
    table = cli("run", "--shape", "4,2,3,3", "--offset", "1e4").stdout
    for channel in doc["channels"]:
        spread = np.sqrt(channel["var_biased"])
        shown = next(
            float(word)
            for line in table.splitlines()
            if line.split()[:2] == [str(channel["channel"]), str(channel["count"])]
            for word in line.split()[2:3]
        )
        assert abs(shown - channel["mean"]) <= 1e-4 * spread  # 10000 would be 1e-2 off or more
