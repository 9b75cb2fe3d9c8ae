"""casebridge.fhir.search.Search: the query it builds, parameter by parameter, and what it refuses."""

from __future__ import annotations

import datetime as dt

import pytest

from casebridge.fhir.search import Search


def test_each_method_adds_its_parameter_and_leaves_the_base_as_it_was() -> None:
    base = Search("DiagnosticReport")
    query = (
        base.include("DiagnosticReport:result", "DiagnosticReport:subject")
        .revinclude("Provenance:target", "AuditEvent:entity")
        .where(patient="Patient/1", code__text="calcification", status=["final", "a,b\\c"])
        .since(dt.date(2026, 1, 2))
        .param("_id", 7)
        .sort("-date", "_id")
        .count(50)
        .summary_count()
    )
    assert query.query() == [
        ("_include", "DiagnosticReport:result"),
        ("_include", "DiagnosticReport:subject"),
        ("_revinclude", "Provenance:target"),
        ("_revinclude", "AuditEvent:entity"),
        ("patient", "Patient/1"),
        ("code:text", "calcification"),
        ("status", "final,a\\,b\\\\c"),
        ("_lastUpdated", "ge2026-01-02"),
        ("_id", "7"),
        ("_sort", "-date,_id"),
        ("_count", "50"),
        ("_summary", "count"),
    ]
    assert base.query() == [] and str(base) == "DiagnosticReport"
    assert str(Search("Patient").where(name="a b", _id=["1", "2"])) == "Patient?name=a+b&_id=1%2C2"


def test_count_and_sort_replace_an_earlier_one_and_keep_the_rest() -> None:
    query = Search("Observation").sort("date").count(10).where(code="x").count(20).sort("-date")
    assert query.query() == [("code", "x"), ("_count", "20"), ("_sort", "-date")]
    assert Search("Observation").count(1).query() == [("_count", "1")]
    instant = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert Search("Observation").since(instant).query() == [("_lastUpdated", "ge2026-01-02T03:04:05+00:00")]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Search("patient"), "'patient' is not a FHIR resource type"),
        (lambda: Search("Patient").param("na me", "x"), "'na me' is not a search parameter name"),
        (lambda: Search("Patient").param("name", []), "name: no values"),
        (lambda: Search("Patient").param("name", ""), "name: empty value"),
        (lambda: Search("Patient").param("name", [""]), "name: empty value"),
        (lambda: Search("Patient").count(0), "page size must be at least 1"),
    ],
)
def test_what_a_search_refuses_is_named(build: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        build()  # type: ignore[operator]
    assert str(caught.value) == message
