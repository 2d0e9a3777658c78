"""The options themselves: --num-batches-tracked against PyTorch's module and the cumulative
average written out by hand, every option that has no effect beside the others noticed (and
none where it has one), each command's --help holding only its own options, --version, and
--shape as the tool prints shapes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bninspect.cli.options import build_request
from bninspect.conventions.rules import CONVENTIONS
from bninspect.input.option_effects import option_notices, replaces_running

# --- --num-batches-tracked -----------------------------------------------------------------


def torch_cumulative(x, batch, tracked, running_mean, running_var):
    """PyTorch's own BatchNorm2d with momentum None from a counter of ``tracked``, fed x in
    batches: its buffers and counter after the last step."""
    module = torch.nn.BatchNorm2d(x.shape[1], momentum=None)
    with torch.no_grad():
        module.running_mean.copy_(torch.tensor(running_mean))
        module.running_var.copy_(torch.tensor(running_var))
        module.num_batches_tracked.fill_(tracked)
        for k in range(x.shape[0] // batch):
            module(torch.from_numpy(x[k * batch : (k + 1) * batch]))
    return module.running_mean.numpy(), module.running_var.numpy(), int(module.num_batches_tracked)


@settings(max_examples=8)
@given(tracked=st.integers(0, 1000), steps=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_cumulative_average_from_a_counter(tmp_path_factory, tracked, steps, seed):
    """With --momentum none the buffers after K steps from a counter of N are the average of
    N copies of the given buffers and the K batches' statistics: (N * old + sum) / (N + K),
    computed here in float64 from the saved input; PyTorch's module, given the same counter,
    agrees to float32 rounding, and counts to N + K."""
    from conftest import Cli

    cli, tmp = Cli(), tmp_path_factory.mktemp("cumulative")
    old_mean, old_var = [0.5, -2.0, 3.0], [2.0, 0.25, 1.5]
    doc = cli.json(
        "run", "--shape", "4x3x2x2", "--steps", steps, "--seed", seed,
        "--momentum", "none", "--num-batches-tracked", tracked,
        "--running-mean", ",".join(map(str, old_mean)),
        "--running-var", ",".join(map(str, old_var)),
        "--save-input", tmp / "x.npy",
    )  # fmt: skip
    x = np.load(tmp / "x.npy").astype(np.float64)
    batches = x.reshape(steps, 4, 3, 2, 2)
    means = batches.mean(axis=(1, 3, 4))  # (steps, C)
    unbiased = batches.var(axis=(1, 3, 4), ddof=1)
    expected_mean = (tracked * np.array(old_mean) + means.sum(0)) / (tracked + steps)
    expected_var = (tracked * np.array(old_var) + unbiased.sum(0)) / (tracked + steps)
    reference_mean = [c["running_mean"] for c in doc["channels"]]
    reference_var = [c["running_var"] for c in doc["channels"]]
    np.testing.assert_allclose(reference_mean, expected_mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(reference_var, expected_var, rtol=1e-12)
    assert doc["settings"]["num_batches_tracked"] == tracked
    assert doc["num_batches_tracked"] == tracked + steps
    assert [r["num_batches_tracked"] for r in doc["running_history"]] == [
        tracked + k for k in range(1, steps + 1)
    ]
    torch_mean, torch_var, counted = torch_cumulative(
        np.load(tmp / "x.npy"), 4, tracked, old_mean, old_var
    )
    assert counted == tracked + steps
    np.testing.assert_allclose(torch_mean, expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(torch_var, expected_var, rtol=1e-5)
    # and run compared PyTorch with the reference: both within float32 rounding
    assert max(c["running_mean_abs_error"] for c in doc["channels"]) < 1e-5
    assert max(c["running_var_abs_error"] for c in doc["channels"]) < 1e-5


def test_the_issues_case_no_longer_discards_the_buffers(cli):
    """--momentum none with given buffers: from a counter of 9 the first batch weighs 1/10, so
    the buffers are kept at 9/10 (the issue: a counter of 0 weighs it 1/1, discarding them)."""
    doc = cli.json(
        "run", "--shape", "8x2x4", "--momentum", "none", "--num-batches-tracked", "9",
        "--running-mean", "10,20", "--running-var", "5,6",
    )  # fmt: skip
    for channel, old in zip(doc["channels"], (10.0, 20.0), strict=True):
        # running_mean = 0.9 * old + 0.1 * batch mean; the batch mean is within +-2 of 0
        assert abs(channel["running_mean"] - 0.9 * old) < 0.2
    assert doc["settings"]["notices"] == []


def test_explain_shows_the_counters_weight(cli):
    doc = cli.json(
        "explain", "--shape", "2x2x3", "--index", "0,0,0", "--momentum", "none",
        "--num-batches-tracked", "3", "--running-mean", "1,1",
    )  # fmt: skip
    step = next(s for s in doc["derivation"] if s["name"] == "running_mean")
    assert step["substitution"].startswith("0.75 * 1 + 0.25 * ")
    assert step["substitution"].endswith(", n = 4")


def test_counter_out_of_range(cli):
    assert cli.error("run", "--num-batches-tracked", "-1", code=2) == (
        "--num-batches-tracked -1: must lie in 0 to 2**62 (PyTorch's counter is an int64 that "
        "counts up from it)"
    )


# --- options that change nothing: one notice each ----------------------------------------

NO_EFFECT = [
    (
        ["run", "--num-batches-tracked", "5"],
        "--num-batches-tracked 5 does not change the update with --momentum 0.1: PyTorch reads "
        "the counter only for --momentum none (the cumulative average, which weighs step k "
        "1/(N + k)); otherwise it only increments it, one per step",
    ),
    (
        ["run", "--convention", "keras", "--num-batches-tracked", "5"],
        "--num-batches-tracked 5 does not change the update under Keras's rule (momentum "
        "0.99): PyTorch reads the counter only for --momentum none (the cumulative average, "
        "which weighs step k 1/(N + k)); otherwise it only increments it, one per step",
    ),
    (
        ["run", "--mode", "eval", "--num-batches-tracked", "5"],
        "--num-batches-tracked 5 has no effect in eval mode: the counter is neither read nor "
        "incremented",
    ),
    (
        ["explain", "--index", "0,0,0,0", "--mode", "eval", "--momentum", "0.3"],
        "--momentum 0.3 has no effect in eval mode: it weighs the running statistics' update, "
        "and eval mode does not update them",
    ),
    (
        ["run", "--momentum", "none", "--running-mean", "1,2"],
        "--running-mean has no effect in train mode here: --momentum none from "
        "--num-batches-tracked 0 weighs the first batch 1/1, replacing them; give "
        "--num-batches-tracked N, the counter of the model they came from, to average with "
        "them",
    ),
    (
        ["run", "--momentum", "1", "--running-mean", "1,2", "--running-var", "3,4"],
        "--running-mean and --running-var have no effect in train mode here: PyTorch's "
        "momentum 1 gives the old value weight 0, so the first step replaces them with the "
        "batch's statistics",
    ),
    (
        ["run", "--convention", "tf-fused", "--running-var", "3,4"],
        "--running-var has no effect in train mode here: TensorFlow's momentum 1 gives the old "
        "value weight 0, so the first step replaces them with the batch's statistics",
    ),
    (
        ["run", "--convention", "keras", "--momentum", "0", "--running-mean", "1,2"],
        "--running-mean has no effect in train mode here: Keras's momentum 0 gives the old "
        "value weight 0, so the first step replaces them with the batch's statistics",
    ),
    (
        ["run", "--mode", "eval", "--steps", "1"],
        "--steps 1 has no effect in eval mode: there is one pass either way",
    ),
    (["run", "--force"], "--force has no effect without --save-input or --save-output"),
]


@pytest.mark.parametrize(("args", "notice"), NO_EFFECT)
def test_an_option_with_no_effect_is_noticed(cli, args, notice):
    result = cli(*args)
    assert f"Notice: {notice}\n" in result.stderr
    doc = cli.json(*args)
    assert notice in doc["settings"]["notices"]


def test_seed_with_an_input_file(cli, tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((2, 2, 3)))
    notice = "--seed has no effect: the tensor comes from --input, and no vector option is random"
    doc = cli.json("run", "--input", tmp_path / "x.npy", "--seed", "3")
    assert doc["settings"]["notices"] == [notice]
    doc = cli.json("run", "--input", tmp_path / "x.npy", "--seed", "3", "--weight", "random")
    assert doc["settings"]["notices"] == []


def test_check_notices_what_it_does_not_compare(cli, tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    cli("run", "--input", tmp_path / "x.npy", "--save-output", tmp_path / "y.npy")
    args = ["check", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy"]
    result = cli(*args, "--momentum", "0.2", "--num-batches-tracked", "2", "--running-var", "2,2")
    assert result.stderr.splitlines() == [
        "Notice: --momentum and --num-batches-tracked have no effect on check: they only set "
        "the running statistics' update, and check compares the output alone (give "
        "--their-running-mean, --their-running-var to compare the update)",
        "Notice: --running-var has no effect on check in train mode: the output is normalized "
        "with the batch's statistics, and the running buffers only feed the update, which "
        "check compares only with --their-running-mean or --their-running-var",
    ]
    # in eval mode the running statistics normalize: no notice for them
    result = cli(*args, "--mode", "eval", "--running-var", "1,1", code=3)
    assert "Notice" not in result.stderr
    # given their buffers, check compares the update, which these options set
    np.save(tmp_path / "mean.npy", np.zeros(2))
    result = cli(
        *args,
        "--momentum",
        "none",
        "--num-batches-tracked",
        "2",
        "--running-var",
        "2,2",
        "--their-running-mean",
        tmp_path / "mean.npy",
        code=3,
    )
    assert "Notice" not in result.stderr
    # and their counter after the pass is compared with --num-batches-tracked + 1
    result = cli(*args, "--num-batches-tracked", "2", "--their-num-batches-tracked", "3")
    assert "Notice" not in result.stderr
    result = cli(*args, "--momentum", "0.2", "--their-num-batches-tracked", "1")
    assert result.stderr == (
        "Notice: --momentum has no effect on check: it only sets the running statistics' "
        "update, and check compares the output alone (give --their-running-mean, "
        "--their-running-var to compare the update)\n"
    )


def test_one_value_per_channel_outputs_the_bias(cli):
    """Keras normalizes one value per channel anyway: x is its own mean, y = bias, so weight and
    eps change nothing; Paddle passes x through, so neither do bias and momentum."""
    doc = cli.json(
        "run", "--shape", "1x2", "--convention", "keras", "--weight", "2,3", "--eps", "0.1"
    )  # fmt: skip
    assert doc["settings"]["notices"] == [
        "--weight and --eps have no effect on the output: with one value per channel in train "
        "mode every value is its channel's mean, so y = bias"
    ]
    doc = cli.json("run", "--shape", "1x2", "--convention", "paddle", "--bias", "1,1")
    assert doc["settings"]["notices"] == [
        "--bias: no effect with one value per channel in train mode: Paddle passes the input "
        "through and skips the update (the running buffers stay as given)"
    ]


HAS_EFFECT = [
    # the counter sets the cumulative average's weights
    ["run", "--momentum", "none", "--num-batches-tracked", "4", "--running-mean", "1,2"],
    # the buffers feed the update: they change the running statistics reported
    ["run", "--running-mean", "1,2", "--running-var", "3,4"],
    ["run", "--momentum", "0", "--running-mean", "1,2"],  # kept whole
    # eval mode normalizes with the buffers
    ["run", "--mode", "eval", "--running-mean", "1,2", "--running-var", "3,4"],
    ["explain", "--index", "0,0,0,0", "--mode", "eval", "--running-var", "3,4"],
    # momentum weighs the update in train mode, also with --steps
    ["run", "--momentum", "0.3", "--steps", "2"],
    ["run", "--force", "--save-input", "{tmp}/x.npy"],
    ["run", "--seed", "4"],  # the generated tensor
    ["run", "--shape", "1x2", "--convention", "keras", "--bias", "1,1"],  # y = bias
]


@pytest.mark.parametrize("args", HAS_EFFECT)
def test_no_notice_where_an_option_has_an_effect(cli, tmp_path, args):
    args = [a.format(tmp=tmp_path) for a in args]
    result = cli(*args)
    assert "Notice" not in result.stderr


@pytest.mark.parametrize("name", list(CONVENTIONS))
@pytest.mark.parametrize("momentum", [None, 0.0, 0.5, 1.0])
@pytest.mark.parametrize("tracked", [0, 3])
def test_replaces_running_is_the_update_with_the_old_weight_zero(name, momentum, tracked):
    """The rule the notices rest on, against the running update itself: the first step's
    running mean depends on the old one exactly when replaces_running says it does not."""
    from bninspect.numerics.running import advance, initial_state

    convention = CONVENTIONS[name]
    if momentum is None and not convention.accepts_cumulative:
        return
    after = [
        advance(
            initial_state(np.array([old]), np.array([1.0]), tracked),
            np.array([0.25]),
            np.array([3.0]),
            4,
            convention,
            momentum,
        ).after.running_mean[0]
        for old in (0.0, 8.0)
    ]
    assert replaces_running(convention, momentum, tracked) == (after[0] == after[1])


def test_notices_follow_the_command():
    """The same options on check and on run: check says what it does not compare."""
    request = build_request("check", momentum="0.2")
    assert option_notices(request, "check")[0].startswith("--momentum has no effect on check")
    assert build_request("run", momentum="0.2").notices == ()


# --- --help, --version, --shape ------------------------------------------------------------

EVERY = {"--json", "--quiet", "--verbose", "--grad-output"}
OWN_OPTIONS = {
    "check": EVERY
    | {
        *("--output", "--atol", "--rtol", "--top", "--allow-nonfinite-mismatch"),
        *("--their-running-mean", "--their-running-var", "--their-num-batches-tracked"),
        *("--grad-input", "--grad-weight", "--grad-bias"),
        *("--ranks", "--rank-sizes"),  # the data-parallel mistakes (docs/distributed.md)
    },
    "explain": EVERY
    | {"--index", "--precision", "--against", "--against-value", "--grad"}
    | {"--ranks", "--rank-sizes", "--rank-timeout"},
    "run": EVERY
    | {"--stats-only", "--var-method", "--grad"}
    | {"--ranks", "--rank-sizes", "--rank-timeout"},
}
SHARED = {
    "--input", "--seed", "--channel-axis", "--dtype", "--convention", "--eps", "--momentum",
    "--num-batches-tracked", "--weight", "--bias", "--affine", "--mode", "--running-mean",
    "--running-var",
}  # fmt: skip
GENERATING = {
    "--shape", "--offset", "--scale", "--steps", "--batch-size", "--save-input",
    "--save-output", "--force",
}  # fmt: skip


def _help(cli, *command: str, columns: int = 80) -> str:
    from typer.testing import CliRunner

    from bninspect.cli.main import app

    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0
    return result.stdout


@pytest.mark.parametrize("command", ["run", "explain", "check"])
def test_each_command_lists_only_its_own_options(cli, command):
    text = _help(cli, command)
    listed = set(re.findall(r"^  (?:-[a-z], )?(--[a-z-]+)", text, flags=re.M)) - {"--help"}
    expected = OWN_OPTIONS[command] | SHARED | (GENERATING if command != "check" else set())
    assert listed == expected


@pytest.mark.parametrize("command", [[], ["run"], ["explain"], ["check"], ["conventions"]])
@pytest.mark.parametrize("columns", [80, 200])
def test_help_has_no_wrapped_headers_trailing_spaces_or_test_paths(cli, command, columns):
    text = _help(cli, *command, columns=columns)
    lines = text.splitlines()
    assert [line for line in lines if line != line.rstrip()] == []
    # an option's name and its help start on one line: none stands alone on its line
    alone = [line for line in lines if line.startswith("  -") and "  " not in line.strip()]
    assert alone == []
    assert "tests/" not in text and "test_" not in text
    assert max(map(len, lines)) <= max(columns, 80)


def test_no_user_facing_text_points_into_the_tests(cli):
    texts = [cli("conventions", "--json").stdout, cli("conventions").stdout]
    doc = cli.json("explain", "--shape", "2x2x3", "--index", "0,0,0", "--precision")
    texts.append(json.dumps(doc))
    doc = cli.json("explain", "--shape", "2x2x3", "--index", "0,0,0", "--dtype", "float16",
                   "--precision")  # fmt: skip
    texts.append(json.dumps(doc))
    for text in texts:
        assert "tests/" not in text and "test_" not in text


def test_version(cli):
    from bninspect import __version__

    result = cli("--version")
    assert result.stdout == f"bninspect {__version__}\n"


@pytest.mark.parametrize("text", ["2x3x4x4", "2X3X4X4", "2,3,4,4", " 2 x 3 x 4 x 4 "])
def test_shape_as_the_tool_prints_it(cli, text):
    doc = cli.json("run", "--shape", text)
    assert doc["input"]["shape"] == [2, 3, 4, 4]


def test_the_header_names_the_counter_and_the_channel_axis(cli):
    stdout = cli("run", "--shape", "2x3x4x5", "--channel-axis", "-1", "--momentum", "none",
                 "--num-batches-tracked", "4").stdout  # fmt: skip
    assert "input   2x3x4x5 float32, channels on axis 3: generated" in stdout
    assert "momentum none (cumulative average), num_batches_tracked 4," in stdout
    stdout = cli("run", "--shape", "2x3x4x5").stdout
    assert "channels on axis" not in stdout and "num_batches_tracked" not in stdout


def test_stats_only_notices_the_affine_options(cli, tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((2, 3, 4)).astype("f4"))
    notice = (
        "--weight and --bias have no effect under --stats-only: the affine step shapes the "
        "output, which --stats-only does not compute (the tables show the layer's defaults)"
    )
    args = ("run", "--stats-only", "--input", tmp_path / "x.npy", "--weight", "1,2,3")
    result = cli(*args, "--bias", "0,0,1")
    assert f"Notice: {notice}\n" in result.stderr
    assert cli.json(*args)["settings"]["notices"] == [notice.replace(" and --bias have", " has")]
    assert (
        cli.json("run", "--stats-only", "--input", tmp_path / "x.npy")["settings"]["notices"] == []
    )
