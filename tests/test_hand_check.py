"""A student's hand check: explain writes the sum and m2 out term by term for a channel as small
as the article's, and --against-value judges one hand-computed number to the digits given,
naming the step where it parts from the derivation and the mistake that gives it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "article.npy"
WEIGHT = "0.5653,0.0322"
ARTICLE = ("explain", "--input", SAMPLE, "--weight", WEIGHT, "--index", "0,0,0,0")
# Channel 0 of the article's input, as it printed it (shared/reference/article_example.md).
CHANNEL_0 = [-2.4308, -1.0281, -1.1322, 0.9819, -0.4069, 0.7973, 1.6296, 1.6797, 0.2802,
             -0.8285, 2.0101, 0.1286]  # fmt: skip


def _steps(doc):
    return {step["name"]: step for step in doc["derivation"]}


def test_the_articles_sum_is_written_out_term_by_term(cli):
    steps = _steps(cli.json(*ARTICLE))
    written = " + ".join(f"({v})" if v < 0 else f"{v}" for v in CHANNEL_0)
    assert steps["sum"]["substitution"] == written.replace("(-2.4308)", "-2.4308", 1)
    assert round(steps["sum"]["value"], 4) == 1.6809  # the article's mean 0.1401 times 12
    assert steps["count"]["substitution"] == "1 * 3 * 4 = 12"  # the values are in the sum now


def test_the_articles_m2_is_written_out_and_adds_up(cli):
    steps = _steps(cli.json(*ARTICLE))
    terms = [float(t.strip("()")) for t in steps["m2"]["substitution"].split(" + ")]
    mean = float(np.mean(np.float32(CHANNEL_0).astype(np.float64)))
    expected = [(np.float64(np.float32(v)) - mean) ** 2 for v in CHANNEL_0]
    np.testing.assert_allclose(terms, expected, rtol=5e-3)  # 3 significant digits each
    assert sum(terms) == pytest.approx(steps["m2"]["value"], rel=5e-3)
    assert round(steps["m2"]["value"] / 12, 4) == 1.6730  # the article's variance


def test_a_longer_channel_is_summarized(cli):
    steps = _steps(cli.json("explain", "--shape", "17x1", "--index", "0,0"))
    assert steps["sum"]["substitution"] == "sum of the 17 values"
    assert steps["m2"]["substitution"] == "sum over the 17 values"
    steps = _steps(cli.json("explain", "--shape", "16x1", "--index", "0,0"))
    assert steps["sum"]["substitution"].count(" + ") == 15


def test_a_hand_value_that_matches(cli):
    """-1.1236 is the article's y from the printed input, to 4 decimals: it matches."""
    against = cli.json(*ARTICLE, "--against-value", "-1.1236")["against"]
    assert against["theirs"] == -1.1236 and against["digit_unit"] == pytest.approx(1e-4)
    assert against["path"] is None
    assert against["conclusion"].startswith(
        "your value matches the reference (-1.1235822) to the digits you gave: 0.18 units of "
        "your last digit (0.0001) apart"
    )


def test_a_hand_value_with_the_unbiased_variance(cli):
    """(x - mean) / sqrt(var_unbiased + eps) * weight, by hand from the article's numbers:
    (-2.4308 - 0.1401) / sqrt(1.8251 + 1e-5) * 0.5653 = -1.0758."""
    doc = cli.json(*ARTICLE, "--against-value", "-1.0758")
    against = doc["against"]
    assert against["conclusion"].startswith("your value is what the unbiased variance gives")
    assert "units of your last digit (0.0001)" in against["conclusion"]
    implied = {step["name"]: step for step in against["implied"]}
    assert implied["var"]["implied"] == pytest.approx(1.8251, abs=5e-3)  # the step that parts
    assert doc["null_reasons"]["/against/path"] == "given with --against-value: no file"


def test_a_hand_value_with_weight_and_bias_swapped(cli):
    """x_hat * bias + weight = 0.5653: swapped weight and bias, to the digits given."""
    against = cli.json(*ARTICLE, "--against-value", "0.5653")["against"]
    assert against["conclusion"].startswith("your value is what swapping weight and bias gives")


def test_a_hand_value_no_mistake_explains(cli):
    against = cli.json(*ARTICLE, "--against-value", "7")["against"]
    needs = "the numbers part before x_hat: your value needs var = "
    assert against["conclusion"].startswith(needs)


def test_every_digit_is_judged_as_a_file_would_be(cli):
    """PyTorch's own float32 y typed in full: within rounding of float32, in ULPs."""
    y_torch = cli.json(*ARTICLE)["y"]["torch"]
    against = cli.json(*ARTICLE, "--against-value", repr(y_torch))["against"]
    assert against["conclusion"].startswith("your value matches the reference to rounding")
    assert "ULP at the channel's scale" in against["conclusion"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--against-value", "abc"],
            "--against-value 'abc': not a number; give your value for the element, e.g. -1.1236",
        ),
        (["--against-value", "inf"], "--against-value 'inf': must be a finite number"),
        (
            ["--against-value", "1", "--against", "y.npy"],
            "--against and --against-value both give your value; give one",
        ),
    ],
)
def test_bad_against_value(cli, args, message):
    assert cli.error(*ARTICLE, *args, code=2) == message


def test_the_table_shows_a_typed_value_in_units_of_its_last_digit(cli):
    stdout = cli(*ARTICLE, "--against-value", "-1.0758").stdout
    assert "Your value: -1.0758, |err| 0.047782 (477.82 units of your last digit, 0.0001)" in (
        stdout
    )
