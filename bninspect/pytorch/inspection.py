"""One inspection: check the request, get the tensor, feed it batch by batch through PyTorch's
module and the float64 reference under a convention. Both ``run`` and ``explain`` report from
the resulting ``Inspection``.

Everything that can fail on the user's input fails in ``prepare``, before torch is imported:
it checks the request from the input's description (a .npy header, --shape), and only then
starts importing torch in the background while it reads or generates the values.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bninspect.conventions.rules import PYTORCH, Convention, batch_weight, effective_eps
from bninspect.dtypes import is_bfloat16
from bninspect.errors import BnInspectError, OptionError
from bninspect.input.channel_groups import groups_reproduce_whole
from bninspect.input.layout import batch_axis, resolve_axis, to_user_shape
from bninspect.input.memory import check_fits, run_need
from bninspect.input.npy_files import check_writable, identity, release_pages, write_arrays
from bninspect.input.option_effects import batch_notices
from bninspect.input.parameters import LayerParameters, resolve_parameters
from bninspect.input.request import InspectRequest
from bninspect.input.tensor import (
    InputTensor,
    PlannedInput,
    plan_file,
    plan_generated,
    plan_mapped,
)
from bninspect.numerics import kernels
from bninspect.numerics.kernels import OutputErrors, Progress, Region
from bninspect.numerics.reference import (
    ChannelStatistics,
    ReferenceForward,
    channel_statistics,
    reference_forward,
)
from bninspect.numerics.running import StepUpdate, initial_state, torch_momenta
from bninspect.results.common import CUMULATIVE, Number, Settings, Undefined
from bninspect.text import shape as shape_text

if TYPE_CHECKING:
    from bninspect.pytorch.batchnorm import TorchRun

DEFAULT_SHAPE = (1, 2, 3, 4)
# PyTorch pairs ranks with modules this way: (N, C) and (N, C, L) both go to BatchNorm1d.
MODULE_FOR_RANK = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}
STATS_ONLY = "--stats-only streams the statistics alone"


@dataclass(frozen=True)
class Prepared:
    """A request whose input has been obtained and checked: nothing left to fail on.
    ``mapping`` is the memory map of a streamed file (--stats-only), else None. ``no_peer``
    says why PyTorch's module will not run (--stats-only, or a convention accepting what
    PyTorch refuses), or is None; else ``torch_runner`` is torch_batchnorm.run_batchnorm on its
    way (imported in the background; its result raises BnInspectError if torch is missing).
    ``extra`` is what prepare's ``also_check`` returned. ``by_groups``: see prepare."""

    request: InspectRequest
    tensor: InputTensor
    settings: Settings
    params: LayerParameters
    mapping: object | None = None
    convention: Convention = PYTORCH
    no_peer: str | None = None
    torch_runner: Future | None = None
    extra: object = None
    by_groups: bool = False  # PyTorch runs over channel groups, each compared as it comes


# Told a phase's name and size in bytes, returns the callback each finished block calls with
# its bytes: how the CLI draws a progress bar without the core knowing about terminals.
PhaseProgress = Callable[[str, int], Progress]


@dataclass(frozen=True)
class Inspection:
    """The batches after PyTorch's module and the float64 reference have both seen them.

    ``batch`` is the last step's batch (a view of the tensor), ``stats`` and ``forward`` the
    reference's pass over it; ``history`` holds every training step's update (empty in eval
    mode). ``torch_run`` is None when PyTorch was not run (``no_peer`` says why).
    """

    tensor: InputTensor
    settings: Settings
    params: LayerParameters
    convention: Convention
    batch: np.ndarray
    stats: ChannelStatistics
    forward: ReferenceForward
    history: tuple[StepUpdate, ...]
    torch_run: TorchRun | None
    no_peer: str | None = None
    train_eval: bool = False  # compare train and eval outputs of the last batch (over steps)
    requested_eps: float | None = None  # eps as given, before a floor raised it (settings.eps)
    # PyTorch's output against the reference, when it was compared group by group as PyTorch
    # produced it (torch_run then holds no output); else None
    output_errors: OutputErrors | None = None
    # Drops the pages of a finished Region of ``batch`` when the input is memory-mapped
    # (--stats-only), so a later pass over it keeps memory bounded too; else None
    release_region: Callable[[Region], None] | None = None
    # check --ranks / --rank-sizes: samples per data-parallel rank, for the catalogue's
    # data-parallel mistakes; None when not given
    rank_sizes: tuple[int, ...] | None = None


def _check_outputs(request: InspectRequest, reads: tuple[Path, ...]) -> None:
    """Refuse save paths that cannot be written, or that name a file this run reads (the
    input, a vector's file, or the command's own ``reads``), by identity: a link or another
    name of it is the same file."""
    inputs = [request.input_path] if request.input_path else []
    inputs += [Path(s.path) for s in request.vectors.values() if s.kind == "file"]
    protected = tuple(filter(None, (identity(path) for path in (*inputs, *reads))))
    targets = [("--save-input", request.save_input), ("--save-output", request.save_output)]
    targets = [(option, path) for option, path in targets if path is not None]
    if len(targets) == 2 and _same_place(targets[0][1], targets[1][1]):
        raise OptionError("--save-input and --save-output name the same file; give two paths")
    for option, path in targets:
        check_writable(path, option, request.force, protected)


def _same_place(a: Path, b: Path) -> bool:
    """Whether two save paths name one file (existing or not)."""
    if identity(a) is not None and identity(a) == identity(b):
        return True
    return identity(a.parent) == identity(b.parent) and a.name == b.name


ZERO_EPS_WORDS = "'batch_norm eps must be positive during training'"
ONE_VALUE_WORDS = "'Expected more than 1 value per channel when training'"


def _check_trainable(
    batch_shape: tuple[int, ...], mode: str, eps: float, convention: Convention, axis: int = 1
) -> str | None:
    """In train mode, refuse what PyTorch's module refuses when PyTorch's rules are asked for,
    with the reason and a way out. Other conventions go on without PyTorch's module: return why
    it cannot run, or None."""
    if mode != "train":
        return None
    one_value = math.prod(batch_shape) // batch_shape[1] == 1
    if eps == 0 and convention.refuses_zero_eps_in_train:
        raise BnInspectError(
            f"train mode with --eps 0: PyTorch raises {ZERO_EPS_WORDS} (a constant channel would "
            "divide 0 by 0); give a positive --eps, or use --mode eval"
        )
    if one_value and convention.one_value == "refuse":
        raise BnInspectError(
            "train mode needs more than one value per channel, but shape "
            f"{shape_text(to_user_shape(batch_shape, axis))} has one: its batch variance is 0 "
            f"and the unbiased one undefined, so PyTorch raises {ONE_VALUE_WORDS}; use --mode "
            "eval to normalize with the running statistics, or give a batch with more values"
        )
    hits = ((ZERO_EPS_WORDS, eps == 0), (ONE_VALUE_WORDS, one_value))
    refused = [words for words, hit in hits if hit]
    if not refused:
        return None
    return f"PyTorch's module raises {' and '.join(refused)} in train mode"


def _batching(request: InspectRequest, rows: int, axis: int = 0) -> tuple[int, int]:
    """(batch size, steps) for a loaded tensor of ``rows`` samples on its ``axis``: --batch-size
    and --steps as given, or the one implied by the other, or one step over everything."""
    steps, size = request.steps, request.batch_size
    name = request.input_path
    if size is None:
        steps = steps or 1
        if rows % steps:
            raise OptionError(
                f"--steps {steps}: {name} has {rows} samples on axis {axis}, which do not split "
                f"into {steps} equal batches; give --batch-size too, or --steps dividing {rows}"
            )
        return rows // steps, steps
    if size > rows:
        raise OptionError(
            f"--batch-size {size}: {name} has only {rows} samples on axis {axis}; give at most "
            f"{rows}"
        )
    if steps is None:
        if rows % size:
            divisors = _first_divisors(rows, 9)
            shown = ", ".join(map(str, divisors[:8])) + (", ..." if len(divisors) > 8 else "")
            raise OptionError(
                f"--batch-size {size} does not divide the {rows} samples of {name}; give a "
                f"divisor of {rows} ({shown}), or --steps to use only the first batches"
            )
        return size, rows // size
    if steps * size > rows:
        raise OptionError(
            f"--steps {steps} with --batch-size {size} needs {steps * size} samples but {name} "
            f"has {rows}; give at most --steps {rows // size}"
        )
    return size, steps


def _first_divisors(n: int, count: int) -> list[int]:
    """The ``count`` smallest divisors of ``n`` (fewer if it has fewer), in a time bounded
    whatever n is: trial division up to sqrt(n) but at most a million tries, with the
    cofactors of those found (past a million tries, some divisors between may be missing)."""
    small, large = [], []
    d = 1
    while d * d <= n and d <= 1_000_000 and len(small) < count:
        if n % d == 0:
            small.append(d)
            if d * d != n:
                large.append(n // d)
        d += 1
    return sorted(set(small + large))[:count]


def _unfed_notice(rows: int, batch_size: int, steps: int, axis: int = 0) -> str | None:
    """Say which samples at the end of the samples' ``axis`` no step reached, if any."""
    used = batch_size * steps
    if used == rows:
        return None
    which = f"sample {used}" if rows - used == 1 else f"samples {used} to {rows - 1}"
    step_text = "1 step" if steps == 1 else f"{steps} steps"
    size_text = "1 sample" if batch_size == 1 else f"{batch_size} samples"
    verb = "uses" if steps == 1 else "use"
    return (
        f"{which} not fed: {step_text} of {size_text} {verb} the first {used} of {rows} on axis "
        f"{axis}"
    )


def _torch_momentum(convention: Convention, momentum: float | None) -> Number:
    """PyTorch's momentum for the same rule; undefined where it changes every step."""
    if momentum is None:
        return Undefined(CUMULATIVE)
    if convention.has_scale_factor:
        return Undefined(
            "Caffe weighs each batch 1 / scale_factor, which changes every step; see each "
            "step's batch_weight"
        )
    return batch_weight(convention, momentum)


def _one_plain_pass(request: InspectRequest) -> bool:
    """One step over the whole input, with no train/eval gap and no output to save: all
    PyTorch's output is wanted for is its errors against the reference."""
    over_steps = request.steps is not None or request.batch_size is not None
    return not over_steps and request.save_output is None


def prepare(
    request: InspectRequest,
    also_check: Callable[[PlannedInput, Settings], object] | None = None,
    compare_only: bool = False,
    reads: tuple[Path, ...] = (),
    extra_need: Callable[[PlannedInput, int, int], int] | None = None,
    need_words: tuple[str, str] | None = None,
) -> Prepared:
    """Check the outputs can be written, check the input from its description, split it into
    batches and resolve the layer's vectors, and call ``also_check`` (a command's own checks,
    e.g. loading the user's output), raising BnInspectError/OptionError on any problem; then,
    with nothing left to fail on the user's side, start importing torch (if PyTorch will run)
    and obtain the tensor meanwhile.

    ``compare_only``: the command needs PyTorch's output only as its errors against the
    reference (run). Then, over one plain pass of an input whose shape and layout allow it
    (channel_groups.py), PyTorch will run over channel groups, each compared as it comes: the
    whole output is never held (1.4x a large input's size in memory instead of 2.2x), and the
    fit check counts on that.

    ``reads``: the command's own files (check --output, explain --against), which no save
    path may name. ``extra_need(planned, batch_size, steps)``: the bytes the command's own
    work holds beside the run's (memory.run_need), counted in the one fit check;
    ``need_words``: (what the check's message puts before the input, its advice)."""
    _quiet_openmp()  # on the main thread, before any other starts
    _check_outputs(request, reads)
    convention = request.convention
    may_group = compare_only and _one_plain_pass(request)
    if request.input_path is not None and request.stats_only:
        planned = plan_mapped(request.input_path, request.dtype, request.channel_axis)
    elif request.input_path is not None:
        planned = plan_file(request.input_path, request.dtype, may_group, request.channel_axis)
    unfed_notice = None
    if request.input_path is not None:
        samples_axis = batch_axis(planned.channel_axis)
        batch_size, steps = _batching(request, planned.shape[0], samples_axis)
        unfed_notice = _unfed_notice(planned.shape[0], batch_size, steps, samples_axis)
    else:
        shape, dtype = request.shape or DEFAULT_SHAPE, request.dtype or "float32"
        axis = resolve_axis(request.channel_axis, len(shape), f"--shape {shape_text(shape)}")
        samples_axis = batch_axis(axis)
        batch_size, steps = shape[samples_axis], request.steps or 1
        whole = list(shape)
        whole[samples_axis] *= steps
        planned = plan_generated(
            tuple(whole), request.seed, dtype, request.offset, request.scale, may_group, axis
        )
        if steps > 1:
            given = ",".join(map(str, shape))
            planned = dataclasses.replace(
                planned, what=f"--shape {given} over --steps {steps} in {dtype}"
            )
    eps, eps_notice = effective_eps(convention, request.eps)
    batch_shape = (batch_size, *planned.shape[1:])
    if request.stats_only:
        no_peer = STATS_ONLY
    else:  # what only PyTorch refuses
        no_peer = _check_trainable(
            batch_shape, request.mode, eps, convention, planned.channel_axis
        )
    if no_peer and request.save_output is not None:
        raise BnInspectError(
            f"--save-output writes PyTorch's output, but {no_peer}; drop --save-output"
        )
    # Everything the run will hold, counted from the description alone, before anything the
    # size of the input (or of its channels, or steps) is built.
    check_fits(
        run_need(
            planned,
            batch_size,
            steps,
            torch_runs=no_peer is None,
            eval_pass=request.mode == "train"
            and (request.steps is not None or request.batch_size is not None or steps > 1),
            save_input=request.save_input is not None,
            save_output=request.save_output is not None,
            command=extra_need,
        ),
        (need_words[0] if need_words else "") + planned.what,
        need_words[1] if need_words else planned.advice,
    )
    channels = planned.shape[1]
    params = resolve_parameters(
        request.vectors, channels, planned.dtype, request.seed, request.affine
    )
    momentum = request.momentum
    settings = Settings(
        module=MODULE_FOR_RANK[len(planned.shape)],
        mode=request.mode,
        eps=eps,
        momentum=Undefined(CUMULATIVE) if momentum is None else momentum,
        affine=request.affine,
        weight_given=request.vectors["--weight"].text,
        bias_given=request.vectors["--bias"].text,
        running_mean_given=request.vectors["--running-mean"].text,
        running_var_given=request.vectors["--running-var"].text,
        convention=convention.name,
        training_steps=steps,
        batch_size=batch_size,
        torch_momentum=_torch_momentum(convention, momentum),
        notices=(
            *filter(None, (unfed_notice, eps_notice)),
            *request.notices,
            *batch_notices(request, math.prod(batch_shape) // channels),
        ),
        num_batches_tracked=request.num_batches_tracked,
    )
    extra = also_check(planned, settings) if also_check is not None else None
    # Reading a large file takes about as long as importing torch (~2 s): do both at once.
    torch_runner = _start_torch_import() if no_peer is None else None
    tensor = planned.obtain()
    by_groups = planned.by_groups and groups_reproduce_whole(
        tensor.array.shape, tensor.array.flags.c_contiguous
    )
    return Prepared(
        request,
        tensor,
        settings,
        params,
        tensor.mapping,
        convention,
        no_peer,
        torch_runner,
        extra,
        by_groups and no_peer is None,
    )


def _release_region(prepared: Prepared, x: np.ndarray):
    """A callback dropping the pages of each finished region of ``x``, a batch of a
    memory-mapped input, so streaming keeps resident memory to what is being read (None when
    nothing is mapped). A region spans the memory from its first value, (n0, c0, s0), to its
    last, (n1 - 1, c1 - 1, s1 - 1), in whatever layout ``x`` views (channels last, say)."""
    if prepared.mapping is None:
        return None
    itemsize, strides = x.dtype.itemsize, x.strides
    spatial = x.shape[2:]
    base = x.__array_interface__["data"][0]
    offset = base - np.frombuffer(prepared.mapping, np.uint8, 1).__array_interface__["data"][0]
    page = mmap.PAGESIZE
    # Another layout is read a slab at a time whose ends share pages with the next: released
    # whole (a page another thread still reads is simply read again), or they would pile up.
    outward = not x.flags.c_contiguous

    def at(n: int, c: int, s: int) -> int:
        position = np.unravel_index(s, spatial) if spatial else ()
        inner = sum(int(i) * stride for i, stride in zip(position, strides[2:], strict=True))
        return offset + n * strides[0] + c * strides[1] + inner

    def release(r: Region) -> None:
        start, end = at(r.n0, r.c0, r.s0), at(r.n1 - 1, r.c1 - 1, r.s1 - 1) + itemsize
        if outward:
            start, end = start // page * page, -(-end // page) * page
        release_pages(prepared.mapping, start, end)

    return release


def _momentum_of(settings: Settings) -> float | None:
    return None if isinstance(settings.momentum, Undefined) else settings.momentum


def _reference_steps(
    prepared: Prepared, tell: Progress | None
) -> tuple[ChannelStatistics, ReferenceForward, tuple[StepUpdate, ...]]:
    """The float64 reference over every batch in turn, advancing the running statistics by the
    convention's rule: the last batch's statistics and pass, and every step's update."""
    settings, params, x = prepared.settings, prepared.params, prepared.tensor.array
    size, train = settings.batch_size, settings.mode == "train"
    state = initial_state(
        params.running_mean, params.running_var, prepared.request.num_batches_tracked
    )
    history: list[StepUpdate] = []
    for step in range(settings.training_steps):
        batch = x[step * size : (step + 1) * size]
        stats = channel_statistics(batch, tell, after_block=_release_region(prepared, batch))
        forward = reference_forward(
            stats, state, settings.eps, _momentum_of(settings), train, prepared.convention
        )
        if forward.update is not None:
            history.append(forward.update)
            state = forward.update.after
    return stats, forward, tuple(history)


def _quiet_openmp() -> None:
    """Make OpenMP's threads sleep as soon as PyTorch's parallel loops end, unless the user set
    otherwise: they spin for milliseconds by default and took the cores from the comparison of
    each channel group (0.4 s of a 1 GiB run here), and sleeping at once cost PyTorch nothing
    measurable. OpenMP reads this when torch loads it (also where check imports torch itself);
    set on the main thread before any other starts."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _import_torch_runner():
    """The torch_batchnorm module; a missing or broken torch is the user's to fix, not a bug."""
    try:
        from bninspect.pytorch import batchnorm as torch_batchnorm
    except ImportError as exc:
        raise BnInspectError(
            f"PyTorch could not be imported ({exc}); install it (pip install torch, see the "
            "README's set-up), or run --stats-only on an --input file for the statistics alone"
        ) from None
    return torch_batchnorm


def _start_torch_import() -> Future:
    """_import_torch_runner() on a background thread, as a future."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="import-torch")
    runner = pool.submit(_import_torch_runner)
    pool.shutdown(wait=False)  # the thread ends with the import; nothing else is queued
    return runner


def _run_compared(
    pytorch, x: np.ndarray, momentum: float | None, prepared: Prepared, forward, tell
) -> tuple[TorchRun, OutputErrors]:
    """PyTorch's module over ``x`` channel group by channel group
    (torch_batchnorm.run_by_channel_groups), each group's output compared with the reference
    as it comes: the run, and the errors."""
    settings, params, dtype = prepared.settings, prepared.params, prepared.tensor.info.dtype
    vectors = (forward.mean, forward.std, params.weight, params.bias)
    parts: list[tuple[int, OutputErrors]] = []

    def compare(c0: int, c1: int, x_group: np.ndarray, y_group: np.ndarray) -> None:
        group_vectors = (v[c0:c1] for v in vectors)
        parts.append((c0, kernels.output_errors(x_group, y_group, dtype, *group_vectors, tell)))

    torch_run = pytorch.run_by_channel_groups(
        x,
        momentum,
        settings.module,
        params,
        settings.eps,
        settings.affine,
        settings.mode == "train",
        compare,
        num_batches_tracked=settings.num_batches_tracked,
    )
    return torch_run, kernels.joined_errors(parts, x.shape)


def run_inspection(prepared: Prepared, progress: PhaseProgress | None = None) -> Inspection:
    """Feed the batches, one training step each (one pass in eval mode), through the float64
    reference under the convention and through PyTorch's module, keeping every step (only the
    reference when PyTorch cannot run). The reference runs on another thread while torch
    finishes importing, and the file's hash finishes meanwhile. Where ``prepared.by_groups``,
    PyTorch then runs over channel groups, each compared with the reference as it comes
    (``Inspection.output_errors``, and no output kept); else PyTorch's run overlaps the
    reference's."""
    settings, params, x = prepared.settings, prepared.params, prepared.tensor.array
    size, steps = settings.batch_size, settings.training_steps
    # The train/eval gap costs a whole extra pass (PyTorch's in eval mode, the reference's per
    # channel): only over training steps, asked for (--steps, --batch-size) or implied (many).
    request = prepared.request
    over_steps = request.steps is not None or request.batch_size is not None or steps > 1
    train_eval = over_steps and settings.mode == "train"
    tell = progress("statistics", x[: size * steps].nbytes) if progress else None
    torch_run, errors = None, None
    if prepared.no_peer is not None:
        stats, forward, history = _reference_steps(prepared, tell)
    else:
        with ThreadPoolExecutor(1, thread_name_prefix="statistics") as pool:
            pending = pool.submit(_reference_steps, prepared, tell)
            # Imported while the input loaded, if prepare started it.
            runner = prepared.torch_runner
            if runner is None:
                _quiet_openmp()
            pytorch = runner.result() if runner is not None else _import_torch_runner()

            # PyTorch's module gets the same weight for each batch as the convention gives it.
            momenta = torch_momenta(prepared.convention, _momentum_of(settings), steps)
            fed = x[: size * steps]
            if prepared.by_groups:
                # The groups are compared against the reference as they come: it goes first.
                stats, forward, history = pending.result()
                tell = progress("comparing", fed.nbytes) if progress else None
                torch_run, errors = _run_compared(pytorch, fed, momenta[0], prepared, forward, tell)
            else:
                torch_run = pytorch.run_batchnorm(
                    fed,
                    size,
                    momenta,
                    settings.module,
                    params,
                    settings.eps,
                    settings.affine,
                    settings.mode == "train",
                    with_eval=train_eval,
                    num_batches_tracked=settings.num_batches_tracked,
                )
                stats, forward, history = pending.result()
    tensor = dataclasses.replace(
        prepared.tensor, info=prepared.tensor.finished_info(), pending_sha256=None
    )
    batch = x[(steps - 1) * size : steps * size]
    return Inspection(
        tensor,
        settings,
        params,
        prepared.convention,
        batch,
        stats,
        forward,
        history,
        torch_run,
        prepared.no_peer,
        train_eval,
        prepared.request.eps,
        errors,
        _release_region(prepared, batch),
    )


def _savable(array: np.ndarray) -> tuple[np.ndarray, str]:
    """The array as .npy can hold it, and what the message should add: .npy cannot name
    bfloat16, so it is saved as float32 (exactly: every bfloat16 is a float32)."""
    if is_bfloat16(array.dtype):
        return array.astype(np.float32), " as float32 (exact; reload it with --dtype bfloat16)"
    return array, ""


def save_outputs(request: InspectRequest, inspection: Inspection) -> list[str]:
    """Write the tensor and PyTorch's output (every step's, stacked along the samples' axis)
    where asked, both or neither, in the user's layout (channels on their axis); return one
    message per file."""
    files, messages = [], []
    axis = inspection.tensor.info.channel_axis
    if request.save_input is not None:
        array, note = _savable(inspection.tensor.user_array())
        files.append((request.save_input, array))
        messages.append(f"wrote the input tensor to {request.save_input}{note}")
    if request.save_output is not None and inspection.torch_run is not None:
        outputs = inspection.torch_run.step_outputs
        moved = [np.moveaxis(output, 1, axis) for output in outputs]
        stacked = moved[0] if len(moved) == 1 else np.concatenate(moved, batch_axis(axis))
        array, note = _savable(stacked)
        files.append((request.save_output, array))
        messages.append(f"wrote PyTorch's output to {request.save_output}{note}")
    # The inspected file must still be what was read (a memory map shows a change half made).
    write_arrays(files, request.force, inspection.tensor.check_unchanged)
    return messages
