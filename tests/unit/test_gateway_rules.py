"""The gateway's data files and rules on their own: the forwarding policy file, SMART scopes, API keys (inline and
from a keys file), and the transaction rules every forwarded entry must meet. Every mistake in a file is refused
at load with its file and line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from pydantic import ValidationError

from casebridge.access.keys import digest, load_api_keys_file, parse_api_keys
from casebridge.access.scopes import parse_scopes
from casebridge.config import Settings
from casebridge.errors import MappingError
from casebridge.gateway.policy import NEVER, check_entries, load_forwarding_policy
from tests.paths import DATA_DIR, PROJECT_ROOT

POLICY = DATA_DIR / "mappings" / "forwarding-policy.yaml"
R4_TYPES = {"Patient", "Observation", "Binary", "Subscription", "Bundle", "Condition", "Endpoint", "ValueSet"}


def is_type(name: str) -> bool:
    return name in R4_TYPES or name in NEVER


def test_the_shipped_policy_loads_and_denies_by_default() -> None:
    policy = load_forwarding_policy(POLICY, lambda name: name[0].isupper())
    assert {"Patient", "Condition", "Observation", "DiagnosticReport"} <= policy.types
    assert not policy.types & {"Binary", "Bundle", "AuditEvent", "Provenance", *NEVER}
    assert policy.interactions == {"create", "conditional-create", "update", "conditional-update"}
    assert policy.max_entries == 1000


GOOD = "types: [Patient, Observation]\ninteractions: [create, update]\nlimits: {max_entries: 5, max_bytes: 2048}\n"


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (GOOD.replace("types: [Patient, Observation]", "types: [Patient, Subscription]"), 1, "can never be forwarded"),
        (GOOD.replace("types: [Patient, Observation]", "types: [Patient, Endpoint]"), 1, "can never be forwarded"),
        (GOOD.replace("types: [Patient, Observation]", "types: [Patient, ValueSet]"), 1, "terminology"),
        (GOOD.replace("types: [Patient, Observation]", "types: [Patient, Nonsense]"), 1, "not a FHIR R4 resource type"),
        (GOOD.replace("types: [Patient, Observation]", "types: Patient"), 1, "expected a list"),
        (GOOD.replace("[create, update]", "[create, delete]"), 2, "never are"),
        (GOOD.replace("[create, update]", "[create, read]"), 2, "not an interaction"),
        (GOOD.replace("max_entries: 5", "max_entries: many"), 3, "whole number"),
        (GOOD.replace("max_entries: 5", "max_entries: 0"), 3, "whole number"),
        (GOOD.replace("max_bytes: 2048", "max_bytes: 2048, max_seconds: 3"), 3, "unknown limit"),
        (GOOD.replace(", max_bytes: 2048", ""), 3, "needs 'max_bytes'"),
        (GOOD + "extra: 1\n", 4, "unknown key"),
        (GOOD.replace("interactions: [create, update]\n", ""), 1, "needs 'interactions'"),
        ("types: [Patient\n", 2, "malformed YAML"),
    ],
)
def test_policy_mistakes_name_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = tmp_path / "forwarding-policy.yaml"
    path.write_text(text)
    with pytest.raises(MappingError) as caught:
        load_forwarding_policy(path, is_type)
    assert caught.value.file == str(path)
    assert caught.value.line == line
    assert words in str(caught.value)


def test_the_policy_limits_and_interactions_apply(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    policy = load_forwarding_policy(path, is_type)

    def entry(
        method: str, url: str, resource_type: str = "Patient", rid: str = "a", **request: str
    ) -> dict[str, object]:
        return {
            "resource": {"resourceType": resource_type, "id": rid},
            "request": {"method": method, "url": url, **request},
        }

    allowed = {"entry": [entry("POST", "Patient"), entry("PUT", "Observation/a", "Observation")]}
    actions, issues = check_entries(allowed, policy)
    assert issues == []
    assert [(a.interaction, a.needs) for a in actions] == [
        ("create", [("Patient", "c")]),
        ("update", [("Observation", "u")]),
    ]
    conditional = {"entry": [entry("PUT", "Patient?identifier=x|1")]}
    assert [i.message for i in check_entries(conditional, policy)[1]] == [
        f"conditional-update is not allowed by the forwarding policy ({path})"
    ]
    too_many = {"entry": [entry("POST", "Patient") for _ in range(6)]}
    assert [i.code for i in check_entries(too_many, policy)[1]] == ["too-costly"]
    # Without a policy (casebridge's own Bundles) any type passes; the transaction rules still hold.
    own = {"entry": [entry("PUT", "Provenance/p", "Provenance", "p"), entry("PUT", "Provenance/p", "Provenance", "p")]}
    assert [i.code for i in check_entries(own, None)[1]] == ["business-rule"]


@pytest.mark.parametrize(
    ("text", "grants"),
    [
        ("system/Observation.cu", {"Observation": "cu"}),
        ("system/*.rs system/Patient.c", {"*": "rs", "Patient": "c"}),
        ("system/Patient.read", {"Patient": "rs"}),
        ("system/Patient.write", {"Patient": "cud"}),
        ("system/*.*", {"*": "cruds"}),
        ("system/Observation.cruds", {"Observation": "cruds"}),
    ],
)
def test_scopes(text: str, grants: dict[str, str]) -> None:
    assert parse_scopes(text).grants == {t: frozenset(p) for t, p in grants.items()}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "no scope"),
        ("patient/Observation.rs", "acts for a system"),
        ("user/*.cruds", "acts for a system"),
        ("system/Observation.rs?category=laboratory", "not supported"),
        ("system/Observation.rc", "in that order"),
        ("system/Observation.x", "in that order"),
        ("system/observation.rs", "not a SMART scope"),
        ("Observation.rs", "not a SMART scope"),
    ],
)
def test_scopes_that_cannot_be_granted_as_written(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_scopes(text)


def test_scope_checks() -> None:
    scopes = parse_scopes("system/Observation.cu system/*.r")
    assert scopes.allows("Observation", "c") and scopes.allows("Patient", "r")
    assert not scopes.allows("Patient", "c") and not scopes.allows("Observation", "s")
    assert scopes.missing([("Observation", "u"), ("Patient", "u"), ("Patient", "u"), ("Specimen", "s")]) == [
        "system/Patient.u",
        "system/Specimen.s",
    ]
    assert scopes.writes and not parse_scopes("system/*.rs").writes


def test_inline_keys_keep_their_meaning_and_take_scopes() -> None:
    secret = "s" * 30
    ro, rw, scoped = parse_api_keys(f"a:ro:{secret}1,b:rw:{secret}2,c:system/Observation.cu system/*.rs:{secret}3")
    assert not ro.can_write and ro.scopes.allows("DiagnosticReport", "s")
    assert rw.can_write and rw.scopes.allows("Patient", "u") and not rw.scopes.allows("Patient", "d")
    assert scoped.scopes.allows("Observation", "c") and not scoped.scopes.allows("Patient", "c")
    assert rw.digest == digest(f"{secret}2") and secret not in repr(rw)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("a:admin:" + "s" * 30, "not a SMART scope"),
        ("a:patient/*.rs:" + "s" * 30, "acts for a system"),
        ("a:ro:short", "at least 24"),
        ("a b:ro:" + "s" * 30, "the name must be"),
        ("a:ro:" + "s" * 30 + ",a:rw:" + "t" * 30, "used twice"),
    ],
)
def test_inline_key_mistakes(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_api_keys(text)
    assert "s" * 30 not in words


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


KEY = (
    f"- name: ehr\n  secret_sha256: {_sha('x' * 30)}\n  scopes: system/Observation.cu\n  namespaces: [urn:oid:1.2.3]\n"
)


def test_a_keys_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(KEY)
    (key,) = load_api_keys_file(path)
    assert key.name == "ehr" and key.namespaces == ("urn:oid:1.2.3",) and key.digest == digest("x" * 30)
    example = load_api_keys_file(PROJECT_ROOT / "fixtures" / "api-keys.example.yaml")
    assert [k.name for k in example] == ["ehr-north", "registry-job", "analyst"]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (KEY.replace("  namespaces: [urn:oid:1.2.3]\n", "  namespace: x\n"), 4, "unknown field 'namespace'"),
        (KEY.replace(f"  secret_sha256: {_sha('x' * 30)}\n", ""), 1, "needs 'secret_sha256'"),
        (KEY.replace(_sha("x" * 30), "x" * 30), 2, "64 hex digits"),
        (KEY.replace("system/Observation.cu", "patient/Observation.cu"), 3, "acts for a system"),
        (KEY.replace("[urn:oid:1.2.3]", "[not a uri]"), 4, "identifier system URI"),
        (KEY.replace("[urn:oid:1.2.3]", "[]"), 4, "expected a list"),
        (KEY + KEY, 5, "used twice"),
        ("name: ehr\n", 1, "expected a list of keys"),
    ],
)
def test_keys_file_mistakes_name_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(MappingError) as caught:
        load_api_keys_file(path)
    assert (caught.value.file, caught.value.line) == (str(path), line)
    assert words in str(caught.value)


def test_settings_refuse_a_bad_keys_file_and_a_name_used_in_both_sources(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(KEY.replace("system/Observation.cu", "system/Observation.zz"))
    with pytest.raises(ValidationError, match=r"keys.yaml:3"):
        Settings(api_keys_file=path)
    path.write_text(KEY)
    with pytest.raises(ValidationError, match="used twice"):
        Settings(api_keys_file=path, api_keys="ehr:ro:" + "y" * 30)
    assert [k.name for k in Settings(api_keys_file=path, api_keys="job:rw:" + "y" * 30).keys()] == ["job", "ehr"]


def test_conditions_and_contained_resources_need_what_they_do(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD.replace("[create, update]", "[create, conditional-create, update, conditional-update]"))
    policy = load_forwarding_policy(path, is_type)
    observation = {"resourceType": "Observation", "id": "o", "contained": [{"resourceType": "Patient", "id": "p"}]}
    bundle = {
        "entry": [
            {"resource": observation, "request": {"method": "PUT", "url": "Observation/o"}},
            {
                "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=a|1"},
            },
            {
                "resource": {"resourceType": "Patient", "id": "q"},
                "request": {"method": "PUT", "url": "Patient?identifier=a|2"},
            },
        ]
    }
    actions, issues = check_entries(bundle, policy)
    assert issues == []
    assert [a.needs for a in actions] == [
        [("Observation", "u"), ("Patient", "u")],
        [("Patient", "c"), ("Patient", "r"), ("Patient", "s")],
        [("Patient", "u"), ("Patient", "r"), ("Patient", "s")],
    ]
    assert actions[2].resource_id == "q"  # with no match, the server writes at the resource's own id


@pytest.mark.parametrize(
    ("request_", "field", "words"),
    [
        ({"url": "Patient?identifier=a|1#x"}, "request.url", "fragment"),
        ({"url": "Patient", "method": "POST", "ifNoneExist": "identifier=a|1#x"}, "request.ifNoneExist", "fragment"),
        ({"url": "Patient?_id=p&_elements=id"}, "request.url", "_elements"),
        ({"url": "Patient?_id=p&_summary:x=count"}, "request.url", "_summary"),
        ({"url": "Patient", "method": "POST", "ifNoneExist": "_id=p&_count=0"}, "request.ifNoneExist", "_count"),
    ],
)
def test_conditions_mean_what_the_server_matches(request_: dict[str, str], field: str, words: str) -> None:
    entry = {"resource": {"resourceType": "Patient", "id": "p"}, "request": {"method": "PUT", **request_}}
    (issue,) = check_entries({"entry": [entry]}, None)[1]
    assert issue.expression == f"Bundle.entry[0].{field}" and words in issue.message


def test_yaml_the_helpers_do_not_read_is_still_a_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(KEY.replace("- name: ehr\n", "- <<: {x: 1}\n  name: ehr\n"))
    with pytest.raises(MappingError) as caught:
        load_api_keys_file(path)
    assert caught.value.file == str(path) and caught.value.line is not None
    policy = tmp_path / "policy.yaml"
    policy.write_text("<<: {types: [Patient]}\n" + GOOD)
    with pytest.raises(MappingError) as caught:
        load_forwarding_policy(policy, is_type)
    assert caught.value.file == str(policy) and caught.value.line is not None
