"""The command line through typer's CliRunner: every option, the JSON shape, the output files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bninspect.results.run import ChannelReport


def torch_batchnorm(
    x, weight=None, bias=None, mean=None, var=None, train=True, eps=1e-5, momentum=0.1
):
    """PyTorch's functional batch norm, straight, for comparison."""
    c = x.shape[1]
    mean = torch.zeros(c) if mean is None else torch.tensor(mean, dtype=torch.float32)
    var = torch.ones(c) if var is None else torch.tensor(var, dtype=torch.float32)
    w = None if weight is None else torch.tensor(weight, dtype=torch.float32)
    b = None if bias is None else torch.tensor(bias, dtype=torch.float32)
    y = torch.nn.functional.batch_norm(torch.from_numpy(x), mean, var, w, b, train, momentum, eps)
    return y.numpy(), mean.numpy(), var.numpy()


def test_run_json_shape(cli):
    doc = cli.json("run", "--shape", "2,3,4")
    assert doc["schema_version"] == 2 and doc["command"] == "run"
    assert [ch["channel"] for ch in doc["channels"]] == [0, 1, 2]
    assert doc["input"] == {
        "source": "generated", "shape": [2, 3, 4], "dtype": "float32", "seed": 0, "path": None,
        "sha256": None, "notices": [], "offset": 0.0, "scale": 1.0, "channel_axis": 1,
    }  # fmt: skip
    assert doc["settings"]["module"] == "BatchNorm1d"
    gap = (
        "not asked for: --steps K or --batch-size B (train mode) compares train and eval "
        "outputs after the training steps"
    )
    assert doc["null_reasons"] == {
        "/variance_methods": "not asked for: add --var-method",
        "/grad": "not asked for: --grad",
        **{
            f"/channels/{c}/{field}": gap
            for c in range(3)
            for field in ("train_eval_max_gap", "train_eval_mean_gap", "eval_max_abs_error")
        },
    }
    assert doc["torch_version"] == torch.__version__
    assert doc["torch_module"] == "torch.nn.BatchNorm1d itself"


def test_every_channel_report_field_is_in_the_table(cli):
    # --steps: the train/eval gap table too; --offset: a health flag, so the flags column shows
    args = ("run", "--steps", "2", "--offset", "1e4")
    normal, verbose = cli(*args).stdout, cli(*args, "--verbose").stdout
    for field in ChannelReport.__dataclass_fields__.values():
        label = field.metadata.get("label")
        if label and field.name not in ("nan_count", "posinf_count", "neginf_count"):
            for part in label.split("\n"):
                assert part in verbose, label
                assert field.metadata["verbose"] or part in normal, label


def test_explain_json_shape(cli):
    doc = cli.json("explain", "--index", "0,1,2,3")
    assert doc["command"] == "explain" and doc["index"] == [0, 1, 2, 3] and doc["channel"] == 1
    assert [s["name"] for s in doc["derivation"]] == [
        "x",
        "count",
        "sum",
        "mean",
        "m2",
        "var_biased",
        "var_unbiased",
        "std",
        "x_hat",
        "y",
        "running_mean",
        "running_var",
    ]
    step_keys = {"name", "formula", "substitution", "value", "note", "rule", "differs_from_pytorch"}
    assert all(set(s) == step_keys for s in doc["derivation"])
    assert [r["name"] for r in doc["running_buffers"]] == ["running_mean", "running_var"]
    # every buffer judged by what a correct update can leave (the fields: the schema's)
    assert all(r["ulp_error_at_scale"] <= r["bound_ulps"] for r in doc["running_buffers"])
    assert float.fromhex(doc["y"]["torch_hex"]) == doc["y"]["torch"]


def test_generated_tensor_is_standard_normal_from_the_seed(cli, tmp_path):
    path = tmp_path / "x.npy"
    cli("run", "--shape", "2,3,4,5", "--seed", "7", "--save-input", path)
    expected = np.random.default_rng(7).standard_normal((2, 3, 4, 5), dtype=np.float32)
    np.testing.assert_array_equal(np.load(path), expected)


def test_run_matches_pytorch_and_reports_its_output(cli, tmp_path):
    out, x_path = tmp_path / "y.npy", tmp_path / "x.npy"
    doc = cli.json(
        "run",
        "--shape",
        "4,3,5",
        "--seed",
        "3",
        "--weight",
        "0.5,2,-1",
        "--bias",
        "0,0.25,1",
        "--save-input",
        x_path,
        "--save-output",
        out,
    )
    x = np.load(x_path)
    expected, _, _ = torch_batchnorm(x, [0.5, 2, -1], [0, 0.25, 1])
    np.testing.assert_array_equal(np.load(out), expected)
    values = x.transpose(1, 0, 2).reshape(3, -1).astype(np.float64)
    for c, channel in enumerate(doc["channels"]):
        assert channel["count"] == 20
        np.testing.assert_allclose(channel["mean"], values[c].mean(), rtol=1e-14)
        np.testing.assert_allclose(channel["var_biased"], values[c].var(), rtol=1e-13)
        np.testing.assert_allclose(channel["var_unbiased"], values[c].var(ddof=1), rtol=1e-13)
        np.testing.assert_allclose(channel["std"], np.sqrt(values[c].var() + 1e-5), rtol=1e-13)
        np.testing.assert_allclose(channel["inv_std"], 1 / channel["std"], rtol=1e-15)
        assert channel["max_abs_error"] < 1e-6 and channel["max_ulp_error"] < 64


def test_explain_uses_the_same_tensor_as_run(cli, tmp_path):
    path = tmp_path / "x.npy"
    cli("run", "--shape", "2,3,2,2", "--seed", "5", "--save-input", path)
    doc = cli.json("explain", "--shape", "2,3,2,2", "--seed", "5", "--index", "1,2,-1,0")
    assert doc["index"] == [1, 2, 1, 0]
    assert doc["x"] == float(np.load(path)[1, 2, 1, 0])


@pytest.mark.parametrize("eps", ["1e-3", "0.5"])
def test_eps(cli, eps):
    channel = cli.json("run", "--eps", eps)["channels"][0]
    assert channel["eps"] == float(eps)
    np.testing.assert_allclose(channel["std"] ** 2, channel["var_biased"] + float(eps), rtol=1e-14)


def test_momentum_moves_the_running_buffers(cli):
    doc = cli.json("run", "--momentum", "0.25", "--running-mean", "1,2", "--running-var", "3,4")
    for c, channel in enumerate(doc["channels"]):
        np.testing.assert_allclose(
            channel["running_mean"], 0.75 * (c + 1) + 0.25 * channel["mean"], rtol=1e-15
        )
        np.testing.assert_allclose(
            channel["running_var"], 0.75 * (c + 3) + 0.25 * channel["var_unbiased"], rtol=1e-15
        )
        assert channel["running_var_ulp_error_at_scale"] <= 2
    assert doc["num_batches_tracked"] == 1


def test_random_weight_is_uniform_and_reproducible(cli):
    first = cli.json("run", "--shape", "2,6", "--weight", "random", "--seed", "1")
    again = cli.json("run", "--shape", "2,6", "--weight", "random", "--seed", "1")
    other = cli.json("run", "--shape", "2,6", "--weight", "random", "--seed", "2")
    weights = [ch["weight"] for ch in first["channels"]]
    assert weights == [ch["weight"] for ch in again["channels"]]
    assert weights != [ch["weight"] for ch in other["channels"]]
    assert all(0 <= w < 1 for w in weights) and len(set(weights)) == 6
    assert first["settings"]["weight_given"] == "random"


def test_vectors_from_npy_files(cli, tmp_path):
    np.save(tmp_path / "w.npy", np.array([2.0, 3.0]))
    np.save(tmp_path / "b.npy", np.array([1, -1], dtype=np.int32))
    doc = cli.json("run", "--weight", tmp_path / "w.npy", "--bias", tmp_path / "b.npy")
    assert [(ch["weight"], ch["bias"]) for ch in doc["channels"]] == [(2.0, 1.0), (3.0, -1.0)]


def test_weights_are_rounded_as_the_module_stores_them(cli):
    channel = cli.json("run", "--weight", "0.1,0.2")["channels"][0]
    assert channel["weight"] == float(np.float32(0.1)) != 0.1


def test_no_affine(cli, tmp_path):
    out, x_path = tmp_path / "y.npy", tmp_path / "x.npy"
    doc = cli.json("run", "--no-affine", "--save-output", out, "--save-input", x_path)
    assert doc["settings"]["affine"] is False
    assert [(ch["weight"], ch["bias"]) for ch in doc["channels"]] == [(1.0, 0.0)] * 2
    np.testing.assert_array_equal(np.load(out), torch_batchnorm(np.load(x_path))[0])
    assert "no affine" in cli("run", "--no-affine").stdout


def test_eval_mode(cli, tmp_path):
    out, x_path = tmp_path / "y.npy", tmp_path / "x.npy"
    doc = cli.json(
        "run",
        "--mode",
        "eval",
        "--running-mean",
        "0.5,-1",
        "--running-var",
        "2,0.5",
        "--save-output",
        out,
        "--save-input",
        x_path,
    )
    expected, _, _ = torch_batchnorm(np.load(x_path), mean=[0.5, -1], var=[2, 0.5], train=False)
    np.testing.assert_array_equal(np.load(out), expected)
    assert [ch["running_mean"] for ch in doc["channels"]] == [0.5, -1.0]  # unchanged in eval
    assert doc["channels"][1]["std"] == np.sqrt(0.5 + 1e-5)
    assert doc["num_batches_tracked"] == 0
    steps = cli.json("explain", "--mode", "eval", "--index", "0,0,0,0")["derivation"]
    assert [s["name"] for s in steps] == ["x", "mean", "var", "std", "x_hat", "y"]


def test_eval_mode_accepts_one_value_per_channel(cli):
    doc = cli.json("run", "--shape", "1,3", "--mode", "eval")
    not_asked = (
        "not asked for: --steps K or --batch-size B (train mode) compares train and eval "
        "outputs after the training steps"
    )
    assert doc["null_reasons"] == {
        "/variance_methods": "not asked for: add --var-method",
        "/grad": "not asked for: --grad",
        **{
            f"/channels/{c}/var_unbiased": "one value per channel: dividing by N - 1 = 0"
            for c in range(3)
        },
        **{
            f"/channels/{c}/{field}": not_asked
            for c in range(3)
            for field in ("train_eval_max_gap", "train_eval_mean_gap", "eval_max_abs_error")
        },
    }


@pytest.mark.parametrize(
    ("shape", "module"),
    [
        ("4,3", "BatchNorm1d"),
        ("2,3,5", "BatchNorm1d"),
        ("1,2,3,4", "BatchNorm2d"),
        ("2,2,2,2,2", "BatchNorm3d"),
    ],
)
def test_every_rank_runs_with_its_module(cli, shape, module):
    doc = cli.json("run", "--shape", shape)
    assert doc["settings"]["module"] == module
    assert doc["max_abs_error"] < 1e-5


def test_json_stdout_is_only_the_document_and_notices_go_to_stderr(cli, tmp_path):
    path = tmp_path / "ints.npy"
    np.save(path, np.arange(24, dtype=np.int64).reshape(2, 3, 4))
    result = cli("run", "--input", path, "--json")
    assert (
        result.stderr == "Notice: int64 input converted to float32 (batch norm needs "
        "floating point)\n"
    )
    doc = cli.json("run", "--input", path)
    assert doc["input"]["dtype"] == "float32"
    assert doc["input"]["notices"] == [
        "int64 input converted to float32 (batch norm needs floating point)"
    ]


def test_integers_that_float32_cannot_hold_are_announced(cli, tmp_path):
    path = tmp_path / "ints.npy"
    big = 2**24 + 1  # the smallest positive integer float32 rounds
    np.save(path, np.array([[1, big], [-big, 4]], dtype=np.int64))
    doc = cli.json("run", "--input", path, "--mode", "eval")
    assert doc["input"]["notices"] == [
        "int64 input converted to float32 (batch norm needs floating point); some values (from "
        f"{-big} to {big}) lie beyond +-2**24, where not every integer is a float32: they are "
        "rounded to the nearest"
    ]
    np.save(path, np.array([[1, 2**24], [-(2**24), 4]], dtype=np.int64))  # still exact
    assert cli.json("run", "--input", path, "--mode", "eval")["input"]["notices"] == [
        "int64 input converted to float32 (batch norm needs floating point)"
    ]


def test_saved_files_are_announced_on_stderr(cli, tmp_path):
    result = cli("run", "--json", "--save-output", tmp_path / "y.npy")
    assert result.stderr == f"wrote PyTorch's output to {tmp_path / 'y.npy'}\n"


def test_force_overwrites_and_nothing_else_does(cli, tmp_path):
    path = tmp_path / "x.npy"
    path.write_bytes(b"keep me")
    message = cli.error("run", "--save-input", path, code=2)
    assert message == f"--save-input {path}: file exists; add --force to overwrite it"
    assert path.read_bytes() == b"keep me"
    cli("run", "--save-input", path, "--force")
    assert np.load(path).shape == (1, 2, 3, 4)


def test_saving_writes_exactly_the_path_given(cli, tmp_path):
    cli("run", "--save-output", tmp_path / "out.data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.data"]


def test_nan_and_inf_input_completes_with_valid_json(cli, tmp_path):
    x = np.random.default_rng(0).standard_normal((2, 3, 2, 2)).astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    x[1, 2, 1, 1] = np.inf
    path = tmp_path / "x.npy"
    np.save(path, x)
    doc = cli.json("run", "--input", path)
    channels = doc["channels"]
    assert (channels[0]["nan_count"], channels[2]["posinf_count"]) == (1, 1)
    assert channels[0]["mean"] is None and channels[1]["mean"] is not None
    assert doc["null_reasons"]["/channels/0/mean"] == "NaN (not a number), which JSON cannot hold"
    assert doc["null_reasons"]["/channels/2/mean"] == "+Infinity, which JSON cannot hold"
    assert channels[0]["max_abs_error"] == 0.0  # PyTorch's NaNs match the reference's NaNs
    table = cli("run", "--input", path).stdout
    assert "channels 0, 2 hold NaN or Inf" in table and "NaN" in table
    explained = cli.json("explain", "--input", path, "--index", "0,0,1,1")
    assert explained["y"]["torch"] is None and explained["y"]["correctly_rounded"] is True


def test_help_of_every_command(cli):
    for command in ("run", "explain"):
        result = cli(command, "--help")
        assert "--shape" in result.stdout and "--json" in result.stdout
    top = cli("--help").stdout
    assert "run" in top and "explain" in top


NARROW_COMMANDS = [
    ("run", "--shape", "8,3,4,4", "--steps", "3"),
    ("run", "--shape", "8,3,4,4", "--steps", "12", "--momentum", "none"),
    ("run", "--shape", "8,3,4,4", "--steps", "3", "--convention", "caffe"),
    ("run", "--shape", "32,8,16,16", "--offset", "1e4", "--var-method"),
    ("explain", "--index", "0,0,0,0", "--precision"),
    ("explain", "--index", "0,0,0,0", "--steps", "2", "--convention", "mxnet"),
    ("explain", "--index", "0,0,0,0", "--convention", "tf-fused", "--eps", "1e-6"),
    ("conventions", "--momentum", "0.999", "--from", "caffe"),
    ("explain", "--shape", "1,3", "--steps", "3", "--convention", "caffe", "--index", "0,1"),
]


@pytest.mark.parametrize("args", NARROW_COMMANDS)
@pytest.mark.parametrize("detail", [[], ["--verbose"]])
def test_tables_fit_80_columns_without_cutting_a_number(cli, args, detail):
    # 80 columns is what rich assumes when stdout is a pipe.
    result = cli.runner.invoke(cli.app, [*args, *detail], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.stderr
    assert "…" not in result.stdout
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    assert all(line == line.rstrip() for line in lines)  # no trailing spaces


def test_a_terminal_too_narrow_for_a_table_gets_all_of_it(cli):
    """Found by review: tables wider than the terminal lost their right-hand columns."""
    args = ("run", "--shape", "8,3,4,4", "--steps", "3")
    doc = cli.json(*args)
    result = cli.runner.invoke(cli.app, [*args, "--verbose"], env={"COLUMNS": "40"})
    assert result.exit_code == 0 and "…" not in result.stdout
    for record in doc["running_history"]:
        for channel in record["channels"]:
            for name in ("running_mean", "running_var", "running_var_ulp_error_at_scale"):
                assert f"{channel[name]:.5g}" in result.stdout, (record["training_step"], name)
