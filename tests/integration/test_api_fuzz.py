"""Property-based fuzzing of the API from its own OpenAPI document (schemathesis strategies driven by
hypothesis), over real HTTP with the embedded FHIR server behind it: whatever is sent, never a 5xx, and every
4xx is an OperationOutcome.

Bounded: a fixed number of generated requests per operation (CASEBRIDGE_FUZZ_EXAMPLES, default 25), no
time-based deadline. (schemathesis's own pytest plugin does not load under pytest 9, so the operations are
walked here.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from casebridge.api.app import create_app
from casebridge.api.services import Services
from tests.loopback import serve

from .test_api import RW, settings_for

FUZZ_EXAMPLES = int(os.environ.get("CASEBRIDGE_FUZZ_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def api_schema(fhir_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    config = settings_for(fhir_server, tmp_path_factory.mktemp("fuzz"))
    app = create_app(config, Services.build(config))
    with serve(app, name="fuzzed-api") as base:
        yield schemathesis.openapi.from_url(f"{base}/openapi.json", headers={"Authorization": f"Bearer {RW}"})


def test_no_server_errors(api_schema: schemathesis.BaseSchema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 10, [f"{o.method} {o.path}" for o in operations]  # the views operation is the 10th
    calls: dict[str, int] = {}
    for operation in operations:
        check = fuzz(operation, calls)
        check()
    assert all(n >= 1 for n in calls.values()) and len(calls) == len(operations)


def fuzz(operation: Any, calls: dict[str, int]) -> Any:
    """One hypothesis test for one operation."""
    label = f"{operation.method.upper()} {operation.path}"

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    @given(case=operation.as_strategy())
    def check(case: schemathesis.Case) -> None:
        response = case.call(headers={"Authorization": f"Bearer {RW}"}, timeout=30)
        calls[label] = calls.get(label, 0) + 1
        assert response.status_code < 500, f"{label}: {response.status_code} {response.text[:300]}"
        if response.status_code >= 400:
            content_type = response.headers.get("content-type") or [""]
            assert content_type[0].startswith("application/fhir+json"), response.text[:200]
            assert response.json()["resourceType"] == "OperationOutcome"

    return check
