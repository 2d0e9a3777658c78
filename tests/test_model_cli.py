"""`bninspect model` through its command line: real MONAI networks, checkpoints, a torch.export
program, --dump-dir reproduced through `bninspect run`, --fold against fuse_conv_bn_eval, and
the bad input the issue lists."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

import model_scenarios as S

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "samples" / "tiny_net.py") + ":make_net"
BN = torch.nn.modules.batchnorm._BatchNorm


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_model.py
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A trained TinyNet saved every way a user has it, and its batches."""
    folder = tmp_path_factory.mktemp("model")
    net = S.trained()
    state = net.state_dict()
    torch.save(state, folder / "state.pt")
    torch.save({"state_dict": state, "epoch": 3}, folder / "wrapped.pt")
    torch.save({f"module.{k}": v for k, v in state.items()}, folder / "ddp.pt")
    torch.save([1, 2, 3], folder / "list.pt")
    broken = {k: v.clone() for k, v in state.items()}
    broken["bn2.running_var"][3] = float("nan")
    torch.save(broken, folder / "nan.pt")
    torch.export.save(S.exported(net), folder / "net.pt2")
    batches = folder / "batches"
    batches.mkdir()
    for k in range(3):
        np.save(batches / f"b{k}.npy", S.batch(30 + k, 32).numpy())
    return folder, net


def keep(store: dict, key: str, output: bool = False):
    """A forward hook keeping a module's first input (or its output) under ``key``."""

    def hook(_module, args, out):
        store.setdefault(key, (out if output else args[0]).clone())

    return hook


def tiny_args(folder, *more):
    return ["model", "--model", TINY, "--weights", folder / "state.pt", *more]


def test_json_document(cli, files):
    folder, net = files
    doc = cli.json(*tiny_args(folder, "--input", folder / "batches" / "b0.npy"))
    assert list(doc)[:4] == ["schema_version", "command", "bninspect_version", "verdict"]
    assert doc["command"] == "model" and doc["verdict"]["status"] == "ok"
    assert [layer["name"] for layer in doc["layers"]] == ["bn1", "bn2", "bn3"]
    assert doc["layers"][0]["count"] == 32 * 64 and doc["layers"][0]["module"] == "BatchNorm2d"
    assert doc["layers"][2]["module"] == "BatchNorm1d"
    assert doc["source"]["loaded_tensors"] == len(net.state_dict())
    assert doc["layers"][0]["num_batches_tracked"] == 60
    assert doc["layers"][0]["details"] is None
    assert doc["null_reasons"]["/layers/0/details"].startswith("not asked for: --layer bn1")


@pytest.mark.parametrize(
    ("name", "note"),
    [
        ("wrapped.pt", "its 'state_dict' entry (also in the file: epoch)"),
        ("ddp.pt", "'module.' (DistributedDataParallel's): stripped"),
    ],
)
def test_checkpoints_are_unwrapped_and_said(cli, files, name, note):
    folder, _ = files
    plain = cli.json(*tiny_args(folder, "--shape", "16,1,8,8"))
    args = ["model", "--model", TINY, "--weights", folder / name, "--shape", "16,1,8,8"]
    doc = cli.json(*args)
    assert any(note in line for line in doc["source"]["checkpoint"]), doc["source"]
    assert [layer["max_gap"] for layer in doc["layers"]] == [
        layer["max_gap"] for layer in plain["layers"]
    ]


def test_program_matches_the_module(cli, files):
    folder, _ = files
    x = folder / "batches" / "b1.npy"
    module = cli.json(*tiny_args(folder, "--input", x))
    program = cli.json("model", "--program", folder / "net.pt2", "--input", x)
    assert [layer["name"] for layer in program["layers"]] == ["bn1", "bn2", "bn3"]
    for a, b in zip(module["layers"], program["layers"], strict=True):
        assert a["num_batches_tracked"] == b["num_batches_tracked"]
        np.testing.assert_allclose(b["max_gap"], a["max_gap"], rtol=1e-5)
        np.testing.assert_allclose(b["max_mean_drift"], a["max_mean_drift"], rtol=1e-5)


def test_program_defaults_to_its_example_input(cli, files):
    folder, _ = files
    doc = cli.json("model", "--program", folder / "net.pt2")
    assert doc["batches"]["shape"] == [16, 1, 8, 8]


def test_weights_alone(cli, files):
    folder, _ = files
    doc = cli.json("model", "--weights", folder / "nan.pt")
    assert doc["verdict"]["status"] == "warnings" and doc["batches"] is None
    bn2 = doc["layers"][1]
    assert bn2["name"] == "bn2" and "nan-buffers" in bn2["flags"]
    assert "running_var holds NaN" in bn2["cause"]
    assert doc["layers"][0]["flags"] == [] and doc["layers"][0]["num_batches_tracked"] == 60


def test_layer_in_full_and_the_table(cli, files):
    folder, _ = files
    x = folder / "batches" / "b0.npy"
    shown = cli(*tiny_args(folder, "--input", x, "--layer", "bn2")).stdout
    assert "Per channel" in shown and "bn2: BatchNorm2d, 16 channels" in shown
    everything = cli(*tiny_args(folder, "--input", x, "--all")).stdout
    assert "Every batch norm, in forward order" in everything
    assert everything.startswith("all 3 batch norms agree between train and eval mode")
    # standard normal data is not what it was trained on: bninspect says so
    other = cli(*tiny_args(folder, "--shape", "16,1,8,8")).stdout
    assert other.startswith("train and eval part first at bn1 (layer 1 of 3)")


def test_tables_fit_80_columns(cli, files, monkeypatch):
    folder, _ = files
    monkeypatch.setenv("COLUMNS", "80")
    for more in (["--all"], ["--layer", "bn1"], ["--fold"]):
        out = cli(*tiny_args(folder, "--input", folder / "batches", *more)).stdout
        assert max(map(len, out.splitlines())) <= 80, out


def test_population_over_a_directory(cli, files):
    folder, _ = files
    doc = cli.json(*tiny_args(folder, "--input", folder / "batches"))
    population = doc["layers"][1]["population"]
    assert population["batches"] == 3 and population["count"] == 3 * 32 * 16
    names = [c["name"] for c in population["choices"]]
    assert names == ["pooled (exact)", "running buffers", "update_bn", "precise_bn"]
    assert population["choices"][0]["max_output_move"] == 0.0


def test_dump_dir_reproduces_every_layer_bit_for_bit(cli, files, tmp_path):
    folder, _ = files
    dump = tmp_path / "acts"
    doc = cli.json(*tiny_args(folder, "--input", folder / "batches" / "b2.npy", "--dump-dir", dump))
    assert doc["dump_dir"] == str(dump)
    for layer in doc["layers"]:
        record = layer["dump"]
        assert record["reproducible"], record
        here = Path(record["folder"])
        runs = [c for c in record["commands"] if c.startswith("bninspect run")]
        checks = [c for c in record["commands"] if c.startswith("bninspect check")]
        assert len(runs) == 2 and len(checks) == 1
        for command in runs:
            cli(*shlex.split(command)[1:])
        for mode in ("train", "eval"):
            saved = np.load(here / f"output_{mode}.npy")
            reproduced = np.load(here / f"reproduced_{mode}.npy")
            np.testing.assert_array_equal(reproduced.view(np.uint32), saved.view(np.uint32))
        cli(*shlex.split(checks[0])[1:])  # exit 0: the layer's output passes the check
    # and the saved train-mode output is the model's own layer output (independent hooks)
    net = copy.deepcopy(files[1]).eval()
    net.bn1.train()
    seen = {}
    net.bn1.register_forward_hook(keep(seen, "y", output=True))
    with torch.no_grad():
        net(torch.from_numpy(np.load(folder / "batches" / "b2.npy")))
    first = Path(doc["layers"][0]["dump"]["folder"])
    np.testing.assert_array_equal(np.load(first / "output_train.npy"), seen["y"].numpy())


def test_dump_dir_refuses_to_write_over_files(cli, files, tmp_path):
    folder, _ = files
    (tmp_path / "kept.txt").write_text("mine")
    message = cli.error(*tiny_args(folder, "--shape", "4,1,8,8", "--dump-dir", tmp_path), code=2)
    assert "not an empty directory" in message
    assert (tmp_path / "kept.txt").read_text() == "mine"


def test_fold_against_fuse_conv_bn_eval_and_float64(cli, files):
    folder, net = files
    x = torch.from_numpy(np.load(folder / "batches" / "b0.npy"))
    doc = cli.json(*tiny_args(folder, "--input", folder / "batches" / "b0.npy", "--fold",
                              "--dtype", "float16"))  # fmt: skip
    assert doc["pairing"] == "torch.fx" and doc["unpaired"] == []
    net = copy.deepcopy(net).eval()
    conv_input = {}
    net.conv2.register_forward_hook(keep(conv_input, "x"))
    with torch.no_grad():
        net(x)
    x2 = conv_input["x"]
    bn = net.bn2
    with torch.no_grad():
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(copy.deepcopy(net.conv2), copy.deepcopy(bn))
        reference = copy.deepcopy(bn).double()(copy.deepcopy(net.conv2).double()(x2.double()))
        folded = fused(x2)
        unfolded = net.bn2(net.conv2(x2))

    def ulps(y):  # max over channels, ULP of float32 at the channel's max |reference|
        ref = reference.numpy()
        scale = np.abs(np.moveaxis(ref, 1, 0).reshape(16, -1)).max(axis=1)
        spacing = 2.0 ** (np.floor(np.log2(scale)) - 23)
        err = np.abs(np.moveaxis(y.double().numpy() - ref, 1, 0).reshape(16, -1)).max(axis=1)
        return (err / spacing).max()

    report = doc["layers"][1]["fold"]
    assert report["producer"] == "conv2" and report["producer_kind"] == "Conv2d"
    float32 = report["dtypes"][0]
    assert float32["dtype"] == "float32" and report["dtypes"][1]["dtype"] == "float16"
    np.testing.assert_allclose(
        float32["fuse_conv_bn_eval_ulp_error_at_scale"], ulps(folded), rtol=1e-9
    )
    np.testing.assert_allclose(float32["unfolded_ulp_error_at_scale"], ulps(unfolded), rtol=1e-9)
    assert report["float64_abs_error"] < 1e-12


def test_fold_in_the_exported_graph(cli, files):
    folder, _ = files
    doc = cli.json("model", "--program", folder / "net.pt2", "--fold")
    assert doc["pairing"] == "the exported graph" and doc["unpaired"] == []
    assert [layer["fold"]["producer"] for layer in doc["layers"]] == ["conv1", "conv2", "fc"]


# --- real third-party networks (MONAI, random initialization, nothing downloaded) ----------


def test_monai_densenet121(cli):
    doc = cli.json(
        "model", "--model", "monai.networks.nets:DenseNet121",
        "--kwargs", "spatial_dims=2,in_channels=1,out_channels=2", "--shape", "2,1,32,32",
    )  # fmt: skip
    layers = doc["layers"]
    assert len(layers) == 121 and {layer["module"] for layer in layers} == {"BatchNorm2d"}
    assert all("untrained" in layer["flags"] for layer in layers)
    assert doc["verdict"]["status"] == "diverges"
    assert doc["first_divergence"]["name"] == "features.norm0"
    assert "untrained buffers" in doc["first_divergence"]["cause"]
    assert layers[0]["count"] == 2 * 16 * 16


def test_monai_densenet_first_layer_against_its_own_module():
    from monai.networks.nets import DenseNet121

    from model_helpers import inspect

    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=2).eval()
    x = torch.randn(2, 1, 32, 32)
    result = inspect(net, x, layer="features.denseblock1.denselayer1.layers.norm1")
    row = result.layers[0]
    seen = {}
    target = net.get_submodule("features.denseblock1.denselayer1.layers.norm1")
    train_copy = S.train_mode_copy(net)
    train_copy.get_submodule("features.denseblock1.denselayer1.layers.norm1").register_forward_hook(
        keep(seen, "x_train")
    )
    with torch.no_grad():
        train_copy(x)
        x_in = seen["x_train"]
        y_train = copy.deepcopy(target).train()(x_in)
        y_eval = copy.deepcopy(target).eval()(x_in)
    scale = np.maximum(
        np.abs(y_train.double().numpy()).transpose(1, 0, 2, 3).reshape(64, -1).max(axis=1),
        np.abs(target.weight.detach().double().numpy()),
    )
    gap = (
        (y_train.double() - y_eval.double())
        .abs()
        .numpy()
        .transpose(1, 0, 2, 3)
        .reshape(64, -1)
        .max(1)
    )
    np.testing.assert_allclose([d.own_gap for d in row.details], gap / scale, rtol=1e-12)


def test_monai_resnet_3d(cli):
    doc = cli.json(
        "model", "--model", "monai.networks.nets:resnet10",
        "--kwargs", "spatial_dims=3,n_input_channels=1,num_classes=2", "--shape", "2,1,16,16,16",
    )  # fmt: skip
    assert {layer["module"] for layer in doc["layers"]} == {"BatchNorm3d"}
    assert doc["layers"][0]["count"] == 2 * 16 * 16 * 16  # conv1's stride is 1


def test_monai_unet_batch_and_instance_norm(cli):
    args = [
        "model", "--model", "monai.networks.nets:UNet", "--shape", "2,1,16,16", "--kwargs",
        "spatial_dims=2,in_channels=1,out_channels=2,channels=(4,8,16),strides=(2,2)",
    ]  # fmt: skip
    instance = cli(*args)  # MONAI's default norm: instance norm, no batch norm
    assert instance.stdout.startswith("no batch-norm layer in the model: nothing to inspect")
    assert "InstanceNorm2d" in instance.stdout
    batch = cli.json(*args[:-1], args[-1] + ",norm=batch")
    assert len(batch["layers"]) > 0 and batch["verdict"]["status"] == "diverges"


# --- bad input ----------------------------------------------------------------------------


def test_bad_input(cli, files, tmp_path):
    folder, _ = files
    cases = [
        (["model", "--model", "no_such_pkg.nets:make"], 2, "give the batch"),
        (["model", "--model", "no_such_pkg.nets:make", "--shape", "2,1,8,8"], 1,
         "module 'no_such_pkg.nets' could not be imported (ModuleNotFoundError"),
        (["model", "--model", "json:dumps", "--shape", "2,1,8,8"], 1,
         "calling dumps() raised TypeError"),
        (["model", "--model", "math:pi", "--shape", "2,1,8,8"], 1, "'pi' is not callable"),
        (["model", "--model", "collections:OrderedDict", "--shape", "2,1,8,8"], 1,
         "returned a OrderedDict, not a torch.nn.Module"),
        (["model", "--model", TINY, "--weights", folder / "list.pt", "--shape", "2,1,8,8"], 1,
         "not a state_dict (a list)"),
        (["model", "--model", TINY, "--kwargs", "classes=5", "--weights", folder / "state.pt",
          "--shape", "2,1,8,8"], 1, "head.weight has shape (4, 12) but the model's is (5, 12)"),
        (["model", "--model", "torch.nn:Sequential", "--weights", folder / "state.pt",
          "--shape", "2,1,8,8"], 1, "keys do not match the model (not in the model: conv1.weight"),
        (["model", "--model", TINY, "--shape", "2,3,8,8"], 1,
         "the model rejected the 2x3x8x8 batch in conv1: RuntimeError"),
        (["model", "--program", folder / "state.pt"], 1, "no exported program in it"),
        (["model", "--model", TINY, "--program", folder / "net.pt2"], 2, "give one network"),
        (["model", "--kwargs", "a=1", "--weights", folder / "state.pt"], 2, "give --model too"),
        (["model", "--model", "nocolon"], 2, "give module:callable"),
        (["model", "--model", TINY, "--kwargs", "=3", "--shape", "2,1,8,8"], 2, "not name=value"),
        (["model", "--weights", folder / "state.pt", "--shape", "2,1,8,8"], 2, "add --model"),
        (["model", "--model", TINY, "--shape", "2,1,8,8", "--layer", "bn9"], 1,
         "--layer bn9: no batch norm of that name"),
        (["model", "--model", TINY, "--input", tmp_path / "none.npy"], 2, "no such file"),
        (["run", "--weight", folder / "state.pt"], 2, "bninspect model --weights"),
    ]  # fmt: skip
    for args, code, words in cases:
        message = cli.error(*args, code=code)
        assert words in message, (args, message)


class Odd:
    """Any class a pickle names: weights_only=True refuses to build it."""


def test_untrusted_pickle_is_never_loaded(cli, tmp_path):
    torch.save({"w": torch.zeros(2), "why": Odd()}, tmp_path / "odd.pt")
    message = cli.error("model", "--weights", tmp_path / "odd.pt", code=1)
    assert "never unpickles" in message


def test_no_batch_norm_is_said_and_exits_0(cli):
    result = cli("model", "--model", "torch.nn:Identity", "--shape", "2,3")
    assert result.stdout.startswith("no batch-norm layer in the model: nothing to inspect")


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["model", "--help"], 0),
        (["model"], 2),
        (["model", "--model", "nocolon"], 2),
        (["model", "--model", "a:b", "--kwargs", "x"], 2),
        (["model", "--model", "a:b", "--input", "missing.npy"], 2),
        (["model", "--model", "a:b", "--shape", "1,,2"], 2),
        (["model", "--weights", "w.pt", "--fold"], 2),
        (["model", "--model", "a:b", "--shape", "2,3", "--dtype", "float16"], 2),
    ],
)
def test_help_and_option_errors_need_no_torch(args, code):
    from test_startup import bninspect_without_torch

    result = bninspect_without_torch(*args)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    if code:
        assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    else:
        assert "Usage: bninspect model" in result.stdout
