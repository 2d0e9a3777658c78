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

# command -> "module:class" of its result object
RESULT_CLASSES = {
    "run": "bninspect.results.run:RunResult",
    "explain": "bninspect.results.explain:ExplainResult",
    "check": "bninspect.results.check:CheckResult",
    "check-grad": "bninspect.results.grad:GradCheckResult",  # check --grad-input
    "run-ranks": "bninspect.results.distributed:DistributedRunResult",  # run --ranks
    "explain-ranks": "bninspect.results.distributed:DistributedExplainResult",  # explain --ranks
    "run-population": "bninspect.results.distributed:PopulationResult",  # --stats-only 'PATTERN'
    "conventions": "bninspect.results.conventions:ConventionsResult",
    "model": "bninspect.results.model:ModelResult",
}
_COMMENT = re.compile(r"^\s+(\w+):[^#\n]*#\s*(.+)$", re.M)


def result_class(command: str) -> type:
    module, name = RESULT_CLASSES[command].split(":")
    return getattr(importlib.import_module(module), name)


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


def command_schema(command: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``bninspect <command> --json``."""
    cls = result_class(command)
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
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:bninspect:{command}:schema-version-{SCHEMA_VERSION}",
        "title": f"bninspect {command} --json",
        "description": body.get("description", ""),
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
        "$defs": builder.defs,
    }


def _with_statuses(verdict: dict[str, Any], statuses: tuple[str, ...]) -> dict[str, Any]:
    properties = dict(verdict["properties"])
    properties["status"] = {**properties["status"], "enum": list(statuses)}
    return {**verdict, "properties": properties}
