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
    affine: bool,
    one_value: bool,
) -> DumpRecord:
    """Write the layer's files into ``root``/NNN_name/ and return what reproduces them."""
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
    if running_mean is not None:
        arrays["running_mean.npy"] = running_mean
        arrays["running_var.npy"] = running_var
    # The vectors as float64 hold the module's values exactly; run rounds them to the dtype.
    write_arrays([(folder / file, array) for file, array in arrays.items()])
    here = shlex.quote(str(folder))
    common = [f"--input {here}/input.npy"]
    if as_float32:
        common.append("--dtype bfloat16")
    if affine:
        common += [f"--weight {here}/weight.npy", f"--bias {here}/bias.npy"]
    else:
        common.append("--no-affine")
    reasons = []
    if running_mean is not None:
        common += [
            f"--running-mean {here}/running_mean.npy",
            f"--running-var {here}/running_var.npy",
        ]
        finite = np.all(np.isfinite(running_mean)) and np.all(np.isfinite(running_var))
        if not finite:
            reasons.append("its running buffers hold NaN or Inf, which bninspect run refuses")
        elif np.any(running_var < 0):
            reasons.append("its running_var is negative")
    common.append(f"--eps {eps!r}")
    common.append("--momentum none" if momentum is None else f"--momentum {momentum!r}")
    if not (affine and np.all(np.isfinite(weight)) and np.all(np.isfinite(bias))):
        if affine:
            reasons.append("its weight or bias holds NaN or Inf")
    base = " ".join(common)
    commands = []
    if not one_value:
        commands.append(
            f"bninspect run {base} --mode train --save-output {here}/reproduced_train.npy"
        )
        commands.append(f"bninspect check {base} --mode train --output {here}/output_train.npy")
    else:
        reasons.append("one value per channel: train mode refuses it")
    if running_mean is not None:
        commands.append(
            f"bninspect run {base} --mode eval --save-output {here}/reproduced_eval.npy"
        )
    files = tuple(sorted(arrays))
    note = "; ".join(reasons) if reasons else None
    (folder / "commands.sh").write_text(
        "# Reproduce this layer bit for bit: the saved outputs equal what these write.\n"
        + "\n".join(commands)
        + "\n"
    )
    return DumpRecord(str(folder), files + ("commands.sh",), tuple(commands), not reasons, note)
