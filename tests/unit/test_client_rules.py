"""The FHIR client's retry, paging and error-translation rules, one test per rule with its boundaries.

httpx.MockTransport stands in for the server, and the retries' clock is a fake one (stamina's sleep is recorded,
tenacity's clock advances by what was asked), so each test asserts the exact attempts, the exact waits asked for,
and the exact error type, message and attributes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pytest
import stamina._core
import tenacity

from casebridge.definitions.numbers import FhirDecimal
from casebridge.errors import (
    BadRequest,
    Conflict,
    FhirClientError,
    FhirHttpError,
    FhirProtocolError,
    FhirServerError,
    FhirTransportError,
    PreconditionFailed,
    ResourceGone,
    ResourceNotFound,
    TooManyRequests,
    Unauthorized,
)
from casebridge.fhir import client as client_module
from casebridge.fhir.client import (
    AsyncFhirClient,
    RetryPolicy,
    _http_error,
    _stale_version,
    bundle_is_idempotent,
    parse_retry_after,
)
from casebridge.fhir.search import Search

BASE = "http://fhir.test/fhir"
# Waits of 1, 2, 3, 3 ... seconds: exact (no jitter), so a changed backoff shows in the waits asked for.
POLICY = RetryPolicy(attempts=5, wait_initial=1.0, wait_max=3.0, wait_jitter=0.0, max_retry_after=5.0)
PATIENT = {"resourceType": "Patient", "id": "p1"}
RESPONSE = {"resourceType": "Bundle", "type": "transaction-response"}
BATCH_RESPONSE = {"resourceType": "Bundle", "type": "batch-response"}
Answer = httpx.Response | Exception


class Clock:
    """The retries' clock: every sleep asked for is recorded and moves the clock on, without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(stamina._core, "_smart_sleep", fake.sleep)
    monkeypatch.setattr(tenacity, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


class Server:
    """Answers from a list, one per request (the last one repeats); records the requests."""

    def __init__(self, *answers: Answer):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if len(self.requests) > 100:  # a client retrying without end fails the test instead of hanging it
            raise RuntimeError("more than 100 requests")
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def fhir(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status, content=orjson.dumps(doc), headers={"Content-Type": "application/fhir+json", **(headers or {})}
    )


def outcome(*texts: str) -> dict[str, Any]:
    issues = [{"severity": "error", "code": "processing", "diagnostics": t} for t in texts]
    return {"resourceType": "OperationOutcome", "issue": issues}


def run(
    server: Server, work: Callable[[AsyncFhirClient], Any], *, base: str = BASE, retry: RetryPolicy = POLICY
) -> Any:
    async def main() -> Any:
        async with AsyncFhirClient(base, transport=httpx.MockTransport(server), retry=retry) as client:
            return await work(client)

    return asyncio.run(main())


def fails(
    server: Server, work: Callable[[AsyncFhirClient], Any], *, base: str = BASE, retry: RetryPolicy = POLICY
) -> Any:
    """The exception the work raised (it must raise one)."""
    with pytest.raises(Exception) as info:  # each test asserts the exact type itself
        run(server, work, base=base, retry=retry)
    return info.value


def read(client: AsyncFhirClient) -> Any:
    return client.read("Patient", "p1")


def bundle(kind: str, *requests: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": [{"request": r} for r in requests]}


# -- the policy and the waits ---------------------------------------------------------------------------------


def test_the_default_policy() -> None:
    assert RetryPolicy() == RetryPolicy(
        attempts=6, wait_initial=0.2, wait_max=30.0, wait_jitter=0.5, max_retry_after=30.0
    )


def test_a_persistent_503_is_tried_attempts_times_with_exponential_waits_capped_at_wait_max(clock: Clock) -> None:
    server = Server(fhir(outcome("maintenance"), 503))
    error = fails(server, read)
    assert type(error) is FhirServerError
    assert str(error) == f"GET {BASE}/Patient/p1: 503 Service Unavailable: error processing: maintenance"
    assert len(server.requests) == 5
    assert clock.waits == [1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize(("attempts", "requests"), [(1, 1), (2, 2), (3, 3)])
def test_attempts_count_the_first_try(clock: Clock, attempts: int, requests: int) -> None:
    server = Server(httpx.Response(503))
    policy = RetryPolicy(attempts=attempts, wait_initial=1.0, wait_max=3.0, wait_jitter=0.0)
    assert type(fails(server, read, retry=policy)) is FhirServerError
    assert len(server.requests) == requests
    assert clock.waits == [1.0, 2.0][: attempts - 1]


def test_retries_have_no_overall_time_limit_only_the_attempts(clock: Clock) -> None:
    # Three waits of a minute each: a time limit (stamina's default is 45 s) would stop before the last attempt.
    policy = RetryPolicy(attempts=4, wait_initial=60.0, wait_max=60.0, wait_jitter=0.0)
    server = Server(httpx.Response(503), httpx.Response(503), httpx.Response(503), fhir(PATIENT))
    assert run(server, read, retry=policy) == PATIENT
    assert clock.waits == [60.0, 60.0, 60.0]


def test_the_jitter_is_added_to_the_wait(clock: Clock) -> None:
    policy = RetryPolicy(attempts=2, wait_initial=1.0, wait_max=100.0, wait_jitter=0.5)
    run(Server(httpx.Response(503), fhir(PATIENT)), read, retry=policy)
    assert len(clock.waits) == 1 and 1.0 < clock.waits[0] <= 1.5


# -- which statuses and which requests are retried ------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "requests"),
    [(429, 2), (502, 2), (503, 2), (504, 2), (500, 1), (501, 1), (505, 1), (408, 1), (409, 1), (400, 1)],
)
def test_only_429_502_503_504_are_retried(clock: Clock, status: int, requests: int) -> None:
    server = Server(httpx.Response(status), fhir(PATIENT))
    if requests == 2:
        assert run(server, read) == PATIENT
        assert clock.waits == [1.0]
    else:
        assert isinstance(fails(server, read), FhirHttpError)
        assert clock.waits == []
    assert len(server.requests) == requests


PUT_ENTRY = {"method": "PUT", "url": "Patient/p1"}
POST_ENTRY = {"method": "POST", "url": "Patient"}


@pytest.mark.parametrize(
    ("work", "answer", "requests"),
    [
        (read, PATIENT, 2),
        (lambda c: c.vread("Patient", "p1", "2"), PATIENT, 2),
        (lambda c: c.capabilities(), {"resourceType": "CapabilityStatement"}, 2),
        (lambda c: c.update(PATIENT), PATIENT, 2),
        (lambda c: c.delete("Patient", "p1"), None, 2),
        (lambda c: c.search(Search("Patient")), {"resourceType": "Bundle", "type": "searchset"}, 2),
        (lambda c: c.create(PATIENT, if_none_exist="identifier=a|1"), PATIENT, 2),
        (lambda c: c.transaction(bundle("transaction", PUT_ENTRY)), RESPONSE, 2),
        (lambda c: c.batch(bundle("batch", PUT_ENTRY)), BATCH_RESPONSE, 2),
        (lambda c: c.create(PATIENT), PATIENT, 1),
        (lambda c: c.transaction(bundle("transaction", PUT_ENTRY, POST_ENTRY)), RESPONSE, 1),
        (lambda c: c.batch(bundle("batch", POST_ENTRY)), BATCH_RESPONSE, 1),
    ],
)
def test_a_503_is_retried_only_where_sending_twice_cannot_create_twice(
    clock: Clock, work: Callable[[AsyncFhirClient], Any], answer: Any, requests: int
) -> None:
    server = Server(httpx.Response(503), fhir(answer) if answer is not None else httpx.Response(204))
    if requests == 2:
        assert run(server, work) == answer
    else:
        error = fails(server, work)
        assert type(error) is FhirServerError and error.status == 503
    assert len(server.requests) == requests


NOT_SENT = [httpx.ConnectError("refused"), httpx.ConnectTimeout("connect"), httpx.PoolTimeout("pool")]
SENT = [httpx.ReadError("reset"), httpx.ReadTimeout("read"), httpx.WriteError("pipe"), httpx.RemoteProtocolError("x")]


@pytest.mark.parametrize("failure", NOT_SENT + SENT, ids=lambda e: type(e).__name__)
def test_transport_failures_of_a_read_are_retried(clock: Clock, failure: Exception) -> None:
    server = Server(failure, fhir(PATIENT))
    assert run(server, read) == PATIENT
    assert len(server.requests) == 2 and clock.waits == [1.0]


@pytest.mark.parametrize(
    ("failure", "sent", "kind"),
    [
        (httpx.ConnectError("connection refused"), False, "failed"),
        (httpx.ConnectTimeout("connect timed out"), False, "timed out"),
        (httpx.PoolTimeout("no connection free"), False, "timed out"),
        (httpx.ReadError("connection reset"), True, "failed"),
        (httpx.ReadTimeout("read timed out"), True, "timed out"),
        (httpx.WriteError("broken pipe"), True, "failed"),
        (httpx.WriteTimeout("write timed out"), True, "timed out"),
        (httpx.RemoteProtocolError("server disconnected"), True, "failed"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_a_plain_create_is_retried_only_when_nothing_was_sent(
    clock: Clock, failure: Exception, sent: bool, kind: str
) -> None:
    server = Server(failure)
    error = fails(server, lambda c: c.create(PATIENT))
    assert type(error) is FhirTransportError
    assert str(error) == f"POST {BASE}/Patient {kind}: {type(failure).__name__}: {failure}"
    assert (error.request_sent, error.method, error.url) == (sent, "POST", f"{BASE}/Patient")
    assert len(server.requests) == (1 if sent else POLICY.attempts)


def test_a_transport_failure_without_a_message_says_no_detail(clock: Clock) -> None:
    error = fails(Server(httpx.ReadError("")), lambda c: c.create(PATIENT))
    assert str(error) == f"POST {BASE}/Patient failed: ReadError: no detail"


# -- Retry-After -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "waits"),
    [
        ("2", [2.0]),
        ("0", [0.0]),
        ("5", [5.0]),  # max_retry_after itself is still waited
        ("soon", [1.0]),  # unreadable: the backoff's own wait
        ("Thu, 01 Jan 2015 00:00:00 GMT", [0.0]),  # a date in the past: go now
    ],
)
def test_retry_after_is_the_wait_asked_for(clock: Clock, retry_after: str, waits: list[float]) -> None:
    server = Server(httpx.Response(503, headers={"Retry-After": retry_after}), fhir(PATIENT))
    assert run(server, read) == PATIENT
    assert clock.waits == waits
    assert len(server.requests) == 2


def test_retry_after_as_a_future_date_is_waited(clock: Clock) -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4)
    header = when.strftime("%a, %d %b %Y %H:%M:%S GMT")
    run(Server(httpx.Response(429, headers={"Retry-After": header}), fhir(PATIENT)), read)
    assert len(clock.waits) == 1 and 2.9 <= clock.waits[0] <= 4.0  # whole seconds in the header


@pytest.mark.parametrize("retry_after", ["6", "3600"])
def test_retry_after_over_the_longest_wait_fails_at_once_saying_when(clock: Clock, retry_after: str) -> None:
    server = Server(fhir(outcome("come back later"), 429, {"Retry-After": retry_after}), fhir(PATIENT))
    error = fails(server, read)
    assert type(error) is TooManyRequests
    assert error.retry_after == float(retry_after)
    assert str(error) == f"GET {BASE}/Patient/p1: 429 Too Many Requests: error processing: come back later"
    assert len(server.requests) == 1 and clock.waits == []


def test_retry_after_does_not_make_a_post_or_a_500_retried(clock: Clock) -> None:
    server = Server(httpx.Response(503, headers={"Retry-After": "1"}), fhir(PATIENT, 201))
    assert type(fails(server, lambda c: c.create(PATIENT))) is FhirServerError
    assert len(server.requests) == 1
    server = Server(httpx.Response(500, headers={"Retry-After": "1"}), fhir(PATIENT))
    error = fails(server, read)
    assert type(error) is FhirServerError and error.retry_after == 1.0
    assert len(server.requests) == 1 and clock.waits == []


NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("120", 120.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
        ("\u00b2", None),  # a superscript two is a digit to str.isdigit, not to HTTP
        ("\u0661\u0662", None),  # Arabic-Indic digits: not HTTP's delta-seconds either
        ("Thu, 01 Jan 2026 12:00:30 GMT", 30.0),
        ("Thu, 01 Jan 2026 11:00:00 GMT", 0.0),
        ("Thu, 01 Jan 2026 12:00:30 -0000", 30.0),  # no zone: UTC
        ("Thu, 01 Jan 2026 13:00:30 +0100", 30.0),  # the zone is kept
        ("Thu, 32 Jan 2026 12:00:30 GMT", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == seconds


def test_parse_retry_after_counts_from_now() -> None:
    later = dt.datetime(2026, 1, 1, 12, 0, 0, 500000, tzinfo=dt.UTC)
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:01 GMT", now=later) == 0.5
    assert parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT")  # the real clock: far in the future
    assert parse_retry_after("Sat, 01 Jan 2000 00:00:00 GMT") == 0.0


# -- transaction and batch idempotence ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entries", "idempotent"),
    [
        (None, True),
        ([], True),
        ([{"request": {"method": "GET", "url": "Patient/1"}}], True),
        ([{"request": {"method": "HEAD", "url": "Patient/1"}}], True),
        ([{"request": {"method": "PUT", "url": "Patient/1"}}], True),
        ([{"request": {"method": "DELETE", "url": "Patient/1"}}], True),
        ([{"request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=a|1"}}], True),
        ([{"request": {"method": "POST", "url": "Patient", "ifNoneExist": ""}}], False),
        ([{"request": {"method": "POST", "url": "Patient"}}], False),
        ([{"request": {"method": "PATCH", "url": "Patient/1", "ifNoneExist": "identifier=a|1"}}], False),
        ([{"request": {"method": "put", "url": "Patient/1"}}], False),
        ([{"request": {"url": "Patient/1"}}], False),
        ([{"request": None}], False),
        ([{}], False),
        (["PUT"], False),
        (
            [{"request": {"method": "PUT", "url": "Patient/1"}}, {"request": {"method": "POST", "url": "Patient"}}],
            False,
        ),
        ([{"request": {"method": "GET", "url": "Patient/1"}}, {"request": {"method": "PATCH", "url": "P/1"}}], False),
        ([{"request": {"method": "POST", "url": "P", "ifNoneExist": "a=1"}}, {"request": {"method": "POST"}}], False),
    ],
)
def test_bundle_is_idempotent(entries: list[Any] | None, idempotent: bool) -> None:
    assert bundle_is_idempotent({"resourceType": "Bundle", "type": "transaction", "entry": entries}) is idempotent


@pytest.mark.parametrize(
    ("kind", "doc", "message"),
    [
        ("transaction", {"resourceType": "Bundle", "type": "batch"}, "not a transaction Bundle"),
        ("transaction", {"resourceType": "Parameters", "type": "transaction"}, "not a transaction Bundle"),
        ("batch", {"resourceType": "Bundle", "type": "transaction"}, "not a batch Bundle"),
        ("batch", {"type": "batch"}, "not a batch Bundle"),
    ],
)
def test_only_a_bundle_of_its_kind_is_sent(kind: str, doc: dict[str, Any], message: str) -> None:
    server = Server(fhir(RESPONSE))
    with pytest.raises(ValueError) as info:
        run(server, lambda c: getattr(c, kind)(doc))
    assert str(info.value) == message
    assert server.requests == []


@pytest.mark.parametrize(
    ("kind", "answer"),
    [("transaction", "batch-response"), ("transaction", None), ("batch", "transaction-response"), ("batch", "batch")],
)
def test_the_answer_must_be_the_response_of_its_kind(kind: str, answer: str | None) -> None:
    error = fails(Server(fhir({"resourceType": "Bundle", "type": answer})), lambda c: getattr(c, kind)(bundle(kind)))
    assert type(error) is FhirProtocolError
    assert str(error) == f"the server answered a {kind} with a Bundle of type {answer!r}"
    assert (error.method, error.url) == ("POST", BASE)


def test_a_transaction_must_be_answered_by_a_bundle() -> None:
    error = fails(Server(fhir(outcome("done"))), lambda c: c.transaction(bundle("transaction", PUT_ENTRY)))
    assert type(error) is FhirProtocolError
    assert str(error) == f"POST {BASE}: expected a Bundle, got 'OperationOutcome'"


def test_a_refused_transaction_says_post_and_the_base_url() -> None:
    error = fails(Server(fhir(outcome("bad"), 400)), lambda c: c.transaction(bundle("transaction", PUT_ENTRY)))
    assert type(error) is BadRequest
    assert str(error) == f"POST {BASE}: 400 Bad Request: error processing: bad"
    assert (error.method, error.url) == ("POST", BASE)


def test_transactions_and_batches_are_posted_to_the_base_url() -> None:
    server = Server(fhir(RESPONSE), fhir(BATCH_RESPONSE))
    doc = bundle("transaction", PUT_ENTRY)
    assert run(server, lambda c: c.transaction(doc)) == RESPONSE
    assert run(server, lambda c: c.batch(bundle("batch", PUT_ENTRY))) == BATCH_RESPONSE
    assert [(r.method, str(r.url)) for r in server.requests] == [("POST", BASE), ("POST", BASE)]
    assert orjson.loads(server.requests[0].content) == doc


def test_raw_bytes_are_sent_as_they_are_and_the_bundle_still_judges_idempotence(clock: Clock) -> None:
    raw = b'{"resourceType":"Bundle","type":"transaction","entry":[]}'
    server = Server(httpx.Response(503), fhir(RESPONSE))
    doc = bundle("transaction", POST_ENTRY)
    assert type(fails(server, lambda c: c.transaction(doc, raw=raw))) is FhirServerError
    assert len(server.requests) == 1 and server.requests[0].content == raw


# -- HTTP errors become exceptions ----------------------------------------------------------------------------------


def response(status: int, content: bytes = b"", headers: dict[str, str] | None = None) -> httpx.Response:
    request = httpx.Request("PUT", f"{BASE}/Patient/p1", headers=headers)
    return httpx.Response(status, content=content, request=request)


@pytest.mark.parametrize(
    ("status", "cls", "said"),
    [
        (400, BadRequest, "400 Bad Request"),
        (401, Unauthorized, "401 Unauthorized"),
        (403, Unauthorized, "403 Forbidden"),
        (404, ResourceNotFound, "404 Not Found"),
        (409, Conflict, "409 Conflict"),
        (410, ResourceGone, "410 Gone"),
        (412, PreconditionFailed, "412 Precondition Failed"),
        (418, FhirClientError, "418 I'm a teapot"),
        (422, BadRequest, "422 Unprocessable Entity"),
        (429, TooManyRequests, "429 Too Many Requests"),
        (499, FhirClientError, "499"),  # no reason phrase: no trailing space either
        (500, FhirServerError, "500 Internal Server Error"),
        (503, FhirServerError, "503 Service Unavailable"),
        (599, FhirServerError, "599"),
    ],
)
def test_each_status_becomes_its_exception(status: int, cls: type[FhirHttpError], said: str) -> None:
    error = _http_error(response(status), "PUT")
    assert type(error) is cls
    assert str(error) == f"PUT {BASE}/Patient/p1: {said}"
    assert (error.status, error.method, error.url) == (status, "PUT", f"{BASE}/Patient/p1")
    assert error.outcome is None and error.retry_after is None


@pytest.mark.parametrize(
    ("texts", "suffix"),
    [
        ((), ""),
        (("first",), ": error processing: first"),
        (("first", "second"), ": error processing: first (+1 more)"),
        (("first", "second", "third"), ": error processing: first (+2 more)"),
    ],
)
def test_the_outcome_is_kept_and_its_first_issue_said(texts: tuple[str, ...], suffix: str) -> None:
    doc = outcome(*texts)
    error = _http_error(response(422, orjson.dumps(doc)), "POST")
    assert str(error) == f"POST {BASE}/Patient/p1: 422 Unprocessable Entity{suffix}"
    assert error.outcome == doc


@pytest.mark.parametrize(
    "content",
    [b"", b"<html>no</html>", b"[1, 2]", b'{"resourceType": "Patient", "id": "p1"}', b'"OperationOutcome"'],
)
def test_an_answer_that_is_not_an_operation_outcome_is_not_kept(content: bytes) -> None:
    error = _http_error(response(400, content), "GET")
    assert error.outcome is None
    assert str(error) == f"GET {BASE}/Patient/p1: 400 Bad Request"


def test_retry_after_is_carried_by_the_error() -> None:
    assert _http_error(response(503, headers=None), "GET").retry_after is None
    error = _http_error(httpx.Response(503, headers={"Retry-After": "7"}, request=httpx.Request("GET", BASE)), "GET")
    assert error.retry_after == 7.0


def stale(*issues: Any) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": list(issues)}


CURRENT = "Version 1 is not the current version"
HAPI = "HAPI-0989: Trying to update Patient/p1/_history/1 but this is not the current version"


@pytest.mark.parametrize(
    ("doc", "if_match", "expected"),
    [
        (None, True, False),
        ({"resourceType": "OperationOutcome"}, True, False),
        (stale(), True, False),
        ({"resourceType": "OperationOutcome", "issue": "HAPI-0989"}, True, False),
        ({"resourceType": "OperationOutcome", "issue": {"diagnostics": HAPI}}, True, False),
        (stale({"code": "processing", "diagnostics": HAPI}), False, True),
        (stale({"code": "processing", "details": {"text": HAPI}}), False, True),
        (stale({"code": "processing", "diagnostics": 5, "details": {"text": HAPI}}), False, True),
        (stale({"code": "processing", "diagnostics": HAPI, "details": "HAPI"}), False, True),
        (stale("HAPI-0989", {"code": "processing", "diagnostics": HAPI}), False, True),  # a bad issue is skipped
        (stale({"code": "processing", "diagnostics": "other"}, {"diagnostics": HAPI}), False, True),
        (stale({"code": "conflict", "diagnostics": CURRENT}), True, True),
        (stale({"code": "processing", "diagnostics": CURRENT}), True, True),
        (stale({"code": "conflict", "diagnostics": CURRENT}), False, False),
        (stale({"code": "duplicate", "diagnostics": CURRENT}), True, False),
        (stale({"diagnostics": CURRENT}), True, False),
        (stale({"code": "conflict", "diagnostics": "version conflict"}), True, False),
        # diagnostics and details are read as one text, joined by a space
        (
            stale({"code": "conflict", "diagnostics": "Version 1 is not the", "details": {"text": "current version"}}),
            True,
            True,
        ),
        (stale({"code": "conflict", "diagnostics": "other"}, {"code": "conflict", "diagnostics": CURRENT}), True, True),
    ],
)
def test_a_stale_version_is_read_from_the_outcome(doc: dict[str, Any] | None, if_match: bool, expected: bool) -> None:
    assert _stale_version(doc, if_match) is expected


@pytest.mark.parametrize(
    ("status", "headers", "cls"),
    [
        (409, {"If-Match": 'W/"1"'}, PreconditionFailed),
        (409, {}, Conflict),
        (400, {"If-Match": 'W/"1"'}, BadRequest),
    ],
)
def test_a_409_saying_the_version_is_not_current_is_a_precondition_failure(
    status: int, headers: dict[str, str], cls: type[FhirHttpError]
) -> None:
    doc = stale({"severity": "error", "code": "conflict", "diagnostics": CURRENT})
    error = _http_error(response(status, orjson.dumps(doc), headers), "PUT")
    assert type(error) is cls
    assert error.status == status
    assert str(error).endswith(f": error conflict: {CURRENT}")


# -- answers that are not a success ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "said"),
    [
        (300, {}, "300 Multiple Choices"),
        (301, {"Location": "https://elsewhere.test/p1"}, "301 Moved Permanently to https://elsewhere.test/p1"),
        (304, {}, "304 Not Modified"),
        (307, {"Location": "/fhir/Patient/p2"}, "307 Temporary Redirect to /fhir/Patient/p2"),
        (399, {}, "399 "),
    ],
)
def test_a_3xx_is_a_protocol_error_and_is_not_retried(
    clock: Clock, status: int, headers: dict[str, str], said: str
) -> None:
    server = Server(httpx.Response(status, headers=headers), fhir(PATIENT))
    error = fails(server, read)
    assert type(error) is FhirProtocolError
    url = f"{BASE}/Patient/p1"
    assert str(error) == f"GET {url}: {said} (redirects are not followed: configure the final base URL)"
    assert (error.method, error.url) == ("GET", url)
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [200, 201, 299])
def test_a_2xx_is_a_success(status: int) -> None:
    assert run(Server(fhir(PATIENT, status)), read) == PATIENT


def test_an_unsupported_protocol_is_a_protocol_error_not_retried(clock: Clock) -> None:
    server = Server(httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'."))
    error = fails(server, read)
    assert type(error) is FhirProtocolError
    url = f"{BASE}/Patient/p1"
    assert str(error) == f"GET {url}: Request URL has an unsupported protocol 'ftp://'."
    assert (error.method, error.url) == ("GET", url)
    assert len(server.requests) == 1


def test_an_undecodable_answer_is_a_protocol_error_not_retried(clock: Clock) -> None:
    broken = httpx.Response(200, stream=httpx.ByteStream(b"not gzip"), headers={"Content-Encoding": "gzip"})
    server = Server(broken)
    error = fails(server, read)
    assert type(error) is FhirProtocolError
    assert str(error).startswith(f"GET {BASE}/Patient/p1: DecodingError: ")
    assert (error.method, error.url) == ("GET", f"{BASE}/Patient/p1")
    assert len(server.requests) == 1


# -- what is sent --------------------------------------------------------------------------------------------------


def test_reads_after_a_write_ask_for_no_cache_even_when_the_write_failed(clock: Clock) -> None:
    server = Server(fhir(PATIENT), fhir(PATIENT), fhir(PATIENT), httpx.ReadTimeout("timed out"), fhir(PATIENT))

    async def work(client: AsyncFhirClient) -> None:
        await client.read("Patient", "p1")
        await client._send("HEAD", "Patient/p1", idempotent=True)
        await client.read("Patient", "p1")  # reads are not writes: still no Cache-Control
        with pytest.raises(FhirTransportError):
            await client.create(PATIENT)
        await client.read("Patient", "p1")
        await client._send("HEAD", "Patient/p1", idempotent=True)
        await client.update(PATIENT)

    run(server, work)
    sent = [(r.method, r.headers.get("Cache-Control")) for r in server.requests]
    assert sent == [
        ("GET", None),
        ("HEAD", None),
        ("GET", None),
        ("POST", None),
        ("GET", "no-cache"),
        ("HEAD", "no-cache"),
        ("PUT", None),
    ]


def test_a_body_is_sent_as_fhir_json_and_a_request_without_one_has_no_content_type() -> None:
    server = Server(fhir(PATIENT))

    async def work(client: AsyncFhirClient) -> None:
        await client.update(PATIENT)
        await client.read("Patient", "p1")

    run(server, work)
    put, get = server.requests
    assert put.headers["Content-Type"] == "application/fhir+json; charset=utf-8"
    assert orjson.loads(put.content) == PATIENT
    assert "Content-Type" not in get.headers and get.content == b""


def test_a_decimal_is_sent_as_it_was_written() -> None:
    server = Server(fhir({"resourceType": "Observation", "id": "o1"}))
    observation = {"resourceType": "Observation", "id": "o1", "valueQuantity": {"value": FhirDecimal("0.10")}}
    run(server, lambda c: c.update(observation))
    assert server.requests[0].content == b'{"resourceType":"Observation","id":"o1","valueQuantity":{"value":0.10}}'


def test_paths_are_joined_to_the_base_and_absolute_urls_kept() -> None:
    server = Server(fhir(PATIENT))

    async def work(client: AsyncFhirClient) -> None:
        await client._send("GET", "Patient/p1", idempotent=True)
        await client._send("GET", "", idempotent=True)
        await client._send("GET", "https://other.test/x/", idempotent=True)
        await client._send("GET", "HTTP://FHIR.test/fhir/Patient", idempotent=True)

    run(server, work, base=BASE + "/X/")
    assert [str(r.url) for r in server.requests] == [
        f"{BASE}/X/Patient/p1",
        f"{BASE}/X",
        "https://other.test/x/",
        "http://fhir.test/fhir/Patient",
    ]


def test_search_parameters_are_sent_in_order() -> None:
    server = Server(fhir({"resourceType": "Bundle", "type": "searchset"}))
    run(server, lambda c: c.search(Search("Observation").where(code="a").count(2)))
    assert str(server.requests[0].url) == f"{BASE}/Observation?code=a&_count=2"


# -- paging --------------------------------------------------------------------------------------------------------


def page(n: int, next_url: str | None = None, links: Any = None) -> httpx.Response:
    if links is None:
        links = [{"relation": "self", "url": f"{BASE}/Patient?page={n}"}]
        if next_url is not None:
            links.append({"relation": "next", "url": next_url})
    return fhir(
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": links,
            "entry": [{"resource": {"resourceType": "Patient", "id": f"p{n}"}}],
        }
    )


def ids(server: Server, *, base: str = BASE) -> list[str]:
    async def work(client: AsyncFhirClient) -> list[str]:
        return [page["entry"][0]["resource"]["id"] async for page in client.pages(Search("Patient"))]

    return run(server, work, base=base)


def refused(server: Server, *, base: str = BASE) -> FhirProtocolError:
    async def work(client: AsyncFhirClient) -> list[Any]:
        return [p async for p in client.pages(Search("Patient"))]

    error = fails(server, work, base=base)
    assert type(error) is FhirProtocolError
    return error


@pytest.mark.parametrize(
    "links",
    [
        {"relation": "next", "url": f"{BASE}/Patient?page=2"},  # not a list
        ["next", {"relation": "self", "url": f"{BASE}/Patient?page=2"}],
        [{"relation": "previous", "url": f"{BASE}/Patient?page=2"}],
        [{"relation": "next", "url": ""}],
        [{"relation": "next"}],
        [{"relation": "next", "url": None}],
    ],
)
def test_paging_stops_without_a_next_link(links: Any) -> None:
    server = Server(page(1, links=links), page(2))
    assert ids(server) == ["p1"]
    assert len(server.requests) == 1


def test_the_next_link_is_found_among_the_others() -> None:
    links = ["x", {"relation": "self", "url": f"{BASE}/Patient?s"}, {"relation": "next", "url": f"{BASE}/Patient?n"}]
    server = Server(page(1, links=links), page(2))
    assert ids(server) == ["p1", "p2"]
    assert str(server.requests[1].url) == f"{BASE}/Patient?n"


@pytest.mark.parametrize(
    "next_url",
    [
        f"{BASE}?_getpages=a",  # the base itself, without its slash
        f"{BASE}/Patient/_page/2",  # no query
        "http://fhir.test:80/fhir/Patient?page=2",  # the default port said
        f"{BASE}/Patient?token=a%2Fb&x=..",  # the query is not the path
    ],
)
def test_next_links_inside_the_base_url_are_followed(next_url: str) -> None:
    server = Server(page(1, next_url), page(2))
    assert ids(server) == ["p1", "p2"]
    assert str(server.requests[1].url) == str(httpx.URL(next_url))


@pytest.mark.parametrize(
    "next_url",
    [
        "http://fhir.test/fhirx/Patient",
        "http://fhir.test/Patient",
        "http://fhir.test/fhir/%2e/Patient",
        "http://fhir.test/fhir/%2E%2E/admin",
        "http://fhir.test/fhir/a%5cb",
        "http://fhir.test/fhir/Patient%2Fx",
        "http://fhir.test/fhir/Patient%2fx",
        "http://user@fhir.test/fhir/Patient",
        "http://user:pw@fhir.test/fhir/Patient",
        "http://fhir.test/other/" + "a" * 400,  # the message keeps 300 characters of it
    ],
)
def test_next_links_outside_the_base_path_are_refused_by_exact_message(next_url: str) -> None:
    server = Server(page(1, next_url), page(2))
    error = refused(server)
    assert str(error) == f"refusing to follow a next link outside the base URL {BASE}: {next_url[:300]}"
    assert (error.method, error.url) == ("GET", next_url)
    assert len(server.requests) == 1


def test_a_next_link_that_is_not_a_url_is_refused() -> None:
    error = refused(Server(page(1, "http://[::1"), page(2)))
    assert str(error) == "refusing to follow a next link that is not a URL: http://[::1"
    assert (error.method, error.url) == ("GET", "http://[::1")
    assert isinstance(error.__cause__, httpx.InvalidURL)


DOWNGRADE = "a downgrade from https to http is never followed (our credentials would travel in clear)"
SAME_PORT = "an upgrade from http to https is followed only on the same port"
OWN = (
    "only the base URL's own scheme, host and port are followed, or an upgrade from http to https on the same host "
    "and port"
)


@pytest.mark.parametrize(
    ("base", "next_url", "link", "base_said", "why"),
    [
        (
            "https://fhir.test/fhir",
            "http://fhir.test/fhir?a=1",
            "http, fhir.test, 80",
            "https, fhir.test, 443",
            DOWNGRADE,
        ),
        (
            "https://fhir.test/fhir",
            "http://evil.test/fhir?a=1",
            "http, evil.test, 80",
            "https, fhir.test, 443",
            DOWNGRADE,
        ),
        (
            "http://fhir.test/fhir",
            "https://fhir.test/fhir?a=1",
            "https, fhir.test, 443",
            "http, fhir.test, 80",
            SAME_PORT,
        ),
        ("http://h.test:8080/fhir", "https://h.test:8443/f?a", "https, h.test, 8443", "http, h.test, 8080", SAME_PORT),
        ("http://h.test:8080/fhir", "https://e.test:8080/f?a", "https, e.test, 8080", "http, h.test, 8080", OWN),
        ("http://fhir.test/fhir", "http://evil.test/fhir?a=1", "http, evil.test, 80", "http, fhir.test, 80", OWN),
        ("http://fhir.test/fhir", "http://fhir.test:8080/fhir", "http, fhir.test, 8080", "http, fhir.test, 80", OWN),
        ("https://fhir.test/fhir", "https://evil.test/fhir", "https, evil.test, 443", "https, fhir.test, 443", OWN),
        ("http://h.test:8080/fhir", "ftp://h.test:8080/fhir", "ftp, h.test, 8080", "http, h.test, 8080", OWN),
        ("http://h.test:8080/fhir", "ftp://h.test/fhir", "ftp, h.test, (none)", "http, h.test, 8080", OWN),
        ("http://h.test:8080/fhir", "/fhir?a=1", "(none), (none), (none)", "http, h.test, 8080", OWN),
    ],
)
def test_other_origins_are_refused_by_exact_message(
    base: str, next_url: str, link: str, base_said: str, why: str
) -> None:
    server = Server(page(1, next_url), page(2))
    error = refused(server, base=base)
    assert str(error) == (
        f"refusing to follow a next link outside the base URL {base}: the link's scheme, host and port are {link}, "
        f"the base URL's {base_said}; {why}: {next_url}"
    )
    assert (error.method, error.url) == ("GET", next_url)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("base", "next_url"),
    [
        ("http://h.test:8080/fhir", "https://h.test:8080/fhir/Patient?page=2"),
        ("http://h.test:443/fhir", "https://h.test/fhir/Patient?page=2"),
        ("http://fhir.test/fhir", "HTTP://FHIR.TEST/fhir/Patient?page=2"),
    ],
)
def test_an_upgrade_on_the_same_host_and_port_is_followed(base: str, next_url: str) -> None:
    server = Server(page(1, next_url), page(2))
    assert ids(server, base=base) == ["p1", "p2"]
    assert str(server.requests[1].url) == str(httpx.URL(next_url))


def test_a_loop_is_refused_by_exact_message() -> None:
    loop = f"{BASE}/Patient?page=" + "2" * 400
    server = Server(page(1, loop), page(2, loop), page(3))
    error = refused(server)
    assert str(error) == f"the server's paging loops back to {loop[:300]}"
    assert (error.method, error.url) == ("GET", loop)
    assert len(server.requests) == 2


def test_a_loop_back_to_an_earlier_page_is_refused() -> None:
    server = Server(page(1, f"{BASE}/Patient?p=2"), page(2, f"{BASE}/Patient?p=3"), page(3, f"{BASE}/Patient?p=2"))
    assert str(refused(server)) == f"the server's paging loops back to {BASE}/Patient?p=2"
    assert len(server.requests) == 3


def chain(count: int) -> list[httpx.Response]:
    return [page(n, f"{BASE}/Patient?p={n + 1}" if n < count else None) for n in range(1, count + 1)]


def test_at_most_max_pages_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "MAX_PAGES", 3)
    server = Server(*chain(3))
    assert ids(server) == ["p1", "p2", "p3"]
    server = Server(*chain(5))
    error = refused(server)
    assert str(error) == "more than 3 pages: stopping"
    assert (error.method, error.url) == ("GET", f"{BASE}/Patient?p=4")
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    ("kind", "url"),
    [("history", f"{BASE}/Patient"), (None, f"{BASE}/Patient")],
)
def test_a_search_must_answer_a_searchset(kind: str | None, url: str) -> None:
    error = refused(Server(fhir({"resourceType": "Bundle", "type": kind})))
    assert str(error) == f"a search answered a {kind!r} Bundle"
    assert (error.method, error.url) == ("GET", url)


def test_a_search_must_be_answered_by_a_bundle() -> None:
    error = refused(Server(fhir(outcome("done"))))
    assert str(error) == f"GET {BASE}/Patient: expected a Bundle, got 'OperationOutcome'"


def test_a_refused_search_says_get_and_its_url() -> None:
    error = fails(Server(fhir(outcome("unknown parameter"), 400)), lambda c: c.search(Search("Patient").count(5)))
    assert type(error) is BadRequest
    assert str(error) == f"GET {BASE}/Patient?_count=5: 400 Bad Request: error processing: unknown parameter"
    assert (error.method, error.url) == ("GET", f"{BASE}/Patient?_count=5")


def test_a_page_without_links_is_the_last() -> None:
    server = Server(fhir({"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": PATIENT}]}), page(2))
    assert ids(server) == ["p1"]
    assert len(server.requests) == 1


def test_a_next_page_must_be_a_searchset_too() -> None:
    server = Server(page(1, f"{BASE}/Patient?p=2"), fhir({"resourceType": "Bundle", "type": "collection"}))
    error = refused(server)
    assert str(error) == "a search answered a 'collection' Bundle"
    assert error.url == f"{BASE}/Patient?p=2"


def test_a_next_page_is_retried_like_any_read(clock: Clock) -> None:
    server = Server(page(1, f"{BASE}/Patient?p=2"), httpx.Response(503), page(2))
    assert ids(server) == ["p1", "p2"]
    assert len(server.requests) == 3 and clock.waits == [1.0]


# -- resources of the pages ----------------------------------------------------------------------------------------


def entries_page(entries: Any, next_url: str | None = None) -> httpx.Response:
    links = [{"relation": "next", "url": next_url}] if next_url else []
    return fhir({"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries})


MIXED = [
    "not an entry",
    {"search": {"mode": "match"}},
    {"resource": "not a resource"},
    {"resource": {"resourceType": "Patient", "id": "m1"}, "search": {"mode": "match"}},
    {"resource": {"resourceType": "Organization", "id": "i1"}, "search": {"mode": "include"}},
    {"resource": {"resourceType": "Patient", "id": "m2"}},
    {"resource": {"resourceType": "Patient", "id": "m3"}, "search": None},
    {"resource": {"resourceType": "OperationOutcome", "id": "o1"}, "search": {"mode": "outcome"}},
]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("default", ["m1", "m2", "m3", "n1"]),
        ("match", ["m1", "m2", "m3", "n1"]),
        ("include", ["i1"]),
        ("outcome", ["o1"]),
        (None, ["m1", "i1", "m2", "m3", "o1", "n1"]),
    ],
)
def test_resources_of_every_page_by_search_mode(mode: str | None, expected: list[str]) -> None:
    server = Server(
        entries_page(MIXED, f"{BASE}/Patient?p=2"),
        entries_page(None, f"{BASE}/Patient?p=3"),
        entries_page([{"resource": {"resourceType": "Patient", "id": "n1"}}]),
    )

    async def work(client: AsyncFhirClient) -> list[str]:
        query = Search("Patient")
        found = client.resources(query) if mode == "default" else client.resources(query, mode=mode)
        return [r["id"] async for r in found]

    assert run(server, work) == expected
    assert len(server.requests) == 3
