"""`casebridge serve` as a real process: it refuses to start without keys, serves over HTTP, writes JSON log
lines with request ids, and its log of a full run holds none of the case's words."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

import service
from service.config import PROJECT_ROOT

from .conftest import SEED
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
        [sys.executable, "-m", "service.cli", "serve"],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3 and "CASEBRIDGE_API_KEYS" in result.stderr


def test_a_full_run_logs_json_lines_without_case_content(fhir_server: str, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CASEBRIDGE_API_KEYS": KEYS,
        "CASEBRIDGE_FHIR_BASE_URL": fhir_server,
        "CASEBRIDGE_LOCK_DIR": str(tmp_path / "locks"),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=PROJECT_ROOT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
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
        metrics = httpx.get(f"{base}/metrics", timeout=10).text
        frozen = next(line for line in metrics.splitlines() if line.startswith("casebridge_gc_frozen_objects "))
        assert float(frozen.split()[1]) > 100_000, frozen
        compiled = next(line for line in metrics.splitlines() if line.startswith("casebridge_compiled_modules "))
        assert float(compiled.split()[1]) == float(service.NATIVE), compiled  # what make setup built is used
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
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("message") == "request"]
    assert len(requests) >= 6, stderr[-2000:]
    assert {"time", "level", "logger", "request_id", "route", "status", "duration_ms"} <= set(requests[0])
    assert any(r["request_id"] == "job-42" and r["route"] == "/cases" for r in requests)
    assert not [line for line in stderr.splitlines() if line.strip() and not line.startswith("{")], stderr[-2000:]
    lowered = stderr.lower()
    for word in ("dystrophic", "calcification", "forearm", "swelling", "mahanti", "radiopaque", patient, RW):
        assert word.lower() not in lowered, word
