"""The pipeline's steps (casebridge.pipeline): each input is refused in one set of words, whichever entry point
(CLI, API, ingestion, the façade) it came through."""

from __future__ import annotations

import json
from typing import Any

import pytest

from casebridge import pipeline
from casebridge.config import Settings
from casebridge.definitions.xml import XmlReader
from casebridge.errors import CaseFileError, CaseSchemaError, InputError, InvalidResourceError
from casebridge.mapping.engine import MappingSet
from casebridge.validation.validator import Issue, Validator
from tests.conftest import SEED


@pytest.fixture(scope="module")
def validator() -> Validator:
    return pipeline.load_validator(Settings())


@pytest.fixture(scope="module")
def reader(validator: Validator) -> XmlReader:
    return XmlReader(validator.definitions)


def nested(depth: int) -> dict[str, Any]:
    """A Bundle whose deepest value is ``depth`` levels down (the Bundle itself is level 1)."""
    value: Any = "x"
    for _ in range(depth - 2):
        value = {"a": value}
    return {"resourceType": "Bundle", "type": "transaction", "meta": value}


def refusal(fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    return info.value.report()


def test_a_resource_is_read_alike_for_validation_and_for_a_push(reader: XmlReader, mappings: MappingSet) -> None:
    deep_enough = json.dumps(nested(pipeline.MAX_RESOURCE_DEPTH)).encode()
    # A push read a JSON resource with the case reader's depth limit (64) before: now the resource limit, as $validate.
    assert pipeline.read_resource(deep_enough, source="b.json", xml=False, reader=reader)["type"] == "transaction"
    pushed = pipeline.read_push_input(deep_enough, source="b.json", xml=False, reader=reader, mappings=lambda: mappings)
    assert pushed["type"] == "transaction"
    too_deep = json.dumps(nested(pipeline.MAX_RESOURCE_DEPTH + 1)).encode()
    words = refusal(pipeline.read_resource, too_deep, source="b.json", xml=False, reader=reader)
    assert words == f"b.json: the document nests deeper than {pipeline.MAX_RESOURCE_DEPTH} levels"
    kwargs: dict[str, Any] = {"source": "b.json", "xml": False, "reader": reader, "mappings": lambda: mappings}
    assert refusal(pipeline.read_push_input, too_deep, **kwargs) == words
    broken = b'<Bundle xmlns="http://hl7.org/fhir"><type value="transaction"/>'
    words = refusal(pipeline.read_resource, broken, source="b.xml", xml=True, reader=reader)
    assert words.startswith("b.xml: ") and words.count("b.xml") == 1
    assert refusal(pipeline.read_push_input, broken, **{**kwargs, "source": "b.xml", "xml": True}) == words
    assert refusal(pipeline.read_resource, b"[1]", source="r.json", xml=False, reader=reader) == (
        "r.json: not a FHIR resource (no resourceType)"
    )
    assert refusal(pipeline.read_resource, b"\xff{}", source="r.json", xml=False, reader=reader) == (
        "r.json: not UTF-8 text"
    )


def test_a_push_input_that_is_a_case_is_converted(reader: XmlReader, mappings: MappingSet) -> None:
    bundle = pipeline.read_push_input(
        SEED.read_bytes(), source=SEED.name, xml=False, reader=reader, mappings=lambda: mappings
    )
    assert (bundle["type"], len(bundle["entry"])) == ("transaction", 38)
    with pytest.raises(CaseSchemaError):
        pipeline.read_push_input(b"case_id: x\n", source="c.yaml", xml=False, reader=reader, mappings=lambda: mappings)


def test_the_media_type_decides_json_and_the_refusal_names_the_source_as_given() -> None:
    yaml_text = b"case_id: x\n"
    with pytest.raises(CaseFileError) as info:
        pipeline.parse_case(yaml_text, source="request body", media="json")
    assert info.value.source == "request body" and "malformed JSON" in str(info.value)
    assert pipeline.parse_case(yaml_text, source="request body", media="yaml") == {"case_id": "x"}
    assert pipeline.parse_case(yaml_text, source="case.yaml") == {"case_id": "x"}


def test_a_case_is_read_converted_and_validated(mappings: MappingSet, validator: Validator) -> None:
    checked = pipeline.run(SEED.read_bytes(), source=SEED.name, mappings=mappings, validator=validator)
    assert checked.valid and len(checked.bundle["entry"]) == 38 and checked.case.case_id == "ijsra-2026-18-3-0536"
    assert pipeline.check(checked.bundle, validator) == checked.issues
    pipeline.refuse_invalid(checked.issues)


def test_one_refusal_of_an_invalid_bundle(validator: Validator) -> None:
    issues = [Issue("error", "value", "bad", "Patient.gender"), Issue("warning", "invariant", "odd", "Patient")]
    with pytest.raises(InvalidResourceError) as info:
        pipeline.refuse_invalid(issues, max_issues=1)
    assert str(info.value) == "the Bundle is not valid (1 errors): nothing was sent"
    assert [i["severity"] for i in info.value.outcome["issue"]] == ["error", "information"]  # capped at one
    with pytest.raises(InvalidResourceError, match="only a transaction Bundle can be pushed"):
        pipeline.check({"resourceType": "Bundle", "type": "batch"}, validator)
