"""The worked example that started it all (shared/reference/article_example.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "article.npy"
WEIGHT = "0.5653,0.0322"

# The output PyTorch printed in the article, 4 decimals.
ARTICLE_OUTPUT = np.array(
    [
        [
            [
                [-1.1237, -0.5106, -0.5561, 0.3679],
                [-0.2391, 0.2873, 0.6510, 0.6729],
                [0.0612, -0.4233, 0.8173, -0.0050],
            ],
            [
                [-0.0293, 0.0120, -0.0372, -0.0373],
                [-0.0066, 0.0282, 0.0237, 0.0777],
                [0.0032, -0.0325, 0.0084, -0.0103],
            ],
        ]
    ]
)


def test_run_reproduces_the_articles_channel_statistics(cli):
    channel = cli.json("run", "--input", SAMPLE, "--weight", WEIGHT)["channels"][0]
    assert channel["count"] == 12
    assert round(channel["mean"], 4) == 0.1401
    assert round(channel["var_biased"], 4) == 1.6730
    assert abs(channel["weight"] - 0.5653) < 1e-7


def test_run_table_shows_the_articles_numbers(cli):
    stdout = cli("run", "--input", SAMPLE, "--weight", WEIGHT).stdout
    row = next(line for line in stdout.splitlines() if line.split()[:2] == ["0", "12"])
    assert "0.14007" in row.split() and "1.673" in row.split()


def test_explain_ends_at_the_articles_output(cli):
    result = cli.json("explain", "--input", SAMPLE, "--weight", WEIGHT, "--index", "0,0,0,0")
    steps = {step["name"]: step["value"] for step in result["derivation"]}
    assert steps["x"] == np.float32(-2.4308)
    assert round(steps["mean"], 4) == 0.1401
    assert round(steps["var_biased"], 4) == 1.6730
    # The article's input is printed to 4 decimals, so its output is reproduced within 2e-4.
    assert abs(steps["y"] - (-1.1237)) < 2e-4
    assert abs(result["y"]["torch"] - (-1.1237)) < 2e-4
    assert result["y"]["correctly_rounded"] is True


def test_every_printed_output_is_reproduced(cli, tmp_path):
    out = tmp_path / "y.npy"
    cli("run", "--input", SAMPLE, "--weight", WEIGHT, "--save-output", out)
    np.testing.assert_allclose(np.load(out), ARTICLE_OUTPUT, atol=2e-4, rtol=0)


def test_the_articles_lesson_the_unbiased_variance_does_not_match(cli):
    channel = cli.json("run", "--input", SAMPLE, "--weight", WEIGHT)["channels"][0]
    x = float(np.float32(-2.4308))
    wrong = (x - channel["mean"]) / np.sqrt(channel["var_unbiased"] + 1e-5) * channel["weight"]
    assert abs(wrong - (-1.1237)) > 100 * 2e-4  # off by 0.048, far beyond rounding


def test_explain_table_shows_pytorchs_difference_even_when_correctly_rounded(cli):
    # The difference is computed here from PyTorch's own module and a float64 recomputation.
    import torch

    x = np.load(SAMPLE)
    module = torch.nn.BatchNorm2d(2)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([0.5653, 0.0322]))
        y_torch = float(module(torch.from_numpy(x))[0, 0, 0, 0])
    channel = x[0, 0].astype(np.float64)
    weight = float(np.float32(0.5653))
    y_exact = (channel[0, 0] - channel.mean()) / np.sqrt(channel.var() + 1e-5) * weight
    stdout = cli("explain", "--input", SAMPLE, "--weight", WEIGHT, "--index", "0,0,0,0").stdout
    line = next(line for line in stdout.splitlines() if line.startswith("PyTorch's y"))
    shown = float(line.split("|err| ")[1].split(",")[0])  # "... |err| 5.04e-08, 0.423 ULP ..."
    assert shown == pytest.approx(abs(y_torch - y_exact), rel=1e-2)
    assert "correctly rounded, equal to the last bit" in stdout.split("\n\n")[0]  # the verdict


ARTICLE_SCREENS = {
    "run": ("run", "--input", SAMPLE, "--weight", WEIGHT),
    "explain": ("explain", "--input", SAMPLE, "--weight", WEIGHT, "--index", "0,0,0,0"),
    "check": ("check", "--input", SAMPLE, "--weight", WEIGHT, "--output", "{mine}"),
}


def _screen_args(command: str, tmp_path) -> tuple[str, ...]:
    """The command's arguments; check's output is the article's tensor normalized with the
    unbiased variance, the tutorial's lesson, computed here in float64."""
    mine = tmp_path / "mine.npy"
    x = np.load(SAMPLE).astype(np.float64)
    weight = np.float32([0.5653, 0.0322]).astype(np.float64).reshape(1, -1, 1, 1)
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), ddof=1, keepdims=True)
    np.save(mine, ((x - mean) / np.sqrt(var + 1e-5) * weight).astype(np.float32))
    return tuple(str(a).format(mine=mine) for a in ARTICLE_SCREENS[command])


@pytest.mark.parametrize("command", sorted(ARTICLE_SCREENS))
def test_the_articles_screens_fit_80_by_40_and_open_with_the_verdict(cli, command, tmp_path):
    """Answer first: the article's run, explain and check each fit one 80x40 terminal, with
    the verdict on top."""
    args = _screen_args(command, tmp_path)
    result = cli.runner.invoke(cli.app, list(args), env={"COLUMNS": "80"})
    assert result.exit_code == (3 if command == "check" else 0), result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) <= 40 and max(map(len, lines)) <= 80, result.stdout
    assert all(line == line.rstrip() for line in lines)  # no trailing spaces
    doc = cli(*args, "--json", code=3 if command == "check" else 0).stdout
    verdict = json.loads(doc)["verdict"]
    first_paragraph = result.stdout.split("\n\n")[0]
    assert first_paragraph.split() == " ".join(verdict["summary"]).split()


@pytest.mark.parametrize("command", sorted(ARTICLE_SCREENS))
def test_quiet_prints_the_verdict_alone(cli, command, tmp_path):
    args = _screen_args(command, tmp_path)
    code = 3 if command == "check" else 0
    quiet = cli(*args, "-q", code=code).stdout
    verdict = json.loads(cli(*args, "--json", code=code).stdout)["verdict"]
    assert quiet.split() == " ".join(verdict["summary"]).split()
