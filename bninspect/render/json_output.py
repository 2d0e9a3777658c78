"""Serialize a result object to one strict JSON document (RFC 8259).

Every dataclass field appears under its own name, in order, so the JSON is the result object
itself. JSON has no NaN or Infinity: such a number, and every ``Undefined`` value, is written as
``null`` and its reason recorded in ``null_reasons`` under the field's JSON Pointer
(e.g. ``/channels/0/var_unbiased``).

Strings are valid Unicode, file names included: a byte of a file name that is not UTF-8 (which
Python holds as a lone surrogate, and JSON cannot) is written as the four characters ``\\xNN``,
and so that this stays unambiguous a backslash as two (docs/errors.md shows how to get the
name's bytes back).
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np

from bninspect import __version__
from bninspect.results.common import SCHEMA_VERSION, Undefined

_NON_FINITE_REASON = {
    "nan": "NaN (not a number), which JSON cannot hold",
    "inf": "+Infinity, which JSON cannot hold",
    "-inf": "-Infinity, which JSON cannot hold",
}


def _text(value: str) -> str:
    """``value`` with a backslash doubled and each non-UTF-8 byte (a surrogate from Python's
    surrogateescape) as \\xNN: faithful, and valid Unicode."""
    if "\\" not in value and not any("\ud800" <= c <= "\udfff" for c in value):
        return value  # the usual case
    out = []
    for c in value.replace("\\", "\\\\"):
        code = ord(c)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(c)
    return "".join(out)


def _plain(value: Any, pointer: str, null_reasons: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, Undefined):
        null_reasons[pointer] = _text(value.reason)
        return None
    if dataclasses.is_dataclass(value):
        return {
            f.name: _plain(getattr(value, f.name), f"{pointer}/{f.name}", null_reasons)
            for f in dataclasses.fields(value)
        }
    if isinstance(value, dict):
        return {_text(k): _plain(v, f"{pointer}/{k}", null_reasons) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{pointer}/{i}", null_reasons) for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        null_reasons[pointer] = _NON_FINITE_REASON[repr(value)]
        return None
    return value


def to_document(result: Any) -> dict[str, Any]:
    """The result as plain JSON data: ``schema_version``, ``command``, ``bninspect_version``,
    the result's fields, then ``null_reasons``."""
    null_reasons: dict[str, str] = {}
    body = _plain(result, "", null_reasons)
    return {
        "schema_version": SCHEMA_VERSION,
        "command": result.command,
        "bninspect_version": __version__,
        **body,
        "null_reasons": null_reasons,
    }


def to_json(result: Any) -> str:
    """The result as one JSON document; ``allow_nan=False`` proves no NaN literal slips out."""
    return json.dumps(to_document(result), indent=2, allow_nan=False)
