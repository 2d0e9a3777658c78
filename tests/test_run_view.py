"""run's tables past 16 channels: the channels nearest their bounds, --verbose every one."""

import re


def _table_channels(stdout: str, title: str) -> list[int]:
    """The channel column of the table under ``title``."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rule = next(i for i in range(start, len(lines)) if lines[i].startswith("─"))
    channels = []
    for line in lines[rule + 1 :]:
        match = re.match(r"\s*(\d+)\s", line)
        if not line.strip() or not match:
            break
        channels.append(int(match.group(1)))
    return channels


def test_many_channels_show_those_nearest_their_bounds(cli):
    args = ("run", "--shape", "2,40,3,3", "--seed", "3")
    document = cli.json(*args)
    # Independently of the view: each channel's largest error as a fraction of its bound.
    used = {
        c["channel"]: max(
            c[error] / c[bound]
            for error, bound in [
                ("max_ulp_error_at_scale", "bound_ulps"),
                ("running_mean_ulp_error_at_scale", "running_mean_bound_ulps"),
                ("running_var_ulp_error_at_scale", "running_var_bound_ulps"),
            ]
        )
        for c in document["channels"]
    }
    nearest = sorted(sorted(used, key=used.get, reverse=True)[:8])
    stdout = cli(*args).stdout
    assert "8 of 40 channels shown" in stdout
    for title in ("Batch statistics", "PyTorch's output vs reference"):
        assert _table_channels(stdout, title) == nearest
    verbose = cli(*args, "--verbose").stdout
    assert "channels shown" not in verbose
    assert _table_channels(verbose, "Batch statistics") == list(range(40))


def test_few_channels_show_every_one(cli):
    stdout = cli("run", "--shape", "2,16,3,3").stdout
    assert "channels shown" not in stdout
    assert _table_channels(stdout, "Batch statistics") == list(range(16))
