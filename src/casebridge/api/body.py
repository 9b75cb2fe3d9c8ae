"""Request bodies: media types checked (415), size bounded while reading (413), FHIR content parsed (400)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect

from casebridge.api.errors import ApiError
from casebridge.definitions.xml import XmlReader
from casebridge.errors import InputError
from casebridge.pipeline import read_resource
from casebridge.validation.validator import Issue

JSON_TYPES = frozenset({"application/json", "application/fhir+json"})
XML_TYPES = frozenset({"application/xml", "application/fhir+xml", "text/xml"})
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
FHIR_TYPES = JSON_TYPES | XML_TYPES
CASE_TYPES = JSON_TYPES | YAML_TYPES
SOURCE = "request body"


def media_type(request: Request, accepted: frozenset[str]) -> str:
    """The request's media type, if accepted; else 415 naming what is. A body in a content coding (gzip...) is
    415 too (RFC 9110 15.5.16): it is not decompressed here, so it could only be misread."""
    coding = request.headers.get("content-encoding", "").strip().lower()
    if coding not in ("", "identity"):
        raise ApiError.of(415, "not-supported", f"Content-Encoding {coding[:40]} is not accepted; send the body as is")
    value = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if value not in accepted:
        shown = value or "none"
        raise ApiError.of(
            415,
            "not-supported",
            f"Content-Type {shown} is not accepted here; use one of: {', '.join(sorted(accepted))}",
        )
    return value


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with 413 as soon as it passes ``limit`` (Content-Length is not trusted alone)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        # The client went away (or sent a broken chunked body): nobody reads the answer; not a server error.
        raise ApiError.of(400, "incomplete", "the request body ended early") from None
    data = b"".join(chunks)
    if not data.strip():
        raise ApiError.of(400, "required", "the request body is empty")
    return data


def _too_large(limit: int) -> ApiError:
    return ApiError.of(413, "too-costly", f"the request body is larger than {limit:,} bytes")


def parse_fhir(data: bytes, media: str, reader: XmlReader, problems: list[Issue] | None = None) -> dict[str, Any]:
    """A FHIR resource from JSON (duplicate keys refused) or XML; 400 when it cannot be read as one. XML elements
    the types do not define go to ``problems`` as errors, to report with the validation's issues (without the
    list: 400)."""
    try:
        return read_resource(data, source=SOURCE, xml=media in XML_TYPES, reader=reader, problems=problems)
    except InputError as exc:
        raise ApiError.of(400, "structure", exc.report()) from exc
