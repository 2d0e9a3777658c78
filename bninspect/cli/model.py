"""``bninspect model``: every batch norm of a real network, its health, and where train and eval
mode part."""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from bninspect.cli.app import app
from bninspect.cli.options import JsonFlag, QuietFlag, VerboseFlag, detail_level
from bninspect.cli.output import emit
from bninspect.input.parsing import parse_shape
from bninspect.model.spec import (
    GAP_THRESHOLD,
    ModelRequest,
    batch_files,
    check_request,
    parse_kwargs,
    parse_model_spec,
)


class HalfDType(str, Enum):
    float16 = "float16"
    bfloat16 = "bfloat16"


NETWORK, BATCH, SHOW = "Network", "Batch", "What to show"


@app.command(short_help="Every batch norm of a network: health, and where train and eval part.")
def model(
    model_spec: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="module:callable that builds the network (your code, imported and called), "
            "e.g. monai.networks.nets:DenseNet121 or samples/tiny_net.py:make_net.",
            rich_help_panel=NETWORK,
        ),
    ] = None,
    kwargs: Annotated[
        str | None,
        typer.Option(
            help="The callable's keyword arguments: name=value,... (Python literals; "
            "tuples in parentheses), e.g. spatial_dims=2,in_channels=1,out_channels=2.",
            rich_help_panel=NETWORK,
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="A state_dict saved by torch.save (loaded with weights_only=True; a "
            "checkpoint dict or DDP's 'module.' prefix is recognised). Alone: every batch "
            "norm's stored buffers.",
            rich_help_panel=NETWORK,
        ),
    ] = None,
    program: Annotated[
        Path | None,
        typer.Option(
            help="A torch.export program (.pt2 from torch.export.save): no Python code needed.",
            rich_help_panel=NETWORK,
        ),
    ] = None,
    input: Annotated[
        list[Path] | None,
        typer.Option(
            "--input",
            help="A .npy batch; repeat for several, or give a directory of .npy batches "
            "(several give population statistics).",
            rich_help_panel=BATCH,
        ),
    ] = None,
    shape: Annotated[
        str | None,
        typer.Option(
            help="Generate a standard-normal batch of this shape, e.g. 8,1,64,64.",
            show_default="a --program's example input's",
            rich_help_panel=BATCH,
        ),
    ] = None,
    seed: Annotated[
        int,
        typer.Option(
            min=0, max=2**63 - 1, help="Seed of the generated batch.", rich_help_panel=BATCH
        ),
    ] = 0,
    layer: Annotated[
        str | None,
        typer.Option(help="Show this batch norm in full, every channel.", rich_help_panel=SHOW),
    ] = None,
    show_all: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Every batch norm in forward order, not only the worst.",
            rich_help_panel=SHOW,
        ),
    ] = False,
    fold: Annotated[
        bool,
        typer.Option(
            "--fold",
            help="Fold each conv/linear into the batch norm after it (float64 and the model's "
            "dtype) and measure what folding costs against ordinary rounding.",
            rich_help_panel=SHOW,
        ),
    ] = False,
    dtype: Annotated[
        HalfDType | None,
        typer.Option(help="--fold also in this dtype.", rich_help_panel=SHOW),
    ] = None,
    dump_dir: Annotated[
        Path | None,
        typer.Option(
            help="Write each batch norm's input, weight, bias, buffers and outputs as .npy into "
            "this new directory, with the bninspect commands that reproduce them.",
            rich_help_panel=SHOW,
        ),
    ] = None,
    threshold: Annotated[
        float,
        typer.Option(
            help="The gap (max |y_train - y_eval| / output scale) at which a layer diverges.",
            rich_help_panel=SHOW,
        ),
    ] = GAP_THRESHOLD,
    json_output: JsonFlag = False,
    quiet: QuietFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Every batch norm of a real network, in forward order: its settings, the batch against its
    running buffers, the buffers' health, and the train/eval gap (both modes run on copies:
    your module is never changed), with the first layer where the modes part and why.

    Several batches add population statistics (exact, and what update_bn and fvcore's precise
    BN would store); --fold measures conv+BN folding; --dump-dir writes each layer's tensors
    with the commands that reproduce them.
    """
    detail = detail_level(quiet, verbose, json_output)
    source, files = (None, ())
    if input:
        source, files = batch_files(list(input))
    request = check_request(
        ModelRequest(
            model=parse_model_spec(model_spec) if model_spec is not None else None,
            kwargs=parse_kwargs(kwargs),
            weights=weights,
            program=program,
            inputs=files,
            input_source=source,
            shape=parse_shape(shape) if shape is not None else None,
            seed=seed,
            layer=layer,
            show_all=show_all,
            dump_dir=dump_dir,
            fold=fold,
            fold_dtype=dtype.value if dtype is not None else None,
            threshold=threshold,
        )
    )
    for path in files:  # every header vetted before torch loads
        from bninspect.input.npy_files import read_header

        read_header(path, "--input")
    from bninspect.render.progress_bar import count_bar

    # OpenMP's threads sleep as soon as a parallel loop ends (see inspection._quiet_openmp):
    # spinning, they took the cores from the other run's thread here.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with count_bar(json_output) as progress:
        from bninspect.model.inspect import inspect_model  # torch loads here

        result = inspect_model(request, progress)
    emit(result, json_output, detail, show_all=show_all)
