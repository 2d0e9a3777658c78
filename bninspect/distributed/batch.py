"""``run --ranks`` and ``explain --ranks`` on this machine: check the request, split the batch,
start the ranks, and run today's full-batch inspection in this process while they work.

Everything that can be refused is refused before a rank starts (and before torch loads): the
split must fit the batch, and the layer must be one PyTorch step in train mode under PyTorch's
rules, which is what data-parallel batch norm is about.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bninspect.conventions.rules import PYTORCH
from bninspect.distributed.exchange import load_batch, save_array
from bninspect.distributed.launch import LocalRanks
from bninspect.distributed.sharding import batch_split
from bninspect.errors import OptionError
from bninspect.input.npy_files import check_writable, write_arrays
from bninspect.input.parameters import LayerParameters
from bninspect.input.request import InspectRequest
from bninspect.input.tensor import PlannedInput
from bninspect.numerics.pooling import values_per_channel
from bninspect.numerics.reference import channel_statistics, reference_forward
from bninspect.numerics.running import initial_state
from bninspect.pytorch.inspection import Inspection, prepare, run_inspection
from bninspect.results.common import Settings
from bninspect.text import counted


def refuse_unsplittable(request: InspectRequest, option: str) -> None:
    """What --ranks cannot do, refused with the reason (``option`` is how the user asked)."""
    if request.mode != "train":
        raise OptionError(
            f"{option}: eval mode normalizes with the running buffers, the same on every rank, "
            "so nothing differs between ranks; drop it, or use --mode train"
        )
    if request.steps is not None or request.batch_size is not None:
        raise OptionError(
            f"{option} splits one training step's batch over ranks; drop --steps and "
            "--batch-size (the whole input is the global batch)"
        )
    if request.channel_axis != 1:
        raise OptionError(
            f"{option} splits an (N, C, ...) batch over ranks; give it channels-first (drop "
            "--channel-axis, or save the tensor with channels on axis 1)"
        )
    if request.num_batches_tracked:
        raise OptionError(f"{option} runs one step of a fresh layer; drop --num-batches-tracked")
    if request.convention is not PYTORCH:
        raise OptionError(
            f"{option} shows PyTorch's data-parallel batch norm (DDP, SyncBatchNorm); drop "
            "--convention or give --convention pytorch"
        )


@dataclass(frozen=True)
class RankRun:
    """The full batch's inspection (this process), the split, and what each rank reported."""

    inspection: Inspection
    sizes: tuple[int, ...]
    reports: tuple[dict[str, np.ndarray], ...]
    launcher: str
    batch_weight: float
    minimum: np.ndarray  # per channel, over the batch's values: the ends of every linear y(x)
    maximum: np.ndarray
    messages: list[str]  # one per file written


def channel_extremes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest value of each channel, NaN ignored (float64; NaN for a channel of
    NaN alone, whose outputs are NaN whatever the regime)."""
    axes = (0, *range(2, x.ndim))
    wide = x if x.dtype.itemsize >= 4 else x.astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN channel: NaN is the answer
        return (
            np.nanmin(wide, axis=axes).astype(np.float64),
            np.nanmax(wide, axis=axes).astype(np.float64),
        )


def _check_outputs(request: InspectRequest) -> None:
    """--save-input and --save-output can be written, before any work (as prepare checks)."""
    inputs = (request.input_path,) if request.input_path is not None else ()
    targets = [("--save-input", request.save_input), ("--save-output", request.save_output)]
    targets = [(option, path) for option, path in targets if path is not None]
    if len(targets) == 2 and targets[0][1].resolve() == targets[1][1].resolve():
        raise OptionError("--save-input and --save-output name the same file; give two paths")
    for option, path in targets:
        check_writable(path, option, request.force, inputs)


def write_task(
    local: LocalRanks,
    number: int,
    x: np.ndarray,
    sizes: tuple[int, ...],
    params: LayerParameters,
    eps: float,
    momentum: float | None,
    module: str,
    affine: bool = True,
    index: tuple[int, ...] | None = None,
    save_output: bool = False,
) -> dict:
    """Task ``number`` of a launch: the batch ``x`` split as ``sizes``, one training step of a
    fresh layer (``momentum`` None: PyTorch's cumulative average), with the full batch's float64
    statistics each rank compares its outputs with. Writes its files into the launch's folder
    and returns the task for LocalRanks.start."""
    stats = channel_statistics(x)
    before_state = initial_state(params.running_mean, params.running_var)
    full = reference_forward(stats, before_state, eps, momentum, True)
    names = (f"params{number}.npz", f"reference{number}.npz", f"input{number}.npy")
    local.save(
        names[0],
        weight=params.weight,
        bias=params.bias,
        running_mean=params.running_mean,
        running_var=params.running_var,
    )
    local.save(names[1], mean=full.mean, std=full.std)
    save_array(local.path(names[2]), x)
    return {
        "kind": "regimes",
        "input": str(local.path(names[2])),
        "dtype": x.dtype.name,
        "sizes": list(sizes),
        "module": module,
        "eps": eps,
        "momentum": momentum,
        "batch_weight": 1.0 if momentum is None else momentum,  # the first step's weight
        "affine": affine,
        "params": names[0],
        "reference": names[1],
        "index": None if index is None else list(index),
        "save_output": save_output,
    }


def run_split(
    request: InspectRequest,
    ranks: int | None,
    rank_sizes: str | None,
    timeout: float,
    index_for: Callable[[tuple[int, ...]], tuple[int, ...]] | None = None,
) -> tuple[RankRun, tuple[int, ...] | None]:
    """Split the batch, run the ranks and, meanwhile, the full batch here; ``index_for(batch
    shape)`` resolves explain's element (passed to the ranks, so the one holding it reports
    its values). Returns the run and the element's index."""
    option = "--ranks" if ranks is not None else "--rank-sizes"
    refuse_unsplittable(request, option)
    _check_outputs(request)
    found: dict[str, object] = {}

    def before(planned: PlannedInput, settings: Settings) -> None:
        sizes = batch_split(planned.shape[0], ranks, rank_sizes)
        per_value = values_per_channel(planned.shape, 1)
        lonely = [r for r, size in enumerate(sizes) if size * per_value == 1]
        if lonely and request.save_output is not None:
            raise OptionError(
                f"--save-output writes PyTorch's per-rank output, but rank {lonely[0]} holds "
                "one value per channel, which PyTorch's module refuses in train mode; drop "
                "--save-output or give that rank more samples"
            )
        found["sizes"] = sizes
        if index_for is not None:
            found["index"] = index_for(planned.shape)

    # --save-output means the ranks' output here: keep prepare from refusing or planning
    # PyTorch's whole output for it (the files are checked above and written below).
    plain = dataclasses.replace(request, save_output=None, save_input=None)
    prepared = prepare(plain, before, compare_only=index_for is None)
    sizes: tuple[int, ...] = found["sizes"]  # type: ignore[assignment]
    index: tuple[int, ...] | None = found.get("index")  # type: ignore[assignment]
    x, settings, params = prepared.tensor.array, prepared.settings, prepared.params
    momentum = settings.momentum if isinstance(settings.momentum, float) else None
    with LocalRanks(len(sizes), timeout) as local:
        task = write_task(
            local, 0, x, sizes, params, settings.eps, momentum, settings.module,
            settings.affine, index, request.save_output is not None,
        )  # fmt: skip
        local.start([task])
        inspection = run_inspection(prepared)  # the full batch, while the ranks work
        local.wait()
        reports = tuple(local.report(r) for r in range(len(sizes)))
        outputs = []
        if request.save_output is not None:
            for rank in range(len(sizes)):
                path = local.path(f"rank{rank}.0.output.npy")
                outputs.append(np.array(load_batch(path, x.dtype.name)))
    messages = _save_files(request, x, outputs)
    minimum, maximum = channel_extremes(x)
    launcher = (
        f"{counted(len(sizes), 'local process', 'local processes')}, one gloo group over "
        "loopback (file:// rendezvous in a private temporary directory)"
    )
    weight_of_batch = task["batch_weight"]
    run = RankRun(inspection, sizes, reports, launcher, weight_of_batch, minimum, maximum, messages)
    return run, index


def _save_files(request: InspectRequest, x: np.ndarray, outputs: list[np.ndarray]) -> list[str]:
    """Write --save-input (the batch) and --save-output (the ranks' outputs in rank order: the
    global batch's output under DDP without SyncBatchNorm), all or none; bfloat16 as float32,
    exactly. One message per file."""
    files, messages = [], []
    note = (
        " as float32 (exact; reload it with --dtype bfloat16)" if x.dtype.name == "bfloat16" else ""
    )
    if request.save_input is not None:
        files.append((request.save_input, _savable(x)))
        messages.append(f"wrote the input tensor to {request.save_input}{note}")
    if request.save_output is not None:
        files.append((request.save_output, _savable(np.concatenate(outputs))))
        messages.append(
            f"wrote PyTorch's per-rank output (each rank's block normalized alone, in rank "
            f"order) to {request.save_output}{note}"
        )
    write_arrays(files, request.force)  # --force was checked at start; a newcomer is kept
    return messages


def _savable(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float32) if array.dtype.name == "bfloat16" else array
