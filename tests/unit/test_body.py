"""casebridge.api.body.read_body on its own: the limit counts every chunk of a streamed body, a declared
Content-Length over the limit is refused before reading, and a body that ends early or is empty is a 400."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.requests import Request

from casebridge.api.body import read_body
from casebridge.api.errors import ApiError


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
