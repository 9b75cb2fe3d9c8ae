"""What the worker pool costs per request: POST /cases (convert + validate, no push) against `casebridge serve
--workers 2` from two source trees, in alternating rounds, next to the bare FastAPI echo (as many uvicorn
workers) measured in the same run. Same load as bench_api.py (aiohttp, 32 clients, 64 distinct cases), shorter
rounds. The servers' CPU per request (HTTP process and workers, from /proc) moves less with the machine's
other load than the rates do.

Typical use, the tree as committed before a change against the working tree:

    git worktree add /tmp/cb-before HEAD
    .venv/bin/python benchmarks/bench_pool.py --before /tmp/cb-before --seconds 12 --rounds 2
    git worktree remove /tmp/cb-before

A tree's compiled modules are used only when they match its sources (service/_native.py); copy the build into
both trees (or set CASEBRIDGE_PURE_PYTHON=1) so that both run the same validator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_api import KEY, ROOT, SEED, cpu_seconds, free_port, load, start, summary


def measure(tree: Path | None, bodies: list[bytes], clients: int, seconds: float, workers: int) -> str:
    """One round against one server; its summary line."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "CASEBRIDGE_API_KEYS": f"bench:rw:{KEY}",
            "CASEBRIDGE_LOCK_DIR": tmp,
            "CASEBRIDGE_LOG_LEVEL": "WARNING",
        }
        if tree is None:
            command = [sys.executable, "-m", "uvicorn", "--app-dir", str(ROOT / "benchmarks"), "echo_app:app"]
            command += ["--log-level", "warning", "--no-access-log", "--workers", str(workers), "--port", str(port)]
            url, headers, cwd = f"http://127.0.0.1:{port}/echo", {"Content-Type": "application/json"}, ROOT
        else:
            command = [sys.executable, "-m", "casebridge", "serve", "--port", str(port), "--workers", str(workers)]
            url = f"http://127.0.0.1:{port}/cases"
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
            cwd = tree  # `python -m` imports the package from the working directory first
        server = start(command, port, env, cwd)
        try:
            before, http_before = cpu_seconds(server.pid), cpu_seconds(server.pid, descendants=False)
            latencies = asyncio.run(load(url, bodies, headers, clients, seconds))
            cpu = (cpu_seconds(server.pid) - before) / sum(map(len, latencies))
            http = (cpu_seconds(server.pid, descendants=False) - http_before) / sum(map(len, latencies))
        finally:
            server.terminate()
            server.wait(30)
    name = "bare FastAPI JSON echo" if tree is None else f"POST /cases, {tree}"
    rate, _, p99 = summary(name[-48:], latencies, seconds)
    cost = f"server CPU {cpu * 1000:.2f} ms per request (HTTP process {http * 1000:.2f} ms)"
    return f"{name}: {rate:.0f} req/s, p99 {p99:.0f} ms, {cost}"


def main(before: Path, after: Path, seconds: float, rounds: int, clients: int, workers: int) -> None:
    doc = yaml.safe_load(SEED.read_text())
    bodies = []
    for i in range(64):
        doc["case_id"] = f"bench-pool-{i:03d}"
        bodies.append(json.dumps(doc, default=str).encode())
    print(f"{clients} clients, {seconds:.0f} s per round, --workers {workers}, {os.cpu_count()} CPUs")
    lines = []
    for n in range(rounds):
        order = (before, after) if n % 2 == 0 else (after, before)
        for tree in (None, *order):
            lines.append(f"round {n + 1}: " + measure(tree, bodies, clients, seconds, workers))
            time.sleep(1)
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, required=True, help="a source tree (e.g. a git worktree of HEAD)")
    parser.add_argument("--after", type=Path, default=ROOT)
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    main(args.before.resolve(), args.after.resolve(), args.seconds, args.rounds, args.clients, args.workers)
