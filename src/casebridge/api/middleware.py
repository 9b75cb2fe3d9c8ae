"""The outermost layer of every request: a request id, the access log line (with the key's name), metrics, the
end of the audit record a route began (casebridge.api.audit), and the last-resort 500.

A pure ASGI middleware (not BaseHTTPMiddleware), so streamed responses pass through untouched. An
exception nothing else handled becomes a 500 OperationOutcome naming the request id; the log gets its
type and stack frames but not its message, which could quote request content.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from casebridge.api.audit import finish_pending
from casebridge.api.logs import request_id
from casebridge.api.metrics import Metrics
from casebridge.api.outcomes import FHIR_JSON, error_outcome
from casebridge.errors import CasebridgeError, log_defect

log = logging.getLogger("casebridge.api")
_INCOMING_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _INCOMING_ID.fullmatch(incoming) else uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        state: dict[str, Any] = {"status": 500, "started": False}
        # Shared with every Request made downstream (request.state): the key's name once authenticated, and the
        # audit record a route began.
        shared: dict[str, Any] = scope.setdefault("state", {})

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # noqa: BLE001 - the last resort: nothing may leave as a traceback
            if state["started"]:
                # A stream cut short (its upstream failed on a later page): the client sees it incomplete.
                state["status"] = "aborted"
                log.warning("response aborted: %s", _cause(exc), extra={"route": _route(scope)})
                return
            log_defect(log, "unhandled", exc, route=_route(scope))
            if not state["started"]:
                body = orjson.dumps(error_outcome("exception", f"internal error (request id {rid})"))
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", FHIR_JSON.encode()),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
            # A response already under way (a stream) can only be cut short: the client sees it incomplete.
        finally:
            seconds = time.perf_counter() - started
            route, status = _route(scope), state["status"]
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"  # bounded metric labels
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(seconds)
            finish_pending(shared, status, route)
            log.info(
                "request",
                extra={
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 1),
                    "key": str(shared.get("api_key") or "-"),  # the key's name, never its secret
                },
            )
            request_id.reset(token)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def _cause(exc: BaseException) -> str:
    """The exception's type, looking through Starlette's wrappers: an exception group around a stream, and the
    RuntimeError raised from an error it has a handler for once the response has started."""
    inner = getattr(exc, "exceptions", None)
    if inner:
        return _cause(inner[0])
    if exc.__cause__ is not None and not isinstance(exc, CasebridgeError):  # ours already names what failed
        return _cause(exc.__cause__)
    return type(exc).__name__


def _route(scope: Scope) -> str:
    # The route template (/cases, /{resource_type}/$validate), never the raw path: bounded metric labels, no ids.
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"
