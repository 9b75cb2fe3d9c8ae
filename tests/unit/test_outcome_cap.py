"""The OperationOutcome lists a bounded number of issues, the most severe first, and says how many more there were:
the verdict does not change."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from casebridge.config import Settings
from casebridge.validation.service import load_validator
from casebridge.validation.validator import Issue, Validator, operation_outcome


@pytest.fixture(scope="module")
def validator() -> Validator:
    return load_validator(Settings())


def test_an_outcome_lists_at_most_its_cap_errors_first() -> None:
    issues = [Issue("warning", "invariant", f"warning {n}", f"Bundle.entry[{n}]") for n in range(5)]
    issues += [Issue("error", "value", f"error {n}", f"Bundle.entry[{n}]") for n in range(5)]
    issues.append(Issue("information", "informational", "fyi", "Bundle"))
    outcome = operation_outcome(issues, 6)
    texts = [i["details"]["text"] for i in outcome["issue"]]
    assert texts[:6] == [f"error {n}" for n in range(5)] + ["warning 0"]
    assert outcome["issue"][6]["severity"] == "information" and outcome["issue"][6]["code"] == "too-costly"
    assert texts[6] == "5 more issues were left out (warning: 4, information: 1); at most 6 are listed"
    assert len(outcome["issue"]) == 7
    # Under the cap nothing is added.
    assert len(operation_outcome(issues, 11)["issue"]) == 11
    # Even a cap of one keeps the verdict: an error is listed.
    assert [i["severity"] for i in operation_outcome(issues, 1)["issue"]] == ["error", "information"]


def test_forty_thousand_invalid_entries_give_a_bounded_outcome(validator: Validator) -> None:
    entries = [
        {
            "fullUrl": f"urn:uuid:00000000-0000-0000-0000-{n:012d}",
            "resource": {"resourceType": "Patient", "gender": "f"},
        }
        for n in range(40_000)
    ]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    issues = validator.validate(bundle)
    assert sum(i.severity == "error" for i in issues) >= 40_000
    outcome = operation_outcome(issues, Settings().max_outcome_issues)
    assert len(orjson.dumps(outcome)) < 1_000_000
    assert len(outcome["issue"]) == 1001
    last = outcome["issue"][-1]
    assert last["code"] == "too-costly" and "more issues were left out (error: " in last["details"]["text"]
    assert all(i["severity"] == "error" for i in outcome["issue"][:1000])


def test_the_cap_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASEBRIDGE_MAX_OUTCOME_ISSUES", "25")
    assert Settings().max_outcome_issues == 25
    assert Settings.model_fields["max_outcome_issues"].default == 1000


def test_the_api_answers_422_with_a_capped_outcome(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from casebridge.api.app import create_app

    key = "rw-" + "k" * 30
    settings = Settings(
        fhir_base_url="http://127.0.0.1:9/fhir",  # never reached: nothing invalid is forwarded
        api_keys=f"job:rw:{key}",
        lock_dir=tmp_path / "locks",
        max_outcome_issues=50,
    )
    entries = [
        {
            "fullUrl": f"urn:uuid:00000000-0000-0000-0000-{n:012d}",
            "resource": {"resourceType": "Patient", "id": f"p{n}", "gender": "f"},
            "request": {"method": "PUT", "url": f"Patient/p{n}"},
        }
        for n in range(300)
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/fhir+json"}
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        response = api.post("/bundles", content=orjson.dumps(bundle), headers=headers)
        assert response.status_code == 422, response.text[:500]
        issues = response.json()["issue"]
        assert len(issues) == 51 and all(i["severity"] == "error" for i in issues[:50])
        assert (
            issues[-1]["code"] == "too-costly" and "more issues were left out (error: " in issues[-1]["details"]["text"]
        )
        validated = api.post("/Bundle/$validate", content=orjson.dumps(bundle), headers=headers)
        assert validated.status_code == 200 and len(validated.json()["issue"]) == 51
