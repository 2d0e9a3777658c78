"""``--dump-dir``: each batch norm's input, weight, bias and running buffers as .npy, its two
outputs, and the bninspect commands that reproduce them bit for bit (PyTorch's own module on
the same tensors runs the same kernel)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np

from bninspect.input.npy_files import write_arrays
from bninspect.results.model import DumpRecord


def folder_name(index: int, name: str, call: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "layer"
    return f"{index + 1:03d}_{safe}" + (f"_call{call}" if call > 1 else "")


def _savable(array: np.ndarray) -> tuple[np.ndarray, bool]:
    """.npy cannot name bfloat16: saved as float32, exactly."""
    if array.dtype.name == "bfloat16":
        return array.astype(np.float32), True
    return np.ascontiguousarray(array), False


def dump_layer(
    root: Path,
    index: int,
    name: str,
    call: int,
    *,
    x: np.ndarray,
    y_train: np.ndarray,
    y_eval: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    running_mean: np.ndarray | None,
    running_var: np.ndarray | None,
    eps: float,
    momentum: float | None,
    num_batches_tracked: int | None,
    updated: tuple[np.ndarray, np.ndarray, int] | None,
    affine: bool,
    one_value: bool,
) -> DumpRecord:
    """Write the layer's files into ``root``/NNN_name/ and return what reproduces them.
    ``updated``: the running buffers and num_batches_tracked after PyTorch's train-mode step,
    which the check line compares bninspect's update with. Every value goes through a file,
    never the command line, so commands.sh is valid shell whatever the buffers hold."""
    folder = root / folder_name(index, name, call)
    folder.mkdir()
    x_saved, as_float32 = _savable(x)
    arrays = {
        "input.npy": x_saved,
        "output_train.npy": _savable(y_train)[0],
        "output_eval.npy": _savable(y_eval)[0],
        "weight.npy": weight,
        "bias.npy": bias,
    }
    finite = running_mean is None or bool(
        np.all(np.isfinite(running_mean)) and np.all(np.isfinite(running_var))
    )
    if running_mean is not None:
        arrays["running_mean.npy"] = running_mean
        arrays["running_var.npy"] = running_var
    if updated is not None and finite:
        arrays["running_mean_after.npy"] = updated[0]
        arrays["running_var_after.npy"] = updated[1]
    # The vectors as float64 hold the module's values exactly; run rounds them to the dtype.
    write_arrays([(folder / file, array) for file, array in arrays.items()])
    here = shlex.quote(str(folder))
    comments = []
    common = [f"--input {here}/input.npy"]
    if as_float32:
        common.append("--dtype bfloat16")
        comments.append("bfloat16 tensors are saved as float32 (exactly): --dtype bfloat16")
    if affine:
        common += [f"--weight {here}/weight.npy", f"--bias {here}/bias.npy"]
    else:
        common.append("--no-affine")
    common.append(f"--eps {eps!r}")
    buffers = []
    reasons = []
    if running_mean is not None:
        if finite:
            buffers += [
                f"--running-mean {here}/running_mean.npy",
                f"--running-var {here}/running_var.npy",
                "--momentum none" if momentum is None else f"--momentum {momentum!r}",
            ]
            if num_batches_tracked is not None:
                buffers.append(f"--num-batches-tracked {num_batches_tracked}")
        else:
            reasons.append(
                "its running buffers hold NaN or Inf, which bninspect run refuses: the eval-mode "
                "output and the update are not reproduced (the train-mode output does not read "
                "them)"
            )
        if finite and np.any(running_var < 0):
            reasons.append("its running_var is negative")
    if affine and not (np.all(np.isfinite(weight)) and np.all(np.isfinite(bias))):
        reasons.append("its weight or bias holds NaN or Inf")
    base = " ".join(common)
    train = " ".join([base, *buffers])
    commands = []
    if not one_value:
        commands.append(
            f"bninspect run {train} --mode train --save-output {here}/reproduced_train.npy"
        )
        compare_update = []
        if "running_mean_after.npy" in arrays:
            compare_update = [
                f"--their-running-mean {here}/running_mean_after.npy",
                f"--their-running-var {here}/running_var_after.npy",
            ]
            if num_batches_tracked is not None:
                compare_update.append(f"--their-num-batches-tracked {updated[2]}")
        commands.append(
            " ".join(
                [f"bninspect check {train} --mode train --output {here}/output_train.npy",
                 *compare_update]
            )
        )  # fmt: skip
    else:
        reasons.append("one value per channel: train mode refuses it")
    if running_mean is not None and finite:
        eval_options = " ".join(
            [base, f"--running-mean {here}/running_mean.npy",
             f"--running-var {here}/running_var.npy"]
        )  # fmt: skip
        commands.append(
            f"bninspect run {eval_options} --mode eval --save-output {here}/reproduced_eval.npy"
        )
    files = tuple(sorted(arrays))
    note = "; ".join(reasons) if reasons else None
    header = [
        "# Reproduce this layer bit for bit: the saved outputs equal what the runs write;",
        "# the check compares the train-mode output and PyTorch's update of the buffers.",
        *(f"# {line}" for line in comments),
        *(f"# not reproduced: {reason}" for reason in reasons),
        "set -e",
    ]
    (folder / "commands.sh").write_text("\n".join([*header, *commands]) + "\n")
    return DumpRecord(str(folder), files + ("commands.sh",), tuple(commands), not reasons, note)
