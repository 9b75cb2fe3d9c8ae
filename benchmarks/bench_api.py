"""API throughput and latency: POST /cases (convert + validate, no push) with 32 concurrent clients for 20 s
against `casebridge serve` (one uvicorn process; --workers N processes convert and validate, default 1) on
127.0.0.1, next to a bare FastAPI JSON echo endpoint (benchmarks/echo_app.py, N uvicorn workers) measured the
same way in the same run. Both servers run in their own processes; the load comes from this one (asyncio +
aiohttp), whose own CPU per request is printed too, as is the spread of the clients' mean latencies (how evenly
the server shares itself among connections). Targets: p99 <= 100 ms; throughput >= 0.3 x the echo.

Run: .venv/bin/python benchmarks/bench_api.py [--seconds 20] [--clients 32] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "src" / "casebridge" / "data"
SEED = DATA_DIR / "cases" / "dystrophic-calcification-right-forearm.yaml"
KEY = "bench-" + "k" * 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(command: list[str], port: int, env: dict[str, str], cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"{command[0]} did not start in {cwd}")


def cpu_seconds(pid: int, descendants: bool = True) -> float:
    """User + system CPU time of a process and (unless told not to) its descendants (worker processes), from
    /proc: how much work a request costs the server, whatever else the machine is doing."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir() if descendants else ():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


async def load(
    url: str, bodies: list[bytes], headers: dict[str, str], clients: int, seconds: float
) -> list[list[float]]:
    # aiohttp's client, not httpx: it costs the generator about a third of the CPU per request, and the generator
    # shares the machine with the server it measures.
    latencies: list[list[float]] = [[] for _ in range(clients)]  # per client
    errors = 0
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as http:
        # Warm-up: caches, connection pool, lazily compiled validation trees.
        for body in bodies[:3]:
            async with http.post(url, data=body, headers=headers) as response:
                response.raise_for_status()
                await response.read()
        stop = time.perf_counter() + seconds

        async def client(n: int) -> None:
            nonlocal errors
            i = n
            while time.perf_counter() < stop:
                started = time.perf_counter()
                async with http.post(url, data=bodies[i % len(bodies)], headers=headers) as response:
                    await response.read()
                latencies[n].append(time.perf_counter() - started)
                errors += response.status != 200
                i += clients

        await asyncio.gather(*(client(n) for n in range(clients)))
    if errors:
        raise SystemExit(f"{errors} requests failed against {url}")
    return latencies


def summary(name: str, per_client: list[list[float]], seconds: float) -> tuple[float, float, float]:
    ordered = sorted(x for client in per_client for x in client)
    rate = len(ordered) / seconds
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    means = [statistics.mean(client) * 1000 for client in per_client if client]
    print(
        f"  {name:32} {rate:8.1f} req/s   p50 {p50:7.1f} ms   p99 {p99:7.1f} ms   ({len(ordered)} requests; "
        f"clients' mean latency {min(means):.1f}-{max(means):.1f} ms)"
    )
    return rate, p50, p99


def main(seconds: float, clients: int, workers: int) -> None:
    doc = yaml.safe_load(SEED.read_text())
    bodies = []
    for i in range(64):  # distinct cases, so nothing downstream can answer from a cache
        doc["case_id"] = f"bench-api-{i:03d}"
        bodies.append(json.dumps(doc, default=str).encode())
    api_port, echo_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "CASEBRIDGE_API_KEYS": f"bench:rw:{KEY}",
            "CASEBRIDGE_LOCK_DIR": tmp,
            "CASEBRIDGE_LOG_LEVEL": "WARNING",
        }
        serve = [sys.executable, "-m", "casebridge", "serve", "--port", str(api_port), "--workers", str(workers)]
        api = start(serve, api_port, env)
        echo = start(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(ROOT / "benchmarks"),
                "echo_app:app",
                "--port",
                str(echo_port),
                "--log-level",
                "warning",
                "--no-access-log",
                "--workers",
                str(workers),  # as many processes as the service gets: the same share of the machine
            ],
            echo_port,
            env,
        )
        try:
            json_headers = {"Content-Type": "application/json"}
            before, client_before = cpu_seconds(echo.pid), time.process_time()
            echo_lat = asyncio.run(load(f"http://127.0.0.1:{echo_port}/echo", bodies, json_headers, clients, seconds))
            echo_cpu = (cpu_seconds(echo.pid) - before) / sum(map(len, echo_lat))
            echo_client = (time.process_time() - client_before) / sum(map(len, echo_lat))
            before, client_before = cpu_seconds(api.pid), time.process_time()
            http_before = cpu_seconds(api.pid, descendants=False)
            api_lat = asyncio.run(
                load(
                    f"http://127.0.0.1:{api_port}/cases",
                    bodies,
                    {**json_headers, "Authorization": f"Bearer {KEY}"},
                    clients,
                    seconds,
                )
            )
            api_cpu = (cpu_seconds(api.pid) - before) / sum(map(len, api_lat))
            http_cpu = (cpu_seconds(api.pid, descendants=False) - http_before) / sum(map(len, api_lat))
            api_client = (time.process_time() - client_before) / sum(map(len, api_lat))
        finally:
            for process in (api, echo):
                process.terminate()
                process.wait(30)
    print(
        f"POST of the seed case ({len(bodies[0]):,} bytes JSON), {clients} concurrent clients, {seconds:.0f} s each, "
        f"casebridge serve --workers {workers}, {os.cpu_count()} CPUs"
    )
    echo_rate, _, _ = summary("bare FastAPI JSON echo", echo_lat, seconds)
    api_rate, _, api_p99 = summary("POST /cases (convert + validate)", api_lat, seconds)
    print(f"  throughput ratio (cases / echo): {api_rate / echo_rate:.3f}  (target >= 0.3)")
    # The load generator shares the machine; the servers' own CPU time per request does not depend on it.
    print(
        f"  server CPU per request: echo {echo_cpu * 1000:.2f} ms, POST /cases {api_cpu * 1000:.2f} ms; "
        f"ratio {echo_cpu / api_cpu:.3f} (what the throughput ratio would be if each server had a core to itself); "
        f"of the POST /cases figure, the HTTP process {http_cpu * 1000:.2f} ms, its workers the rest"
    )
    # The load generator is a Python process on the same machine: when it needs a core's worth of CPU for the
    # echo's rate, the echo figure is the generator's limit, not the echo server's.
    print(
        f"  load generator CPU per request: echo {echo_client * 1000:.2f} ms "
        f"({echo_client * echo_rate:.0%} of a core at the echo's rate), POST /cases {api_client * 1000:.2f} ms"
    )
    print(f"  p99 of POST /cases: {api_p99:.1f} ms  (target <= 100 ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="casebridge serve --workers")
    args = parser.parse_args()
    main(args.seconds, args.clients, args.workers)
