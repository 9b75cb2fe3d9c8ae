"""The baseline for bench_api.py: a bare FastAPI endpoint that parses a JSON body and sends it back."""

from __future__ import annotations

from typing import Any

from fastapi import Body, FastAPI

app = FastAPI()


@app.post("/echo")
async def echo(document: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008 - FastAPI's idiom
    return document
