"""One ``bninspect model`` inspection, start to end: get the network and the batches, run the
two modes in lockstep on the first batch (every layer measured as it passes), feed the other
batches for the population statistics, fold if asked, and build the result."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import torch

from bninspect.errors import BnInspectError
from bninspect.input.tensor import generate_input, load_input
from bninspect.model import build
from bninspect.model.analysis import (
    PYTORCH_EPS,
    PYTORCH_MOMENTUM,
    PopulationAccumulator,
    layer_flags,
    typical_batches,
)
from bninspect.model.dump import dump_layer
from bninspect.model.loading import build_model, load_program, load_weights, read_state_dict
from bninspect.model.network import ModuleNetwork, ProgramNetwork, Site
from bninspect.model.probe import (
    LayerMeasure,
    compare_runs,
    statistics_and_moments,
)
from bninspect.model.spec import ModelRequest
from bninspect.pytorch.batchnorm import to_numpy, to_torch
from bninspect.results.common import NOT_ASKED, Undefined
from bninspect.results.model import BatchSource, LayerReport, ModelResult, ModelSource

# Told each finished layer: how the CLI draws a bar without this module knowing terminals.
Tick = Callable[[], None]
COPIES = (
    "the runs use a copy of the network's modules that reads its tensors and writes none: "
    "your module and its buffers are unchanged"
)
TRAIN_MODE = (
    "train mode here: every batch norm normalizes with its batch's statistics; dropout and "
    "every other layer stay in eval mode, so only the batch norms part the two runs"
)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def load_network(request: ModelRequest):
    """The network and what loading it said: (network, checkpoint notes, tensors loaded)."""
    notes: tuple[str, ...] = ()
    loaded = 0
    if request.program is not None:
        return ProgramNetwork(load_program(request.program)), notes, loaded
    # A randomly initialized network is the same network on every run with the same --seed.
    torch.manual_seed(request.seed)
    model = build_model(request.model, request.kwargs)
    if request.weights is not None:
        state = read_state_dict(request.weights)
        loaded = load_weights(model, state, request.weights)
        notes = state.notes
    return ModuleNetwork(model), notes, loaded


def _program_shape(network) -> tuple[int, ...] | None:
    example = getattr(network.program, "example_inputs", None)
    try:
        return tuple(example[0][0].shape)
    except (TypeError, IndexError, AttributeError):
        return None


def load_batches(request: ModelRequest, network) -> tuple[list[torch.Tensor], BatchSource]:
    """The batches as tensors in the network's dtype, and where they came from."""
    dtype_name = _dtype_name(network.dtype())
    notices: list[str] = []
    if request.inputs:
        arrays = []
        for path in request.inputs:
            tensor = load_input(path, dtype_name)
            notices += list(tensor.info.notices)
            arrays.append(tensor.array)
        shapes = {a.shape[1:] for a in arrays}
        if len(shapes) > 1:
            raise BnInspectError(
                "--input batches differ beyond axis 0 ("
                + ", ".join("x".join(map(str, a.shape)) for a in arrays[:4])
                + "); give batches of one sample shape"
            )
        source = BatchSource(
            request.input_source or "file",
            tuple(map(str, request.inputs)),
            tuple(arrays[0].shape),
            dtype_name,
            len(arrays),
            None,
            tuple(dict.fromkeys(notices)),
        )
    else:
        shape = request.shape or _program_shape(network)
        if shape is None:
            raise BnInspectError("give the batch: --shape N,C,... or --input batch.npy")
        arrays = [generate_input(shape, request.seed, dtype_name).array]
        source = BatchSource("generated", (), tuple(shape), dtype_name, 1, request.seed)
    return [to_torch(np.ascontiguousarray(a)) for a in arrays], source


class _Collector:
    """What the runs measured, layer by layer, in forward order."""

    def __init__(self, request: ModelRequest, tick: Tick | None) -> None:
        self.request, self.tick = request, tick
        self.measures: list[LayerMeasure] = []
        self.population: dict[tuple[str, int], PopulationAccumulator] = {}
        self.dumps: dict[tuple[str, int], object] = {}
        self.calls: dict[str, int] = {}

    def add_population(self, site: Site, x: torch.Tensor, stats=None, moments=None) -> None:
        if stats is None:
            stats, moments = statistics_and_moments(to_numpy(x.contiguous()))
        acc = self.population.get(site.key)
        if acc is None:
            acc = PopulationAccumulator(x.shape[1], _dtype_name(x.dtype))
            self.population[site.key] = acc
        with np.errstate(invalid="ignore"):
            acc.add(moments, stats.mean, stats.var_unbiased, x.numel() // x.shape[1])

    def on_layer(self, m: LayerMeasure, site: Site, x: torch.Tensor, y_train: torch.Tensor):
        self.measures.append(m)
        self.calls[site.name] = max(self.calls.get(site.name, 0), site.call)
        self.add_population(site, x, m.stats, m.moments)
        if self.request.dump_dir is not None:
            update = site.train_update(x)
            self.dumps[site.key] = dump_layer(
                self.request.dump_dir,
                len(self.measures) - 1,
                site.name,
                site.call,
                x=to_numpy(x.contiguous()),
                y_train=to_numpy(y_train.contiguous()),
                y_eval=to_numpy(site.eval_output(x).contiguous()),
                weight=m.site.weight,
                bias=m.site.bias,
                running_mean=m.site.running_mean,
                running_var=m.site.running_var,
                eps=site.eps,
                momentum=site.momentum,
                num_batches_tracked=site.num_batches_tracked,
                updated=None
                if update is None
                else (to_numpy(update[0].double()), to_numpy(update[1].double()), update[2]),
                affine=site.affine,
                one_value=m.one_value,
            )
        if self.tick is not None:
            self.tick()


def _source(request: ModelRequest, network, notes, loaded) -> ModelSource:
    return ModelSource(
        model=None if request.model is None else request.model.text,
        kwargs={k: repr(v) for k, v in request.kwargs.items()},
        weights=None if request.weights is None else str(request.weights),
        program=None if request.program is None else str(request.program),
        checkpoint=notes,
        loaded_tensors=loaded,
        dtype=_dtype_name(network.dtype()),
        mode=network.mode,
        torch_version=torch.__version__,
        other_norms=network.other_norms,
    )


def inspect_model(
    request: ModelRequest, progress: Callable[[str, int], Tick] | None = None
) -> ModelResult:
    """Everything ``bninspect model`` reports, for a request check_request accepted."""
    if request.weights_alone:
        return inspect_weights(request)
    network, notes, loaded = load_network(request)
    batches, batch_source = load_batches(request, network)
    return inspect_network(request, network, batches, batch_source, notes, loaded, progress)


def inspect_network(
    request: ModelRequest,
    network,
    batches: list[torch.Tensor],
    batch_source: BatchSource,
    notes: tuple[str, ...] = (),
    loaded: int = 0,
    progress: Callable[[str, int], Tick] | None = None,
) -> ModelResult:
    """The inspection of a loaded network (ModuleNetwork or ProgramNetwork) on ``batches``."""
    source = _source(request, network, notes, loaded)
    if request.dump_dir is not None:
        request.dump_dir.mkdir(exist_ok=True)
    total = network.batch_norm_count
    tick = progress("layers", total * len(batches)) if progress and total else None
    collector = _Collector(request, tick)
    run = compare_runs(network, batches[0], collector.on_layer) if total else None
    for batch in batches[1:]:
        from bninspect.model.probe import train_run

        def more(site: Site, x: torch.Tensor) -> None:
            collector.add_population(site, x)
            if tick is not None:
                tick()

        train_run(network, batch, more)
    folds, unpaired, pairing = (
        {},
        Undefined(f"{NOT_ASKED}: --fold"),
        Undefined(f"{NOT_ASKED}: --fold"),
    )
    if request.fold and total:
        from bninspect.model.fold import fold_pairs

        folds, unpaired, pairing = fold_pairs(network, batches[0], request.fold_dtype)
    layers = _layer_reports(request, network, collector, folds)
    output_gap = (
        Undefined("no batch norm: the modes do not differ")
        if run is None or run.output_gap is None
        else run.output_gap
    )
    result = build.model_result(
        source=source,
        batches=batch_source,
        layers=layers,
        threshold=request.threshold,
        output_gap=output_gap,
        unpaired=unpaired,
        pairing=pairing,
        dump_dir=Undefined(f"{NOT_ASKED}: --dump-dir")
        if request.dump_dir is None
        else str(request.dump_dir),
        notices=(COPIES, TRAIN_MODE, *batch_source.notices),
    )
    return _narrowed(result, request.layer)


def _narrowed(result: ModelResult, wanted: str | None) -> ModelResult:
    """The result with only the layer --layer names; the verdict stays the whole network's."""
    if wanted is None:
        return result
    return dataclasses.replace(result, layers=_only_layer(result.layers, wanted))


def _layer_reports(request, network, collector: _Collector, folds) -> tuple[LayerReport, ...]:
    typical = typical_batches([m.site.num_batches_tracked for m in collector.measures])
    reports = []
    for index, m in enumerate(collector.measures):
        key = m.site.key
        full = request.layer is not None and _matches(m.site.name, request.layer)
        reports.append(
            build.layer_report(
                index,
                m,
                model_mode=network.mode,
                typical=typical,
                calls=collector.calls.get(m.site.name, 1),
                threshold=request.threshold,
                full=full,
                population=collector.population.get(key),
                fold=folds.get(
                    key,
                    Undefined(f"{NOT_ASKED}: --fold")
                    if not request.fold
                    else Undefined("no conv or linear layer feeds it alone"),
                ),
                dump=collector.dumps.get(key, Undefined(f"{NOT_ASKED}: --dump-dir")),
            )
        )
    return tuple(reports)


def _matches(name: str, wanted: str) -> bool:
    return name == wanted


def _only_layer(layers: tuple[LayerReport, ...], wanted: str) -> tuple[LayerReport, ...]:
    chosen = tuple(layer for layer in layers if _matches(layer.name, wanted))
    if not chosen:
        close = [layer.name for layer in layers if wanted in layer.name][:5]
        hint = (
            f"; did you mean {', '.join(close)}?"
            if close
            else f"; the first is {layers[0].name}"
            if layers
            else ""
        )
        raise BnInspectError(f"--layer {wanted}: no batch norm of that name{hint}")
    return chosen


# --- --weights alone ----------------------------------------------------------------------

BUFFERS = ("running_mean", "running_var")


def inspect_weights(request: ModelRequest) -> ModelResult:
    """Every batch norm found in a state_dict: its buffers' and parameters' health."""
    state = read_state_dict(request.weights)
    tensors = state.tensors
    names = [k[: -len(".running_mean")] for k in tensors if k.endswith(".running_mean")]
    names = [n for n in names if f"{n}.running_var" in tensors]
    counters = [tensors.get(f"{n}.num_batches_tracked") for n in names]
    typical = typical_batches([None if c is None else int(c) for c in counters])
    dtype = "float32"
    layers = []
    for index, (name, counter) in enumerate(zip(names, counters, strict=True)):
        rm = to_numpy(tensors[f"{name}.running_mean"].float()).astype(np.float64)
        rv = to_numpy(tensors[f"{name}.running_var"].float()).astype(np.float64)
        dtype = _dtype_name(tensors[f"{name}.running_var"].dtype)
        affine = f"{name}.weight" in tensors
        weight = (
            to_numpy(tensors[f"{name}.weight"].float()).astype(np.float64)
            if affine
            else np.ones_like(rm)
        )
        nbt = None if counter is None else int(counter)
        flags = layer_flags(
            eps=PYTORCH_EPS,  # unknown: a state_dict holds neither, so neither is flagged
            momentum=PYTORCH_MOMENTUM,
            track=True,
            layer_mode="eval",
            model_mode="eval",
            num_batches_tracked=nbt,
            typical_batches=typical,
            calls=1,
            weight=weight,
            affine=affine,
            running_mean=rm,
            running_var=rv,
            count=None,
        )
        layers.append(build.weights_layer_report(index, name, rm, rv, weight, affine, nbt, flags))
    source = ModelSource(
        model=None,
        kwargs={},
        weights=str(request.weights),
        program=None,
        checkpoint=state.notes,
        loaded_tensors=len(tensors),
        dtype=dtype,
        mode=build.NO_MODE,
        torch_version=torch.__version__,
        other_norms=(),
    )
    result = build.model_result(
        source=source,
        batches=build.NO_BATCH,
        layers=tuple(layers),
        threshold=request.threshold,
        output_gap=build.NO_BATCH,
        unpaired=Undefined(f"{NOT_ASKED}: --fold"),
        pairing=Undefined(f"{NOT_ASKED}: --fold"),
        dump_dir=Undefined(f"{NOT_ASKED}: --dump-dir"),
        notices=(
            "a state_dict holds no eps or momentum: those are the module's; add --model to "
            "see them and run a batch",
            *state.notes,
        ),
    )
    return _narrowed(result, request.layer)
