"""Networks in the states the issue lists, built for real: trained a few SGD steps, with
corrupted buffers, momentum 0, never trained, double-updated by gradient checkpointing, a
Keras-ported eps. Each is the sample TinyNet (samples/tiny_net.py) or a variant of it."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint

ROOT = Path(__file__).resolve().parent.parent


def _tiny_module():
    spec = importlib.util.spec_from_file_location("tiny_net", ROOT / "samples" / "tiny_net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tiny = _tiny_module()


def batch(seed: int, n: int = 32, scale: float = 2.0, offset: float = 0.5) -> torch.Tensor:
    """One batch of the data the networks see: normal with the given spread and offset."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g) * scale + offset


class Checkpointed(tiny.TinyNet):
    """TinyNet with its second block under gradient checkpointing: backward recomputes
    conv2 + bn2 in train mode, so bn2's buffers update twice per step."""

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = checkpoint(lambda t: torch.relu(self.bn2(self.conv2(t))), x, use_reentrant=False)
        x = x.mean(dim=(2, 3))
        x = torch.relu(self.bn3(self.fc(x)))
        return self.head(x)


def train(net: torch.nn.Module, steps: int, lr: float = 0.01, **data) -> torch.nn.Module:
    """``steps`` SGD steps on regression to random targets, then eval mode."""
    torch.manual_seed(1)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    net.train()
    for step in range(steps):
        x = batch(100 + step, **data)
        target = torch.randn(x.shape[0], 4, generator=torch.Generator().manual_seed(500 + step))
        loss = ((net(x) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


def fresh(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny.make_net(**kwargs)


def trained(steps: int = 60, **kwargs) -> torch.nn.Module:
    return train(fresh(**kwargs), steps)


def nan_corrupted() -> torch.nn.Module:
    net = trained()
    with torch.no_grad():
        net.bn2.running_var[3] = float("nan")
    return net


def momentum_zero() -> torch.nn.Module:
    return train(fresh(momentum=0.0), 30)


def double_updated() -> torch.nn.Module:
    torch.manual_seed(0)
    net = Checkpointed()
    return train(net, 60)


def keras_eps() -> torch.nn.Module:
    """eps 1e-3 (Keras's default) on data whose variance is about 1e-4: eps sets the scale."""
    return train(fresh(eps=1e-3), 60, scale=0.01, offset=0.0)


def train_mode_copy(net: torch.nn.Module) -> torch.nn.Module:
    """The independent other run: a copy with its batch norms in train mode, all else eval."""
    other = copy.deepcopy(net).eval()
    for m in other.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train()
    return other


def exported(net: torch.nn.Module):
    """``net`` in eval mode as a torch.export program taking any batch size."""
    batch_size = torch.export.Dim("batch", min=1)
    return torch.export.export(net.eval(), (batch(7, 16),), dynamic_shapes={"x": {0: batch_size}})
