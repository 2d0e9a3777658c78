"""Getting the network: the user's ``module:callable`` called with ``--kwargs``, a state_dict
from ``--weights`` (``torch.load(weights_only=True)``: never an unrestricted pickle), or a
``torch.export`` program from ``--program`` (its archive vetted first, as torch.export.load
would otherwise fall back to unrestricted unpickling for some of its members)."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import io
import json
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from bninspect.errors import BnInspectError
from bninspect.input.files import open_regular, read_regular, stat_regular
from bninspect.model.spec import MODULE_FILE, PROGRAM_FILE, WEIGHTS_FILE, ModelSpec

# Keys a training script commonly stores the state_dict under in a checkpoint dict.
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net", "network", "module")
DDP_PREFIX = "module."


class _RegularSourceLoader(importlib.machinery.SourceFileLoader):
    """Reads the module's source through files.read_regular: a FIFO or a device put there
    since the start-up check is refused, not waited on."""

    def __init__(self, fullname: str, path: str, what: str) -> None:
        super().__init__(fullname, path)
        self.what = what

    def get_data(self, path: str) -> bytes:
        if path == self.path:
            return read_regular(Path(path), self.what, MODULE_FILE)
        return super().get_data(path)  # its cached bytecode


def opened(path: Path, what: str, wanted: str):
    """A binary file object on ``path``, opened by files.open_regular (regular files only,
    checked before opening and on the descriptor), and the OpenFile to check unchanged."""
    regular = open_regular(path, what, wanted)
    return regular, os.fdopen(os.dup(regular.fd), "rb")


def _import_module(spec: ModelSpec):
    if spec.is_file:
        path = Path(spec.module)
        what = f"--model {spec.text}:"
        stat_regular(path, what, MODULE_FILE)
        name = f"_bninspect_user_{path.stem}"
        loader = importlib.util.spec_from_file_location(
            name, path, loader=_RegularSourceLoader(name, str(path), what)
        )
        module = importlib.util.module_from_spec(loader)
        sys.modules[name] = module
        loader.loader.exec_module(module)
        return module
    # As `python -m` does: the working directory's packages import.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    return importlib.import_module(spec.module)


def build_model(spec: ModelSpec, kwargs: dict[str, object]) -> torch.nn.Module:
    """Import the user's module (their code, run because they asked) and call the callable with
    ``kwargs``; any failure is one line naming which step failed and PyTorch's or Python's
    words for it."""
    try:
        module = _import_module(spec)
    except BnInspectError:
        raise
    except Exception as exc:  # their module's own failure, whatever it is
        raise BnInspectError(
            f"--model {spec.text}: module '{spec.module}' could not be imported "
            f"({type(exc).__name__}: {exc})"
        ) from None
    target = module
    for part in spec.callable.split("."):
        if not hasattr(target, part):
            raise BnInspectError(
                f"--model {spec.text}: module '{spec.module}' has no '{spec.callable}'"
            )
        target = getattr(target, part)
    if not callable(target):
        raise BnInspectError(f"--model {spec.text}: '{spec.callable}' is not callable")
    try:
        with torch.no_grad():
            model = target(**kwargs)
    except Exception as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise BnInspectError(
            f"--model {spec.text}: calling {spec.callable}({shown}) raised "
            f"{type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(model, torch.nn.Module):
        raise BnInspectError(
            f"--model {spec.text}: {spec.callable}(...) returned a {type(model).__name__}, not "
            "a torch.nn.Module; give the callable that builds the network"
        )
    return model


def _is_tensor_dict(value: object) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(isinstance(k, str) for k in value)
        and any(isinstance(v, torch.Tensor) for v in value.values())
    )


@dataclass(frozen=True)
class StateDict:
    tensors: dict[str, torch.Tensor]
    notes: tuple[str, ...]  # what was recognised on the way


def read_state_dict(path: Path) -> StateDict:
    """A state_dict from a torch.save file, unwrapped from a checkpoint dict and DDP's
    'module.' prefix where it has them (each said in ``notes``)."""
    regular, stream = opened(path, "--weights", WEIGHTS_FILE)
    try:
        with regular, stream:
            loaded = torch.load(stream, map_location="cpu", weights_only=True)
            regular.check_unchanged()
    except BnInspectError:
        raise
    except Exception as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Weights only load failed" in str(exc) or "Unsupported global" in str(exc):
            raise BnInspectError(
                f"--weights {path}: holds Python objects beyond tensors, which bninspect never "
                "unpickles (torch.load weights_only=True refused it); save "
                "model.state_dict() with torch.save"
            ) from None
        raise BnInspectError(
            f"--weights {path}: not a file torch.save wrote ({type(exc).__name__}: {text})"
        ) from None
    notes: list[str] = []
    tensors = loaded
    if isinstance(loaded, dict) and not _is_tensor_dict(loaded):
        for key in WRAPPER_KEYS:
            if _is_tensor_dict(loaded.get(key)):
                tensors = loaded[key]
                others = [k for k in loaded if k != key]
                also = f" (also in the file: {', '.join(map(str, others[:5]))})" if others else ""
                notes.append(f"a checkpoint: the state_dict is its '{key}' entry{also}")
                break
    if not _is_tensor_dict(tensors):
        kind = type(loaded).__name__
        keys = ""
        if isinstance(loaded, dict):
            keys = f" with keys {', '.join(map(str, list(loaded)[:6]))}"
        raise BnInspectError(
            f"--weights {path}: not a state_dict (a {kind}{keys}); save model.state_dict(), or "
            f"a dict holding it under one of {', '.join(WRAPPER_KEYS)}"
        )
    tensors = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith(DDP_PREFIX) for k in tensors):
        tensors = {k[len(DDP_PREFIX) :]: v for k, v in tensors.items()}
        notes.append("every key began with 'module.' (DistributedDataParallel's): stripped")
    return StateDict(tensors, tuple(notes))


def _listed(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_weights(model: torch.nn.Module, state: StateDict, path: Path) -> int:
    """Load ``state`` into ``model``; refuse missing or unexpected keys (listed) and shapes
    that do not match. Returns the number of tensors loaded."""
    own = model.state_dict()
    missing = [k for k in own if k not in state.tensors]
    unexpected = [k for k in state.tensors if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing from it: {_listed(missing)}")
        if unexpected:
            parts.append(f"not in the model: {_listed(unexpected)}")
        raise BnInspectError(
            f"--weights {path}: keys do not match the model ({'; '.join(parts)}); check that "
            "--model and --kwargs build the network the checkpoint was saved from"
        )
    for key, value in state.tensors.items():
        if tuple(own[key].shape) != tuple(value.shape):
            raise BnInspectError(
                f"--weights {path}: {key} has shape {tuple(value.shape)} but the model's is "
                f"{tuple(own[key].shape)}; check --kwargs"
            )
    model.load_state_dict(state.tensors, strict=True)
    return len(state.tensors)


def _vet_archive(path: Path, stream) -> None:
    """Refuse a .pt2 archive that torch.export.load would unpickle without restriction: weights
    or constants stored as pickles, custom objects, and any torch.save member that
    weights_only=True cannot load (torch falls back to an unrestricted load for those)."""
    try:
        archive = zipfile.ZipFile(stream)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BnInspectError(
            f"--program {path}: not a torch.export archive ({exc}); save it with torch.export.save"
        ) from None
    refuse = (
        f"--program {path}: holds pickled Python objects that only an unrestricted unpickler "
        "loads, which bninspect never runs; export a program of plain tensors"
    )
    with archive:
        names = archive.namelist()
        if not any(name.endswith("models/model.json") for name in names):
            raise BnInspectError(
                f"--program {path}: no exported program in it (an archive of another kind, or "
                "saved by an old PyTorch); save it with torch.export.save"
            )
        for name in names:
            if name.endswith("_config.json") and ("/weights/" in name or "/constants/" in name):
                config = json.loads(archive.read(name)).get("config", {})
                for entry in config.values():
                    path_name = str(entry.get("path_name", ""))
                    if entry.get("use_pickle") or path_name.startswith(("custom_obj", "opaque")):
                        raise BnInspectError(refuse)
            elif name.endswith(".pt"):
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception:
                    raise BnInspectError(refuse) from None


def load_program(path: Path):
    """The torch.export program in ``path``, after _vet_archive."""
    regular, stream = opened(path, "--program", PROGRAM_FILE)
    with regular, stream:
        _vet_archive(path, stream)
        stream.seek(0)
        try:
            program = torch.export.load(stream)
            regular.check_unchanged()
            return program
        except BnInspectError:
            raise
        except Exception as exc:
            raise BnInspectError(
                f"--program {path}: torch.export.load failed ({type(exc).__name__}: {exc})"
            ) from None
