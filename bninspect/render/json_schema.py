"""The JSON Schema of each command's document, derived from its result object: the dataclass
fields, their types and the comment beside each field, so the schema and the JSON cannot drift.

The published files (bninspect/results/schemas/<command>.schema.json) are written by
``python scripts/json_schemas.py``; the tests check that they are current and validate every JSON
document the test suite produces against them. Follows render.json_output's rules: every
float may be null (NaN and infinities are written as null with a reason), and every field that
may be ``Undefined`` is nullable.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import types
import typing
from typing import Any

from bninspect.results.common import SCHEMA_VERSION, Undefined

# command -> "module:class" of its result object; a tuple where a command gives more than one
# kind of document (its schema is then one of them: the first is the command's own)
RESULT_CLASSES = {
    "run": (
        "bninspect.results.run:RunResult",
        "bninspect.results.distributed:DistributedRunResult",
        "bninspect.results.distributed:PopulationResult",
    ),
    "explain": (
        "bninspect.results.explain:ExplainResult",
        "bninspect.results.distributed:DistributedExplainResult",
    ),
    "check": "bninspect.results.check:CheckResult",
    "conventions": "bninspect.results.conventions:ConventionsResult",
}
_COMMENT = re.compile(r"^\s+(\w+):[^#\n]*#\s*(.+)$", re.M)


def result_classes(command: str) -> list[type]:
    """The result classes of ``command``'s documents, its own first."""
    names = RESULT_CLASSES[command]
    found = []
    for entry in (names,) if isinstance(names, str) else names:
        module, name = entry.split(":")
        found.append(getattr(importlib.import_module(module), name))
    return found


def _comments(cls: type) -> dict[str, str]:
    """The comment beside each field in the class's source: its description."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return {name: text.strip() for name, text in _COMMENT.findall(source)}


class _Builder:
    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}

    def of(self, hint: Any) -> dict[str, Any]:
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            nullable = any(a in (type(None), Undefined) for a in args)
            kept = [a for a in args if a not in (type(None), Undefined)]
            schemas = [self.of(a) for a in kept]
            if nullable:
                schemas.append({"type": "null"})
            return schemas[0] if len(schemas) == 1 else {"anyOf": _merge(schemas)}
        if hint is Undefined or hint is type(None):
            return {"type": "null"}
        if hint is bool:
            return {"type": "boolean"}
        if hint is int:
            return {"type": "integer"}
        if hint is float:  # NaN and infinities are written as null
            return {"type": ["number", "null"]}
        if hint is str:
            return {"type": "string"}
        if origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                return {"type": "array", "items": self.of(args[0])}
            return {
                "type": "array",
                "prefixItems": [self.of(a) for a in args],
                "minItems": len(args),
                "maxItems": len(args),
            }
        if origin is dict:
            return {"type": "object", "additionalProperties": self.of(args[1])}
        if dataclasses.is_dataclass(hint):
            return self.dataclass(hint)
        raise TypeError(f"no JSON Schema for the type {hint!r}")

    def dataclass(self, cls: type) -> dict[str, Any]:
        name = cls.__name__
        if name not in self.defs:
            self.defs[name] = {}  # placed first: a recursive reference finds it
            self.defs[name] = self.object(cls)
        return {"$ref": f"#/$defs/{name}"}

    def object(self, cls: type) -> dict[str, Any]:
        hints = typing.get_type_hints(cls)
        comments = _comments(cls)
        properties = {}
        for f in dataclasses.fields(cls):
            schema = self.of(hints[f.name])
            if f.name in comments:
                schema = {**schema, "description": comments[f.name]}
            properties[f.name] = schema
        described = {"description": inspect.cleandoc(cls.__doc__)} if cls.__doc__ else {}
        return {
            "type": "object",
            **described,
            "properties": properties,
            "required": list(properties),
            "additionalProperties": False,
        }


def _merge(schemas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """anyOf members, with a plain null folded into a float's ["number", "null"]."""
    if {"type": "null"} in schemas and any(s.get("type") == ["number", "null"] for s in schemas):
        schemas = [s for s in schemas if s != {"type": "null"}]
    return schemas


def _document(cls: type, command: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The schema of one kind of ``command``'s document, and its definitions."""
    builder = _Builder()
    body = builder.object(cls)
    statuses = getattr(cls, "verdict_statuses", None)
    verdict = body["properties"]["verdict"]
    if statuses:  # the statuses this command can give, from its result class
        builder.defs["Verdict"] = _with_statuses(builder.defs["Verdict"], statuses)
    properties = {
        "schema_version": {"const": SCHEMA_VERSION},
        "command": {"const": command},
        "bninspect_version": {"type": "string"},
        "verdict": verdict,
        **{k: v for k, v in body["properties"].items() if k != "verdict"},
        "null_reasons": {
            "type": "object",
            "description": "Why each null value is null, by the JSON Pointer of the value.",
            "additionalProperties": {"type": "string"},
        },
    }
    document = {
        "description": body.get("description", ""),
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
    return document, builder.defs


def _renamed(value: Any, old: str, new: str) -> Any:
    """``value`` with every reference to the definition ``old`` pointing at ``new``."""
    if isinstance(value, dict):
        if value.get("$ref") == f"#/$defs/{old}":
            return {**value, "$ref": f"#/$defs/{new}"}
        return {k: _renamed(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, old, new) for v in value]
    return value


def command_schema(command: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``bninspect <command> --json``: one document's, or
    one of several kinds' (each with its own verdict statuses, as ``<Class>Verdict``)."""
    classes = result_classes(command)
    head = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:bninspect:{command}:schema-version-{SCHEMA_VERSION}",
        "title": f"bninspect {command} --json",
    }
    document, defs = _document(classes[0], command)
    if len(classes) == 1:
        return {**head, **document, "$defs": defs}
    kinds = [document]
    for cls in classes[1:]:
        other, more = _document(cls, command)
        name = f"{cls.__name__}Verdict"
        other = _renamed(other, "Verdict", name)
        more = {
            name if k == "Verdict" else k: _renamed(v, "Verdict", name) for k, v in more.items()
        }
        for key, schema in more.items():
            if key in defs and defs[key] != schema:
                raise ValueError(f"two results of {command} define {key} differently")
            defs[key] = schema
        kinds.append(other)
    described = "; or ".join(k["description"].split("\n")[0] for k in kinds)
    return {**head, "description": f"One of: {described}", "oneOf": kinds, "$defs": defs}


def _with_statuses(verdict: dict[str, Any], statuses: tuple[str, ...]) -> dict[str, Any]:
    properties = dict(verdict["properties"])
    properties["status"] = {**properties["status"], "enum": list(statuses)}
    return {**verdict, "properties": properties}
