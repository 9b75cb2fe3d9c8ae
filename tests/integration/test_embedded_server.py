"""The embedded FHIR server over real HTTP: it starts, takes our transaction, and re-sending duplicates nothing."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import httpx

HEADERS = {"Accept": "application/fhir+json", "Content-Type": "application/fhir+json"}


def test_it_serves_r4_on_loopback(fhir_server: str) -> None:
    assert urlparse(fhir_server).hostname == "127.0.0.1"
    # The query stays in the URL: httpx's params= would replace it, not add to it.
    response = httpx.get(f"{fhir_server}/metadata", headers=HEADERS, timeout=10)
    assert response.status_code == 200
    capability = response.json()
    assert capability["fhirVersion"] == "4.0.1"
    assert capability["url"].startswith(fhir_server)  # its URLs name the port it really runs on


def _count(fhir_server: str, query: str) -> int:
    response = httpx.get(f"{fhir_server}/{query}", headers=HEADERS, timeout=10)
    assert response.status_code == 200, response.text
    return int(response.json()["total"])


def test_the_seed_transaction_goes_in_once(empty_fhir_server: str, seed_bundle: dict[str, Any]) -> None:
    fhir_server = empty_fhir_server
    patient_id = next(e["resource"]["id"] for e in seed_bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    for attempt in range(2):
        response = httpx.post(fhir_server, json=seed_bundle, headers=HEADERS, timeout=30)
        assert response.status_code == 200, response.text
        reply = response.json()
        assert reply["type"] == "transaction-response"
        statuses = {e["response"]["status"].split()[0] for e in reply["entry"]}
        assert statuses == ({"201"} if attempt == 0 else {"200"})
    # Re-sending updated the same resources: one Patient, and exactly the reports of the case.
    assert _count(fhir_server, f"Patient?_id={patient_id}") == 1
    assert _count(fhir_server, f"DiagnosticReport?patient={patient_id}") == 4
    observations = sum(1 for e in seed_bundle["entry"] if e["resource"]["resourceType"] == "Observation")
    assert _count(fhir_server, f"Observation?patient={patient_id}") == observations
    # urn:uuid references became server references to the same ids.
    report = httpx.get(
        f"{fhir_server}/DiagnosticReport",
        params={"patient": patient_id, "category": "SP"},
        headers=HEADERS,
        timeout=10,
    ).json()["entry"][0]["resource"]
    assert report["subject"]["reference"] == f"Patient/{patient_id}"
