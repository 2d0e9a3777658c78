"""`bninspect model` at its edges, each checked against PyTorch itself or a hand computation:
batch size 1 (PyTorch's error, in the verdict), ConvTranspose + BN folding (the weight's
out-channel axis is 1, per group), NaN buffers (NaN, never inf), --dump-dir's commands with NaN
buffers and PyTorch's own buffer update, the factory called without autograd, a state_dict
alone, and option errors (--weights x.npy, --kwargs a=)."""

from __future__ import annotations

import copy
import json
import math
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_model_cli import TINY, files, one_thread, tiny_args  # noqa: F401 (fixtures)

import model_scenarios as S
from model_helpers import inspect, layer

ROOT = Path(__file__).resolve().parent.parent


def module_that_raises(net: torch.nn.Module, x: torch.Tensor) -> tuple[str, str]:
    """(the module PyTorch's own train-mode forward fails in, its message): plain pre-hooks."""
    entered = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, _a, n=n: entered.append(n))
        for n, m in net.named_modules()
        if n
    ]
    try:
        with torch.no_grad():
            net(x)
    except ValueError as exc:
        return entered[-1], str(exc)
    finally:
        for h in hooks:
            h.remove()
    raise AssertionError("PyTorch ran a batch of one value per channel in train mode")


# --- 1. one value per channel: PyTorch's error leads the verdict, with the fix --------------


@pytest.mark.parametrize("shifted", [False, True], ids=["its data", "shifted data"])
def test_one_value_per_channel_leads_the_verdict(shifted):
    net = S.trained()
    x = S.batch(7, 1, scale=6.0, offset=3.0) if shifted else S.batch(7, 1)
    where, message = module_that_raises(S.train_mode_copy(net), x)
    assert where == "bn3" and "Expected more than 1 value per channel" in message
    result = inspect(net, x)
    summary = result.verdict.summary
    assert result.verdict.status == "diverges" and len(summary) <= 2
    # shifted: bn1 parts first (mean drift), yet the fatal layer leads
    assert summary[0].startswith(f"train mode fails at {where} ")
    assert "one value per channel" in summary[0]
    assert "drop_last=True" in summary[1] and f"{where} in eval mode" in summary[1]
    if shifted:
        assert result.first_divergence.name == "bn1"


# --- 2. ConvTranspose + BN folding ---------------------------------------------------------


def fold_by_hand(conv, bn) -> tuple[torch.Tensor, torch.Tensor]:
    """float64, one output channel at a time: channel o of a ConvTranspose with groups g is
    column o % (C_out / g) of the input rows of group o // (C_out / g)."""
    w = conv.weight.detach().double().clone()
    in_per_group = conv.in_channels // conv.groups
    per_group = conv.out_channels // conv.groups
    factor = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    for o in range(conv.out_channels):
        g, j = divmod(o, per_group)
        w[g * in_per_group : (g + 1) * in_per_group, j] *= factor[o]
    b = (conv.bias.double() - bn.running_mean.double()) * factor + bn.bias.double()
    return w, b.detach()


def transposed_pair(dims: int, groups: int) -> torch.nn.Module:
    torch.manual_seed(dims * 10 + groups)
    conv = getattr(torch.nn, f"ConvTranspose{dims}d")(4, 6, 3, stride=2, groups=groups)
    bn = getattr(torch.nn, f"BatchNorm{dims}d")(6)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.05, 3)
        bn.weight.uniform_(0.5, 4)
        bn.bias.uniform_(-1, 1)
    return torch.nn.Sequential(conv, bn).eval()


def channel_ulps(y: torch.Tensor, reference: torch.Tensor) -> float:
    """max over channels of max |y - reference| in float32 ULPs at the channel's max |ref|."""
    ref = reference.numpy()
    C = ref.shape[1]
    scale = np.abs(np.moveaxis(ref, 1, 0).reshape(C, -1)).max(axis=1)
    err = np.abs(np.moveaxis(y.double().numpy() - ref, 1, 0).reshape(C, -1)).max(axis=1)
    return float((err / np.spacing(scale.astype(np.float32)).astype(np.float64)).max())


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_conv_transpose_folds_against_the_unfolded_float64_forward(dims, groups):
    net = transposed_pair(dims, groups)
    conv, bn = net[0], net[1]
    x = torch.randn(3, 4, *([5] * dims), generator=torch.Generator().manual_seed(dims))
    transpose = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[dims - 1]
    w, b = fold_by_hand(conv, bn)
    with torch.no_grad():
        unfolded64 = copy.deepcopy(net).double()(x.double())
        folded64 = transpose(x.double(), w, b, conv.stride, conv.padding, 0, groups)
        folded32 = transpose(x, w.float(), b.float(), conv.stride, conv.padding, 0, groups)
        unfolded32 = net(x)
    torch.testing.assert_close(folded64, unfolded64, rtol=1e-12, atol=1e-12)  # the hand fold
    report = layer(inspect(net, x, fold=True), "1").fold
    assert report.producer == "0" and report.producer_kind == f"ConvTranspose{dims}d"
    assert report.float64_abs_error <= 1e-12 * float(unfolded64.abs().max())
    float32 = report.dtypes[0]
    assert float32.folded_ulp_error_at_scale == pytest.approx(
        channel_ulps(folded32, unfolded64), rel=1e-9
    )
    assert float32.unfolded_ulp_error_at_scale == pytest.approx(
        channel_ulps(unfolded32, unfolded64), rel=1e-9
    )
    assert float32.folded_ulp_error_at_scale < 16  # rounding, not a wrong axis
    pair = (copy.deepcopy(conv), copy.deepcopy(bn))
    if groups == 1:
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(*pair, transpose=True)
        with torch.no_grad():
            expected = channel_ulps(fused(x), unfolded64)
        assert float32.fuse_conv_bn_eval_ulp_error_at_scale == pytest.approx(expected, rel=1e-9)
    else:  # PyTorch's own fold fails on a grouped ConvTranspose: said, not hidden
        with pytest.raises(RuntimeError):
            torch.nn.utils.fusion.fuse_conv_bn_eval(*pair, transpose=True)
        reason = float32.fuse_conv_bn_eval_ulp_error_at_scale.reason
        assert "grouped ConvTranspose" in reason


def test_conv_transpose_folds_in_the_exported_graph():
    from bninspect.model.network import ProgramNetwork

    net = transposed_pair(2, 2)
    x = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(5))
    program = ProgramNetwork(torch.export.export(net, (x,)))
    from_graph = layer(inspect(program, x, fold=True), "1").fold
    from_module = layer(inspect(net, x, fold=True), "1").fold
    assert from_graph.producer_kind == "ConvTranspose2d"
    assert from_graph.dtypes[0].folded_ulp_error_at_scale == pytest.approx(
        from_module.dtypes[0].folded_ulp_error_at_scale, rel=1e-12
    )


# --- 8. NaN buffers: NaN, never inf -------------------------------------------------------


def test_nan_buffers_are_nan_never_inf(cli, files):  # noqa: F811
    folder, net = files
    x = folder / "batches" / "b0.npy"
    broken = S.nan_corrupted()
    with torch.no_grad():  # independent: PyTorch's eval-mode bn2 outputs NaN in channel 3
        y = copy.deepcopy(broken).eval().bn2(torch.ones(2, 16, 2, 2))
    assert torch.isnan(y[:, 3]).all() and not torch.isnan(y[:, 2]).any()
    result = inspect(broken, torch.from_numpy(np.load(x)), fold=True)
    bn2 = layer(result, "bn2")
    fused = torch.nn.utils.fusion.fuse_conv_bn_eval(copy.deepcopy(broken.conv2).eval(),
                                                     copy.deepcopy(broken.bn2).eval())  # fmt: skip
    assert torch.isnan(fused.weight[3]).all()  # PyTorch's own fold: NaN weights in channel 3
    folded = bn2.fold.dtypes[0]
    assert math.isnan(folded.folded_ulp_error_at_scale)
    assert math.isnan(folded.fuse_conv_bn_eval_ulp_error_at_scale)
    assert folded.worst[0].channel == 3
    assert math.isnan(bn2.max_gap) and math.isnan(bn2.max_own_gap)
    assert math.isnan(bn2.max_mean_drift) and math.isnan(result.output_gap)
    assert "running_var holds NaN (channel 3)" in bn2.cause
    assert len(result.verdict.summary) <= 2
    assert "running_var holds NaN" in result.verdict.summary[0]
    assert "above the gap threshold" in result.verdict.summary[1]
    args = ["model", "--model", TINY, "--weights", folder / "nan.pt", "--input", x]
    doc = cli.json(*args)
    reasons = doc["null_reasons"]
    assert reasons["/layers/1/max_gap"].startswith("NaN")
    assert not [k for k, v in reasons.items() if "Infinity" in v]
    shown = cli(*args).stdout
    assert " inf " not in shown and "NaN" in shown


@pytest.mark.parametrize(
    ("make", "x"),
    [(S.trained, S.batch(7, 128)), (S.fresh, S.batch(7, 128)), (S.momentum_zero, S.batch(7, 8)),
     (S.double_updated, S.batch(7, 128)), (S.keras_eps, S.batch(7, 64, 0.01, 0.0))],
    ids=["trained", "fresh", "momentum 0", "checkpointed", "keras eps"],
)  # fmt: skip
def test_verdict_is_two_lines_of_plain_words(make, x):
    summary = inspect(make(), x).verdict.summary
    assert 1 <= len(summary) <= 2
    assert all(len(line) <= 80 for line in summary), summary  # short names: 80 columns
    assert not any("limit" in line or "exceed" in line for line in summary)


def test_fold_table_breaks_names_only_at_dots(cli, monkeypatch, tmp_path):
    source = tmp_path / "long_names.py"
    source.write_text(
        "from collections import OrderedDict\n"
        "from torch import nn\n\n\n"
        "def make():\n"
        "    def block():\n"
        "        return nn.Sequential(OrderedDict([\n"
        "            ('conv1', nn.Conv2d(4, 4, 3, padding=1)), ('norm1', nn.BatchNorm2d(4)),\n"
        "            ('upsample0', nn.ConvTranspose2d(4, 4, 2, stride=2)),\n"
        "            ('norm2', nn.BatchNorm2d(4)), ('pool', nn.AvgPool2d(2))]))\n"
        "    layers = OrderedDict((f'denseblock{i}', nn.Sequential(OrderedDict(\n"
        "        [('denselayer1', block())]))) for i in range(1, 4))\n"
        "    return nn.Sequential(OrderedDict([('features', nn.Sequential(layers))]))\n"
    )
    monkeypatch.setenv("COLUMNS", "80")
    out = cli("model", "--model", f"{source}:make", "--shape", "2,4,8,8", "--fold").stdout
    table = out[out.index("Folding") :]
    assert max(map(len, out.splitlines())) <= 80
    words = {w for line in table.splitlines() for w in line.split()}
    for piece in ("features.", "denseblock1.", "denselayer1.", "conv1", "upsample0", "norm2"):
        assert piece in words, (piece, table)  # whole, never cut mid-word


# --- 7. --dump-dir with NaN buffers; the check lines reproduce PyTorch's update ------------


def test_dump_dir_with_nan_buffers_stays_valid_shell(cli, files, tmp_path):  # noqa: F811
    folder, _ = files
    x = folder / "batches" / "b1.npy"
    dump = tmp_path / "acts"
    args = ["model", "--model", TINY, "--weights", folder / "nan.pt", "--input", x]
    doc = cli.json(*args, "--dump-dir", dump)
    for record in (entry["dump"] for entry in doc["layers"]):
        script = Path(record["folder"]) / "commands.sh"
        subprocess.run(["bash", "-n", script], check=True)  # parses as shell
        values = {w.lower() for c in record["commands"] for w in shlex.split(c)}
        assert not values & {"nan", "inf", "-inf", "+inf"}  # values go through files
        for command in record["commands"]:
            cli(*shlex.split(command)[1:])  # each runs, exit 0 (check: passes)
        here = Path(record["folder"])
        np.testing.assert_array_equal(
            np.load(here / "reproduced_train.npy").view(np.uint32),
            np.load(here / "output_train.npy").view(np.uint32),
        )
    bn2 = doc["layers"][1]["dump"]
    assert not bn2["reproducible"] and "NaN" in bn2["note"]
    assert [c.split()[1] for c in bn2["commands"]] == ["run", "check"]  # no eval line
    assert (
        "# not reproduced: its running buffers hold NaN"
        in (Path(bn2["folder"]) / "commands.sh").read_text()
    )


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum 0.1", "momentum None"])
def test_dump_check_lines_carry_the_layer_and_pytorchs_update(cli, tmp_path, momentum):
    net = S.train(S.fresh(momentum=momentum), 5)
    torch.save(net.state_dict(), tmp_path / "state.pt")
    x = S.batch(3, 16)
    np.save(tmp_path / "x.npy", x.numpy())
    kwargs = "momentum=None" if momentum is None else f"momentum={momentum}"
    doc = cli.json("model", "--model", TINY, "--kwargs", kwargs, "--weights",
                   tmp_path / "state.pt", "--input", tmp_path / "x.npy",
                   "--dump-dir", tmp_path / "acts")  # fmt: skip
    record = doc["layers"][0]["dump"]
    check = next(c for c in record["commands"] if c.startswith("bninspect check"))
    words = shlex.split(check)
    assert words[words.index("--eps") + 1] == "1e-05"
    assert words[words.index("--momentum") + 1] == ("none" if momentum is None else "0.1")
    assert words[words.index("--num-batches-tracked") + 1] == "5"
    assert words[words.index("--their-num-batches-tracked") + 1] == "6"
    # the dumped update is PyTorch's own module's, stepped in train mode on the layer's input
    here = Path(record["folder"])
    bn = copy.deepcopy(net.bn1).train()
    with torch.no_grad():
        bn(torch.from_numpy(np.load(here / "input.npy")))
    np.testing.assert_array_equal(np.load(here / "running_mean_after.npy"),
                                  bn.running_mean.double().numpy())  # fmt: skip
    np.testing.assert_array_equal(np.load(here / "running_var_after.npy"),
                                  bn.running_var.double().numpy())  # fmt: skip
    result = cli(*words[1:])  # exit 0: output and update both pass
    assert "match the stated update" in result.stdout


# --- 4. the factory runs without autograd ------------------------------------------------


def test_factory_is_called_without_autograd_and_records_nothing(cli, tmp_path):
    record = tmp_path / "seen.json"
    source = tmp_path / "factory.py"
    source.write_text(
        "import json\nimport torch\nfrom torch import nn\n\n\n"
        "def make():\n"
        "    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))\n"
        "    # a data-dependent initialisation, as some factories run\n"
        "    probe = net(torch.randn(2, 1, 6, 6))\n"
        "    seen = {'grad_enabled': torch.is_grad_enabled(),\n"
        "            'inference_mode': torch.is_inference_mode_enabled(),\n"
        "            'probe_has_grad_fn': probe.grad_fn is not None,\n"
        "            'params_require_grad': all(p.requires_grad for p in net.parameters())}\n"
        f"    with open({str(record)!r}, 'w') as f:\n"
        "        json.dump(seen, f)\n"
        "    return net\n"
    )
    cli("model", "--model", f"{source}:make", "--shape", "2,1,6,6")
    seen = json.loads(record.read_text())
    assert seen == {
        "grad_enabled": False,  # torch.no_grad: building the net records no graph
        "inference_mode": False,  # not inference mode: the parameters are ordinary tensors
        "probe_has_grad_fn": False,
        "params_require_grad": True,  # the module itself is as the user built it
    }


# --- 6. --verbose shows every layer; a state_dict alone reads as one ---------------------


def test_verbose_shows_every_layer(cli, tmp_path):
    source = tmp_path / "deep.py"
    source.write_text(
        "from torch import nn\n\n\n"
        "def make():\n"
        "    layers = []\n"
        "    for _ in range(10):\n"
        "        layers += [nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)]\n"
        "    return nn.Sequential(*layers)\n"
    )
    args = ["model", "--model", f"{source}:make", "--shape", "2,3,6,6"]
    short = cli(*args).stdout
    assert "The worst 8 of 10 batch norms" in short
    for flag in ("--verbose", "--all"):
        everything = cli(*args, flag).stdout
        assert "Every batch norm, in forward order" in everything
        table = everything[everything.index("Every batch norm") :].splitlines()
        names = [line.split()[1] for line in table if line[:3].strip().isdigit()]
        assert names == [str(2 * k + 1) for k in range(10)]


def test_weights_alone_reads_as_a_state_dict(cli, files):  # noqa: F811
    folder, _ = files
    shown = cli("model", "--weights", folder / "state.pt").stdout
    assert "mode as given" not in shown and "batch-norm call" not in shown
    assert "3 batch norms in the state_dict" in shown and "n/a" not in shown
    one = cli("model", "--weights", folder / "state.pt", "--layer", "bn2").stdout
    assert "mode as given" not in one and "eps, momentum and mode are the module's" in one
    doc = cli.json("model", "--weights", folder / "state.pt")
    assert doc["source"]["mode"] is None and "no mode" in doc["null_reasons"]["/source/mode"]
    assert doc["layers"][0]["mode"] is None


# --- 3 and 5. option errors --------------------------------------------------------------


def test_npy_weights_and_empty_kwargs_are_one_line_errors(cli, tmp_path):
    from test_startup import bninspect_without_torch

    np.save(tmp_path / "w.npy", np.ones(3, dtype=np.float32))
    (tmp_path / "w.pt").write_bytes((tmp_path / "w.npy").read_bytes())  # a .npy named .pt
    cases = [
        (["model", "--weights", tmp_path / "w.npy"], "--weights takes a state_dict (.pt/.pth"),
        (["model", "--weights", tmp_path / "w.pt"], "--weight, --bias, --running-mean"),
        (["model", "--model", TINY, "--kwargs", "classes=", "--shape", "2,1,8,8"],
         "--kwargs 'classes=': classes has no value; give classes=VALUE"),
        (["model", "--model", TINY, "--kwargs", "eps=1e-3,momentum=", "--shape", "2,1,8,8"],
         "momentum has no value"),
    ]  # fmt: skip
    for args, words in cases:
        assert words in cli.error(*args, code=2), args
        result = bninspect_without_torch(*args)  # refused before torch loads
        assert result.returncode == 2 and words in result.stderr
        assert result.stderr.count("\n") == 1
    # an empty string is still possible, quoted
    message = cli.error("model", "--model", TINY, "--kwargs", "classes=''", "--shape", "2,1,8,8",
                        code=1)  # fmt: skip
    assert "make_net(classes='')" in message
