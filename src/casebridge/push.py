"""Pushing a case's transaction Bundle to a FHIR server: one transaction per case (validated first: see
``casebridge.pipeline.check``), from async code (``push_bundle``), or sync code through ``FhirClient.call``.

Idempotence comes from the Bundle itself (every entry is ``PUT Type/<deterministic id>``), so a re-send
updates the same resources. Writes for one patient are still serialized, in this process (an asyncio lock)
and across processes on this machine (an advisory file lock): concurrent transactions touching the same
resources are where servers differ (HAPI may answer 409 to one of them, conditional creates may race into
duplicates), and we do not rely on any server's behaviour there.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from casebridge.errors import FhirProtocolError, LockError
from casebridge.fhir.client import AsyncFhirClient
from casebridge.validation.validator import Issue


@dataclass(frozen=True, slots=True)
class EntryResult:
    resource_type: str
    id: str
    status: int  # the entry's HTTP status in the transaction-response (201 created, 200 updated)
    version: str | None

    @property
    def created(self) -> bool:
        return self.status == 201


@dataclass(frozen=True, slots=True)
class PushResult:
    server: str
    patient: str | None
    entries: tuple[EntryResult, ...]
    warnings: tuple[Issue, ...]
    seconds: float
    response: dict[str, Any]  # the server's transaction-response Bundle

    @property
    def created(self) -> int:
        return sum(1 for e in self.entries if e.created)

    @property
    def already_there(self) -> int:
        return sum(1 for e in self.entries if not e.created)

    def by_type(self) -> dict[str, tuple[int, int]]:
        """resource type -> (created, already there), in Bundle order."""
        counts: dict[str, tuple[int, int]] = {}
        for e in self.entries:
            new, old = counts.get(e.resource_type, (0, 0))
            counts[e.resource_type] = (new + e.created, old + (not e.created))
        return counts


def patient_key(bundle: Mapping[str, Any]) -> str | None:
    """``Patient/<id>`` of the Bundle's Patient entry (the unit writes are serialized on), else None."""
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") or {}
        if resource.get("resourceType") == "Patient":
            url = str((entry.get("request") or {}).get("url") or "")
            if url.startswith("Patient/") and "?" not in url:
                return url
            if resource.get("id"):
                return f"Patient/{resource['id']}"
            return str(entry.get("fullUrl") or "") or None
    return None


LOCK_STRIPES = 4096


class PatientLocks:
    """Per-patient write locks: an asyncio lock in this process, an advisory file lock across processes.

    The file lock is polled (non-blocking ``flock``) so that waiting stays cancellable and never holds a thread.
    """

    def __init__(self, folder: Path, *, poll: float = 0.02, timeout: float = 600.0):
        self.folder = folder
        self.poll = poll
        self.timeout = timeout
        self._local: dict[str, asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str | None) -> AsyncIterator[None]:
        """Hold the lock of ``key`` (a patient). Keyed on the patient alone, not on the server URL: one server
        has many spellings (localhost, 127.0.0.1, an explicit port), and over-serializing costs next to nothing."""
        if key is None:
            yield
            return
        name = self._stripe(key)
        lock = self._local.setdefault(name, asyncio.Lock())
        async with lock:
            fd = self._open(name)
            try:
                deadline = time.monotonic() + self.timeout
                while not self._try_lock(fd, key, deadline):
                    await asyncio.sleep(self.poll)
                yield
            finally:
                os.close(fd)  # closing releases the flock

    @staticmethod
    def _stripe(key: str) -> str:
        # Striped: a registry job touches 100,000 patients, and must not leave as many lock files behind.
        # Two patients sharing a stripe are merely serialized with each other.
        return f"stripe-{int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % LOCK_STRIPES:04d}"

    def _open(self, name: str) -> int:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            return os.open(self.folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise LockError(f"cannot use the lock folder {self.folder}: {exc.strerror or exc}") from exc

    def _try_lock(self, fd: int, key: str, deadline: float) -> bool:
        """Whether the file lock was had now; ``LockError`` once ``deadline`` has passed."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise LockError(f"waited {self.timeout:.0f} s for the write lock of {key}") from None
            return False


async def push_bundle(
    client: AsyncFhirClient,
    bundle: Mapping[str, Any],
    *,
    locks: PatientLocks,
    warnings: Sequence[Issue] = (),
    raw: bytes | None = None,
    before: Callable[[], Awaitable[None]] | None = None,
) -> PushResult:
    """Send an already validated transaction Bundle under its patient's write lock (``raw``: its own bytes).
    ``before``: a check that reads the FHIR server, run under the same lock so that casebridge's other writers of
    that patient cannot change what it read before the transaction is sent; it raises to send nothing."""
    key = patient_key(bundle)
    started = time.perf_counter()
    async with locks.hold(key):
        if before is not None:
            await before()
        response = await client.transaction(bundle, raw=raw)
    return _result(client.base_url, bundle, response, key, warnings, started)



def _result(
    server: str,
    bundle: Mapping[str, Any],
    response: dict[str, Any],
    key: str | None,
    warnings: Sequence[Issue],
    started: float,
) -> PushResult:
    seconds = time.perf_counter() - started
    entries = _entry_results(bundle, response, server)
    return PushResult(server, key, entries, tuple(warnings), seconds, response)


def _entry_results(bundle: Mapping[str, Any], response: Mapping[str, Any], server: str) -> tuple[EntryResult, ...]:
    sent = bundle.get("entry") or []
    answered = response.get("entry")
    if not isinstance(answered, list) or len(answered) != len(sent):
        got = len(answered) if isinstance(answered, list) else 0
        raise FhirProtocolError(
            f"the transaction-response has {got} entries for {len(sent)} sent", method="POST", url=server
        )
    results = []
    for request_entry, answer in zip(sent, answered, strict=True):
        resource = request_entry.get("resource") or {}
        reply = answer.get("response") if isinstance(answer, dict) else None
        if not isinstance(reply, dict):
            raise FhirProtocolError("a transaction-response entry without a response", method="POST", url=server)
        status_text = str(reply.get("status", ""))
        try:
            status = int(status_text.split()[0])
        except (ValueError, IndexError):
            raise FhirProtocolError(
                f"transaction-response entry without a status: {status_text!r}", method="POST", url=server
            ) from None
        location = str(reply.get("location") or "")
        # Location: Type/id/_history/vid (relative or absolute); fall back to what we sent.
        parts = location.split("?")[0].rstrip("/").split("/")
        resource_id = str(resource.get("id") or "")
        if "_history" in parts:
            at = parts.index("_history")
            resource_id = parts[at - 1] if at >= 1 else resource_id
        etag = reply.get("etag")
        version = (etag.removeprefix("W/").strip('"') or None) if isinstance(etag, str) else None
        results.append(EntryResult(str(resource.get("resourceType", "")), resource_id, status, version))
    return tuple(results)
