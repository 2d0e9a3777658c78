"""The two runs of the network, train-mode batch norms against eval-mode ones, in lockstep: each
on its own thread, both stopping at every batch norm until the other arrives, so the layer's
two outputs are compared while they exist and neither run keeps more than its own forward
needs. At each meeting the layer's input statistics are computed with the float64 kernels and
its outputs compared per channel; then both runs go on (the train run with the train-mode
output, the eval run with the eval-mode one). More batches feed the train run alone, for the
population statistics."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from bninspect.errors import BnInspectError
from bninspect.model.network import Site, first_tensor, refused
from bninspect.numerics import kernels
from bninspect.numerics.agreement import channel_scale
from bninspect.numerics.kernels import Moments
from bninspect.numerics.reference import (
    ChannelStatistics,
    exact_channel,
    exact_sum_needed,
    statistics_from_moments,
)
from bninspect.pytorch.batchnorm import to_numpy

PYTORCH_ONE_VALUE = "Expected more than 1 value per channel when training"


@dataclass(frozen=True)
class SiteInfo:
    """A batch-norm call's settings and per-channel vectors as float64 (C,) arrays."""

    name: str
    call: int
    module: str
    eps: float
    momentum: float | None
    affine: bool
    track_running_stats: bool
    mode: str
    num_batches_tracked: int | None
    dtype: str
    weight: np.ndarray
    bias: np.ndarray
    running_mean: np.ndarray | None
    running_var: np.ndarray | None

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.call)


def site_info(site: Site, channels: int, dtype: str) -> SiteInfo:
    return SiteInfo(
        site.name,
        site.call,
        site.module,
        site.eps,
        site.momentum,
        site.affine,
        site.track_running_stats,
        site.mode,
        site.num_batches_tracked,
        dtype,
        *(site.vector(which, channels) for which in ("weight", "bias")),
        *(site.vector(which, channels) for which in ("running_mean", "running_var")),
    )


@dataclass(frozen=True)
class LayerMeasure:
    """What the meeting at one batch norm measured; per-channel arrays are float64 (C,).

    ``own_gap``: max |train - eval| of this layer alone on the train run's input, per channel,
    over ``output_scale``; ``gap``: the same between the two runs' outputs at this layer.
    Both None where train mode cannot run (one value per channel)."""

    site: SiteInfo
    count: int
    stats: ChannelStatistics
    moments: Moments
    output_scale: np.ndarray
    own_gap: np.ndarray | None
    gap: np.ndarray | None
    one_value: bool


def statistics_and_moments(x: np.ndarray) -> tuple[ChannelStatistics, Moments]:
    """reference.channel_statistics, keeping the kernel's moments for merging batches."""
    moments = kernels.moments(x, x.dtype.name)
    stats = statistics_from_moments(moments, x.size // x.shape[1])
    redo = np.flatnonzero(exact_sum_needed(moments))
    for c in redo:  # values cancelling beyond the kernel's error bound: exactly
        total, mean, m2 = exact_channel(x, int(c))
        stats.total[c], stats.mean[c], stats.m2[c] = total, mean, m2
    return stats, moments


def per_channel_max(t: torch.Tensor) -> np.ndarray:
    """max over every axis but 1, as float64 (C,); NaN where a channel holds one."""
    C = t.shape[1]
    flat = t.transpose(0, 1).reshape(C, -1)
    biggest = flat.amax(dim=1) if flat.shape[1] else torch.zeros(C, dtype=t.dtype)
    return to_numpy(biggest.double()).astype(np.float64)


def relative_gap(a: torch.Tensor, b: torch.Tensor, scale: np.ndarray) -> np.ndarray:
    """Per channel max |a - b| / scale (float64); NaN where either output holds NaN in that
    channel (a NaN output is not an infinitely large one: it is shown as NaN)."""
    difference = per_channel_max((a.double() - b.double()).abs())  # amax propagates NaN
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(difference == 0, 0.0, difference / scale)


def measure_layer(
    site: Site, x: torch.Tensor, y_train: torch.Tensor, y_eval_run: torch.Tensor | None, dtype: str
) -> LayerMeasure:
    """The layer's input statistics (float64 kernels) and its gaps: ``x`` and ``y_train`` from
    the train run, ``y_eval_run`` this layer's output in the eval run (None: not compared)."""
    channels = x.shape[1]
    info = site_info(site, channels, dtype)
    x_np = to_numpy(x.contiguous())
    stats, moments = statistics_and_moments(x_np)
    del x_np
    count = x.numel() // channels
    one_value = count == 1
    magnitude = per_channel_max(y_train.double().abs().nan_to_num(0.0, 0.0, 0.0))
    scale = channel_scale(magnitude, info.weight)
    own_gap = gap = None
    if not one_value:
        own_gap = relative_gap(y_train, site.eval_output(x), scale)
        if y_eval_run is not None:
            gap = relative_gap(y_train, y_eval_run, scale)
    return LayerMeasure(info, count, stats, moments, scale, own_gap, gap, one_value)


class _Abandoned(Exception):
    """The other run stopped: this one stops too."""


class _Lockstep:
    """A meeting point for the two runs: the second to arrive at a batch norm runs ``meet`` on
    both runs' items while the first waits; then both go on. A run that ends, normally or not,
    releases the other from waiting for it."""

    def __init__(self, meet: Callable[[tuple, tuple], None]) -> None:
        self.meet = meet
        self.slots: dict[str, tuple] = {}
        self.failure: BaseException | None = None
        self.ended: set[str] = set()
        self.meetings = 0
        self.cond = threading.Condition()

    def arrive(self, mode: str, item: tuple) -> None:
        other = "eval" if mode == "train" else "train"
        with self.cond:
            if self.failure is not None or other in self.ended:
                raise _Abandoned
            self.slots[mode] = item
            if other in self.slots:
                try:
                    self.meet(self.slots["train"], self.slots["eval"])
                except BaseException as exc:
                    self.failure = exc
                    self.cond.notify_all()
                    raise _Abandoned from None
                finally:
                    self.slots.clear()
                self.meetings += 1
                self.cond.notify_all()
                return
            seen = self.meetings
            self.cond.wait_for(
                lambda: self.meetings != seen or self.failure is not None or other in self.ended
            )
            if self.meetings == seen:
                self.slots.pop(mode, None)
                raise _Abandoned

    def end(self, mode: str) -> None:
        with self.cond:
            self.ended.add(mode)
            self.cond.notify_all()


def _train_output(site: Site, x: torch.Tensor, y_eval: torch.Tensor) -> torch.Tensor:
    """The train-mode output; the eval-mode one where train mode refuses one value per channel
    (PyTorch would raise; the layer's row says so instead)."""
    if x.numel() // x.shape[1] == 1:
        return y_eval
    return site.train_output(x)


@dataclass(frozen=True)
class RunOutput:
    output_gap: float | None  # the network's output, train run against eval run


def compare_runs(
    network,
    x: torch.Tensor,
    on_layer: Callable[[LayerMeasure, Site, torch.Tensor, torch.Tensor], None],
) -> RunOutput:
    """Run the network on ``x`` twice in lockstep (train-mode batch norms, eval-mode ones),
    calling ``on_layer(measure, site, x, y_train)`` at each batch norm in forward order."""
    dtype = str(network.dtype()).removeprefix("torch.")

    def meet(train: tuple, evaluation: tuple) -> None:
        site, x_train, y_train = train
        eval_site, _x_eval, y_eval = evaluation
        if site.key != eval_site.key:
            raise BnInspectError(
                f"the two runs reached different batch norms ({site.name} in train mode, "
                f"{eval_site.name} in eval mode): the network's control flow depends on its "
                "mode; inspect it with --weights alone"
            )
        on_layer(measure_layer(site, x_train, y_train, y_eval, dtype), site, x_train, y_train)

    lockstep = _Lockstep(meet)
    outputs: dict[str, object] = {}
    errors: dict[str, BaseException] = {}
    where: dict[str, str | None] = {}

    def train_hook(site, x_in, y_eval):
        y_train = _train_output(site, x_in, y_eval)
        lockstep.arrive("train", (site, x_in, y_train))
        return y_train

    def eval_hook(site, x_in, y_eval):
        lockstep.arrive("eval", (site, x_in, y_eval))
        return None

    def run(mode: str, hook) -> None:
        try:
            outputs[mode] = network.forward(x, hook)
        except BaseException as exc:
            errors[mode] = exc
            where[mode] = network.current
        finally:
            lockstep.end(mode)  # the other run never waits for this one again

    other = threading.Thread(target=run, args=("eval", eval_hook), name="eval-run")
    other.start()
    run("train", train_hook)
    other.join()
    if lockstep.failure is not None:
        raise lockstep.failure
    for mode in ("train", "eval"):
        exc = errors.get(mode)
        if exc is not None and not isinstance(exc, _Abandoned):
            if isinstance(exc, BnInspectError):
                raise exc
            if isinstance(exc, Exception):
                raise refused(exc, where[mode], tuple(x.shape)) from None
            raise exc
    if errors:
        raise BnInspectError(
            "the train-mode and eval-mode runs made different numbers of batch-norm calls: the "
            "network's control flow depends on its mode; inspect it with --weights alone"
        )
    y_train, y_eval = first_tensor(outputs["train"]), first_tensor(outputs["eval"])
    output_gap = None
    if y_train is not None and y_eval is not None and y_train.shape == y_eval.shape:
        flat_t, flat_e = y_train.reshape(1, 1, -1), y_eval.reshape(1, 1, -1)
        scale = per_channel_max(flat_t.double().abs().nan_to_num(0.0, 0.0, 0.0))
        output_gap = float(relative_gap(flat_t, flat_e, scale)[0])
    return RunOutput(output_gap)


def train_run(network, x: torch.Tensor, on_layer: Callable[[Site, torch.Tensor], None]) -> None:
    """The network with train-mode batch norms alone, ``on_layer(site, x)`` at each."""

    def hook(site, x_in, y_eval):
        on_layer(site, x_in)
        return _train_output(site, x_in, y_eval)

    try:
        network.forward(x, hook)
    except BnInspectError:
        raise
    except Exception as exc:
        raise refused(exc, network.current, tuple(x.shape)) from None
