"""--steps and --batch-size through the CLI, against PyTorch's module fed the same batches by
the test itself, step by step."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

STEPS, BATCH = 6, 4


def torch_steps(x, batch, momentum, running_mean, running_var):
    """Feed x in batches through one fresh BatchNorm2d in train mode; return the buffers after
    each step, every step's output, and the last batch's output in eval mode afterwards."""
    module = torch.nn.BatchNorm2d(x.shape[1], momentum=momentum)
    with torch.no_grad():
        module.running_mean.copy_(torch.tensor(running_mean))
        module.running_var.copy_(torch.tensor(running_var))
        buffers, outputs = [], []
        for k in range(x.shape[0] // batch):
            outputs.append(module(torch.from_numpy(x[k * batch : (k + 1) * batch])).numpy())
            buffers.append(
                (
                    module.running_mean.numpy().copy(),
                    module.running_var.numpy().copy(),
                    int(module.num_batches_tracked),
                )
            )
        evaluated = module.eval()(torch.from_numpy(x[-batch:])).numpy()
    return buffers, np.concatenate(outputs), evaluated


@pytest.mark.parametrize(("momentum", "torch_momentum"), [("0.1", 0.1), ("none", None)])
def test_every_step_matches_pytorchs_module(cli, tmp_path, momentum, torch_momentum):
    x_path, y_path = tmp_path / "x.npy", tmp_path / "y.npy"
    doc = cli.json(
        "run",
        "--shape",
        f"{BATCH},3,2,2",
        "--steps",
        STEPS,
        "--seed",
        2,
        "--momentum",
        momentum,
        "--running-mean",
        "0.5,0,-1",
        "--running-var",
        "2,1,0.5",
        "--save-input",
        x_path,
        "--save-output",
        y_path,
    )
    x = np.load(x_path)
    assert x.shape == (BATCH * STEPS, 3, 2, 2)
    buffers, outputs, _ = torch_steps(x, BATCH, torch_momentum, [0.5, 0, -1], [2, 1, 0.5])
    np.testing.assert_array_equal(np.load(y_path), outputs)
    history = doc["running_history"]
    assert [step["training_step"] for step in history] == list(range(1, STEPS + 1))
    assert [step["first_sample"] for step in history] == list(range(0, BATCH * STEPS, BATCH))
    for step, (mean, var, tracked) in zip(history, buffers, strict=True):
        assert step["num_batches_tracked"] == tracked
        channels = step["channels"]
        assert [ch["torch_running_mean"] for ch in channels] == mean.tolist()
        assert [ch["torch_running_var"] for ch in channels] == var.tolist()
        # The float64 reference agrees with PyTorch's float32 buffers to a few roundings.
        np.testing.assert_allclose([ch["running_mean"] for ch in channels], mean, atol=1e-6)
        np.testing.assert_allclose([ch["running_var"] for ch in channels], var, rtol=1e-6)
    if torch_momentum is None:
        weights = [step["batch_weight"] for step in history]
        np.testing.assert_allclose(weights, [1 / k for k in range(1, STEPS + 1)], rtol=1e-15)
        assert doc["settings"]["momentum"] is None
        assert doc["null_reasons"]["/settings/momentum"].startswith("--momentum none")
    assert doc["num_batches_tracked"] == STEPS


def test_train_eval_gap_is_pytorchs(cli, tmp_path):
    x_path = tmp_path / "x.npy"
    doc = cli.json("run", "--shape", "8,2,3,3", "--steps", 3, "--save-input", x_path)
    x = np.load(x_path)
    _, outputs, evaluated = torch_steps(x, 8, 0.1, [0, 0], [1, 1])
    gap = np.abs(outputs[-8:] - evaluated).astype(np.float64)
    for c, channel in enumerate(doc["channels"]):
        np.testing.assert_allclose(channel["train_eval_max_gap"], gap[:, c].max(), atol=1e-6)
        np.testing.assert_allclose(channel["train_eval_mean_gap"], gap[:, c].mean(), atol=1e-6)
        assert channel["eval_max_abs_error"] < 1e-6


def test_batch_size_alone_gives_the_train_eval_gap(cli, tmp_path):
    """Found by review: --batch-size 4 ran 40 steps but left the gap null ("not asked for")."""
    path = tmp_path / "x.npy"
    x = np.random.default_rng(4).standard_normal((12, 2, 3, 3)).astype(np.float32)
    np.save(path, x)
    doc = cli.json("run", "--input", path, "--batch-size", 4)
    assert doc["settings"]["training_steps"] == 3
    _, outputs, evaluated = torch_steps(x, 4, 0.1, [0, 0], [1, 1])
    gap = np.abs(outputs[-4:] - evaluated).astype(np.float64)
    for c, channel in enumerate(doc["channels"]):
        np.testing.assert_allclose(channel["train_eval_max_gap"], gap[:, c].max(), atol=1e-6)
        np.testing.assert_allclose(channel["train_eval_mean_gap"], gap[:, c].mean(), atol=1e-6)
        assert channel["eval_max_abs_error"] < 1e-6
    # One step over the whole file, nothing about steps asked: the extra pass is skipped.
    single = cli.json("run", "--input", path)
    assert single["channels"][0]["train_eval_max_gap"] is None
    reason = single["null_reasons"]["/channels/0/train_eval_max_gap"]
    assert reason.startswith("not asked for: --steps K or --batch-size")


def test_generated_batches_follow_each_other_from_the_seed(cli, tmp_path):
    one, three = tmp_path / "one.npy", tmp_path / "three.npy"
    cli("run", "--shape", "2,3,4", "--seed", 9, "--save-input", one)
    cli("run", "--shape", "2,3,4", "--seed", 9, "--steps", 3, "--save-input", three)
    expected = np.random.default_rng(9).standard_normal((6, 3, 4), dtype=np.float32)
    np.testing.assert_array_equal(np.load(three), expected)
    np.testing.assert_array_equal(np.load(one), expected[:2])


@pytest.fixture
def six_samples(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(1).standard_normal((6, 2, 3)).astype(np.float32))
    return path


@pytest.mark.parametrize(
    ("options", "steps", "size"),
    [
        (["--batch-size", 2], 3, 2),
        (["--steps", 3], 3, 2),
        (["--steps", 2, "--batch-size", 2], 2, 2),
        ([], 1, 6),
    ],
)
def test_batch_size_splits_a_loaded_tensor(cli, six_samples, options, steps, size):
    doc = cli.json("run", "--input", six_samples, *options)
    x = np.load(six_samples).astype(np.float64)
    assert (doc["settings"]["training_steps"], doc["settings"]["batch_size"]) == (steps, size)
    for k, step in enumerate(doc["running_history"]):
        batch_means = x[k * size : (k + 1) * size].mean(axis=(0, 2))
        np.testing.assert_allclose([ch["batch_mean"] for ch in step["channels"]], batch_means)
    last = x[(steps - 1) * size : steps * size]
    assert [ch["count"] for ch in doc["channels"]] == [size * 3] * 2
    np.testing.assert_allclose([ch["mean"] for ch in doc["channels"]], last.mean(axis=(0, 2)))


def test_explain_derives_an_element_of_the_last_batch(cli, six_samples):
    doc = cli.json("explain", "--input", six_samples, "--batch-size", 2, "--index", "1,0,2")
    run = cli.json("run", "--input", six_samples, "--batch-size", 2)
    assert doc["x"] == float(np.load(six_samples)[5, 0, 2]) and doc["training_step"] == 3
    steps = {step["name"]: step for step in doc["derivation"]}
    assert steps["x"]["substitution"] == "input[5, 0, 2]: batch 3, sample 1"
    assert (
        steps["running_mean"]["value"] == run["running_history"][-1]["channels"][0]["running_mean"]
    )
    message = cli.error(
        "explain", "--input", six_samples, "--batch-size", 2, "--index", "4,0,0", code=2
    )
    assert message == "--index 4,0,0: entry 0 is 4 but axis 0 has size 2; valid range is -2 to 1"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["--steps", "2", "--mode", "eval"],
            2,
            "--steps and --batch-size feed training batches, but eval mode never updates the "
            "running statistics; drop them, or use --mode train",
        ),
        (
            ["--batch-size", "2"],
            2,
            "--batch-size splits --input's samples; a generated tensor's batch size is the "
            "first size of --shape",
        ),
        (
            ["--convention", "keras", "--momentum", "none"],
            2,
            "--momentum none is PyTorch's cumulative average (momentum=None); Keras has no such "
            "rule; give its momentum in [0, 1] (default 0.99)",
        ),
        (
            ["--momentum", "fast"],
            2,
            "--momentum 'fast': not a number; give a number in [0, 1], or none for PyTorch's "
            "cumulative average",
        ),
        (
            ["--convention", "keras", "--momentum", "1.5"],
            2,
            "--momentum 1.5: must lie in [0, 1]; Keras's default 0.99 keeps 0.99 of the old "
            "value in the running statistics",
        ),
        (
            ["--convention", "keras", "--eps", "-1"],
            2,
            "--eps -1: must be a finite number >= 0 (Keras's default is 0.001)",
        ),
        (
            ["--shape", "1,3", "--convention", "onnx", "--save-output", "y.npy"],
            1,
            "--save-output writes PyTorch's output, but PyTorch's module raises 'Expected more "
            "than 1 value per channel when training' in train mode; drop --save-output",
        ),
    ],
)
def test_bad_step_and_convention_options(cli, tmp_path, monkeypatch, args, code, message):
    monkeypatch.chdir(tmp_path)
    assert cli.error("run", *args, code=code) == message
    assert list(tmp_path.iterdir()) == []


def test_unknown_convention_lists_the_known_ones(cli):
    message = cli.error("run", "--convention", "theano", code=2)
    assert message.startswith("Invalid value for '--convention'") and "'theano'" in message
    assert "'pytorch'" in message and "'paddle'" in message


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--batch-size", "4"],
            "--batch-size 4 does not divide the 6 samples of {path}; give a divisor of 6 "
            "(1, 2, 3, 6), or --steps to use only the first batches",
        ),
        (
            ["--steps", "4"],
            "--steps 4: {path} has 6 samples on axis 0, which do not split into 4 equal "
            "batches; give --batch-size too, or --steps dividing 6",
        ),
        (
            ["--steps", "4", "--batch-size", "2"],
            "--steps 4 with --batch-size 2 needs 8 samples but {path} has 6; give at most "
            "--steps 3",
        ),
        (
            ["--batch-size", "7"],
            "--batch-size 7: {path} has only 6 samples on axis 0; give at most 6",
        ),
    ],
)
def test_batches_that_do_not_fit_the_file(cli, six_samples, args, message):
    assert cli.error("run", "--input", six_samples, *args, code=2) == message.format(
        path=six_samples
    )


def test_steps_must_be_positive(cli):
    assert cli.error("run", "--steps", "0", code=2).startswith("Invalid value for '--steps'")


@pytest.mark.parametrize(
    ("options", "notices"),
    [
        (
            ["--steps", 2, "--batch-size", 2],
            ["samples 4 to 5 not fed: 2 steps of 2 samples use the first 4 of 6 on axis 0"],
        ),
        (
            ["--steps", 1, "--batch-size", 5],
            ["sample 5 not fed: 1 step of 5 samples uses the first 5 of 6 on axis 0"],
        ),
        (
            ["--steps", 3, "--batch-size", 1],
            ["samples 3 to 5 not fed: 3 steps of 1 sample use the first 3 of 6 on axis 0"],
        ),
        (["--steps", 3, "--batch-size", 2], []),
    ],
)
def test_samples_left_unfed_are_announced(cli, six_samples, options, notices):
    """Found by review: --batch-size 7 --steps 22 fed 154 of 160 samples without a word."""
    result = cli("run", "--input", six_samples, *options, "--json")
    doc = json.loads(result.stdout)
    assert doc["settings"]["notices"] == notices
    assert result.stderr == "".join(f"Notice: {notice}\n" for notice in notices)
    table = cli("run", "--input", six_samples, *options).stdout
    for notice in notices:
        assert f"notice  {notice}" in table.replace("\n", " ")


def test_explain_keeps_the_unfed_notice_out_of_the_eps_rule(cli, six_samples):
    args = ("--steps", 2, "--batch-size", 2, "--convention", "tf-fused", "--eps", "1e-6")
    doc = cli.json("explain", "--input", six_samples, *args, "--index", "0,0,0")
    assert doc["settings"]["notices"] == [
        "samples 4 to 5 not fed: 2 steps of 2 samples use the first 4 of 6 on axis 0",
        "tf-fused raises eps 1e-06 to its floor 1.001e-05 (tf.nn.fused_batch_norm's min_epsilon)",
    ]
    std = next(step for step in doc["derivation"] if step["name"] == "std")
    assert std["rule"] == (
        "tf-fused: eps 1.001e-05; tf-fused raises eps 1e-06 to its floor 1.001e-05 "
        "(tf.nn.fused_batch_norm's min_epsilon)"
    )
