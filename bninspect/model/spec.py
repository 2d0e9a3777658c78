"""The model command's option strings as plain data: ``module:callable``, ``--kwargs``, the
batch files. No torch, no arrays: every function here is pure or reads only file names."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from bninspect.errors import OptionError

# A gap of a quarter of the channel's output scale, or what sampling noise alone gives a batch
# of few values per channel where that is more: a layer's own gap in the tests' trained
# networks stayed below 4 / sqrt(values per channel) (0.02-0.07 at 1024-8192 values, 0.22-0.37
# at 64-256), while untrained or corrupted buffers gave 0.4 and more.
GAP_THRESHOLD = 0.25


@dataclass(frozen=True)
class ModelSpec:
    """``--model`` parsed: a module (dotted name, or a .py file) and the callable in it."""

    text: str
    module: str
    callable: str
    is_file: bool


def parse_model_spec(text: str) -> ModelSpec:
    """'pkg.nets:make_net' or 'path/to/file.py:make_net' (a class works as well)."""
    module, sep, name = text.rpartition(":")
    if not sep or not module or not name:
        raise OptionError(
            f"--model '{text}': give module:callable, e.g. mypkg.nets:make_net or "
            "monai.networks.nets:DenseNet121"
        )
    if not all(part.isidentifier() for part in name.split(".")):
        raise OptionError(f"--model '{text}': '{name}' is not a Python name")
    is_file = module.endswith(".py")
    if not is_file and not all(part.isidentifier() for part in module.split(".")):
        raise OptionError(
            f"--model '{text}': '{module}' is neither a dotted module name nor a .py file"
        )
    return ModelSpec(text, module, name, is_file)


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets and quotes: 'a=(1,2),b=3' -> ['a=(1,2)', 'b=3']."""
    parts, depth, quote, start = [], 0, None, 0
    for i, char in enumerate(text):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_kwargs(text: str | None) -> dict[str, object]:
    """``--kwargs`` 'spatial_dims=2,channels=(4,8),act=relu' -> keyword arguments: each value a
    Python literal (number, tuple, list, True, None, 'quoted'), or else the text itself."""
    if text is None or not text.strip():
        return {}
    kwargs: dict[str, object] = {}
    for part in _split_top_level(text):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise OptionError(
                f"--kwargs '{text}': '{part.strip()}' is not name=value; give e.g. "
                "spatial_dims=2,in_channels=1,channels=(4,8)"
            )
        if key in kwargs:
            raise OptionError(f"--kwargs '{text}': {key} is given twice")
        value = value.strip()
        if not value:
            raise OptionError(
                f"--kwargs '{text}': {key} has no value; give {key}=VALUE (a Python literal "
                f"or a word), or {key}='' for an empty string"
            )
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value  # a bare word: a string, as act=relu means
    return kwargs


def batch_files(paths: list[Path]) -> tuple[str, tuple[Path, ...]]:
    """The .npy batches named by --input: files as given, or every .npy in a directory, sorted
    by name. Returns ("file" or "directory", the files)."""
    if len(paths) == 1 and paths[0].is_dir():
        found = tuple(sorted(p for p in paths[0].iterdir() if p.suffix == ".npy"))
        if not found:
            raise OptionError(f"--input {paths[0]}: the directory holds no .npy file")
        return "directory", found
    for path in paths:
        if path.is_dir():
            raise OptionError(
                f"--input {path}: is a directory; give one directory alone, or .npy files"
            )
    return "file", tuple(paths)


@dataclass(frozen=True)
class ModelRequest:
    """The model command's options, parsed and checked against each other (no torch yet)."""

    model: ModelSpec | None
    kwargs: dict[str, object]
    weights: Path | None
    program: Path | None
    inputs: tuple[Path, ...]  # .npy batches, in order
    input_source: str | None  # "file" or "directory"
    shape: tuple[int, ...] | None
    seed: int
    layer: str | None
    show_all: bool
    dump_dir: Path | None
    fold: bool
    fold_dtype: str | None  # float16 or bfloat16, beside the model's own
    threshold: float

    @property
    def weights_alone(self) -> bool:
        return self.model is None and self.program is None


NPY_MAGIC = b"\x93NUMPY"


def _refuse_npy_weights(path: Path) -> None:
    """A .npy (or .npz) given to --weights: the buffers of one layer, which run and check take."""
    head = b""
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(len(NPY_MAGIC))
    if path.suffix.lower() in (".npy", ".npz") or head == NPY_MAGIC:
        raise OptionError(
            f"--weights {path}: a .npy file; --weights takes a state_dict (.pt/.pth from "
            "torch.save(model.state_dict(), ...)); give one layer's .npy buffers to bninspect "
            "run or check as --weight, --bias, --running-mean, --running-var"
        )


def check_request(request: ModelRequest) -> ModelRequest:
    """Refuse combinations that cannot work, each with the way out."""
    if request.model is None and request.program is None and request.weights is None:
        raise OptionError(
            "give the network: --model module:callable (and --weights), --program net.pt2, "
            "or --weights alone for its buffers"
        )
    if request.model is not None and request.program is not None:
        raise OptionError("--model and --program both given; give one network")
    if request.program is not None and request.weights is not None:
        raise OptionError("--program holds its own weights; drop --weights")
    if request.weights is not None:
        _refuse_npy_weights(request.weights)
    if request.kwargs and request.model is None:
        raise OptionError("--kwargs are --model's callable's arguments; give --model too")
    if request.inputs and request.shape is not None:
        raise OptionError("--shape and --input both given; the files have their own shape")
    if request.weights_alone:
        if request.inputs or request.shape is not None:
            raise OptionError(
                "--weights alone shows the stored buffers; a batch needs the network: add "
                "--model module:callable"
            )
        if request.fold or request.dump_dir is not None:
            raise OptionError("--fold and --dump-dir run the network; add --model module:callable")
    elif request.model is not None and not request.inputs and request.shape is None:
        raise OptionError(
            "give the batch: --shape N,C,... (generated from --seed) or --input batch.npy"
        )
    if request.fold_dtype is not None and not request.fold:
        raise OptionError("--dtype is the dtype --fold also folds in; add --fold")
    if not (request.threshold > 0 and request.threshold < float("inf")):
        raise OptionError(f"--threshold {request.threshold:g}: give a positive number")
    for path in request.inputs:
        if not path.exists():
            raise OptionError(f"--input {path}: no such file; check the path")
    if request.dump_dir is not None:
        folder = request.dump_dir
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise OptionError(
                f"--dump-dir {folder}: exists and is not an empty directory; bninspect never "
                "writes over files: give a new directory"
            )
        if not folder.parent.is_dir():
            raise OptionError(
                f"--dump-dir {folder}: directory {folder.parent} does not exist; create it first"
            )
    return request
