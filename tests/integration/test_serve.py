"""`casebridge serve` as a real process: it refuses to start without keys, serves over HTTP, writes JSON log
lines with request ids, and its log of a full run holds none of the case's words."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

import casebridge
from casebridge.runtime import default_workers
from tests.conftest import SEED
from tests.paths import PROJECT_ROOT

from .test_api import KEYS, READ, RW, WRITE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes that are not valid HTTP; read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


def test_serve_needs_keys() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CASEBRIDGE_API_KEYS"}
    result = subprocess.run(
        [sys.executable, "-m", "casebridge", "serve"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3 and "CASEBRIDGE_API_KEYS" in result.stderr


class Serving:
    """`casebridge serve` started on a free port, ready (GET /healthz answered); its stderr once stopped."""

    def __init__(self, fhir_server: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "CASEBRIDGE_API_KEYS": KEYS,
            "CASEBRIDGE_FHIR_BASE_URL": fhir_server,
            "CASEBRIDGE_LOCK_DIR": str(tmp_path / "locks"),
            **(env or {}),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "casebridge", "serve", "--port", str(self.port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=PROJECT_ROOT,
            env=env,
        )
        self.stderr = ""

    def __enter__(self) -> Serving:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise AssertionError(f"serve did not start: {self.stderr[-2000:]}")
            time.sleep(0.2)

    def __exit__(self, *_: object) -> None:
        self.process.send_signal(signal.SIGTERM)
        _, self.stderr = self.process.communicate(timeout=30)

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.base}/metrics", timeout=10).text
        return float(next(line for line in text.splitlines() if line.startswith(f"{name} ")).split()[1])

    def log_lines(self) -> list[dict[str, object]]:
        """The JSON log lines; fails on any line that is not JSON (a stray traceback, uvicorn's plain text)."""
        loose = [line for line in self.stderr.splitlines() if line.strip() and not line.startswith("{")]
        assert not loose, self.stderr[-2000:]
        return [json.loads(line) for line in self.stderr.splitlines() if line.startswith("{")]


def test_a_full_run_logs_json_lines_without_case_content(fhir_server: str, tmp_path: Path) -> None:
    with Serving(fhir_server, tmp_path) as serving:
        base, port = serving.base, serving.port
        seed = SEED.read_text().replace("case_id: ijsra-2026-18-3-0536\n", "case_id: serve-run\n").encode()
        pushed = httpx.post(
            f"{base}/cases?push=true",
            content=seed,
            timeout=60,
            headers={**WRITE, "Content-Type": "application/yaml", "X-Request-ID": "job-42"},
        )
        assert pushed.status_code == 200 and pushed.headers["x-request-id"] == "job-42"
        bundle = httpx.post(
            f"{base}/cases", content=seed, headers={**READ, "Content-Type": "application/yaml"}, timeout=60
        ).json()
        patient = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
        for fmt in ("json", "csv"):
            assert (
                httpx.get(
                    f"{base}/diagnostic-reports?patient={patient}&_format={fmt}", headers=READ, timeout=60
                ).status_code
                == 200
            )
        assert (
            httpx.post(
                f"{base}/Patient/$validate",
                content=b'{"resourceType": "Patient", "gender": "f"}',
                headers={**READ, "Content-Type": "application/fhir+json"},
                timeout=60,
            ).status_code
            == 200
        )
        # The definitions were moved out of the garbage collector's sight (missing it cost ~2 ms per case).
        assert serving.metric("casebridge_gc_frozen_objects") > 100_000
        assert serving.metric("casebridge_compiled_modules") == float(casebridge.NATIVE)  # what make setup built
        refused = httpx.post(
            f"{base}/cases",
            content=b"patient: {sex: forearm-swelling}",
            headers={**READ, "Content-Type": "application/yaml"},
            timeout=60,
        )
        assert refused.status_code == 422
        for raw in (
            b"NOT HTTP AT ALL\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nA header without a colon\r\n\r\n",
            b"POST /cases HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 9\r\n\r\nhello",
        ):
            status, headers, body = raw_exchange(port, raw)
            assert status == 400, (raw, status, body)
            assert headers["content-type"].startswith("application/fhir+json"), headers
            outcome = json.loads(body)
            assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "structure"
        # No WebSocket here: a request asking to upgrade is a plain HTTP request, with no key a 401 OperationOutcome
        # (uvicorn's WebSocket handling answered it in text/plain and logged its query, a patient id with it).
        status, headers, body = raw_exchange(
            port,
            f"GET /diagnostic-reports?patient={patient}&code=dystrophic HTTP/1.1\r\nHost: x\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade, close\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode(),
        )
        assert status == 401 and headers["content-type"].startswith("application/fhir+json"), (status, body)
        assert json.loads(body)["resourceType"] == "OperationOutcome"
        # One worker process per CPU by default (at most 8), counted by the process tree, not just reported.
        assert serving.metric("casebridge_cpu_workers") == default_workers() == len(_children(serving.process.pid))
    stderr = serving.stderr
    requests = [line for line in serving.log_lines() if line.get("message") == "request"]
    assert len(requests) >= 6, stderr[-2000:]
    assert {"time", "level", "logger", "request_id", "route", "status", "duration_ms"} <= set(requests[0])
    assert any(r["request_id"] == "job-42" and r["route"] == "/cases" for r in requests)
    lowered = stderr.lower()
    for word in ("dystrophic", "calcification", "forearm", "swelling", "mahanti", "radiopaque", patient, RW):
        assert word.lower() not in lowered, word


def test_worker_processes_share_one_queue_and_a_killed_one_is_replaced(fhir_server: str, tmp_path: Path) -> None:
    seed = SEED.read_bytes()
    headers = {**READ, "Content-Type": "application/yaml"}

    def post_all(base: str, n: int) -> list[int]:
        async def go() -> list[int]:
            async with httpx.AsyncClient(base_url=base, timeout=60) as client:
                answers = await asyncio.gather(
                    *(client.post("/cases", content=seed, headers=headers) for _ in range(n))
                )
            return [a.status_code for a in answers]

        return asyncio.run(go())

    with Serving(fhir_server, tmp_path, "--workers", "2") as serving:
        workers = _children(serving.process.pid)
        assert len(workers) == 2 and serving.metric("casebridge_cpu_workers") == 2
        assert post_all(serving.base, 8) == [200] * 8
        busy = {pid: _cpu_ticks(pid) for pid in workers}
        assert post_all(serving.base, 16) == [200] * 16
        assert all(_cpu_ticks(pid) > busy[pid] for pid in workers)  # both did work
        os.kill(workers[0], signal.SIGKILL)
        statuses = [s for _ in range(3) for s in post_all(serving.base, 4)]
        assert set(statuses) <= {200, 503} and statuses[-4:] == [200] * 4, statuses
        assert serving.metric("casebridge_cpu_worker_pools_replaced") == 1
        assert serving.metric("casebridge_cpu_workers") == 2
        # Killed again while no request is under way: the server replaces it before any request finds it.
        os.kill(_children(serving.process.pid)[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while serving.metric("casebridge_cpu_worker_pools_replaced") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        ready = httpx.get(f"{serving.base}/readyz", timeout=30)
        assert ready.status_code == 200 and ready.json()["workers"] == 2, ready.text
        assert post_all(serving.base, 8) == [200] * 8
        assert serving.metric("casebridge_cpu_worker_pools_replaced") == 2 and len(_children(serving.process.pid)) == 2
    errors = [line for line in serving.log_lines() if line["level"] == "ERROR"]
    assert [e["message"] for e in errors] == ["a worker process stopped; starting a new one"] * 2, errors


def test_retries_of_an_unreachable_fhir_server_are_json_lines_without_the_request(tmp_path: Path) -> None:
    """The CLI's retry line names the URL (query and all: a patient id) and quotes the server; while serving, a
    retry is a JSON line with the request id and the error's type only."""
    nowhere = f"http://127.0.0.1:{free_port()}/fhir"  # nothing listens there
    with Serving(nowhere, tmp_path, "--workers", "0", env={"CASEBRIDGE_FHIR_RETRY_ATTEMPTS": "3"}) as serving:
        response = httpx.get(
            f"{serving.base}/diagnostic-reports",
            params={"patient": "Mahanti-7731", "code": "forearm-calcinosis"},
            headers={**READ, "X-Request-ID": "pull-7"},
            timeout=60,
        )
        assert response.status_code == 503 and response.json()["resourceType"] == "OperationOutcome"
    retries = [line for line in serving.log_lines() if line["message"] == "retrying a FHIR server request"]
    assert len(retries) == 2 and {r["request_id"] for r in retries} == {"pull-7"}  # three attempts in all
    assert retries[0]["error"] == "FhirTransportError" and retries[0]["upstream_status"] is None
    assert "Mahanti" not in serving.stderr and "calcinosis" not in serving.stderr and nowhere not in serving.stderr


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])
