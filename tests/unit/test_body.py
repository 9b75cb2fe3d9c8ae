"""casebridge.api.body on its own: read_body's limit counts every chunk of a streamed body, a declared
Content-Length over the limit is refused before reading, and a body that ends early or is empty is a 400;
media_type accepts the listed media types (parameters and case aside) and no content coding but identity, and
its 415s name what was sent and what is accepted; parse_fhir reads JSON and XML, reports XML elements the types
do not define in ``problems`` (or refuses them without the list), and its 400 names the request body."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request

from casebridge.api.body import CASE_TYPES, FHIR_TYPES, media_type, parse_fhir, read_body
from casebridge.api.errors import ApiError
from casebridge.definitions.xml import XmlReader
from casebridge.validation.validator import Issue, Validator


def _request(chunks: list[bytes], headers: dict[str, str] | None = None, *, disconnect: bool = False) -> Request:
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    if disconnect:
        messages[-1]["more_body"] = True
        messages.append({"type": "http.disconnect"})

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": raw}, receive)


def _read(request: Request, limit: int) -> bytes:
    return asyncio.run(read_body(request, limit))


def _refused(request: Request, limit: int) -> tuple[int, str, str]:
    with pytest.raises(ApiError) as caught:
        _read(request, limit)
    issue = caught.value.body["issue"][0]
    return caught.value.status, issue["code"], issue["diagnostics"]


def test_the_limit_counts_every_chunk_of_a_streamed_body() -> None:
    assert _read(_request([b"x" * 40] * 25), 1000) == b"x" * 1000
    assert _refused(_request([b"x" * 40] * 25 + [b"x"]), 1000) == (
        413,
        "too-costly",
        "the request body is larger than 1,000 bytes",
    )


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    assert _refused(_request([b"{}"], {"Content-Length": "1001"}), 1000)[:2] == (413, "too-costly")
    assert _read(_request([b"{}"], {"Content-Length": "1000"}), 1000) == b"{}"


def test_a_body_that_ends_early_or_is_empty_is_a_400() -> None:
    assert _refused(_request([b"{"], disconnect=True), 1000) == (400, "incomplete", "the request body ended early")
    assert _refused(_request([b" \n", b""]), 1000) == (400, "required", "the request body is empty")


def _media_refused(headers: dict[str, str], accepted: frozenset[str] = FHIR_TYPES) -> tuple[int, str, str]:
    with pytest.raises(ApiError) as caught:
        media_type(_request([b"{}"], headers), accepted)
    issue = caught.value.body["issue"][0]
    return caught.value.status, issue["code"], issue["diagnostics"]


FHIR_LIST = "application/fhir+json, application/fhir+xml, application/json, application/xml, text/xml"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Content-Type": "application/fhir+json"}, "application/fhir+json"),
        ({"Content-Type": "Application/FHIR+XML"}, "application/fhir+xml"),
        ({"Content-Type": " text/xml "}, "text/xml"),
        # A parameter after the media type does not change it.
        ({"Content-Type": "application/json; charset=utf-8"}, "application/json"),
        ({"Content-Type": "application/fhir+json;fhirVersion=4.0"}, "application/fhir+json"),
        # identity is no coding at all (RFC 9110 8.4.1), in any case, as is an empty header.
        ({"Content-Type": "application/json", "Content-Encoding": "identity"}, "application/json"),
        ({"Content-Type": "application/json", "Content-Encoding": " Identity "}, "application/json"),
        ({"Content-Type": "application/json", "Content-Encoding": ""}, "application/json"),
    ],
)
def test_accepted_media_types(headers: dict[str, str], expected: str) -> None:
    assert media_type(_request([b"{}"], headers), FHIR_TYPES) == expected


@pytest.mark.parametrize(
    ("headers", "accepted", "diagnostics"),
    [
        ({}, FHIR_TYPES, f"Content-Type none is not accepted here; use one of: {FHIR_LIST}"),
        ({"Content-Type": ""}, FHIR_TYPES, f"Content-Type none is not accepted here; use one of: {FHIR_LIST}"),
        (
            {"Content-Type": "; charset=utf-8"},
            FHIR_TYPES,
            f"Content-Type none is not accepted here; use one of: {FHIR_LIST}",
        ),
        (
            {"Content-Type": "Text/Plain"},
            FHIR_TYPES,
            f"Content-Type text/plain is not accepted here; use one of: {FHIR_LIST}",
        ),
        (
            {"Content-Type": "application/xml"},
            CASE_TYPES,
            "Content-Type application/xml is not accepted here; use one of: application/fhir+json, application/json, "
            "application/x-yaml, application/yaml, text/x-yaml, text/yaml",
        ),
        (
            {"Content-Type": "application/json", "Content-Encoding": "GZip"},
            FHIR_TYPES,
            "Content-Encoding gzip is not accepted; send the body as is",
        ),
        # The coding is shown cut at 40 characters.
        (
            {"Content-Type": "application/json", "Content-Encoding": "a" * 40},
            FHIR_TYPES,
            f"Content-Encoding {'a' * 40} is not accepted; send the body as is",
        ),
        (
            {"Content-Type": "application/json", "Content-Encoding": "b" * 39 + "cd"},
            FHIR_TYPES,
            f"Content-Encoding {'b' * 39}c is not accepted; send the body as is",
        ),
    ],
)
def test_refused_media_types(headers: dict[str, str], accepted: frozenset[str], diagnostics: str) -> None:
    assert _media_refused(headers, accepted) == (415, "not-supported", diagnostics)


@pytest.fixture(scope="module")
def reader(validator: Validator) -> XmlReader:
    return XmlReader(validator.definitions)


PATIENT_XML = b'<Patient xmlns="http://hl7.org/fhir"><foo value="1"/><gender value="male"/></Patient>'


def _parse_refused(data: bytes, media: str, reader: XmlReader) -> tuple[int, str, str]:
    with pytest.raises(ApiError) as caught:
        parse_fhir(data, media, reader)
    issue = caught.value.body["issue"][0]
    return caught.value.status, issue["code"], issue["diagnostics"]


@pytest.mark.parametrize("media", ["application/xml", "application/fhir+xml", "text/xml"])
def test_xml_is_read_as_xml_and_undefined_elements_go_to_problems(media: str, reader: XmlReader) -> None:
    problems: list[Issue] = []
    assert parse_fhir(PATIENT_XML, media, reader, problems) == {"resourceType": "Patient", "gender": "male"}
    assert problems == [Issue("error", "structure", "Undefined element 'foo' at /f:Patient", "/f:Patient")]


def test_without_a_problems_list_undefined_xml_elements_are_a_400(reader: XmlReader) -> None:
    assert _parse_refused(PATIENT_XML, "application/fhir+xml", reader) == (
        400,
        "structure",
        "request body: Patient.foo: Undefined element 'foo' at /f:Patient",
    )


@pytest.mark.parametrize("media", ["application/json", "application/fhir+json"])
def test_json_is_read_as_json(media: str, reader: XmlReader) -> None:
    problems: list[Issue] = []
    assert parse_fhir(b'{"resourceType": "Patient", "gender": "male"}', media, reader, problems) == {
        "resourceType": "Patient",
        "gender": "male",
    }
    assert problems == []
    # JSON sent as XML is not well-formed XML.
    assert _parse_refused(b'{"resourceType": "Patient"}', "application/xml", reader) == (
        400,
        "structure",
        "request body: not well-formed XML: not well-formed (invalid token): line 1, column 0",
    )


def test_what_is_no_resource_is_a_400_naming_the_request_body(reader: XmlReader) -> None:
    assert _parse_refused(b'{"a": 1}', "application/json", reader) == (
        400,
        "structure",
        "request body: not a FHIR resource (no resourceType)",
    )
