"""``bninspect check``: someone else's output tested against the reference, the mistake named."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bninspect.cli.app import app
from bninspect.cli.grad import GRAD, GradOutput, check_grad_request, grad_output_for
from bninspect.cli.options import (
    JsonFlag,
    QuietFlag,
    VerboseFlag,
    detail_level,
    for_check,
    with_inspect_options,
)
from bninspect.cli.output import emit, inspect
from bninspect.cli.ranks import Ranks, RankSizes
from bninspect.errors import OptionError
from bninspect.input.request import InspectRequest

BUFFERS = "Your buffers after the pass"
CHECK_ADVICE = (
    "check a slice: save the first samples of the input and of your output (x[:n]) as "
    "smaller .npy files and check those"
)


@app.command(short_help="Test your batch norm's output and name the mistake.")
@with_inspect_options("check")
def check(
    request: InspectRequest,
    output: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            readable=False,  # checked by bninspect, exit code 1
            help="Your batch norm's output for --input (.npy, the same shape and layout).",
        ),
    ] = None,
    atol: Annotated[
        float | None,
        typer.Option(
            metavar="X",
            help="Absolute tolerance. Default: neither --atol nor --rtol, derived per channel "
            "from the dtype and the data (what a correct implementation can leave; "
            "docs/check.md); one given, the other torch.testing's default."
        ),
    ] = None,
    rtol: Annotated[
        float | None,
        typer.Option(metavar="X", help="Relative tolerance; see --atol for the default."),
    ] = None,
    allow_nonfinite_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-nonfinite-mismatch",
            help="Do not count an element that is NaN or infinite on one side only (yours or "
            "the reference) as a mismatch; it is still reported.",
        ),
    ] = False,
    their_running_mean: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            readable=False,  # checked by bninspect, exit code 1
            help="Your running_mean after the pass (.npy, one value per channel): compared "
            "with the reference's update, the mistake named.",
            rich_help_panel=BUFFERS,
        ),
    ] = None,
    their_running_var: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            readable=False,  # checked by bninspect, exit code 1
            help="Your running_var after the pass (.npy), as --their-running-mean.",
            rich_help_panel=BUFFERS,
        ),
    ] = None,
    their_num_batches_tracked: Annotated[
        int | None,
        typer.Option(
            min=0,
            metavar="N",
            help="Your num_batches_tracked after the pass.",
            rich_help_panel=BUFFERS,
        ),
    ] = None,
    top: Annotated[
        int, typer.Option(min=1, metavar="N", help="How many of the worst elements to list.")
    ] = 5,
    grad_input: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            readable=False,  # checked by bninspect, exit code 1
            help="Your backward's dx for --input and --grad-output (.npy, the input's shape): "
            "checked instead of the forward output.",
            rich_help_panel=GRAD,
        ),
    ] = None,
    grad_weight: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="Your dweight (.npy, shape (C,)).",
            rich_help_panel=GRAD,
            readable=False,  # checked by bninspect, exit code 1
        ),
    ] = None,
    grad_bias: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="Your dbias (.npy, shape (C,)).",
            rich_help_panel=GRAD,
            readable=False,  # checked by bninspect, exit code 1
        ),
    ] = None,
    grad_output: GradOutput = None,
    ranks: Ranks = None,
    rank_sizes: RankSizes = None,
    json_output: JsonFlag = False,
    quiet: QuietFlag = False,
    verbose: VerboseFlag = False,
) -> None:
    """Test your batch norm's output against the reference, and name the mistake.

    Exit code 0 if every element is within the tolerance (and your buffers, if given, match
    the reference's update), 3 if not. By default the tolerance is what a correct
    implementation in the dtype can leave on this data, per channel. Reports the mismatches,
    the worst elements, the error's shape per channel, and which known mistake (unbiased
    variance, eps outside the root, wrong axes, ...) explains the output, if any. With
    --grad-input (and --grad-weight, --grad-bias) the same for your backward pass, and which
    known backward mistake (a term dropped, dweight divided by M, ...) explains it. With
    --ranks K or --rank-sizes (the batch split over data-parallel ranks), also the mistakes of
    data-parallel batch norm: per-rank statistics without sync, and per-rank variances
    averaged instead of pooled.
    """
    detail = detail_level(quiet, verbose, json_output)
    buffers = {
        "--their-running-mean": their_running_mean,
        "--their-running-var": their_running_var,
        "--their-num-batches-tracked": their_num_batches_tracked,
    }
    compared = frozenset(option for option, given in buffers.items() if given is not None)
    checked = for_check(request, atol, rtol, compared)
    theirs = {"grad_input": grad_input, "grad_weight": grad_weight, "grad_bias": grad_bias}
    given = {name: path for name, path in theirs.items() if path is not None}
    if given or grad_output is not None:
        if output is not None:
            raise OptionError(
                "--output checks the forward pass and --grad-input the backward; check one at "
                "a time (run check twice)"
            )
        if not given:
            raise OptionError(
                "--grad-output is dy for checking your gradients; give --grad-input (and/or "
                "--grad-weight, --grad-bias) too"
            )
        if grad_output is None:
            raise OptionError(
                "checking gradients needs --grad-output: the dy your backward was given (.npy, "
                "the input's shape)"
            )
        if ranks is not None or rank_sizes is not None:
            raise OptionError(
                "--ranks and --rank-sizes name data-parallel mistakes of the forward pass; drop "
                "them with --grad-input"
            )
        if allow_nonfinite_mismatch:
            raise OptionError(
                "--allow-nonfinite-mismatch belongs to the forward check; with --grad-input, NaN "
                "and infinities in your gradients are reported (how many, where) and counted"
            )
        for name, value in (
            ("--their-running-mean", their_running_mean),
            ("--their-running-var", their_running_var),
            ("--their-num-batches-tracked", their_num_batches_tracked),
        ):
            if value is not None:
                raise OptionError(f"{name} belongs to the forward check; drop it with --grad-input")
        check_grad_request(checked, grad_output, "--grad-input")
        _check_gradients(checked, given, grad_output, atol, rtol, top, json_output, detail)
        return
    if output is None:
        raise OptionError(
            "check needs --output (your forward output, .npy) or --grad-input (your backward's "
            "dx) with --grad-output"
        )

    split: list[tuple[int, ...]] = []

    def need(planned, _batch_size, _steps):  # their output, the reference, the errors...
        from bninspect.input.their_output import check_need

        return check_need(planned.shape, planned.dtype, top)

    def before(planned, _settings):
        from bninspect.check.buffers import load_buffers
        from bninspect.input.their_output import load_output

        if ranks is not None or rank_sizes is not None:
            from bninspect.distributed.sharding import batch_split

            split.append(batch_split(planned.shape[0], ranks, rank_sizes))
        loaded = load_output(
            output, "--output", planned.user_shape, planned.dtype, planned.channel_axis
        )
        buffers = load_buffers(
            their_running_mean, their_running_var, their_num_batches_tracked, planned.shape[1]
        )
        return loaded, buffers

    def report(inspection, loaded, progress):
        # Imported only now (~0.25 s): errors in the checks above stay quick.
        import dataclasses

        from bninspect.check.report import build_check_result

        if split:  # the data-parallel mistakes in the catalogue need the split
            inspection = dataclasses.replace(inspection, rank_sizes=split[0])
        (theirs, info), buffers = loaded
        return build_check_result(
            inspection,
            theirs,
            info,
            atol,
            rtol,
            top,
            progress,
            allow_nonfinite=allow_nonfinite_mismatch,
            their_buffers=buffers,
        )

    reads = tuple(p for p in (output, their_running_mean, their_running_var) if p is not None)
    result = inspect(
        checked,
        json_output,
        report,
        before,
        reads=reads,
        extra_need=need,
        need_words=("check on ", CHECK_ADVICE),
    )
    emit(result, json_output, detail)
    if not result.passed:
        raise typer.Exit(3)


OPTION_OF = {
    "grad_input": "--grad-input",
    "grad_weight": "--grad-weight",
    "grad_bias": "--grad-bias",
}


def _check_gradients(request, given, grad_output, atol, rtol, top, json_output, detail) -> None:
    """``check`` on their gradients: load and vet every file before torch loads, then the
    reference backward, autograd's, and the diagnosis."""
    if request.affine is False and set(given) - {"grad_input"}:
        raise OptionError(
            "--no-affine: the layer has no weight or bias, so there is no dweight or dbias to "
            "check; drop --grad-weight and --grad-bias"
        )

    def before(planned, _settings):
        from bninspect.input.gradients import load_their_gradient
        from bninspect.input.their_output import check_memory

        check_memory(planned.user_shape, planned.dtype, request.input_path)
        dy = grad_output_for(planned, request, grad_output)
        loaded = []
        for name, path in given.items():
            what = {"grad_input": "dx", "grad_weight": "dweight", "grad_bias": "dbias"}[name]
            expected = planned.user_shape if name == "grad_input" else (planned.shape[1],)
            values, sha, dtype = load_their_gradient(
                path, OPTION_OF[name], expected, planned.dtype, what, planned.channel_axis
            )
            loaded.append((name, values, str(path), sha, dtype))
        return dy, loaded

    def report(inspection, extra, _progress):
        from bninspect.grad.backward import inspect_backward
        from bninspect.grad.check import TheirGradient, build_grad_check

        dy, loaded = extra
        backward = inspect_backward(inspection, *dy)
        theirs = [TheirGradient(*item) for item in loaded]
        return build_grad_check(inspection, backward, theirs, atol, rtol, top)

    reads = (grad_output, *given.values())
    result = inspect(request, json_output, report, before, reads=reads)
    emit(result, json_output, detail)
    if not result.passed:
        raise typer.Exit(3)
