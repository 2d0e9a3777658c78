"""JSON is the result object, field by field, and always strict RFC 8259."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

from hypothesis import given
from hypothesis import strategies as st

from bninspect.render.json_output import to_document, to_json
from bninspect.results.common import SCHEMA_VERSION, Undefined


@dataclass(frozen=True)
class Inner:
    value: object


@dataclass(frozen=True)
class Outer:
    command: ClassVar[str] = "test"
    items: tuple
    single: object


def test_nulls_carry_their_reasons_by_json_pointer():
    result = Outer(
        items=(Inner(1.5), Inner(float("nan")), Inner(Undefined("no value"))), single=float("-inf")
    )
    document = to_document(result)
    assert document["items"] == [{"value": 1.5}, {"value": None}, {"value": None}]
    assert document["null_reasons"] == {
        "/items/1/value": "NaN (not a number), which JSON cannot hold",
        "/items/2/value": "no value",
        "/single": "-Infinity, which JSON cannot hold",
    }
    assert document["schema_version"] == SCHEMA_VERSION and document["command"] == "test"


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.none()))
def test_any_values_give_strict_json_that_round_trips_the_finite_ones(values):
    text = to_json(Outer(items=tuple(Inner(v) for v in values), single=None))
    parsed = json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    for value, item in zip(values, parsed["items"], strict=True):
        if isinstance(value, float) and value != value or value in (float("inf"), float("-inf")):
            assert item["value"] is None
        else:
            assert item["value"] == value
