"""What one client can cost everyone else, against `casebridge serve --workers 2` from a source tree on 127.0.0.1:

1. one request with a 64 MB header: the server's CPU (HTTP process, from /proc) and its answer;
2. /healthz latency (median and worst of 7 probes) while four such requests are sent at once, and the HTTP
   process's RSS before and after;
3. two costly $validate requests (a Patient with 10,000 contained resources referencing each other) given up by
   their clients after 1 s, then one POST /cases: how long it waited;
4. with CASEBRIDGE_VALIDATION_BUDGET=1, the costly $validate: its status and how long it took.

Run: .venv/bin/python benchmarks/bench_cost_bounds.py [--tree DIR]   (DIR: e.g. a git worktree of an older commit)
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_api import ROOT, SEED, cpu_seconds, free_port

KEY = "bench-" + "k" * 30
HEADERS = {"Authorization": f"Bearer {KEY}"}


def serve(tree: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, "-m", "casebridge", "serve", "--port", str(port), "--workers", "2"]
    process = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return process, base
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"serve did not start in {tree}")


def exchange(port: int, request: bytes) -> bytes:
    """Send from a thread while reading, so an answer before the end of the request is seen."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:

        def send() -> None:
            try:
                sock.sendall(request)
            except OSError:
                pass

        sender = threading.Thread(target=send)
        sender.start()
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            pass
        sender.join()
    return data.split(b"\r\n", 1)[0]


def rss_mb(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def costly() -> bytes:
    contained = [
        {"resourceType": "Organization", "id": f"o{i}", "name": "x", "partOf": {"reference": f"#o{i + 1}"}}
        for i in range(10_000)
    ]
    doc = {"resourceType": "Patient", "contained": contained, "managingOrganization": {"reference": "#o0"}}
    return orjson.dumps(doc)


def main(tree: Path) -> None:
    print(f"casebridge serve --workers 2 from {tree}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "CASEBRIDGE_API_KEYS": f"bench:ro:{KEY}",
            "CASEBRIDGE_LOCK_DIR": tmp,
            "CASEBRIDGE_FHIR_BASE_URL": "http://127.0.0.1:9/fhir",  # not needed: nothing is pushed
            "CASEBRIDGE_LOG_LEVEL": "WARNING",
        }
        process, base = serve(tree, env)
        port = int(base.rsplit(":", 1)[1])
        huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (64 << 20) + b"\r\n\r\n"
        try:
            before, started = cpu_seconds(process.pid, descendants=False), time.monotonic()
            status = exchange(port, huge)
            cpu = cpu_seconds(process.pid, descendants=False) - before
            print(
                f"1. one 64 MB header: {status.decode()!r}, server CPU {cpu:.2f} s, {time.monotonic() - started:.2f} s"
            )

            rss = rss_mb(process.pid)
            senders = [threading.Thread(target=exchange, args=(port, huge)) for _ in range(4)]
            for sender in senders:
                sender.start()
            probes = []
            with httpx.Client(timeout=120) as client:
                for _ in range(7):
                    started = time.monotonic()
                    client.get(f"{base}/healthz", headers={"Connection": "close"})
                    probes.append(time.monotonic() - started)
            for sender in senders:
                sender.join()
            print(
                f"2. /healthz during four 64 MB headers: median {statistics.median(probes) * 1000:.0f} ms, "
                f"worst {max(probes) * 1000:.0f} ms; RSS {rss:.0f} -> {rss_mb(process.pid):.0f} MB"
            )

            body = costly()

            def give_up() -> None:
                try:
                    httpx.post(
                        f"{base}/Patient/$validate",
                        content=body,
                        headers={**HEADERS, "Content-Type": "application/fhir+json"},
                        timeout=1,
                    )
                except httpx.TimeoutException:
                    pass

            quitters = [threading.Thread(target=give_up) for _ in range(2)]
            for quitter in quitters:
                quitter.start()
            for quitter in quitters:
                quitter.join()
            started = time.monotonic()
            answer = httpx.post(
                f"{base}/cases",
                content=SEED.read_bytes(),
                headers={**HEADERS, "Content-Type": "application/yaml"},
                timeout=300,
            )
            print(
                f"3. POST /cases after two costly $validate given up after 1 s: {answer.status_code} "
                f"in {time.monotonic() - started:.2f} s"
            )
        finally:
            process.terminate()
            process.wait(120)

        process, base = serve(tree, {**env, "CASEBRIDGE_VALIDATION_BUDGET": "1"})
        try:
            started = time.monotonic()
            answer = httpx.post(
                f"{base}/Patient/$validate",
                content=costly(),
                headers={**HEADERS, "Content-Type": "application/fhir+json"},
                timeout=300,
            )
            code = answer.json()["issue"][0]["code"] if answer.status_code != 200 else "-"
            print(
                f"4. costly $validate, budget 1 s: {answer.status_code} ({code}) in {time.monotonic() - started:.2f} s"
            )
        finally:
            process.terminate()
            process.wait(120)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", type=Path, default=ROOT)
    main(parser.parse_args().tree.resolve())
