"""Unit tests of the FHIR client's retry, error and paging logic, with httpx.MockTransport (no server).

The client's behaviour against a real server is in test_push_pull.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
import stamina._core

from casebridge.errors import (
    BadRequest,
    Conflict,
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
from casebridge.fhir.client import (
    AsyncFhirClient,
    FhirClient,
    RetryPolicy,
    _http_error,
    bundle_is_idempotent,
    parse_retry_after,
)
from casebridge.fhir.search import Search

BASE = "http://fhir.test/fhir"
FAST = RetryPolicy(attempts=4, wait_initial=0.001, wait_max=0.01, wait_jitter=0.0, max_retry_after=5.0)
PATIENT = {"resourceType": "Patient", "id": "p1"}
PUT_BUNDLE = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [{"resource": PATIENT, "request": {"method": "PUT", "url": "Patient/p1"}}],
}
POST_BUNDLE = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [{"resource": PATIENT, "request": {"method": "POST", "url": "Patient"}}],
}
RESPONSE_BUNDLE = {
    "resourceType": "Bundle",
    "type": "transaction-response",
    "entry": [{"response": {"status": "200 OK"}}],
}


def fhir(doc: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status, content=orjson.dumps(doc), headers={"Content-Type": "application/fhir+json", **(headers or {})}
    )


def outcome(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
    }


class Script:
    """A transport that answers from a list, one item per request (a Response, or an exception to raise)."""

    def __init__(self, *answers: httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.times.append(time.monotonic())
        if len(self.requests) > 100:  # a client retrying without end fails the test instead of hanging it
            raise RuntimeError("more than 100 requests")
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer


def run(script: Script, work: Callable[[AsyncFhirClient], Any], retry: RetryPolicy = FAST) -> Any:
    async def main() -> Any:
        async with AsyncFhirClient(BASE, transport=httpx.MockTransport(script), retry=retry) as client:
            return await work(client)

    return asyncio.run(main())


# -- retries ------------------------------------------------------------------------------------------------


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits the retries ask for, in seconds, without waiting them (stamina's sleep is recorded instead)."""
    asked: list[float] = []

    async def sleep(seconds: float) -> None:
        asked.append(seconds)

    monkeypatch.setattr(stamina._core, "_smart_sleep", sleep)
    return asked


def test_429_with_retry_after_waits_that_long_then_succeeds(waits: list[float]) -> None:
    script = Script(fhir(outcome("slow down"), 429, {"Retry-After": "1"}), fhir(PATIENT))
    assert run(script, lambda c: c.read("Patient", "p1")) == PATIENT
    assert len(script.requests) == 2
    # The exponential backoff alone would wait 1 ms: the server's second is what was waited.
    assert waits == [1.0]


def test_retry_after_longer_than_allowed_is_not_waited_for(waits: list[float]) -> None:
    script = Script(fhir(outcome("come back in an hour"), 429, {"Retry-After": "3600"}), fhir(PATIENT))
    with pytest.raises(TooManyRequests) as info:
        run(script, lambda c: c.read("Patient", "p1"))
    assert len(script.requests) == 1 and waits == []
    assert info.value.retry_after == 3600
    assert "come back in an hour" in str(info.value)


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_and_unavailable_statuses_are_retried(status: int):
    script = Script(httpx.Response(status), httpx.Response(status), fhir(PATIENT))
    assert run(script, lambda c: c.read("Patient", "p1")) == PATIENT
    assert len(script.requests) == 3


def test_persistent_503_gives_up_after_the_attempts_with_the_outcome():
    script = Script(fhir(outcome("maintenance"), 503))
    with pytest.raises(FhirServerError) as info:
        run(script, lambda c: c.read("Patient", "p1"))
    assert len(script.requests) == FAST.attempts
    assert info.value.status == 503
    assert info.value.outcome is not None and info.value.outcome["issue"][0]["diagnostics"] == "maintenance"


@pytest.mark.parametrize("status", [500, 400, 404, 409, 412])
def test_other_statuses_are_not_retried(status: int):
    script = Script(fhir(outcome("no"), status), fhir(PATIENT))
    with pytest.raises(FhirHttpError):  # which subclass is tested below; here only the count matters
        run(script, lambda c: c.read("Patient", "p1"))
    assert len(script.requests) == 1


def test_connection_reset_is_retried_for_a_read():
    script = Script(httpx.ReadError("connection reset by peer"), fhir(PATIENT))
    assert run(script, lambda c: c.read("Patient", "p1")) == PATIENT
    assert len(script.requests) == 2


def test_timeout_is_retried_for_an_idempotent_put_then_reported():
    script = Script(httpx.ReadTimeout("read timed out"))
    with pytest.raises(FhirTransportError) as info:
        run(script, lambda c: c.update(PATIENT))
    assert len(script.requests) == FAST.attempts
    assert "timed out" in str(info.value) and info.value.request_sent


def test_plain_post_is_never_retried_once_sent():
    for failure in (httpx.ReadError("connection reset"), httpx.ReadTimeout("timed out")):
        script = Script(failure, fhir(PATIENT, 201))
        with pytest.raises(FhirTransportError):
            run(script, lambda c: c.create({"resourceType": "Patient"}))
        assert len(script.requests) == 1
    script = Script(httpx.Response(503), fhir(PATIENT, 201))
    with pytest.raises(FhirServerError):
        run(script, lambda c: c.create({"resourceType": "Patient"}))
    assert len(script.requests) == 1


def test_post_is_retried_when_the_connection_was_never_made():
    script = Script(httpx.ConnectError("connection refused"), fhir(PATIENT, 201))
    assert run(script, lambda c: c.create({"resourceType": "Patient"})) == PATIENT
    assert len(script.requests) == 2


def test_conditional_create_is_retried():
    script = Script(httpx.Response(503), fhir(PATIENT, 201))
    assert run(script, lambda c: c.create({"resourceType": "Patient"}, if_none_exist="identifier=x|1")) == PATIENT
    assert script.requests[1].headers["If-None-Exist"] == "identifier=x|1"


def test_transactions_are_retried_only_when_every_entry_is_idempotent():
    script = Script(httpx.Response(503), fhir(RESPONSE_BUNDLE))
    assert run(script, lambda c: c.transaction(PUT_BUNDLE))["type"] == "transaction-response"
    assert len(script.requests) == 2
    script = Script(httpx.Response(503), fhir(RESPONSE_BUNDLE))
    with pytest.raises(FhirServerError):
        run(script, lambda c: c.transaction(POST_BUNDLE))
    assert len(script.requests) == 1


def test_bundle_idempotence_rules():
    def bundle(*requests: dict[str, str]) -> dict[str, Any]:
        return {"resourceType": "Bundle", "type": "transaction", "entry": [{"request": r} for r in requests]}

    assert bundle_is_idempotent(bundle({"method": "PUT", "url": "Patient/1"}, {"method": "GET", "url": "Patient/2"}))
    assert bundle_is_idempotent(bundle({"method": "POST", "url": "Patient", "ifNoneExist": "identifier=a|b"}))
    assert bundle_is_idempotent(bundle({"method": "DELETE", "url": "Patient/1"}))
    assert not bundle_is_idempotent(bundle({"method": "PUT", "url": "Patient/1"}, {"method": "POST", "url": "Patient"}))
    assert not bundle_is_idempotent(bundle({"method": "PATCH", "url": "Patient/1"}))


def test_retry_after_parsing():
    now = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
    assert parse_retry_after("120") == 120
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0  # in the past: go now
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_retry_after_as_http_date_is_honoured(waits: list[float]) -> None:
    when = email_date(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4))
    script = Script(httpx.Response(503, headers={"Retry-After": when}), fhir(PATIENT))
    assert run(script, lambda c: c.read("Patient", "p1")) == PATIENT
    assert len(waits) == 1 and 2.9 <= waits[0] <= 4.0  # the date has one-second precision


def email_date(moment: dt.datetime) -> str:
    import email.utils

    return email.utils.format_datetime(moment, usegmt=True)


# -- errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BadRequest),
        (422, BadRequest),
        (401, Unauthorized),
        (403, Unauthorized),
        (404, ResourceNotFound),
        (410, ResourceGone),
        (412, PreconditionFailed),
        (500, FhirServerError),
    ],
)
def test_statuses_map_to_exceptions_carrying_the_outcome(status: int, error: type[Exception]):
    script = Script(fhir(outcome(f"diagnostic {status}"), status))
    with pytest.raises(error) as info:
        run(script, lambda c: c.read("Patient", "p1"))
    assert f"diagnostic {status}" in str(info.value)
    assert f"{BASE}/Patient/p1" in str(info.value)


def test_error_without_outcome_still_says_what_failed():
    script = Script(httpx.Response(500, text="<html>oops</html>"))
    with pytest.raises(FhirServerError) as info:
        run(script, lambda c: c.read("Patient", "p1"))
    assert info.value.outcome is None and "500" in str(info.value)


def test_answers_that_are_not_fhir_are_protocol_errors():
    with pytest.raises(FhirProtocolError, match="not JSON"):
        run(Script(httpx.Response(200, text="<html/>")), lambda c: c.read("Patient", "p1"))
    with pytest.raises(FhirProtocolError, match="expected a Patient"):
        run(Script(fhir({"resourceType": "Observation"})), lambda c: c.read("Patient", "p1"))
    with pytest.raises(FhirProtocolError, match="transaction"):
        run(Script(fhir({"resourceType": "Bundle", "type": "batch-response"})), lambda c: c.transaction(PUT_BUNDLE))


def test_ids_and_types_are_checked_before_sending():
    script = Script(fhir(PATIENT))
    with pytest.raises(ValueError, match="not a FHIR id"):
        run(script, lambda c: c.read("Patient", "../metadata"))
    with pytest.raises(ValueError, match="resource type"):
        run(script, lambda c: c.read("patient", "p1"))
    assert script.requests == []


# -- headers ------------------------------------------------------------------------------------------------


def test_headers_fhir_json_and_no_cache_after_our_own_write():
    script = Script(fhir(PATIENT))

    async def work(client: AsyncFhirClient) -> None:
        await client.read("Patient", "p1")
        await client.update(PATIENT, if_match="3")
        await client.read("Patient", "p1")

    run(script, work)
    before, write, after = script.requests
    assert before.headers["Accept"] == "application/fhir+json"
    assert "Cache-Control" not in before.headers
    assert write.headers["Content-Type"].startswith("application/fhir+json")
    assert write.headers["If-Match"] == 'W/"3"'
    assert orjson.loads(write.content) == PATIENT
    assert after.headers["Cache-Control"] == "no-cache"


# -- paging -------------------------------------------------------------------------------------------------


def page(n: int, next_url: str | None) -> dict[str, Any]:
    links = [{"relation": "self", "url": f"{BASE}/Patient?page={n}"}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [
            {"resource": {"resourceType": "Patient", "id": f"p{n}"}, "search": {"mode": "match"}},
            {"resource": {"resourceType": "Organization", "id": f"o{n}"}, "search": {"mode": "include"}},
        ],
    }


def collect(script: Script, mode: str | None = "match") -> list[str]:
    async def work(client: AsyncFhirClient) -> list[str]:
        return [r["id"] async for r in client.resources(Search("Patient").count(1), mode=mode)]

    return run(script, work)


def test_paging_follows_next_links_until_there_is_none():
    script = Script(
        fhir(page(1, f"{BASE}?_getpages=abc&_offset=1")),
        fhir(page(2, f"{BASE}/Patient?_offset=2")),
        fhir(page(3, None)),
    )
    assert collect(script) == ["p1", "p2", "p3"]
    assert str(script.requests[1].url) == f"{BASE}?_getpages=abc&_offset=1"  # followed as given, query intact
    assert collect(Script(fhir(page(1, None)))) == ["p1"]
    assert collect(Script(fhir(page(1, None))), mode=None) == ["p1", "o1"]


@pytest.mark.parametrize(
    "next_url",
    [
        "http://evil.test/fhir/Patient?_offset=1",  # another host
        "https://fhir.test/fhir/Patient?_offset=1",  # another scheme
        "http://fhir.test:8080/fhir/Patient?_offset=1",  # another port
        "http://fhir.test/other/Patient?_offset=1",  # outside the base path
        "http://fhir.test/fhirx/Patient?_offset=1",  # a path that only starts like the base
        "/fhir/Patient?_offset=1",  # relative: FHIR requires absolute links
    ],
)
def test_next_links_outside_the_base_url_are_refused(next_url: str):
    script = Script(fhir(page(1, next_url)), fhir(page(2, None)))
    with pytest.raises(FhirProtocolError, match="outside the base URL"):
        collect(script)
    assert len(script.requests) == 1  # nothing was sent there


def test_a_paging_loop_is_refused():
    loop = f"{BASE}/Patient?_offset=1"
    script = Script(fhir(page(1, loop)), fhir(page(2, loop)))
    with pytest.raises(FhirProtocolError, match="loops"):
        collect(script)
    assert len(script.requests) == 2


def test_a_search_must_answer_a_searchset():
    with pytest.raises(FhirProtocolError, match="history"):
        collect(Script(fhir({"resourceType": "Bundle", "type": "history"})))


def test_search_parameters_are_sent_encoded():
    script = Script(fhir(page(1, None)))
    query = Search("DiagnosticReport").where(patient="Patient/1", code=["a,b", "c"]).include("DiagnosticReport:result")
    run(script, lambda c: c.search(query.since(dt.date(2026, 1, 2)).count(50)))
    sent = script.requests[0].url
    assert sent.path == "/fhir/DiagnosticReport"
    assert sent.params.get_list("code") == ["a\\,b,c"]
    assert sent.params["_include"] == "DiagnosticReport:result"
    assert sent.params["_lastUpdated"] == "ge2026-01-02"
    assert sent.params["_count"] == "50"


def test_search_builder_is_immutable():
    base = Search("DiagnosticReport").include("DiagnosticReport:result")
    narrowed = base.where(patient="Patient/1")
    assert base.params == (("_include", "DiagnosticReport:result"),)
    assert ("patient", "Patient/1") in narrowed.params
    assert base.count(10).count(20).params[-1] == ("_count", "20")
    assert len([p for p in base.count(10).count(20).params if p[0] == "_count"]) == 1
    assert Search("Observation").where(code__text="calcium").params == (("code:text", "calcium"),)
    with pytest.raises(ValueError):
        Search("Observation").where(**{"bad name": "x"})
    with pytest.raises(ValueError):
        Search("observation")
    with pytest.raises(AttributeError):
        base.params = ()  # type: ignore[misc]


# -- the sync facade ----------------------------------------------------------------------------------------


def test_sync_facade_runs_the_same_logic():
    script = Script(httpx.Response(503), fhir(PATIENT))
    with FhirClient(BASE, transport=httpx.MockTransport(script), retry=FAST) as client:
        assert client.read("Patient", "p1") == PATIENT
        assert len(script.requests) == 2
        script.answers = [fhir(page(1, f"{BASE}/Patient?_offset=1")), fhir(page(2, None))]
        assert [r["id"] for r in client.resources(Search("Patient"))] == ["p1", "p2"]
        script.answers = [fhir(outcome("gone"), 410)]
        with pytest.raises(ResourceGone):
            client.read("Patient", "p1")


# -- found in review: answers that are not success, ids, link tricks, the facade's life -----------------------


def test_a_redirect_is_not_a_success_and_is_not_followed():
    script = Script(httpx.Response(301, headers={"Location": "https://elsewhere.test/fhir/Patient/p1"}))
    for work in (lambda c: c.update(PATIENT), lambda c: c.read("Patient", "p1"), lambda c: c.delete("Patient", "p1")):
        with pytest.raises(FhirProtocolError, match="redirects are not followed"):
            run(script, work)
    assert {r.url.host for r in script.requests} == {"fhir.test"}


def test_an_empty_body_where_a_resource_is_expected_is_an_error():
    with pytest.raises(FhirProtocolError, match="empty body"):
        run(Script(httpx.Response(200)), lambda c: c.update(PATIENT))
    assert run(Script(httpx.Response(204)), lambda c: c.delete("Patient", "p1")) is None


@pytest.mark.parametrize("bad_id", [".", "..", "a/b", "", "x" * 65])
def test_ids_that_a_url_would_rewrite_are_refused(bad_id: str):
    script = Script(fhir(PATIENT))
    with pytest.raises(ValueError, match="not a FHIR id"):
        run(script, lambda c: c.delete("Patient", bad_id))
    with pytest.raises(ValueError, match="not a FHIR id"):
        run(script, lambda c: c.update({"resourceType": "Patient", "id": bad_id}))
    assert script.requests == []


@pytest.mark.parametrize(
    "next_url",
    [
        "http://fhir.test/fhir/%2e%2e/admin/x",
        "http://fhir.test/fhir/..%2fadmin",
        "http://fhir.test/fhir/%2E%2E%2Fadmin",
        "http://user:pw@fhir.test/fhir/Patient?_offset=1",
        "http://fhir.test/fhir/Patient\x01?_offset=1",
    ],
)
def test_encoded_climbs_userinfo_and_malformed_next_links_are_refused(next_url: str):
    script = Script(fhir(page(1, next_url)), fhir(page(2, None)))
    with pytest.raises(FhirProtocolError, match="refusing to follow"):
        collect(script)
    assert len(script.requests) == 1


def test_an_uppercase_scheme_next_link_is_followed_as_the_url_it_is():
    script = Script(fhir(page(1, "HTTP://fhir.test/fhir/Patient?_offset=1&token=a%2Fb")), fhir(page(2, None)))
    assert collect(script) == ["p1", "p2"]
    assert str(script.requests[1].url) == "http://fhir.test/fhir/Patient?_offset=1&token=a%2Fb"


def test_a_loop_spelled_differently_is_still_a_loop():
    script = Script(
        fhir(page(1, "http://fhir.test/fhir/Patient?_offset=1")),
        fhir(page(2, "http://FHIR.TEST:80/fhir/Patient?_offset=1")),
    )
    with pytest.raises(FhirProtocolError, match="loops"):
        collect(script)


def test_undecodable_bodies_are_protocol_errors():
    broken = httpx.Response(200, stream=httpx.ByteStream(b"not gzip"), headers={"Content-Encoding": "gzip"})
    with pytest.raises(FhirProtocolError, match="DecodingError"):
        run(Script(broken), lambda c: c.read("Patient", "p1"))


def test_the_facade_closes_twice_and_never_blocks_exit():
    client = FhirClient(BASE, transport=httpx.MockTransport(Script(fhir(PATIENT))))
    client.close()
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.read("Patient", "p1")
    import subprocess
    import sys

    # A client never closed: the interpreter still exits (its loop runs in a daemon thread).
    code = "from casebridge.fhir.client import FhirClient; FhirClient('http://127.0.0.1:1/fhir'); print('done')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0 and "done" in done.stdout, done.stderr


def test_a_transaction_can_be_sent_as_its_own_bytes():
    """Forwarded Bundles keep their decimals exactly as written (0.10 is not 0.1)."""
    raw = (
        b'{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Observation",'
        b'"id":"o1","valueQuantity":{"value":0.10}},"request":{"method":"PUT","url":"Observation/o1"}}]}'
    )
    script = Script(fhir(RESPONSE_BUNDLE))
    run(script, lambda c: c.transaction(orjson.loads(raw), raw=raw))
    assert script.requests[0].content == raw


# -- HAPI's ways: a stale If-Match answered 409, next links that change scheme ---------------------------------


def hapi_409(diagnostics: str, code: str = "processing", *, where: str = "diagnostics") -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": "error", "code": code}
    if where == "diagnostics":
        issue["diagnostics"] = diagnostics
    else:
        issue["details"] = {"text": diagnostics}
    return {"resourceType": "OperationOutcome", "issue": [issue]}


STALE = "HAPI-0989: Trying to update Patient/p1/_history/1 but this is not the current version"
PATCH_STALE = "HAPI-0974: Version 1 is not the most recent version of this resource, unable to apply patch"
RACE = (
    "HAPI-0550: HAPI-0823: The operation has failed with a version constraint failure. This generally means that "
    "two clients/threads were trying to update the same resource at the same time, and this request was chosen as "
    "the failing request."
)


@pytest.mark.parametrize(
    ("status", "body", "if_match", "expected"),
    [
        (409, hapi_409(STALE), True, PreconditionFailed),
        (409, hapi_409(STALE), False, PreconditionFailed),  # HAPI's code alone says it (a transaction's ifMatch)
        (409, hapi_409("HAPI-0550: HAPI-0550: " + STALE), False, PreconditionFailed),  # a transaction's prefixes
        (409, hapi_409(PATCH_STALE), False, PreconditionFailed),
        (409, hapi_409(STALE, where="details"), False, PreconditionFailed),
        (409, hapi_409(RACE), True, Conflict),  # two writers at once: transient, even with If-Match sent
        (409, hapi_409("HAPI-09890: something else"), True, Conflict),  # a longer code is another code
        (409, hapi_409("Version 1 is not the current version", "conflict"), True, PreconditionFailed),
        (409, hapi_409("Version 1 is not the current version", "conflict"), False, Conflict),  # no If-Match: no
        (409, hapi_409("Version 1 is not the current version", "duplicate"), True, Conflict),
        (409, None, True, Conflict),  # no OperationOutcome to tell
        (400, hapi_409(STALE), True, BadRequest),  # only a 409 is read this way
        (412, hapi_409("anything"), False, PreconditionFailed),
    ],
)
def test_a_409_is_a_precondition_failure_only_when_its_outcome_says_the_version_is_stale(
    status: int, body: dict[str, Any] | None, if_match: bool, expected: type[Exception]
):
    headers = {"If-Match": 'W/"1"'} if if_match else {}
    request = httpx.Request("PUT", f"{BASE}/Patient/p1", headers=headers)
    content = orjson.dumps(body) if body is not None else b"<html>Conflict</html>"
    error = _http_error(httpx.Response(status, content=content, request=request), "PUT")
    assert type(error) is expected
    assert error.status == status


def collect_from(base: str, script: Script) -> list[str]:
    async def main() -> list[str]:
        async with AsyncFhirClient(base, transport=httpx.MockTransport(script), retry=FAST) as client:
            return [r["id"] async for r in client.resources(Search("Patient").count(1))]

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("base", "next_url"),
    [
        ("http://fhir.test:8080/fhir", "https://fhir.test:8080/fhir?_getpages=a&_getpagesoffset=1"),
        ("http://fhir.test:443/fhir", "https://fhir.test/fhir?_getpages=a&_getpagesoffset=1"),  # 443 both sides
        ("https://fhir.test/fhir", "https://FHIR.test:443/fhir?_getpages=a&_getpagesoffset=1"),  # the same origin
    ],
)
def test_an_upgrade_to_https_on_the_same_host_and_port_is_followed(base: str, next_url: str):
    script = Script(fhir(page(1, next_url)), fhir(page(2, None)))
    assert collect_from(base, script) == ["p1", "p2"]
    assert str(script.requests[1].url) == str(httpx.URL(next_url))


@pytest.mark.parametrize(
    ("base", "next_url", "link", "base_said", "why"),
    [
        # implicit ports: 80 and 443 are not the same port
        (
            "http://fhir.test/fhir",
            "https://fhir.test/fhir?a=1",
            "https, fhir.test, 443",
            "http, fhir.test, 80",
            "only on the same port",
        ),
        (
            "https://fhir.test/fhir",
            "http://fhir.test/fhir?a=1",
            "http, fhir.test, 80",
            "https, fhir.test, 443",
            "a downgrade from https to http is never followed",
        ),
        (
            "https://fhir.test:8443/fhir",
            "http://fhir.test:8443/fhir?a=1",
            "http, fhir.test, 8443",
            "https, fhir.test, 8443",
            "a downgrade",
        ),
        (
            "http://fhir.test:8080/fhir",
            "https://evil.test:8080/fhir?a=1",
            "https, evil.test, 8080",
            "http, fhir.test, 8080",
            "only the base URL's own",
        ),
        (
            "http://fhir.test:8080/fhir",
            "ftp://fhir.test:8080/fhir?a=1",
            "ftp, fhir.test, 8080",
            "http, fhir.test, 8080",
            "only the base URL's own",
        ),
        (
            "http://fhir.test:8080/fhir",
            "/fhir?a=1",
            "(none), (none), (none)",
            "http, fhir.test, 8080",
            "only the base URL's own",
        ),
    ],
)
def test_other_origins_are_refused_naming_both_schemes_hosts_and_ports(
    base: str, next_url: str, link: str, base_said: str, why: str
):
    script = Script(fhir(page(1, next_url)), fhir(page(2, None)))
    with pytest.raises(FhirProtocolError) as refused:
        collect_from(base, script)
    said = f"outside the base URL {base}: the link's scheme, host and port are {link}, the base URL's {base_said}; "
    assert said in str(refused.value)
    assert why in str(refused.value)
    assert len(script.requests) == 1


def test_an_upgraded_link_still_keeps_to_the_base_path_and_is_not_a_loop_of_its_http_twin():
    base = "http://fhir.test:8080/fhir"
    script = Script(fhir(page(1, "https://fhir.test:8080/other/Patient?_offset=1")), fhir(page(2, None)))
    with pytest.raises(FhirProtocolError, match="outside the base URL"):
        collect_from(base, script)
    script = Script(
        fhir(page(1, "https://fhir.test:8080/fhir/Patient?_offset=1")),
        fhir(page(2, "http://fhir.test:8080/fhir/Patient?_offset=2")),  # back to the base's own scheme: fine
        fhir(page(3, "https://fhir.test:8080/fhir/Patient?_offset=1")),  # page 1 again: a loop
    )
    with pytest.raises(FhirProtocolError, match="loops"):
        collect_from(base, script)
    assert [r.url.scheme for r in script.requests] == ["http", "https", "http"]
