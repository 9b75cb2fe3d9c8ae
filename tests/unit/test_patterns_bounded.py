"""FHIRPath patterns (matches(), replaceMatches()) at bounded cost: in linear time (RE2), or within a time limit
(the ``regex`` module, for the syntax RE2 lacks); a pattern past its limit, or invalid, cannot be evaluated and
its invariant says so with its own severity."""

from __future__ import annotations

import time

import pytest

from casebridge.validation.fhirpath import (
    PATTERN_TIME_LIMIT,
    FhirPathError,
    Resolver,
    evaluate,
    full_match,
    replace_matches,
)
from casebridge.validation.validator import Validator

from .test_invariants_robust import PROFILE, by_key, profiled_validator

HOSTILE = "a" * 50_000 + "!"


@pytest.fixture(scope="module")
def validator(tmp_path_factory: pytest.TempPathFactory) -> Validator:
    invariants = [
        # Catastrophic backtracking for a backtracking engine; RE2 answers in linear time.
        ("tst-3", "error", "name.text.matches('^(a+)+$')"),
        # A backreference: RE2 cannot run it, the fallback backtracks until its time limit.
        ("tst-4", "error", "name.suffix.matches('^(a+)+\\\\1$')"),
        # Not a regular expression in any engine.
        ("tst-5", "error", "name.prefix.matches('(')"),
    ]
    return profiled_validator(tmp_path_factory.mktemp("profiles"), invariants)


# Times are this process's CPU time, which the time limit counts too: wall time also counts the other
# processes sharing the machine.


def test_a_catastrophic_pattern_is_answered_in_linear_time(validator: Validator) -> None:
    started = time.process_time()
    assert full_match("^(a+)+$", HOSTILE) is False
    assert full_match("^(a+)+$", "a" * 50_000) is True
    issues = validator.validate({"resourceType": "Patient", "name": [{"text": HOSTILE}]}, [PROFILE])
    assert time.process_time() - started < 0.5
    [(severity, message)] = by_key(issues, "tst-3")
    assert (severity, message) == ("error", "Constraint failed: tst-3: 'tst-3'")


def test_a_pattern_past_its_time_limit_is_an_error(validator: Validator) -> None:
    started = time.process_time()
    with pytest.raises(FhirPathError, match="the pattern took too long"):
        full_match("^(a+)+\\1$", HOSTILE)
    issues = validator.validate({"resourceType": "Patient", "name": [{"suffix": [HOSTILE]}]}, [PROFILE])
    assert time.process_time() - started < 4 * PATTERN_TIME_LIMIT + 0.5
    [(severity, message)] = by_key(issues, "tst-4")
    assert severity == "error" and "could not be evaluated: the pattern took too long" in message
    # Within its limit the fallback answers: backreferences are matched.
    assert full_match("(a)\\1", "aa") is True and full_match("(a)\\1", "ab") is False


def test_replace_matches_runs_in_the_same_engines() -> None:
    assert replace_matches("(\\w+)@(\\w+)", "$2 at $1", "me@home") == "home at me"
    started = time.process_time()
    assert replace_matches("(a+)+b", "x", HOSTILE) == HOSTILE
    assert time.process_time() - started < 0.5
    with pytest.raises(FhirPathError, match="the pattern took too long"):
        replace_matches("(a+)+\\1b", "x", HOSTILE)
    patient = {"resourceType": "Patient", "id": "abc"}
    result = evaluate(
        "id.replaceMatches('(b)', '[$1]')",
        patient,
        base=None,
        resource=patient,
        root=patient,
        resolver=Resolver(None, {}),
    )
    assert result == ["a[b]c"]


def test_an_invalid_pattern_cannot_be_evaluated(validator: Validator) -> None:
    # It used to be taken as no match at all, so that an invariant built on it passed.
    with pytest.raises(FhirPathError, match="not a valid regular expression"):
        full_match("(", "x")
    issues = validator.validate({"resourceType": "Patient", "name": [{"prefix": ["Dr"]}]}, [PROFILE])
    [(severity, message)] = by_key(issues, "tst-5")
    assert (
        severity == "error" and "could not be evaluated: the pattern '(' is not a valid regular expression" in message
    )


def test_matches_on_several_strings_cannot_be_evaluated(validator: Validator) -> None:
    # FHIRPath ends the evaluation with an error; read as empty, the invariant passed.
    patient = {"resourceType": "Patient", "name": [{"text": "a"}, {"text": "b"}]}
    [(severity, message)] = by_key(validator.validate(patient, [PROFILE]), "tst-3")
    assert severity == "error" and "could not be evaluated: matches() needs one string" in message
    with pytest.raises(FhirPathError, match="replaceMatches\\(\\) needs one string"):
        evaluate(
            "name.given.replaceMatches('a', 'b')",
            patient | {"name": [{"given": ["a", "b"]}]},
            base=None,
            resource=patient,
            root=patient,
            resolver=Resolver(None, {}),
        )
