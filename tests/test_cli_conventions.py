"""--convention on run and explain, and the conventions command, through the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from bninspect.conventions.rules import CONVENTIONS, RULES

from hand_derived import ONE_STEP, SMALL

CARD_KEYS = {
    "name",
    "framework",
    "normalizes",
    "stores",
    "momentum_meaning",
    "momentum_parameter",
    "momentum_default",
    "eps_default",
    "eps_floor",
    "one_value",
    "checked_against",
    "facts",
    "notes",
}


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.npy"
    np.save(path, SMALL)
    return path


@pytest.mark.parametrize("name", list(CONVENTIONS))
def test_run_follows_the_convention(cli, small, name):
    doc = cli.json("run", "--input", small, "--convention", name)
    convention = CONVENTIONS[name]
    settings = doc["settings"]
    assert settings["convention"] == name
    assert settings["momentum"] == convention.momentum_default
    expected_mean, expected_var = ONE_STEP[name]
    channel = doc["channels"][0]
    np.testing.assert_allclose(channel["running_mean"], expected_mean, rtol=1e-15)
    np.testing.assert_allclose(channel["running_var"], expected_var, rtol=1e-15)
    # PyTorch's module ran with the convention's rule translated: its running mean matches
    # to float32 rounding in every convention; its running variance only where the
    # convention stores the unbiased one, as PyTorch does.
    assert channel["running_mean_ulp_error"] <= 2
    if convention.stores == "unbiased":
        assert channel["running_var_ulp_error_at_scale"] <= 2
    else:
        assert channel["running_var_abs_error"] > 1e-4
    assert doc["max_ulp_error"] <= 4


def test_momentum_is_given_in_the_conventions_meaning(cli, small):
    doc = cli.json("run", "--input", small, "--convention", "keras", "--momentum", "0.9")
    assert doc["settings"]["torch_momentum"] == pytest.approx(0.1, abs=1e-16)
    np.testing.assert_allclose(doc["channels"][0]["running_mean"], 0.1 * 2.5, rtol=1e-15)
    assert "momentum 0.1, keras's rule in PyTorch's terms" in doc["torch_module"]


def test_tensorflow_eps_floor_is_a_notice(cli, small):
    result = cli("run", "--input", small, "--convention", "tf-fused", "--eps", "1e-5", "--json")
    notice = (
        "tf-fused raises eps 1e-05 to its floor 1.001e-05 (tf.nn.fused_batch_norm's min_epsilon)"
    )
    assert result.stderr == f"Notice: {notice}\n"
    doc = cli.json("run", "--input", small, "--convention", "tf-fused", "--eps", "1e-5")
    assert doc["settings"]["eps"] == 1.001e-5 and doc["settings"]["notices"] == [notice]
    assert doc["channels"][0]["eps"] == 1.001e-5


def test_explain_names_the_rules_and_pytorchs_differences(cli, small):
    doc = cli.json("explain", "--input", small, "--convention", "keras", "--index", "0,0,0")
    steps = {step["name"]: step for step in doc["derivation"]}
    assert steps["running_var"]["formula"] == (
        "running_var = momentum * running_var + (1 - momentum) * var"
    )
    assert steps["running_var"]["substitution"] == "0.99 * 1 + 0.01 * 1.25"
    assert "PyTorch stores the unbiased variance" in steps["running_var"]["differs_from_pytorch"]
    assert (
        steps["var_unbiased"]["differs_from_pytorch"] == "PyTorch writes this one into running_var"
    )
    assert steps["std"]["differs_from_pytorch"] == "PyTorch's default eps is 1e-05, keras's 0.001"
    assert steps["var_biased"]["differs_from_pytorch"] is None
    pytorch = cli.json("explain", "--input", small, "--index", "0,0,0")
    assert all(step["differs_from_pytorch"] is None for step in pytorch["derivation"])


def test_explain_shows_caffes_scale_factor(cli, small):
    doc = cli.json(
        "explain",
        "--input",
        small,
        "--convention",
        "caffe",
        "--momentum",
        "0.5",
        "--index",
        "0,0,0",
    )
    steps = {step["name"]: step for step in doc["derivation"]}
    assert steps["scale_factor"]["value"] == 1.5  # 1 + 0.5 * 1
    assert steps["running_mean"]["substitution"] == "(2.5 + 0.5 * 0) / 1.5"
    assert steps["running_mean"]["value"] == pytest.approx(2.5 / 1.5, rel=1e-15)


def test_explain_in_eval_mode_under_onnx(cli):
    doc = cli.json("explain", "--index", "0,1,0,0", "--convention", "onnx", "--mode", "eval")
    assert [s["name"] for s in doc["derivation"]] == ["x", "mean", "var", "std", "x_hat", "y"]
    assert doc["y"]["correctly_rounded"] is True and doc["running_buffers"] == []


def test_without_pytorch_the_reference_runs_alone(cli):
    doc = cli.json("explain", "--shape", "1,3", "--convention", "keras", "--index", "0,1")
    reason = (
        "PyTorch's module raises 'Expected more than 1 value per channel "
        "when training' in train mode"
    )
    assert doc["y"]["reference"] == 0.0  # variance 0: y = bias
    assert doc["y"]["torch"] is None and doc["null_reasons"]["/y/torch"] == reason
    assert doc["torch_module"].startswith("none: PyTorch's module raises")
    table = cli("explain", "--shape", "1,3", "--convention", "keras", "--index", "0,1").stdout
    assert "PyTorch's y  PyTorch's module raises 'Expected more" in table
    paddle = cli.json("run", "--shape", "2,3", "--convention", "paddle", "--eps", "0")
    assert paddle["torch_module"].startswith(
        "none: PyTorch's module raises 'batch_norm eps must be"
    )


def test_conventions_json(cli):
    doc = cli.json("conventions")
    assert doc["command"] == "conventions" and doc["translation"] is None
    assert [c["name"] for c in doc["conventions"]] == list(CONVENTIONS)
    for card in doc["conventions"]:
        assert set(card) == CARD_KEYS
        assert [fact["rule"] for fact in card["facts"]] == list(RULES)
        assert all(fact["source"] and fact["value"] for fact in card["facts"])
        assert {fact["status"] for fact in card["facts"]} <= {"checked", "source", "unverified"}
    tf = doc["conventions"][2]
    assert tf["eps_floor"] == 1.001e-5 and tf["momentum_parameter"] == "exponential_avg_factor"
    assert doc["null_reasons"]["/conventions/1/eps_floor"] == "Keras has no floor"


def test_conventions_table(cli):
    table = cli("conventions", "--verbose").stdout
    for name in CONVENTIONS:
        assert name in table
    assert "unverified" in table and "src/caffe/layers/batch_norm_layer.cpp" in table
    assert "E[x^2] - E[x]^2" in table  # sources with brackets survive rich's markup


def test_momentum_translation(cli):
    doc = cli.json("conventions", "--momentum", "0.1")
    equivalents = {e["convention"]: e for e in doc["translation"]["equivalents"]}
    assert doc["translation"]["batch_weight"] == 0.1
    assert equivalents["keras"]["momentum"] == 0.9
    assert equivalents["tf-fused"]["momentum"] == 0.1
    assert equivalents["caffe"]["note"].startswith("the same weight once the scale factor")
    back = cli.json("conventions", "--momentum", "0.99", "--from", "keras")
    assert {e["convention"]: e["momentum"] for e in back["translation"]["equivalents"]}[
        "pytorch"
    ] == 0.01
    assert (
        "momentum 0.1 in pytorch: a new batch weighs 0.1"
        in cli("conventions", "--momentum", "0.1").stdout
    )


def test_cumulative_momentum_translation(cli):
    doc = cli.json("conventions", "--momentum", "none")
    reasons = doc["null_reasons"]
    assert reasons["/translation/equivalents/0/momentum"].startswith("--momentum none")
    assert reasons["/translation/equivalents/1/momentum"] == (
        "no constant momentum gives a cumulative average"
    )
    message = cli.error("conventions", "--momentum", "none", "--from", "onnx", code=2)
    assert message.startswith("--momentum none is PyTorch's cumulative average")


def _explained_steps(cli, *args):
    doc = cli.json("explain", *args)
    return {step["name"]: step for step in doc["derivation"]}


def test_explain_says_mxnet_updates_in_the_backward_pass(cli, small):
    """Found by review: MXNet's CPU operator updates the running statistics in the backward
    pass, and explain did not say so where it applies."""
    steps = _explained_steps(cli, "--input", small, "--convention", "mxnet", "--index", "0,0,0")
    differs = steps["running_mean"]["differs_from_pytorch"]
    assert differs.endswith(
        "MXNet's CPU operator updates both running buffers in the backward pass (a forward "
        "pass alone leaves them unchanged); PyTorch updates them in the forward pass"
    )
    for name in ("onnx", "paddle"):  # the same update rule, in the forward pass
        other = _explained_steps(cli, "--input", small, "--convention", name, "--index", "0,0,0")
        assert all("backward" not in (s["differs_from_pytorch"] or "") for s in other.values())


@pytest.mark.parametrize(
    ("eps", "floor_line"),
    [
        (
            "1e-6",
            "; PyTorch has no eps floor: it would use eps 1e-06 as given, tf-fused raises it "
            "to 1.001e-05",
        ),
        ("1.001e-5", ""),  # at the floor: nothing raised
        ("1e-4", ""),
    ],
)
def test_explain_says_pytorch_has_no_eps_floor(cli, small, eps, floor_line):
    """Found by review: under tf-fused with eps below the floor, the std step named only the
    default eps as PyTorch's difference."""
    args = ("--input", small, "--convention", "tf-fused", "--eps", eps, "--index", "0,0,0")
    std = _explained_steps(cli, *args)["std"]
    expected = "PyTorch's default eps is 1e-05, tf-fused's 0.001" + floor_line
    assert std["differs_from_pytorch"] == expected


def test_momentum_translated_from_caffe_holds_only_in_the_steady_state(cli):
    """Found by review: translating Caffe's moving_average_fraction gave every other
    convention's value without saying Caffe's batch weight changes every step."""
    doc = cli.json("conventions", "--momentum", "0.999", "--from", "caffe")
    notes = {e["convention"]: e["note"] for e in doc["translation"]["equivalents"]}
    # From scale factor 1: s = 1 + 0.999 * s gives 1.999, 2.997, 3.994: weights 1/s.
    expected = (
        "matches Caffe only in the steady state: its first steps weigh the batch 0.5, 0.33, "
        "0.25, ... (1/scale_factor, from 1)"
    )
    assert notes.pop("caffe") is None  # the same rule, step for step
    assert notes == dict.fromkeys(notes, expected) and len(notes) == 7
    # f = 0 keeps no sum: every step weighs the batch 1, no caveat.
    zero = cli.json("conventions", "--momentum", "0", "--from", "caffe")
    assert all(e["note"] is None for e in zero["translation"]["equivalents"])
    # Into Caffe from elsewhere, the caveat stays on Caffe's row alone.
    into = cli.json("conventions", "--momentum", "0.1")
    into_notes = {e["convention"]: e["note"] for e in into["translation"]["equivalents"]}
    assert into_notes.pop("caffe").startswith("the same weight once the scale factor")
    assert set(into_notes.values()) == {None}
    table = cli("conventions", "--momentum", "0.999", "--from", "caffe").stdout
    assert table.count("matches Caffe only in the steady state") == 7


@pytest.mark.parametrize("source", ["keras", "pytorch"])
def test_from_without_momentum_is_refused(cli, source):
    """Found by review: --from without --momentum was accepted and did nothing."""
    message = cli.error("conventions", "--from", source, code=2)
    assert message == (
        "--from names the convention --momentum is given in; give --momentum too, or drop --from"
    )


@pytest.mark.parametrize("name", ["caffe", "tf-fused"])
def test_one_value_per_channel_stores_what_the_framework_stores(cli, tmp_path, name):
    """Found by review: with one value per channel, Caffe's var_unbiased step showed
    '0 / 0 = n/a' as what it writes into running_var, though Caffe (m / (m - 1), 1 when
    m = 1) and TensorFlow (max(n - 1, 1)) both store 0."""
    path = tmp_path / "x.npy"
    np.save(path, np.array([[1.5, -2.0], [0.5, 4.0], [3.0, 1.0]], dtype=np.float32))
    args = ("--input", path, "--batch-size", 1, "--steps", 3, "--convention", name)
    doc = cli.json("explain", *args, "--index", "0,1")
    steps = {step["name"]: step for step in doc["derivation"]}
    unbiased = steps["var_unbiased"]
    assert unbiased["value"] == 0.0 and "/var_unbiased" not in str(doc["null_reasons"])
    assert unbiased["formula"] == "var_unbiased = m2 / max(count - 1, 1)"
    assert unbiased["substitution"] == "0 / 1"
    assert unbiased["note"] == (
        f"unbiased, but {name} divides by max(N - 1, 1): one value per channel stores 0 in "
        "running_var; it does not normalize with it"
    )
    assert unbiased["differs_from_pytorch"] == (
        "PyTorch leaves it undefined (0 / 0) and refuses one value per channel in train mode"
    )
    # The running_var update folds in that same 0.
    run = cli.json("run", *args)
    assert run["running_history"][-1]["channels"][1]["batch_var"] == 0.0
