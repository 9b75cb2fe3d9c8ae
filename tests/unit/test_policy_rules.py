"""The forwarding policy's rules, each compared exactly: the policy file's load-time checks (every message, line
and bound, at the limit and one past it) and ``check_entries``' refusals of transaction entries (issue code,
severity, message and expression), the actions it returns and the permissions they need."""

from __future__ import annotations

import locale
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from casebridge.errors import MappingError
from casebridge.gateway.policy import (
    INTERACTIONS,
    NEVER,
    Action,
    ForwardingPolicy,
    HapiChecks,
    check_entries,
    load_forwarding_policy,
)

# -- the policy file ---------------------------------------------------------------------------------------------

R4_TYPES = {"Patient", "Observation", "Condition", *NEVER}
GOOD = "types: [Patient, Observation]\ninteractions: [create, update]\nlimits: {max_entries: 5, max_bytes: 2048}\n"
FILE = "forwarding-policy.yaml"
EVERY = "create, conditional-create, update, conditional-update"
CONFORMANCE = "a conformance resource changes how the FHIR server validates, searches or operates"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / FILE
    path.write_text(text, encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, is_type: Callable[[str], bool] = R4_TYPES.__contains__) -> ForwardingPolicy:
    return load_forwarding_policy(write(tmp_path, text), is_type, root=tmp_path)


def refusal(
    tmp_path: Path, text: str, is_type: Callable[[str], bool] = R4_TYPES.__contains__
) -> tuple[str, int | None]:
    with pytest.raises(MappingError) as caught:
        load(tmp_path, text, is_type)
    assert caught.value.file == FILE
    return str(caught.value), caught.value.line


def test_a_good_policy_is_read_as_written(tmp_path: Path) -> None:
    assert load(tmp_path, GOOD) == ForwardingPolicy(
        frozenset({"Patient", "Observation"}),
        frozenset({"create", "update"}),
        5,
        2048,
        file=FILE,
        unknown_profiles="error",
        hapi_checks=HapiChecks(True, True, True, 10),
    )


def test_every_interaction_can_be_listed(tmp_path: Path) -> None:
    policy = load(tmp_path, GOOD.replace("[create, update]", f"[{EVERY}]"))
    assert policy.interactions == frozenset(INTERACTIONS) == frozenset(EVERY.split(", "))


def test_the_file_is_named_relative_to_root_when_under_it(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    assert load_forwarding_policy(path, R4_TYPES.__contains__, root=tmp_path).file == FILE
    assert load_forwarding_policy(path, R4_TYPES.__contains__).file == str(path)
    elsewhere = tmp_path / "elsewhere"
    assert load_forwarding_policy(path, R4_TYPES.__contains__, root=elsewhere).file == str(path)
    with pytest.raises(MappingError) as caught:
        load_forwarding_policy(write(tmp_path, GOOD + "extra: 1\n"), R4_TYPES.__contains__, root=elsewhere)
    assert caught.value.file == str(path)


UNKNOWN_KEY = "unknown key 'extra'; the policy has types, interactions, limits, unknown_profiles and hapi_checks"
NOT_AN_INTERACTION = (
    "is not an interaction that can be forwarded; the policy may list "
    f"{EVERY} (delete, read, search, patch and operations never are)"
)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (GOOD + "extra: 1\n", 4, UNKNOWN_KEY),
        # an unknown key is named before a missing one
        ("extra: 1\n" + GOOD.split("\n", 1)[1], 1, UNKNOWN_KEY),
        (GOOD.split("\n", 1)[1], 1, "the policy needs 'types' (deny by default: nothing is implied)"),
        (GOOD.split("\n", 2)[2], 1, "the policy needs 'types' (deny by default: nothing is implied)"),
        (
            GOOD.replace("interactions: [create, update]\n", ""),
            1,
            "the policy needs 'interactions' (deny by default: nothing is implied)",
        ),
        (
            GOOD.replace("interactions: [create, update]\n", "").replace("limits", "# limits"),
            1,
            "the policy needs 'interactions' (deny by default: nothing is implied)",
        ),
        (GOOD.rsplit("limits", 1)[0], 1, "the policy needs 'limits' (deny by default: nothing is implied)"),
        ("", 1, "the file is empty"),
        ("- types\n", 1, "expected a mapping, found a list"),
        (
            "<<: {types: [Patient]}\n" + GOOD,
            1,
            "malformed YAML: could not determine a constructor for the tag 'tag:yaml.org,2002:merge'",
        ),
        # types
        (GOOD.replace("[Patient, Observation]", "Patient"), 1, "expected a list"),
        (GOOD.replace("[Patient, Observation]", "{Patient: 1}"), 1, "expected a list"),
        (
            "types:\n  - Patient\n  - Nonsense\n" + GOOD.split("\n", 1)[1],
            3,
            "'Nonsense' is not a FHIR R4 resource type",
        ),
        (GOOD.replace("[Patient, Observation]", "[Patient, 5]"), 1, "5 is not a FHIR R4 resource type"),
        (GOOD.replace("[Patient, Observation]", "[Patient, [Observation]]"), 1, "None is not a FHIR R4 resource type"),
        (GOOD.replace("[Patient, Observation]", "[patient]"), 1, "'patient' is not a FHIR R4 resource type"),
        (
            "types:\n  - Patient\n  - Subscription\n" + GOOD.split("\n", 1)[1],
            3,
            f"Subscription can never be forwarded: {NEVER['Subscription']}",
        ),
        (
            GOOD.replace("[Patient, Observation]", "[Endpoint]"),
            1,
            "Endpoint can never be forwarded: it tells the FHIR server where to send data",
        ),
        (
            GOOD.replace("[Patient, Observation]", "[ValueSet]"),
            1,
            "ValueSet can never be forwarded: a terminology resource changes how the FHIR server checks codes",
        ),
        (
            GOOD.replace("[Patient, Observation]", "[StructureDefinition]"),
            1,
            f"StructureDefinition can never be forwarded: {CONFORMANCE}",
        ),
        # interactions
        (GOOD.replace("[create, update]", "create"), 2, "expected a list"),
        (GOOD.replace("[create, update]", "[create, delete]"), 2, f"'delete' {NOT_AN_INTERACTION}"),
        ("types: [Patient]\ninteractions:\n  - create\n  - 5\n" + GOOD.split("\n", 2)[2], 4, f"5 {NOT_AN_INTERACTION}"),
        (GOOD.replace("[create, update]", "[Create]"), 2, f"'Create' {NOT_AN_INTERACTION}"),
        # limits
        (
            GOOD.replace("max_bytes: 2048", "max_bytes: 2048, max_seconds: 3"),
            3,
            "unknown limit 'max_seconds'; the limits are max_entries, max_bytes",
        ),
        (
            GOOD.replace("limits: {max_entries: 5, max_bytes: 2048}", "limits:\n  max_bytes: 2048\n"),
            3,
            "limits needs 'max_entries'",
        ),
        (
            GOOD.replace("limits: {max_entries: 5, max_bytes: 2048}", "limits:\n  max_entries: 5\n"),
            3,
            "limits needs 'max_bytes'",
        ),
        (GOOD.replace("limits: {max_entries: 5, max_bytes: 2048}", "limits: {}"), 3, "limits needs 'max_entries'"),
        (
            GOOD.replace("limits: {max_entries: 5, max_bytes: 2048}", "limits: 5"),
            3,
            "expected a mapping, found a scalar",
        ),
        (
            GOOD.replace("{max_entries: 5, max_bytes: 2048}", "\n  max_bytes: 2048\n  max_entries: 0\n"),
            5,
            "max_entries: expected a whole number from 1 to 100000",
        ),
        (
            GOOD.replace("max_bytes: 2048", "max_bytes: 1023"),
            3,
            "max_bytes: expected a whole number from 1024 to 1073741824",
        ),
    ],
)
def test_policy_file_mistakes(tmp_path: Path, text: str, line: int, message: str) -> None:
    assert refusal(tmp_path, text) == (f"{FILE}:{line}: {message}", line)


@pytest.mark.parametrize("name", ["Pa", "P" + "a" * 63, "Patient"])
def test_a_type_name_of_2_to_64_letters_is_looked_up(tmp_path: Path, name: str) -> None:
    assert load(tmp_path, GOOD.replace("[Patient, Observation]", f"[{name}]"), lambda _: True).types == {name}


@pytest.mark.parametrize("name", ["P", "P" + "a" * 64, "P1", "pa", "5"])
def test_a_type_name_that_cannot_be_one_is_refused_before_the_look_up(tmp_path: Path, name: str) -> None:
    shown = 5 if name == "5" else repr(name)
    text = GOOD.replace("[Patient, Observation]", f"[{name}]")
    assert refusal(tmp_path, text, lambda _: True) == (f"{FILE}:1: {shown} is not a FHIR R4 resource type", 1)


def test_a_type_the_look_up_does_not_know_is_refused(tmp_path: Path) -> None:
    assert refusal(tmp_path, GOOD, lambda name: name == "Patient") == (
        f"{FILE}:1: 'Observation' is not a FHIR R4 resource type",
        1,
    )


def limits(entries: object, size: object) -> str:
    return GOOD.replace("max_entries: 5, max_bytes: 2048", f"max_entries: {entries}, max_bytes: {size}")


@pytest.mark.parametrize(("entries", "size"), [(1, 1024), (100_000, 1 << 30), (7, 4096)])
def test_limits_at_their_bounds_are_taken(tmp_path: Path, entries: int, size: int) -> None:
    policy = load(tmp_path, limits(entries, size))
    assert (policy.max_entries, policy.max_bytes) == (entries, size)


ENTRIES = "max_entries: expected a whole number from 1 to 100000"
BYTES = "max_bytes: expected a whole number from 1024 to 1073741824"


@pytest.mark.parametrize(
    ("entries", "size", "message"),
    [
        (0, 1024, ENTRIES),
        (-1, 1024, ENTRIES),
        (100_001, 1024, ENTRIES),
        ("true", 1024, ENTRIES),  # a bool is an int to Python, not a number of entries
        ("5.0", 1024, ENTRIES),
        ("many", 1024, ENTRIES),
        ("[5]", 1024, ENTRIES),
        (1, 1023, BYTES),
        (1, (1 << 30) + 1, BYTES),
        (1, "2048.0", BYTES),
        (1, "[2048]", BYTES),
        ("{[1]: 2}", 1024, ENTRIES),  # a limit that is not a scalar is not read (this one could not be)
        (0, 0, ENTRIES),  # max_entries is checked first
    ],
)
def test_limits_out_of_bounds_are_refused(tmp_path: Path, entries: object, size: object, message: str) -> None:
    assert refusal(tmp_path, limits(entries, size)) == (f"{FILE}:3: {message}", 3)


@pytest.mark.parametrize(("value", "expected"), [("warning", "warning"), ("error", "error"), (None, "error")])
def test_unknown_profiles(tmp_path: Path, value: str | None, expected: str) -> None:
    text = GOOD if value is None else GOOD + f"unknown_profiles: {value}\n"
    assert load(tmp_path, text).unknown_profiles == expected


@pytest.mark.parametrize(("value", "shown"), [("info", "'info'"), ("[error]", "None"), ("1", "1")])
def test_unknown_profiles_mistakes(tmp_path: Path, value: str, shown: str) -> None:
    message = f"unknown_profiles: expected warning or error, not {shown}"
    assert refusal(tmp_path, GOOD + f"unknown_profiles: {value}\n") == (f"{FILE}:4: {message}", 4)


@pytest.mark.parametrize(
    ("block", "checks"),
    [
        ("{}", HapiChecks(True, True, True, 10)),
        ("{numeric_ids: false}", HapiChecks(False, True, True, 10)),
        ("{absolute_references: false}", HapiChecks(True, False, True, 10)),
        ("{missing_references: false}", HapiChecks(True, True, False, 10)),
        ("{numeric_ids: true, max_lookups: 1}", HapiChecks(True, True, True, 1)),
        ("{max_lookups: 100}", HapiChecks(True, True, True, 100)),
    ],
)
def test_hapi_checks(tmp_path: Path, block: str, checks: HapiChecks) -> None:
    assert load(tmp_path, GOOD + f"hapi_checks: {block}\n").hapi_checks == checks


LOOKUPS = "hapi_checks.max_lookups: expected a whole number from 1 to 100"


@pytest.mark.parametrize(
    ("block", "line", "message"),
    [
        ("\n  numeric_ids: maybe\n", 5, "hapi_checks.numeric_ids: expected true or false, not 'maybe'"),
        (
            "\n  max_lookups: 3\n  absolute_references: 1\n",
            6,
            "hapi_checks.absolute_references: expected true or false, not 1",
        ),
        ("\n  missing_references: [true]\n", 5, "hapi_checks.missing_references: expected true or false, not None"),
        ("\n  max_lookups: 0\n", 5, LOOKUPS),
        ("\n  max_lookups: 101\n", 5, LOOKUPS),
        ("\n  max_lookups: true\n", 5, LOOKUPS),
        ("\n  max_lookups: '5'\n", 5, LOOKUPS),
        (
            "\n  numeric_ids: false\n  strict: true\n",
            6,
            "unknown key 'strict' in hapi_checks; it has numeric_ids, absolute_references, missing_references and "
            "max_lookups",
        ),
        (" [numeric_ids]\n", 4, "expected a mapping, found a list"),
    ],
)
def test_hapi_checks_mistakes(tmp_path: Path, block: str, line: int, message: str) -> None:
    assert refusal(tmp_path, GOOD + "hapi_checks:" + block) == (f"{FILE}:{line}: {message}", line)


def test_the_file_is_read_as_utf_8_whatever_the_locale(tmp_path: Path) -> None:
    path = write(tmp_path, "# Café, Zürich\n" + GOOD)
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")  # ASCII: the locale's encoding would refuse the file
    try:
        policy = load_forwarding_policy(path, R4_TYPES.__contains__, root=tmp_path)
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
    assert policy.types == {"Patient", "Observation"}


def test_a_file_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(MappingError) as caught:
        load_forwarding_policy(tmp_path / "absent.yaml", R4_TYPES.__contains__, root=tmp_path)
    assert (str(caught.value), caught.value.file, caught.value.line) == (
        "absent.yaml: cannot read: No such file or directory",
        "absent.yaml",
        None,
    )
    (tmp_path / FILE).write_bytes(b"\xfftypes: []\n")
    with pytest.raises(MappingError) as caught:
        load_forwarding_policy(tmp_path / FILE, R4_TYPES.__contains__, root=tmp_path)
    # a decoding error has no strerror: its own text is shown
    assert (
        str(caught.value)
        == f"{FILE}: cannot read: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"
    )


# -- the entries of a transaction ------------------------------------------------------------------------------

POLICY = ForwardingPolicy(frozenset({"Patient", "Observation"}), frozenset(INTERACTIONS), 3, 4096, file="policy.yaml")


def entry(method: Any, url: Any, resource: Any = None, **request: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        out["resource"] = resource
    return out


def patient(rid: Any = "a", **more: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", **({} if rid is None else {"id": rid}), **more}


def outcome(entries: list[Any], policy: ForwardingPolicy | None = POLICY) -> tuple[list[Action], list[tuple[str, ...]]]:
    actions, issues = check_entries({"resourceType": "Bundle", "entry": entries}, policy)
    return actions, [(i.severity, i.code, i.message, i.expression) for i in issues]


def refused(one: dict[str, Any], policy: ForwardingPolicy | None = POLICY) -> tuple[str, ...]:
    """The one issue of a Bundle of that entry after an allowed one (so the index is 1), and no action for it."""
    actions, issues = outcome([entry("POST", "Patient", patient(None)), one], policy)
    assert [a.index for a in actions] == [0]
    (issue,) = issues
    assert issue[0] == "error"
    return issue[1:]


BASE = "a URL relative to the FHIR server's base (Type, Type/id or Type?search) is expected"
FRAGMENT = "a request URL or condition has no fragment (#): the server drops it"
OPERATION = "operations and searches are not forwarded, only resources"


@pytest.mark.parametrize(
    ("one", "expected"),
    [
        (
            entry("DELETE", "Patient/a"),
            (
                "not-supported",
                "DELETE entries are never forwarded: deleting is not offered through this gateway",
                "Bundle.entry[1].request.method",
            ),
        ),
        (
            entry("GET", "Patient/a", patient()),
            (
                "not-supported",
                "GET entries are never forwarded: reads go through the read API (GET /diagnostic-reports)",
                "Bundle.entry[1].request.method",
            ),
        ),
        (
            entry("HEAD", "Patient/a"),
            (
                "not-supported",
                "HEAD entries are never forwarded: reads go through the read API",
                "Bundle.entry[1].request.method",
            ),
        ),
        (
            entry("PATCH", "Patient/a", patient()),
            (
                "not-supported",
                "a PATCH cannot be validated before the FHIR server applies it: send the whole resource (PUT)",
                "Bundle.entry[1].request.method",
            ),
        ),
        # fragments
        (entry("PUT", "Patient/a#x", patient()), ("invalid", FRAGMENT, "Bundle.entry[1].request.url")),
        (entry("PUT", "Patient?identifier=a#x", patient()), ("invalid", FRAGMENT, "Bundle.entry[1].request.url")),
        (
            entry("POST", "Patient", patient(None), ifNoneExist="identifier=a#x"),
            ("invalid", FRAGMENT, "Bundle.entry[1].request.ifNoneExist"),
        ),
        # result parameters in a condition, sorted, with modifiers and blank values
        (
            entry("PUT", "Patient?_sort=x&identifier=a&_count=", patient()),
            (
                "invalid",
                "a condition selects what is written; result parameters (_count, _sort) shape a search's answer",
                "Bundle.entry[1].request.url",
            ),
        ),
        (
            entry("PUT", "Patient?_summary:x:y=count", patient()),
            (
                "invalid",
                "a condition selects what is written; result parameters (_summary) shape a search's answer",
                "Bundle.entry[1].request.url",
            ),
        ),
        (
            entry("POST", "Patient", patient(None), ifNoneExist="_id=p&_total=accurate"),
            (
                "invalid",
                "a condition selects what is written; result parameters (_total) shape a search's answer",
                "Bundle.entry[1].request.ifNoneExist",
            ),
        ),
        (
            entry("PUT", "Patient?_elements=id", patient(), ifNoneExist="_count=1"),
            (
                "invalid",
                "a condition selects what is written; result parameters (_elements) shape a search's answer",
                "Bundle.entry[1].request.url",
            ),
        ),
        # operations and searches
        (
            entry("POST", "Patient/$validate", patient(None)),
            ("not-supported", OPERATION, "Bundle.entry[1].request.url"),
        ),
        (entry("POST", "$process-message", patient(None)), ("not-supported", OPERATION, "Bundle.entry[1].request.url")),
        (
            entry("POST", "Patient/%24validate", patient(None)),
            ("not-supported", OPERATION, "Bundle.entry[1].request.url"),
        ),
        (entry("POST", "Patient/_search", patient(None)), ("not-supported", OPERATION, "Bundle.entry[1].request.url")),
        (
            entry("POST", "Patient/_search?name=x", patient(None)),
            ("not-supported", OPERATION, "Bundle.entry[1].request.url"),
        ),
        # the URL's type
        (
            entry("POST", "Observation", patient(None)),
            (
                "invalid",
                f"the URL 'Observation' does not start with the resource's type 'Patient': {BASE}",
                "Bundle.entry[1].request.url",
            ),
        ),
        (
            entry("PUT", "/Patient/a", patient()),
            (
                "invalid",
                f"the URL '/Patient/a' does not start with the resource's type 'Patient': {BASE}",
                "Bundle.entry[1].request.url",
            ),
        ),
        (
            entry("PUT", "O/" + "x" * 150, patient()),
            (
                "invalid",
                f"the URL {'O/' + 'x' * 98!r} does not start with the resource's type 'Patient': {BASE}",
                "Bundle.entry[1].request.url",
            ),
        ),
        # types the policy does not let through
        (
            entry("POST", "Condition", {"resourceType": "Condition"}),
            (
                "not-supported",
                "Condition is not a type the forwarding policy (policy.yaml) lets through",
                "Bundle.entry[1].resource",
            ),
        ),
        (
            entry("PUT", "Subscription/s", {"resourceType": "Subscription", "id": "s"}),
            ("not-supported", f"Subscription is never forwarded: {NEVER['Subscription']}", "Bundle.entry[1].resource"),
        ),
        # POST
        (
            entry("POST", "Patient/a", patient(None)),
            ("invalid", "a POST creates at its type's URL (Patient), not 'Patient/a'", "Bundle.entry[1].request.url"),
        ),
        (
            entry("POST", "Patient?identifier=a", patient(None)),
            (
                "invalid",
                "a POST creates at its type's URL (Patient), not 'Patient?identifier=a'",
                "Bundle.entry[1].request.url",
            ),
        ),
        (
            entry("POST", "Patient?x=$y", patient(None)),
            (
                "invalid",
                "a POST creates at its type's URL (Patient), not 'Patient?x=$y'",
                "Bundle.entry[1].request.url",
            ),
        ),
        (
            entry("POST", "Patient/" + "x" * 150, patient(None)),
            (
                "invalid",
                f"a POST creates at its type's URL (Patient), not {'Patient/' + 'x' * 92!r}",
                "Bundle.entry[1].request.url",
            ),
        ),
        # conditional PUT
        (
            entry("PUT", "Patient/a?identifier=b", patient()),
            (
                "invalid",
                "a conditional PUT's URL is Type?search, not 'Patient/a?identifier=b'",
                "Bundle.entry[1].request.url",
            ),
        ),
        (
            entry("PUT", "Patient/a?i=" + "x" * 150, patient()),
            (
                "invalid",
                f"a conditional PUT's URL is Type?search, not {'Patient/a?i=' + 'x' * 88!r}",
                "Bundle.entry[1].request.url",
            ),
        ),
        # PUT
        (
            entry("PUT", "Patient", patient()),
            (
                "invalid",
                "a PUT names the resource it writes: Patient/<id> (or Patient?search)",
                "Bundle.entry[1].request.url",
            ),
        ),
        (
            entry("PUT", "Patient?", patient()),
            (
                "invalid",
                "a PUT names the resource it writes: Patient/<id> (or Patient?search)",
                "Bundle.entry[1].request.url",
            ),
        ),
        (
            entry("PUT", "Patient/", patient()),
            (
                "invalid",
                "a PUT names the resource it writes: Patient/<id> (or Patient?search)",
                "Bundle.entry[1].request.url",
            ),
        ),
        (
            entry("PUT", "Patient/a/b", patient()),
            (
                "invalid",
                "a PUT names the resource it writes: Patient/<id> (or Patient?search)",
                "Bundle.entry[1].request.url",
            ),
        ),
        (
            entry("PUT", "Patient/a b", patient("a b")),
            ("invalid", "'a b' is not a FHIR id", "Bundle.entry[1].request.url"),
        ),
        (
            entry("PUT", "Patient/" + "a" * 65, patient("a" * 65)),
            ("invalid", f"{'a' * 65!r} is not a FHIR id", "Bundle.entry[1].request.url"),
        ),
        (
            entry("PUT", "Patient/" + "a" * 90, patient()),
            ("invalid", f"{'a' * 80!r} is not a FHIR id", "Bundle.entry[1].request.url"),
        ),
        (
            entry("PUT", "Patient/a", patient("b")),
            (
                "invalid",
                "the URL names Patient/a but the resource's id is 'b': they must be the same (FHIR update)",
                "Bundle.entry[1].resource.id",
            ),
        ),
        (
            entry("PUT", "Patient/a", patient(5)),
            (
                "invalid",
                "the URL names Patient/a but the resource's id is 5: they must be the same (FHIR update)",
                "Bundle.entry[1].resource.id",
            ),
        ),
        (
            entry("PUT", "Patient/a", patient(None)),
            ("invalid", "the resource has no id: a PUT to Patient/a needs id 'a'", "Bundle.entry[1].resource"),
        ),
    ],
)
def test_refused_entries(one: dict[str, Any], expected: tuple[str, str, str]) -> None:
    assert refused(one) == expected


@pytest.mark.parametrize(
    ("one", "action"),
    [
        (entry("POST", "Patient", patient(None)), Action(1, "create", "Patient")),
        (
            entry("POST", "Patient", patient(None), ifNoneExist="identifier=a|1"),
            Action(1, "conditional-create", "Patient", condition="identifier=a|1"),
        ),
        (entry("POST", "Patient", patient(None), ifNoneExist=""), Action(1, "create", "Patient")),
        (entry("POST", "Patient", patient(None), ifNoneExist=5), Action(1, "create", "Patient")),
        (
            entry("POST", "Patient", patient(None), ifNoneExist="name="),
            Action(1, "conditional-create", "Patient", condition="name="),
        ),
        (entry("PUT", "Patient/a", patient()), Action(1, "update", "Patient", resource_id="a")),
        (entry("PUT", "Patient/A-1.b", patient("A-1.b")), Action(1, "update", "Patient", resource_id="A-1.b")),
        (entry("PUT", "Patient/" + "a" * 64, patient("a" * 64)), Action(1, "update", "Patient", resource_id="a" * 64)),
        (
            entry("PUT", "Patient?identifier=a|1", patient()),
            Action(1, "conditional-update", "Patient", resource_id="a", condition="identifier=a|1"),
        ),
        (
            entry("PUT", "Patient?identifier=a|1", patient(None)),
            Action(1, "conditional-update", "Patient", condition="identifier=a|1"),
        ),
        (
            entry("PUT", "Patient?identifier=a|1", patient("a b")),
            Action(1, "conditional-update", "Patient", condition="identifier=a|1"),
        ),
        (
            entry("PUT", "Patient?identifier=a|1", patient(5)),
            Action(1, "conditional-update", "Patient", condition="identifier=a|1"),
        ),
        (
            entry("PUT", "Patient?_id=b", patient("a" * 64)),
            Action(1, "conditional-update", "Patient", resource_id="a" * 64, condition="_id=b"),
        ),
        (
            entry("PUT", "Patient?_id=b", patient("a" * 65)),
            Action(1, "conditional-update", "Patient", condition="_id=b"),
        ),
        # the query is what follows the first ?: a second one is part of a value
        (
            entry("PUT", "Patient?identifier=a?_count=1", patient()),
            Action(1, "conditional-update", "Patient", resource_id="a", condition="identifier=a?_count=1"),
        ),
        (
            entry("PUT", "Patient?identifier=a", patient(contained=[{"resourceType": "Observation"}])),
            Action(
                1,
                "conditional-update",
                "Patient",
                resource_id="a",
                condition="identifier=a",
                contained=("Observation",),
            ),
        ),
        # a $ or _search in a query is a search value, not an operation
        (
            entry("PUT", "Patient?name=$x&tag=/_search", patient()),
            Action(1, "conditional-update", "Patient", resource_id="a", condition="name=$x&tag=/_search"),
        ),
        (entry("PUT", "Patient/search", patient("search")), Action(1, "update", "Patient", resource_id="search")),
    ],
)
def test_actions(one: dict[str, Any], action: Action) -> None:
    actions, issues = outcome([entry("POST", "Patient", patient(None)), one])
    assert issues == []
    assert actions == [Action(0, "create", "Patient"), action]


@pytest.mark.parametrize(
    "one",
    [
        "not an entry",
        {"resource": patient()},
        {"request": "POST Patient", "resource": patient()},
        entry(None, "Patient", patient()),
        entry("POST", None, patient()),
        entry("POST", 5, patient()),
        entry(5, "Patient", patient()),
        entry("OPTIONS", "Patient", patient()),
        entry("post", "Patient", patient()),
        entry("POST", "Patient"),  # no resource
        {"request": {"method": "POST", "url": "Patient"}, "resource": "Patient"},
        entry("PUT", "Patient/a", {"id": "a"}),
        entry("PUT", "Patient/a", {"resourceType": 5, "id": "a"}),
    ],
)
def test_entries_left_to_the_validator(one: Any) -> None:
    """No action and no issue: the validator reports an entry without a request, method, URL or resource."""
    assert outcome([entry("POST", "Patient", patient(None)), one]) == ([Action(0, "create", "Patient")], [])


def test_interactions_the_policy_does_not_list(tmp_path: Path) -> None:
    entries = [
        entry("POST", "Patient", patient(None)),
        entry("POST", "Patient", patient(None), ifNoneExist="identifier=a|1"),
        entry("PUT", "Patient/a", patient()),
        entry("PUT", "Patient?identifier=a|2", patient()),
    ]
    for allowed in INTERACTIONS:
        policy = ForwardingPolicy(frozenset({"Patient"}), frozenset({allowed}), 10, 4096, file="p.yaml")
        actions, issues = outcome(entries, policy)
        assert [a.interaction for a in actions] == [allowed]
        assert issues == [
            (
                "error",
                "not-supported",
                f"{other} is not allowed by the forwarding policy (p.yaml)",
                f"Bundle.entry[{i}].request",
            )
            for i, other in enumerate(INTERACTIONS)
            if other != allowed
        ]


def test_without_a_policy_any_type_and_interaction_passes() -> None:
    entries = [
        entry(
            "PUT",
            "Provenance/p",
            {"resourceType": "Provenance", "id": "p", "contained": [{"resourceType": "Subscription"}]},
        ),
        entry("POST", "Subscription", {"resourceType": "Subscription"}),
    ]
    actions, issues = outcome(entries, None)
    assert issues == []
    assert actions == [
        Action(0, "update", "Provenance", resource_id="p", contained=("Subscription",)),
        Action(1, "create", "Subscription"),
    ]
    # the transaction rules still hold
    assert refused(entry("DELETE", "Subscription/s"), None) == (
        "not-supported",
        "DELETE entries are never forwarded: deleting is not offered through this gateway",
        "Bundle.entry[1].request.method",
    )


@pytest.mark.parametrize(("count", "refused_"), [(3, False), (4, True), (2, False)])
def test_the_number_of_entries(count: int, refused_: bool) -> None:
    entries: list[Any] = [entry("POST", "Patient", patient(None)) for _ in range(count - 1)] + ["not an entry"]
    actions, issues = outcome(entries)
    if refused_:
        message = (
            f"{count} entries: the forwarding policy (policy.yaml) takes at most 3 in one transaction; "
            "send them in several"
        )
        assert (actions, issues) == ([], [("error", "too-costly", message, "Bundle.entry")])
    else:
        assert (len(actions), issues) == (count - 1, [])
    # without a policy there is no limit
    assert len(outcome(entries, None)[0]) == count - 1


@pytest.mark.parametrize("bundle", [{}, {"entry": {"request": {}}}, {"entry": "x"}, {"entry": None}])
def test_a_bundle_without_a_list_of_entries(bundle: dict[str, Any]) -> None:
    assert check_entries(bundle, POLICY) == ([], [])


def test_the_problem_of_one_entry_leaves_the_others_checked() -> None:
    entries = [
        entry("DELETE", "Patient/a"),
        "x",
        entry("PUT", "Patient/b", patient("b")),
    ]
    actions, issues = outcome(entries)
    assert actions == [Action(2, "update", "Patient", resource_id="b")]
    assert [i[3] for i in issues] == ["Bundle.entry[0].request.method"]


def test_an_entry_left_to_the_validator_leaves_the_others_checked() -> None:
    entries = [
        entry("POST", "Patient"),
        entry("OPTIONS", "Patient", patient()),
        entry("PUT", "Patient/b", patient("b")),
    ]
    assert outcome(entries) == ([Action(2, "update", "Patient", resource_id="b")], [])


def test_every_result_parameter_of_a_condition_is_named_in_order() -> None:
    names = ["_total", "_sort", "_revinclude", "_pretty", "_offset", "_maxresults", "_include", "_graph", "_format"]
    names += ["_elements", "_count", "_containedType", "_contained", "_summary"]
    query = "&".join(f"{n}=1" for n in names) + "&_id=a&_lastUpdated=gt2020"
    shown = ", ".join(sorted(names))
    assert refused(entry("PUT", f"Patient?{query}", patient())) == (
        "invalid",
        f"a condition selects what is written; result parameters ({shown}) shape a search's answer",
        "Bundle.entry[1].request.url",
    )


def twice(message_target: str) -> str:
    return f"entry 0 already writes {message_target}: a transaction may write a resource once (FHIR transaction rules)"


def test_a_resource_written_twice_is_refused_naming_the_first_entry() -> None:
    contained = {"contained": [{"resourceType": "Condition"}]}
    entries = [
        entry("PUT", "Patient/a", patient()),
        entry("POST", "Patient", patient(None)),
        entry("PUT", "Patient/a", patient(**contained)),  # refused, and its contained resource not checked
        entry("POST", "Patient", patient(None)),  # creates are never the same resource
        entry("PUT", "Patient/a", patient()),
        entry("PUT", "Patient/b", patient("b")),
    ]
    actions, issues = outcome(entries, ForwardingPolicy(POLICY.types, POLICY.interactions, 10, 4096, file="p.yaml"))
    assert [a.index for a in actions] == [0, 1, 3, 5]
    assert issues == [
        ("error", "business-rule", twice("Patient/a"), "Bundle.entry[2].request.url"),
        ("error", "business-rule", twice("Patient/a"), "Bundle.entry[4].request.url"),
    ]


def test_conditions_write_once_too() -> None:
    long = "identifier=" + "x" * 200
    entries = [
        entry("PUT", f"Patient?{long}", patient()),
        entry("POST", "Patient", patient(None), ifNoneExist=long),
        entry("PUT", "Patient/a", patient()),  # an id and a condition are different targets
        entry("PUT", "Patient?identifier=y", patient()),
    ]
    actions, issues = outcome(entries, ForwardingPolicy(POLICY.types, POLICY.interactions, 10, 4096, file="p.yaml"))
    assert [a.index for a in actions] == [0, 2, 3]
    assert issues == [("error", "business-rule", twice(f"Patient?{long}"[:120]), "Bundle.entry[1].request.url")]


def test_contained_resources_of_types_the_policy_does_not_list() -> None:
    observation = {
        "resourceType": "Observation",
        "id": "o",
        "contained": [
            {"resourceType": "Patient"},
            {"resourceType": "Condition"},
            {"resourceType": 5},
            {"id": "no-type"},
            "not a resource",  # left to the validator, but it still counts in the index of those after it
            {"resourceType": "Subscription"},
        ],
    }
    actions, issues = outcome([entry("PUT", "Observation/o", observation)])
    assert actions == [
        Action(0, "update", "Observation", resource_id="o", contained=("5", "Condition", "Patient", "Subscription"))
    ]
    assert issues == [
        (
            "error",
            "not-supported",
            "Condition is not a type the forwarding policy (policy.yaml) lets through",
            "Bundle.entry[0].resource.contained[1]",
        ),
        (
            "error",
            "not-supported",
            f"Subscription is never forwarded: {NEVER['Subscription']}",
            "Bundle.entry[0].resource.contained[5]",
        ),
    ]


@pytest.mark.parametrize(
    ("contained", "types"),
    [
        ([{"resourceType": "Observation"}, {"resourceType": "Observation"}, {"resourceType": ""}], ("Observation",)),
        ({"resourceType": "Observation"}, ()),
        ("Observation", ()),
        ([], ()),
    ],
)
def test_contained_types(contained: Any, types: tuple[str, ...]) -> None:
    # without a policy, so that only the types are read (an empty type is not one the policy lists)
    actions, issues = outcome([entry("POST", "Patient", patient(None, contained=contained))], None)
    assert (actions, issues) == ([Action(0, "create", "Patient", contained=types)], [])


def test_the_defaults_of_a_policy() -> None:
    policy = ForwardingPolicy(frozenset(), frozenset(), 1, 1024)
    assert (policy.file, policy.unknown_profiles, policy.hapi_checks) == (
        "forwarding-policy.yaml",
        "error",
        HapiChecks(numeric_ids=True, absolute_references=True, missing_references=True, max_lookups=10),
    )


@pytest.mark.parametrize(
    ("checks", "enabled"),
    [
        (HapiChecks(False, False, False), False),
        (HapiChecks(True, False, False), True),
        (HapiChecks(False, True, False), True),
        (HapiChecks(False, False, True), True),
        (HapiChecks(), True),
    ],
)
def test_the_hapi_checks_are_enabled_when_one_is_on(checks: HapiChecks, enabled: bool) -> None:
    assert checks.enabled is enabled


@pytest.mark.parametrize(
    ("action", "needs"),
    [
        (Action(0, "create", "Patient"), [("Patient", "c")]),
        (Action(0, "create", "Patient", contained=("Observation",)), [("Patient", "c"), ("Observation", "c")]),
        (
            Action(0, "conditional-create", "Patient", condition="x=1"),
            [("Patient", "c"), ("Patient", "r"), ("Patient", "s")],
        ),
        (
            Action(0, "update", "Patient", resource_id="a", contained=("A", "B")),
            [("Patient", "u"), ("A", "u"), ("B", "u")],
        ),
        (
            Action(0, "conditional-update", "Patient", condition="x=1"),
            [("Patient", "u"), ("Patient", "r"), ("Patient", "s")],
        ),
    ],
)
def test_what_an_action_needs(action: Action, needs: list[tuple[str, str]]) -> None:
    assert action.needs == needs
