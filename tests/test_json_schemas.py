"""The published JSON Schemas: current with the result objects, and strict enough to catch a
renamed, missing, mistyped or extra field. (conftest validates every document the tests make.)"""

from __future__ import annotations

import copy
import json

import pytest

from bninspect.render.json_schema import RESULT_CLASSES, command_schema

from conftest import SCHEMAS, validate_document


@pytest.mark.parametrize("command", sorted(RESULT_CLASSES))
def test_the_published_schema_is_current(command):
    published = json.loads((SCHEMAS / f"{command}.schema.json").read_text())
    assert published == command_schema(command), (
        "run python scripts/json_schemas.py (and bump SCHEMA_VERSION if a field was renamed or "
        "removed)"
    )


def test_the_article_run_validates_and_its_mutants_do_not(cli):
    article = SCHEMAS.parent.parent.parent / "samples" / "article.npy"
    doc = cli.json("run", "--input", article, "--weight", "0.5653,0.0322")
    validate_document(doc)
    mutants = []
    renamed = copy.deepcopy(doc)
    renamed["channels"][0]["max_scaled_error"] = renamed["channels"][0].pop(
        "max_ulp_error_at_scale"
    )
    mutants.append(renamed)
    missing = copy.deepcopy(doc)
    del missing["verdict"]
    mutants.append(missing)
    mistyped = copy.deepcopy(doc)
    mistyped["channels"][0]["count"] = "12"
    mutants.append(mistyped)
    status = copy.deepcopy(doc)
    status["verdict"]["status"] = "pass"  # check's word, not run's
    mutants.append(status)
    for mutant in mutants:
        with pytest.raises(AssertionError):
            validate_document(mutant)


def test_every_verdict_status_a_command_can_give_is_in_its_schema():
    for command in RESULT_CLASSES:
        schema = command_schema(command)
        statuses = schema["$defs"]["Verdict"]["properties"]["status"]["enum"]
        assert statuses and len(set(statuses)) == len(statuses), command


def test_docs_json_lists_every_document_and_its_schema():
    """docs/json.md names every document kind and links its schema file."""
    text = (SCHEMAS.parent.parent.parent / "docs" / "json.md").read_text()
    for command in RESULT_CLASSES:
        assert f'"{command}"' in text, command
        assert f"schemas/{command}.schema.json" in text, command
