"""The Bulk Data client's polling, Retry-After, manifest, paging and resume logic, with httpx.MockTransport (no
server). The export against a real server (the embedded one) is tests/integration/test_bulk_export.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from casebridge.errors import BulkExportError, FhirProtocolError, InputError
from casebridge.fhir.auth import BearerAuth
from casebridge.fhir.bulk import MANIFEST_FILE, STATE_FILE, ExportRequest, ExportResult, PollPolicy, run_export
from casebridge.fhir.client import AsyncFhirClient, RetryPolicy

BASE = "http://fhir.test/fhir"
STATUS = f"{BASE}/bulk-status/job1"
FAST = RetryPolicy(attempts=2, wait_initial=0.001, wait_max=0.01, wait_jitter=0.0, max_retry_after=5.0)
PATIENTS = b"".join(orjson.dumps({"resourceType": "Patient", "id": f"p{i}"}) + b"\n" for i in range(50))
OBSERVATIONS = b"".join(
    orjson.dumps({"resourceType": "Observation", "id": f"o{i}", "status": "final"}) + b"\n" for i in range(200)
)
PROBLEMS = orjson.dumps({"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "x"}]}) + b"\n"


def manifest(**extra: Any) -> dict[str, Any]:
    return {
        "transactionTime": "2026-01-01T10:00:00.000Z",
        "request": f"{BASE}/$export",
        "requiresAccessToken": False,
        "output": [
            {"type": "Patient", "url": f"{BASE}/files/Patient.ndjson", "count": 50},
            {"type": "Observation", "url": f"{BASE}/files/Observation.ndjson", "count": 200},
        ],
        "error": [],
        **extra,
    }


def outcome(code: str, text: str = "it broke") -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}


class Server:
    """A scripted Bulk Data server: ``statuses`` answer the status polls in turn (the last one repeats)."""

    def __init__(self, statuses: list[httpx.Response], files: dict[str, bytes] | None = None):
        self.statuses = statuses
        self.files = files if files is not None else {"Patient.ndjson": PATIENTS, "Observation.ndjson": OBSERVATIONS}
        self.requests: list[httpx.Request] = []
        self.polls = 0
        self.file_handler: Callable[[httpx.Request, str], httpx.Response] | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path.endswith("/$export"):
            return httpx.Response(202, headers={"Content-Location": STATUS})
        if path.endswith("/bulk-status/job1"):
            self.polls += 1
            return self.statuses[min(self.polls, len(self.statuses)) - 1]
        name = path.rsplit("/", 1)[-1]
        if self.file_handler is not None:
            return self.file_handler(request, name)
        return httpx.Response(200, content=self.files[name], headers={"Content-Type": "application/fhir+ndjson"})

    def file_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if "/files/" in r.url.path]


def progress(value: str = "busy", retry_after: str | None = "1") -> httpx.Response:
    headers = {"X-Progress": value}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    return httpx.Response(202, headers=headers)


def done(doc: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.Response(200, content=orjson.dumps(doc or manifest()), headers={"Content-Type": "application/json"})


class Clock:
    """A fake clock that the fake sleep moves forward; ``waits`` records every sleep."""

    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def export(
    server: Server,
    folder: Path,
    request: ExportRequest | None = None,
    *,
    policy: PollPolicy | None = None,
    clock: Clock | None = None,
    auth: httpx.Auth | None = None,
) -> ExportResult:
    clock = clock or Clock()

    async def work() -> ExportResult:
        async with AsyncFhirClient(BASE, transport=httpx.MockTransport(server), retry=FAST, auth=auth) as client:
            return await run_export(
                client, request or ExportRequest(), folder, policy=policy, sleep=clock.sleep, clock=clock
            )

    return asyncio.run(work())


def test_202_twice_then_200_downloads_every_file_and_writes_the_manifest_last(tmp_path: Path) -> None:
    server = Server([progress("10%"), progress("60%", "3"), done()])
    clock = Clock()
    request = ExportRequest(
        level="patient",
        types=("Patient", "Observation"),
        since="2025-12-31T00:00:00.000Z",
        type_filters=("Observation?status=final,amended",),
    )
    result = export(server, tmp_path / "out", request, clock=clock)

    kickoff = server.requests[0]
    assert kickoff.url.path == "/fhir/Patient/$export"
    assert kickoff.headers["Prefer"] == "respond-async"
    assert kickoff.headers["Accept"] == "application/fhir+json"
    assert kickoff.url.params.get_list("_type") == ["Patient,Observation"]
    assert kickoff.url.params["_since"] == "2025-12-31T00:00:00.000Z"
    assert kickoff.url.params.get_list("_typeFilter") == ["Observation?status=final,amended"]
    assert server.polls == 3
    assert clock.waits == [1.0, 3.0]  # as each 202's Retry-After asked
    assert result.polls == 3
    assert [(f.file, f.count) for f in result.files] == [("Patient.1.ndjson", 50), ("Observation.1.ndjson", 200)]
    out = tmp_path / "out"
    assert (out / "Patient.1.ndjson").read_bytes() == PATIENTS
    assert (out / "Observation.1.ndjson").read_bytes() == OBSERVATIONS
    written = orjson.loads((out / MANIFEST_FILE).read_bytes())
    assert written["transactionTime"] == "2026-01-01T10:00:00.000Z"
    assert [o["file"] for o in written["output"]] == ["Patient.1.ndjson", "Observation.1.ndjson"]
    assert not list(out.glob("*.part"))
    # No token was asked for: none sent with the files (the client has one for the FHIR requests).


def test_files_get_the_token_only_when_the_manifest_requires_it(tmp_path: Path) -> None:
    for required in (False, True):
        server = Server([done(manifest(requiresAccessToken=required))])
        export(server, tmp_path / f"out-{required}", auth=BearerAuth("secret-token"))
        assert server.requests[0].headers["Authorization"] == "Bearer secret-token"  # the kick-off
        sent = {r.headers.get("Authorization") for r in server.file_requests()}
        assert sent == ({"Bearer secret-token"} if required else {None})


def test_retry_after_as_an_http_date_is_waited_for(tmp_path: Path) -> None:
    when = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=40), usegmt=True)
    clock = Clock()
    export(Server([progress(retry_after=when), done()]), tmp_path / "out", clock=clock)
    assert len(clock.waits) == 1 and 35 <= clock.waits[0] <= 40


def test_without_retry_after_the_wait_grows_and_429_asks_for_its_own(tmp_path: Path) -> None:
    throttled = httpx.Response(429, headers={"Retry-After": "20"})
    clock = Clock()
    policy = PollPolicy(interval=2.0, max_interval=4.0)
    export(Server([progress(retry_after=None)] * 3 + [throttled, done()]), tmp_path / "out", clock=clock, policy=policy)
    assert clock.waits == [2.0, 3.0, 4.0, 20.0]


def test_an_export_the_server_reports_as_failed_raises_with_its_outcome(tmp_path: Path) -> None:
    failed = httpx.Response(500, content=orjson.dumps(outcome("exception", "out of disk")))
    with pytest.raises(BulkExportError, match="out of disk") as caught:
        export(Server([progress(), failed]), tmp_path / "out")
    assert caught.value.outcome == outcome("exception", "out of disk")


def test_a_transient_outcome_keeps_polling(tmp_path: Path) -> None:
    busy = httpx.Response(500, content=orjson.dumps(outcome("transient", "busy")), headers={"Retry-After": "7"})
    clock = Clock()
    result = export(Server([busy, done()]), tmp_path / "out", clock=clock)
    assert clock.waits == [7.0]
    assert len(result.files) == 2


def test_an_error_manifest_brings_its_error_files_apart_from_the_data(tmp_path: Path) -> None:
    doc = manifest(error=[{"type": "OperationOutcome", "url": f"{BASE}/files/errors.ndjson", "count": 1}])
    server = Server([done(doc)], files={"Patient.ndjson": PATIENTS, "Observation.ndjson": OBSERVATIONS})
    server.files["errors.ndjson"] = PROBLEMS
    result = export(server, tmp_path / "out")
    assert [(f.file, f.count) for f in result.errors] == [("error/OperationOutcome.1.ndjson", 1)]
    assert (tmp_path / "out" / "error" / "OperationOutcome.1.ndjson").read_bytes() == PROBLEMS
    assert len(result.files) == 2


def test_the_cap_on_polls_stops_and_keeps_the_job_for_a_rerun(tmp_path: Path) -> None:
    server = Server([progress()])
    with pytest.raises(BulkExportError, match="after 3 status requests"):
        export(server, tmp_path / "out", policy=PollPolicy(max_polls=3))
    assert server.polls == 3
    state = orjson.loads((tmp_path / "out" / STATE_FILE).read_bytes())
    assert state["status_url"] == STATUS and state["manifest"] is None
    assert not (tmp_path / "out" / MANIFEST_FILE).exists()
    # The rerun polls the same job: no second kick-off.
    server.statuses = [done()]
    result = export(server, tmp_path / "out")
    assert sum(1 for r in server.requests if r.url.path.endswith("$export")) == 1
    assert result.resumed and len(result.files) == 2


def test_the_total_wait_is_bounded(tmp_path: Path) -> None:
    server = Server([progress(retry_after="30")])
    with pytest.raises(BulkExportError, match="not complete after 100 s"):
        export(server, tmp_path / "out", policy=PollPolicy(max_wait=100))
    assert server.polls == 4  # waits of 30, 60, 90 s fit in 100; a fourth would not


class CutStream(httpx.AsyncByteStream):
    """Gives ``data`` then fails as a dropped connection does."""

    def __init__(self, data: bytes):
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data
        raise httpx.ReadError("connection reset")


def test_a_download_cut_midway_is_resumed_with_range(tmp_path: Path) -> None:
    server = Server([done()])
    cut = OBSERVATIONS.index(b"\n", 5000) + 40  # mid-line: the cut line is fetched again
    ranges: list[str | None] = []

    def files(request: httpx.Request, name: str) -> httpx.Response:
        data = server.files[name]
        if name != "Observation.ndjson":
            return httpx.Response(200, content=data)
        ranges.append(request.headers.get("Range"))
        if len(ranges) == 1:
            return httpx.Response(200, stream=CutStream(data[:cut]))
        start = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
        headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
        return httpx.Response(206, content=data[start:], headers=headers)

    server.file_handler = files
    clock = Clock()
    result = export(server, tmp_path / "out", clock=clock)
    last_newline = OBSERVATIONS.rindex(b"\n", 0, cut) + 1
    assert ranges == [None, f"bytes={last_newline}-"]
    assert (tmp_path / "out" / "Observation.1.ndjson").read_bytes() == OBSERVATIONS
    assert [f.count for f in result.files] == [50, 200]
    assert clock.waits == [1.0]  # one back-off before the second attempt


def test_a_server_without_range_starts_the_file_again_and_a_rerun_skips_complete_files(tmp_path: Path) -> None:
    server = Server([done()])
    out = tmp_path / "out"
    out.mkdir()
    # An earlier run: the state with its manifest, one complete file and one cut .part.
    key = {"server": BASE, "path": "$export", "params": [["_outputFormat", "application/fhir+ndjson"]]}
    (out / STATE_FILE).write_bytes(orjson.dumps({"request": key, "status_url": STATUS, "manifest": manifest()}))
    (out / "Patient.1.ndjson").write_bytes(PATIENTS)
    (out / "Observation.1.ndjson.part").write_bytes(OBSERVATIONS[:3000])
    result = export(server, out)
    assert [r.url.path for r in server.requests] == ["/fhir/files/Observation.ndjson"]  # no kick-off, no poll
    assert server.requests[0].headers["Range"].startswith("bytes=")  # asked; the server sent it all (200)
    assert (out / "Observation.1.ndjson").read_bytes() == OBSERVATIONS
    assert [(f.file, f.downloaded) for f in result.files] == [
        ("Patient.1.ndjson", False),
        ("Observation.1.ndjson", True),
    ]
    again = Server([done()])
    result = export(again, out)
    assert again.requests == [] and all(not f.downloaded for f in result.files)


def test_manifest_pages_are_followed_and_merged(tmp_path: Path) -> None:
    first = manifest(output=[manifest()["output"][0]], link=[{"relation": "next", "url": f"{BASE}/bulk-status/p2"}])
    second = manifest(output=[manifest()["output"][1]])
    server = Server([done(first)])
    original = server.__call__

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/p2"):
            server.requests.append(request)
            return done(second)
        return original(request)

    async def work() -> ExportResult:
        async with AsyncFhirClient(BASE, transport=httpx.MockTransport(handler), retry=FAST) as client:
            return await run_export(client, ExportRequest(), tmp_path / "out", sleep=Clock().sleep)

    result = asyncio.run(work())
    assert [f.type for f in result.files] == ["Patient", "Observation"]
    assert "link" not in orjson.loads((tmp_path / "out" / MANIFEST_FILE).read_bytes())


@pytest.mark.parametrize(
    ("statuses", "files", "message"),
    [
        (
            [done(manifest(output=[{"type": "Patient", "url": f"{BASE}/files/Patient.ndjson", "count": 49}]))],
            None,
            "50 resources, the manifest says 49",
        ),
        (
            [done(manifest(output=[{"type": "Condition", "url": f"{BASE}/files/Patient.ndjson"}]))],
            None,
            "a 'Patient' in a file of Condition",
        ),
        ([done(manifest(output=[{"type": "Patient", "url": "ftp://elsewhere/x"}]))], None, r"output\[0\].url"),
        (
            [done(manifest(requiresAccessToken=True, output=[{"type": "Patient", "url": "http://evil.test/P"}]))],
            None,
            "refusing to send our token",
        ),
        (
            [done(manifest(output=[{"type": "Patient", "url": f"{BASE}/files/Patient.ndjson"}]))],
            {"Patient.ndjson": b'{"resourceType": "Patient"}\n{not json\n'},
            "line 2: not JSON",
        ),
        ([done({"output": []})], None, "no transactionTime"),
        ([done(manifest(requiresAccessToken="false"))], None, "requiresAccessToken is not a boolean"),
    ],
)
def test_what_the_server_sends_is_checked(
    tmp_path: Path, statuses: list[httpx.Response], files: dict[str, bytes] | None, message: str
) -> None:
    with pytest.raises(FhirProtocolError, match=message):
        export(Server(statuses, files), tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.ndjson"))  # nothing half-written is left as a complete file


def test_a_status_url_elsewhere_is_refused(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(202, headers={"Content-Location": "http://evil.test/status/1"})

    async def work() -> ExportResult:
        async with AsyncFhirClient(BASE, transport=httpx.MockTransport(handler), retry=FAST) as client:
            return await run_export(client, ExportRequest(), tmp_path / "out")

    with pytest.raises(FhirProtocolError, match="outside the FHIR server"):
        asyncio.run(work())


def test_a_folder_with_other_content_or_another_export_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(InputError, match="not empty"):
        export(Server([done()]), tmp_path)
    export(Server([done()]), tmp_path / "out")
    with pytest.raises(InputError, match="another export"):
        export(Server([done()]), tmp_path / "out", ExportRequest(types=("Patient",)))
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"level": "group"},
        {"group": "g1"},
        {"level": "group", "group": "../x"},
        {"types": ("patient",)},
        {"type_filters": ("status=final",)},
        {"since": "2026-01-01"},
        {"since": "2026-13-01T00:00:00Z"},
        {"output_format": "text/csv"},
    ],
)
def test_bad_requests_are_refused_before_anything_is_sent(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ExportRequest(**kwargs)


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (httpx.ConnectError(""), "GET http://x/f failed: ConnectError: no detail"),
        (httpx.ReadTimeout("slow"), "GET http://x/f timed out: ReadTimeout: slow"),
    ],
)
def test_a_transport_error_says_what_failed_and_no_detail_when_it_has_none(
    exc: httpx.TransportError, text: str
) -> None:
    from casebridge.fhir.bulk import _transport_error

    error = _transport_error(exc, "http://x/f")
    assert str(error).startswith(text)
    assert error.request_sent is isinstance(exc, httpx.ReadTimeout)
