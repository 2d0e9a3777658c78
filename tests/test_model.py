"""`bninspect model`: the issue's scenarios built for real, and every number against an
independent computation: PyTorch's own modules in the other mode, float64 recomputations from
the captured layer inputs, torch.optim.swa_utils.update_bn, fvcore's estimator as written."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import model_scenarios as S
from model_helpers import inspect, layer
from strategies import tensors

BN = torch.nn.modules.batchnorm._BatchNorm


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks on a loaded 2-core machine: one torch thread is 10x faster here (the
    intra-op threads spin against each other); every comparison runs in the same setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def capture(net: torch.nn.Module, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each batch norm's (input, output) in one forward of ``net`` as it is (independent of
    bninspect: plain forward hooks)."""
    seen = {}

    def keep(name):
        def hook(_module, args, out):
            seen.setdefault(name, (args[0].clone(), out.clone()))

        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in net.named_modules() if isinstance(m, BN)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return seen


def channel_max(t: torch.Tensor) -> np.ndarray:
    a = t.detach().double().numpy()
    return np.moveaxis(a, 1, 0).reshape(a.shape[1], -1).max(axis=1)


def independent_gap(y_train, y_eval, weight) -> np.ndarray:
    scale = np.maximum(channel_max(y_train.abs()), np.abs(weight))
    return channel_max((y_train.double() - y_eval.double()).abs()) / scale


SCENARIOS = [
    # (name, network, eval batch, status, first divergent layer, words of its cause, flags)
    ("trained", S.trained, S.batch(7, 128), "ok", None, None, {}),
    ("nan", S.nan_corrupted, S.batch(7, 128), "diverges", "bn2", "running_var holds NaN",
     {"bn2": "nan-buffers"}),
    ("momentum 0", S.momentum_zero, S.batch(7, 128), "diverges", "bn1", "momentum 0 froze",
     {"bn1": "frozen", "bn3": "frozen"}),
    ("never trained", S.fresh, S.batch(7, 128), "diverges", "bn1", "untrained buffers",
     {"bn1": "untrained"}),
    ("checkpointed", S.double_updated, S.batch(7, 128), "warnings", None, None,
     {"bn2": "double-counted"}),
    ("batch size 1", S.trained, S.batch(7, 1), "diverges", "bn3", "one value per channel",
     {"bn3": "one-value", "bn2": "few-values"}),
    ("keras eps", S.keras_eps, S.batch(7, 128, scale=0.01, offset=0.0), "diverges", "bn1",
     "eps 0.001", {"bn1": "eps", "bn2": "eps", "bn3": "eps"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "make", "x", "status", "first", "cause", "flags"),
    SCENARIOS,
    ids=[s[0] for s in SCENARIOS],
)
def test_scenario_verdicts(name, make, x, status, first, cause, flags):
    net = make()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modes = {n: m.training for n, m in net.named_modules()}
    result = inspect(net, x)
    assert result.verdict.status == status, result.verdict
    if first is None:
        assert not hasattr(result.first_divergence, "name")
    else:
        assert result.first_divergence.name == first
        assert cause in result.first_divergence.cause
        assert first in result.verdict.summary[0] and cause in result.verdict.summary[0]
    for layer_name, flag in flags.items():
        assert flag in layer(result, layer_name).flags
    # The user's module and buffers are never changed: bit for bit, modes too.
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, equal_nan=True)
    assert {n: m.training for n, m in net.named_modules()} == modes


def test_checkpointing_really_double_counts():
    # Independent of bninspect: the buffers of the checkpointed block counted twice per step.
    net = S.double_updated()
    assert int(net.bn2.num_batches_tracked) == 2 * int(net.bn1.num_batches_tracked) == 120


def test_batch_size_one_is_pytorchs_error_named_before_it_raises():
    net = S.trained()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        S.train_mode_copy(net)(S.batch(7, 1))
    result = inspect(net, S.batch(7, 1))
    bn3 = layer(result, "bn3")
    assert bn3.count == 1 and "one-value" in bn3.flags


@pytest.mark.parametrize("make", [S.trained, S.fresh, S.keras_eps], ids=["trained", "fresh", "eps"])
def test_every_number_against_pytorch_and_float64(make):
    net = make()
    scale = 0.01 if make is S.keras_eps else 2.0
    x = S.batch(9, 64, scale=scale, offset=0.0 if make is S.keras_eps else 0.5)
    train_run = capture(S.train_mode_copy(net), x)
    eval_run = capture(copy.deepcopy(net).eval(), x)
    for name, module in net.named_modules():
        if not isinstance(module, BN):
            continue
        detail = layer(inspect(net, x, layer=name), name)
        rows = detail.details
        x_in, y_train = train_run[name]
        values = np.moveaxis(x_in.double().numpy(), 1, 0).reshape(x_in.shape[1], -1)
        mean, var = values.mean(axis=1), values.var(axis=1)
        np.testing.assert_allclose([r.mean for r in rows], mean, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose([r.var_biased for r in rows], var, rtol=1e-12)
        rm, rv = module.running_mean.double().numpy(), module.running_var.double().numpy()
        np.testing.assert_array_equal([r.running_mean for r in rows], rm)
        std = np.sqrt(rv + module.eps)
        np.testing.assert_allclose([r.mean_drift for r in rows], (mean - rm) / std, rtol=1e-9)
        ratio = (var + module.eps) / (rv + module.eps)
        np.testing.assert_allclose([r.var_ratio for r in rows], ratio, rtol=1e-12)
        weight = module.weight.detach().double().numpy()
        # own gap: PyTorch's own module, in each mode, on the same input
        with torch.no_grad():  # two copies: train mode updates its buffers
            y_alone_train = copy.deepcopy(module).train()(x_in)
            y_alone_eval = copy.deepcopy(module).eval()(x_in)
        own = independent_gap(y_alone_train, y_alone_eval, weight)
        np.testing.assert_allclose([r.own_gap for r in rows], own, rtol=1e-12)
        # whole-network gap: the two independent runs' outputs at this layer
        whole = independent_gap(y_train, eval_run[name][1], weight)
        np.testing.assert_allclose([r.gap for r in rows], whole, rtol=1e-12)
        assert detail.max_gap == pytest.approx(whole.max(), rel=1e-12)
        assert detail.count == values.shape[1]


def test_population_against_update_bn_and_precise_bn():
    net = S.trained(steps=30)
    batches = [S.batch(20, 32), S.batch(21, 32), S.batch(22, 16, offset=1.5)]
    result = inspect(net, *batches, layer="bn2")
    report = layer(result, "bn2").population
    choices = {c.name: c for c in report.choices}
    # Exact pooling, float64, from the layer's inputs captured independently.
    inputs = [capture(S.train_mode_copy(net), b)["bn2"][0] for b in batches]
    pooled = np.concatenate(
        [np.moveaxis(t.double().numpy(), 1, 0).reshape(t.shape[1], -1) for t in inputs], axis=1
    )
    mean, var = pooled.mean(axis=1), pooled.var(axis=1)
    np.testing.assert_allclose(choices["pooled (exact)"].mean, mean, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(choices["pooled (exact)"].var, var, rtol=1e-13)
    assert report.count == pooled.shape[1] and report.batches == 3
    # torch.optim.swa_utils.update_bn itself, on a copy
    swa = copy.deepcopy(net)
    torch.optim.swa_utils.update_bn(batches, swa)
    np.testing.assert_allclose(
        choices["update_bn"].mean, swa.bn2.running_mean, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(choices["update_bn"].var, swa.bn2.running_var, rtol=1e-5)
    # fvcore's precise BN as written (fvcore/nn/precise_bn.py, _PopulationVarianceEstimator),
    # on PyTorch's buffers with momentum 1
    bn_copy = copy.deepcopy(net)
    for m in bn_copy.modules():
        if isinstance(m, BN):
            m.momentum = 1.0
    pop_mean, pop_square, total = torch.zeros(16), torch.zeros(16), 0
    runner = S.train_mode_copy(bn_copy)
    for b, layer_input in zip(batches, inputs, strict=True):
        with torch.no_grad():
            runner(b)
        size = layer_input.numel() // 16  # values per channel, as fvcore's hook counts them
        total += size
        batch_mean, batch_var = runner.bn2.running_mean, runner.bn2.running_var
        square = batch_mean.square() + batch_var * ((size - 1) / size)
        pop_mean += (batch_mean - pop_mean) * (size / total)
        pop_square += (square - pop_square) * (size / total)
    np.testing.assert_allclose(choices["precise_bn"].mean, pop_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        choices["precise_bn"].var, pop_square - pop_mean.square(), rtol=1e-4, atol=1e-6
    )
    # How far each choice moves the output: RMS over the pooled values themselves, float64.
    eps = net.bn2.eps
    exact = (pooled - mean[:, None]) / np.sqrt(var[:, None] + eps)
    for choice in report.choices:
        m, v = np.array(choice.mean), np.array(choice.var)
        moved = (pooled - m[:, None]) / np.sqrt(v[:, None] + eps)
        rms = np.sqrt(((moved - exact) ** 2).mean(axis=1))
        assert choice.max_output_move == pytest.approx(rms.max(), rel=1e-9, abs=1e-15)
    # update_bn's equal weights miss the third batch's smaller size and offset: it moves more
    assert choices["update_bn"].max_output_move > 10 * choices["precise_bn"].max_output_move


MODULES = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
           5: torch.nn.BatchNorm3d}  # fmt: skip


@settings(max_examples=25)
@given(
    x=tensors(max_rank=5),
    dtype=st.sampled_from(["float32", "float64", "float16", "bfloat16"]),
    seed=st.integers(0, 2**16),
    eps=st.sampled_from([1e-5, 1e-3, 0.1]),
)
def test_one_layer_property_against_its_own_module(x, dtype, seed, eps):
    """Any shape, dtype, buffers: the batch statistics against float64 of the layer's input as
    it ran (rounded to the dtype), the own gap against PyTorch's module in both modes."""
    t = torch.from_numpy(x).to(getattr(torch, dtype))
    channels = x.shape[1]
    g = torch.Generator().manual_seed(seed)
    bn = MODULES[x.ndim](channels, eps=eps).to(t.dtype)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) * 3 + 0.01)
        bn.weight.copy_(torch.randn(channels, generator=g))
        bn.bias.copy_(torch.randn(channels, generator=g))
    net = torch.nn.Sequential(bn).eval()
    result = inspect(net, t, layer="0")
    rows = result.layers[0].details
    values = np.moveaxis(t.double().numpy(), 1, 0).reshape(channels, -1)
    np.testing.assert_allclose([r.mean for r in rows], values.mean(axis=1), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(
        [r.var_biased for r in rows], values.var(axis=1), rtol=1e-9, atol=1e-300
    )
    with torch.no_grad():
        y_train = copy.deepcopy(bn).train()(t)
        y_eval = copy.deepcopy(bn).eval()(t)
    own = independent_gap(y_train, y_eval, bn.weight.detach().double().numpy())
    np.testing.assert_allclose([r.own_gap for r in rows], own, rtol=1e-12)


def test_sync_batch_norm_and_momentum_none_on_cpu():
    """SyncBatchNorm's train mode needs a process group; bninspect's train run does not."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.SyncBatchNorm(4), torch.nn.BatchNorm2d(4, momentum=None)
    ).eval()
    result = inspect(net, S.batch(3, 8))
    assert [(x.module, x.flags) for x in result.layers] == [
        ("SyncBatchNorm", ("untrained",)),
        ("BatchNorm2d", ("untrained", "cumulative")),
    ]
    plain = torch.nn.BatchNorm2d(4)  # the independent other run: a plain module, train mode
    plain.load_state_dict(net[1].state_dict())
    with torch.no_grad():
        z = net[0](S.batch(3, 8))
        y = plain.train()(z)
    gap = independent_gap(y, net[1](z), net[1].weight.detach().double().numpy())
    assert result.layers[0].max_gap == pytest.approx(gap.max(), rel=1e-12)
