"""Options that have no effect beside the others: each such combination gets a notice (printed on
stderr, recorded in the result's settings.notices), never silence. Pure functions of the
request; docs/options.md lists every case and why the others are not no-ops.

Combinations that cannot mean anything (``--shape`` with ``--input``, ``--weight`` with
``--no-affine``, ``--steps 2`` in eval mode, ...) are usage errors instead, raised where the
options are parsed.
"""

from __future__ import annotations

from bninspect.conventions.rules import PYTORCH, Convention
from bninspect.input.request import InspectRequest
from bninspect.text import short


def _momentum_text(momentum: float | None) -> str:
    return "none" if momentum is None else short(momentum)


def replaces_running(convention: Convention, momentum: float | None, tracked: int) -> bool:
    """Whether the first training step gives the old running statistics weight 0, so the
    buffers before the pass leave no trace: PyTorch's cumulative average from a counter of 0
    (1/1), a batch weight of 1 (PyTorch's momentum 1, TensorFlow's default factor 1), an old
    value's weight of 0 (Keras-style momentum 0, Caffe's fraction 0)."""
    if momentum is None:
        return tracked == 0
    if convention.momentum_meaning == "batch":
        return momentum == 1.0
    return momentum == 0.0  # "keep" and Caffe's moving_average_fraction weigh the old value


def _names(options: list[str]) -> str:
    return options[0] if len(options) == 1 else " and ".join(options)


def option_notices(
    request: InspectRequest, command: str, compared: frozenset[str] = frozenset()
) -> tuple[str, ...]:
    """The notices for options given (``request.given``) that change nothing under the others,
    for ``command`` ("run", "explain" or "check"; ``compared``: the buffers check is given to
    compare, as their options, e.g. "--their-running-mean", so the update counts as in run)."""
    given, convention, notices = request.given, request.convention, []
    train, momentum = request.mode == "train", request.momentum
    tracked = request.num_batches_tracked
    running = [o for o in ("--running-mean", "--running-var") if o in given]
    compares_buffers = bool(compared & {"--their-running-mean", "--their-running-var"})
    if command == "check" and not compares_buffers:
        unused = [o for o in ("--momentum", "--num-batches-tracked") if o in given]
        if "--their-num-batches-tracked" in compared:  # the count after the pass is compared
            unused = [o for o in unused if o != "--num-batches-tracked"]
        if unused:
            notices.append(
                f"{_names(unused)} "
                + (
                    "has no effect on check: it only sets"
                    if len(unused) == 1
                    else "have no effect on check: they only set"
                )
                + " the running statistics' update, and check compares the output alone (give "
                "--their-running-mean, --their-running-var to compare the update)"
            )
        if train and running:
            notices.append(
                f"{_names(running)} {'has' if len(running) == 1 else 'have'} no effect on check "
                "in train mode: the output is normalized with the batch's statistics, and the "
                "running buffers only feed the update, which check compares only with "
                "--their-running-mean or --their-running-var"
            )
        running = []  # said already
    elif not train:
        if "--momentum" in given:
            notices.append(
                f"--momentum {_momentum_text(momentum)} has no effect in eval mode: it weighs "
                "the running statistics' update, and eval mode does not update them"
            )
        if "--num-batches-tracked" in given:
            notices.append(
                f"--num-batches-tracked {tracked} has no effect in eval mode: the counter is "
                "neither read nor incremented"
            )
    elif (
        "--num-batches-tracked" in given
        and momentum is not None
        and "--their-num-batches-tracked" not in compared  # then the count after is compared
    ):
        rule = (
            f"with --momentum {short(momentum)}"
            if convention is PYTORCH
            else f"under {convention.display}'s rule (momentum {short(momentum)})"
        )
        notices.append(
            f"--num-batches-tracked {tracked} does not change the update {rule}: PyTorch reads "
            "the counter only for --momentum none (the cumulative average, which weighs step k "
            "1/(N + k)); otherwise it only increments it, one per step"
        )
    if train and running and replaces_running(convention, momentum, tracked):
        if momentum is None:
            why = (
                f"--momentum none from --num-batches-tracked {tracked} weighs the first batch "
                "1/1, replacing them; give --num-batches-tracked N, the counter of the model "
                "they came from, to average with them"
            )
        else:
            why = (
                f"{convention.display}'s momentum {short(momentum)} gives the old value weight "
                "0, so the first step replaces them with the batch's statistics"
            )
        notices.append(
            f"{_names(running)} {'has' if len(running) == 1 else 'have'} no effect in train "
            f"mode here: {why}"
        )
    if command != "check" and not train and request.steps == 1 and "--steps" in given:
        notices.append("--steps 1 has no effect in eval mode: there is one pass either way")
    if "--seed" in given and request.input_path is not None:
        if not any(spec.kind == "random" for spec in request.vectors.values()):
            notices.append(
                "--seed has no effect: the tensor comes from --input, and no vector option is "
                "random"
            )
    unused = [o for o in ("--weight", "--bias") if o in given]
    if request.stats_only and unused:
        notices.append(
            f"{_names(unused)} {'has' if len(unused) == 1 else 'have'} no effect under "
            "--stats-only: the affine step shapes the output, which --stats-only does not "
            "compute (the tables show the layer's defaults)"
        )
    if request.force and request.save_input is None and request.save_output is None:
        notices.append("--force has no effect without --save-input or --save-output")
    return tuple(notices)


def batch_notices(request: InspectRequest, count: int) -> tuple[str, ...]:
    """The notices that depend on the batch: with one value per channel in train mode a
    convention that normalizes anyway gives y = bias (x is its own mean), and Paddle passes x
    through, so the options that shape y change nothing."""
    if request.mode != "train" or count != 1:
        return ()
    convention, given = request.convention, request.given
    if convention.one_value == "normalize":
        unused = [o for o in ("--weight", "--eps") if o in given]
        if unused:
            return (
                f"{_names(unused)} {'has' if len(unused) == 1 else 'have'} no effect on the "
                "output: with one value per channel in train mode every value is its channel's "
                "mean, so y = bias",
            )
    if convention.one_value == "pass_through":
        unused = [
            o
            for o in ("--weight", "--bias", "--eps", "--momentum", "--num-batches-tracked")
            if o in given
        ]
        if unused:
            return (
                f"{', '.join(unused)}: no effect with one value per channel in train mode: "
                f"{convention.display} passes the input through and skips the update (the "
                "running buffers stay as given)",
            )
    return ()
