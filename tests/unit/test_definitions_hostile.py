"""Malformed definitions given with ``validate --definitions``: exit 2 naming the file (and the element), never
an internal error.

Real StructureDefinitions (our profiles, core profiles with and without a snapshot, an extension), a ValueSet
and a CodeSystem are mutated: keys deleted, values of the wrong JSON type, junk, truncated lists, base
definitions that are missing or circular, contentReferences to themselves. Each mutant goes through the
command's own code (``_validate_file``) and must give exit 0, 1 or 2, and with 2 a message naming the file.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casebridge.cli import core as cli
from casebridge.config import Settings
from casebridge.definitions.packages import DefinitionIndex, default_cache_dir
from casebridge.validation.service import load_index
from casebridge.validation.validator import Validator
from tests.paths import DATA_DIR, PROJECT_ROOT

CORE = default_cache_dir() / "hl7.fhir.r4.examples#4.0.1" / "package"
SOURCES = {
    "profile": DATA_DIR / "profiles" / "StructureDefinition-casebridge-finding.json",
    "patient-profile": DATA_DIR / "profiles" / "StructureDefinition-casebridge-patient.json",
    "bp": CORE / "StructureDefinition-bp.json",
    "extension": CORE / "StructureDefinition-patient-mothersMaidenName.json",
    "valueset": CORE / "ValueSet-observation-status.json",
    "codesystem": CORE / "CodeSystem-observation-status.json",
}
OBSERVATION = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
    "subject": {"reference": "Patient/p"},
}


@pytest.fixture(scope="module")
def base_index() -> DefinitionIndex:
    return load_index(Settings())


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SOURCES[name].read_text())
    data["url"] = f"http://example.org/mutant/{name}"  # its own: a mutant never replaces what validation needs
    if data["resourceType"] == "StructureDefinition" and data.get("snapshot") and data.get("differential"):
        return data
    return data


def differential_only(data: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(data)
    out.pop("snapshot", None)
    return out


def run_validate(
    tmp_path: Path,
    base_index: DefinitionIndex,
    definition: Any,
    monkeypatch: pytest.MonkeyPatch,
    profiles: list[str] | None = None,
    resource_json: dict[str, Any] | None = None,
    raw: bytes | None = None,
) -> tuple[int, str]:
    """(exit code, messages) of ``casebridge validate`` with one definition file, run in this process."""
    file = tmp_path / "my-definition.json"
    file.write_bytes(raw if raw is not None else json.dumps(definition).encode())
    resource = tmp_path / "resource.json"
    resource.write_text(json.dumps(resource_json or OBSERVATION))

    def load_validator(settings: Settings, extra: list[Path]) -> Validator:
        index = base_index.copy()
        for path in extra:
            index.add_path(path)
        return Validator(index)

    monkeypatch.setattr(cli, "load_validator", load_validator)
    url = definition.get("url") if isinstance(definition, dict) else None
    if profiles is None:
        used = isinstance(url, str) and definition.get("resourceType") == "StructureDefinition"
        profiles = [url] if used else []
    issues, code = cli._validate_file(resource, Settings(), profiles, [file])
    messages = "\n".join(i.message for i in issues)
    assert not [i for i in issues if i.code == "exception"], messages  # a validator defect, not an input error
    assert code in (0, 1, 2), (code, messages)
    if code == 2:
        assert "my-definition.json" in messages or "profile" in messages, messages
    return code, messages


# --- named cases: the shapes found by review, each with the element the message must name -------------------


def _set(data: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    node = out
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return out


_DELETE = object()
DIFF = ("differential", "element")
SNAP = ("snapshot", "element")
NAMED: list[tuple[str, str, tuple[Any, ...], Any, str]] = [
    # (id, source, path to change, new value, words the message must hold)
    ("diff-not-object", "profile", ("differential",), "x", "StructureDefinition.differential: expected an object"),
    ("diff-elements-string", "profile", DIFF, "x", "StructureDefinition.differential.element: expected a list"),
    ("diff-element-number", "profile", (*DIFF, 1), 5, "StructureDefinition.differential.element: expected a list"),
    ("diff-no-path", "profile", (*DIFF, 1, "path"), _DELETE, "differential.element[1].path: required"),
    ("diff-path-number", "profile", (*DIFF, 1, "path"), 7, "differential.element[1].path: expected a string"),
    ("diff-type-string", "bp", (*DIFF, 1, "type"), "Quantity", "element[1].type: expected a list of objects"),
    ("diff-type-list-of-str", "profile", (*DIFF, 1, "type"), ["x"], "element[1].type: expected a list of objects"),
    ("diff-min-string", "profile", (*DIFF, 1, "min"), "one", "element[1].min: expected an integer"),
    ("diff-min-negative", "profile", (*DIFF, 1, "min"), -1, "element[1].min: expected an integer of at least 0"),
    ("diff-max-junk", "profile", (*DIFF, 1, "max"), "many", "element[1].max: expected '*' or a whole number"),
    ("diff-max-number", "profile", (*DIFF, 1, "max"), 1, "element[1].max: expected a string"),
    ("diff-id-list", "profile", (*DIFF, 1, "id"), ["x"], "element[1].id: expected a string"),
    ("diff-binding-string", "profile", (*DIFF, 1, "binding"), "req", "element[1].binding: expected an object"),
    ("diff-binding-no-strength", "profile", (*DIFF, 1, "binding"), {"valueSet": "http://x"}, "binding.strength"),
    ("diff-constraint-obj", "profile", (*DIFF, 1, "constraint"), {"key": "x"}, "constraint: expected a list"),
    ("diff-constraint-no-key", "profile", (*DIFF, 1, "constraint"), [{"expression": "true"}], "constraint[0].key"),
    ("diff-slicing-list", "profile", (*DIFF, 1, "slicing"), [], "element[1].slicing: expected an object"),
    (
        "diff-discriminator-str",
        "profile",
        (*DIFF, 1, "slicing"),
        {"discriminator": ["value"], "rules": "open"},
        "slicing.discriminator: expected a list of objects",
    ),
    ("snap-elements-object", "bp", SNAP, {}, "StructureDefinition.snapshot.element: expected a list"),
    ("snap-no-path", "bp", (*SNAP, 3, "path"), _DELETE, "snapshot.element[3].path: required"),
    ("snap-type-code-number", "bp", (*SNAP, 3, "type"), [{"code": 5}], "snapshot.element[3].type[0].code"),
    ("snap-base-string", "bp", (*SNAP, 3, "base"), "x", "snapshot.element[3].base: expected an object"),
    ("snap-profile-string", "bp", (*SNAP, 3, "type"), [{"code": "x", "profile": "y"}], "type[0].profile"),
    ("snap-orphan", "bp", (*SNAP, 3, "id"), "Observation.nothere.x", "has no parent"),
    ("snap-bad-slice", "bp", (*SNAP, 3, "id"), "Observation.status:nobase:x", "element[3]"),
    ("base-unknown", "profile", ("baseDefinition",), "http://example.org/none", "is not loaded"),
    ("base-number", "profile", ("baseDefinition",), 5, "StructureDefinition.baseDefinition: expected a string"),
    ("base-missing", "profile", ("baseDefinition",), _DELETE, "without a baseDefinition"),
    ("base-self", "profile", ("baseDefinition",), "http://example.org/mutant/profile", "too long (or circular)"),
    ("type-differs", "profile", ("type",), "Patient", "differs from its base"),
    ("type-number", "profile", ("type",), 3, "StructureDefinition.type: expected a string"),
    ("abstract-string", "profile", ("abstract",), "no", "StructureDefinition.abstract: expected true or false"),
    ("path-unknown", "profile", (*DIFF, 1), {"path": "Observation.nothere"}, "element[1]: element Observation.nothere"),
    ("vs-compose-string", "valueset", ("compose",), "x", "ValueSet.compose: expected an object"),
    ("vs-include-str", "valueset", ("compose", "include"), ["x"], "ValueSet.compose.include: expected a list"),
    ("vs-concept-code", "valueset", ("compose", "include", 0, "concept"), [{"code": 1}], "concept[0].code"),
    ("vs-valueset-str", "valueset", ("compose", "include", 0, "valueSet"), "http://x", "include[0].valueSet"),
    ("vs-expansion-list", "valueset", ("expansion",), [], "ValueSet.expansion: expected an object"),
    ("cs-concept-str", "codesystem", ("concept",), "x", "CodeSystem.concept: expected a list of objects"),
    ("cs-concept-nested", "codesystem", ("concept", 0, "concept"), [5], "CodeSystem.concept[0].concept"),
    (
        "cs-property-value",
        "codesystem",
        ("concept", 0, "property"),
        [{"code": "parent", "valueCode": [1]}],
        "valueCode",
    ),
    ("cs-case-string", "codesystem", ("caseSensitive",), "yes", "CodeSystem.caseSensitive"),
]


@pytest.mark.parametrize(("source", "path", "value", "words"), [n[1:] for n in NAMED], ids=[n[0] for n in NAMED])
def test_a_malformed_definition_is_refused_naming_file_and_element(
    tmp_path: Path,
    base_index: DefinitionIndex,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
    path: tuple[Any, ...],
    value: Any,
    words: str,
) -> None:
    data = load(source)
    if path[0] == "differential" and source == "bp":
        data = differential_only(data)
    code, messages = run_validate(tmp_path, base_index, _set(data, path, value), monkeypatch)
    assert code == 2, messages
    assert "my-definition.json" in messages and words in messages, messages


def test_a_self_referencing_content_reference_is_used_or_refused(
    tmp_path: Path, base_index: DefinitionIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = load("bp")
    for e in data["snapshot"]["element"]:
        if e["id"] == "Observation.component":
            e["contentReference"] = "#Observation.component"
    code, _ = run_validate(tmp_path, base_index, data, monkeypatch)
    assert code in (0, 1)
    data = differential_only(data)
    data["differential"]["element"].append(
        {
            "id": "Observation.component.code.text",
            "path": "Observation.component.code.text",
            "contentReference": "#Observation.component.code",
        }
    )
    run_validate(tmp_path, base_index, data, monkeypatch)


def test_two_profiles_based_on_each_other(
    tmp_path: Path, base_index: DefinitionIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = differential_only(load("profile"))
    b = copy.deepcopy(a)
    a["url"], b["url"] = "http://example.org/a", "http://example.org/b"
    a["baseDefinition"], b["baseDefinition"] = b["url"], a["url"]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": a}, {"resource": b}]}
    code, messages = run_validate(tmp_path, base_index, bundle, monkeypatch, profiles=[a["url"]])
    assert code == 2 and "my-definition.json (entry 0)" in messages and "circular" in messages, messages


def test_a_definition_that_cannot_be_built_is_refused_only_when_needed(
    tmp_path: Path, base_index: DefinitionIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R4's own familymemberhistory-genetic lists a slice without its base element: a folder of published
    definitions holding it is usable, until a resource claims that profile."""
    others = json.loads((CORE / "Bundle-profiles-others.json").read_text())
    genetic = next(e["resource"] for e in others["entry"] if e["resource"].get("id") == "familymemberhistory-genetic")
    code, messages = run_validate(tmp_path, base_index, genetic, monkeypatch, profiles=[])
    assert code in (0, 1), messages
    member = {
        "resourceType": "FamilyMemberHistory",
        "meta": {"profile": [genetic["url"]]},
        "status": "completed",
        "patient": {"reference": "Patient/p"},
        "relationship": {"text": "mother"},
    }
    code, messages = run_validate(tmp_path, base_index, genetic, monkeypatch, profiles=[], resource_json=member)
    assert code == 2 and "my-definition.json" in messages and "has no base element" in messages, messages


def test_a_definition_file_with_a_byte_order_mark_is_read(
    tmp_path: Path, base_index: DefinitionIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = differential_only(load("profile"))
    raw = b"\xef\xbb\xbf" + json.dumps(data).encode()  # as Windows tools write UTF-8
    code, messages = run_validate(tmp_path, base_index, data, monkeypatch, raw=raw)
    assert code in (0, 1), messages


def test_a_package_file_with_a_byte_order_mark_is_read_back(tmp_path: Path) -> None:
    """Indexed, and then read again when asked for: both reads go past the mark (the second one did not)."""
    package = tmp_path / "example.bom#1.0.0" / "package"
    package.mkdir(parents=True)
    (package / "package.json").write_text(json.dumps({"name": "example.bom", "version": "1.0.0"}))
    data = load("profile")
    (package / "StructureDefinition-bom.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(data).encode())
    index = DefinitionIndex()
    assert index.add_package(package.parent) == 1
    assert index.get(data["url"]) == data


# --- generated cases: every node of the definitions, changed in each way ------------------------------------


JUNK: list[Any] = ["x", "", 5, -1, 1.5, True, None, [], {}, [1], ["x"], [{}], {"x": 1}]


def _paths(node: Any, prefix: tuple[Any, ...] = (), depth: int = 0) -> Iterator[tuple[Any, ...]]:
    if depth > 6:
        return
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("text", "mapping", "contact", "jurisdiction"):
                continue  # narrative and metadata: the definitions code does not read them
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key), depth + 1)
    elif isinstance(node, list):
        for i, value in enumerate(node[:4]):  # the first few of a list stand for the rest
            yield (*prefix, i)
            yield from _paths(value, (*prefix, i), depth + 1)


def _variants() -> list[tuple[str, bool]]:
    return [(name, snapshot) for name in SOURCES for snapshot in (True, False)]


@st.composite
def mutants(draw: st.DrawFn) -> dict[str, Any]:
    name, keep_snapshot = draw(st.sampled_from(_variants()))
    data = load(name)
    if not keep_snapshot:
        data = differential_only(data)
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(data))
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["delete", "junk", "truncate"]))
        parent: Any = data
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        if action == "delete" and isinstance(parent, dict):
            del parent[last]
        elif action == "truncate" and isinstance(parent[last], list):
            parent[last] = parent[last][: draw(st.integers(0, 1))]
        else:
            parent[last] = copy.deepcopy(draw(st.sampled_from(JUNK)))
    return data


@settings(
    max_examples=int(os.environ.get("CASEBRIDGE_MUTANTS", "120")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(definition=mutants())
def test_mutated_definitions_never_fail_inside(
    tmp_path_factory: pytest.TempPathFactory, base_index: DefinitionIndex, definition: dict[str, Any]
) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        run_validate(tmp_path_factory.mktemp("m"), base_index, definition, monkeypatch)


def test_the_command_exits_2_and_names_the_file(tmp_path: Path) -> None:
    data = differential_only(load("profile"))
    data["differential"]["element"][1]["type"] = "Quantity"
    definition = tmp_path / "my-sd.json"
    definition.write_text(json.dumps(data))
    resource = tmp_path / "obs.json"
    resource.write_text(json.dumps(OBSERVATION))
    result = subprocess.run(
        [sys.executable, "-m", "casebridge", "validate", str(resource), "--definitions", str(definition)],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert (
        f"{definition}: StructureDefinition.differential.element[1].type: expected a list of objects" in result.stdout
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["StructureDefinition", "Questionnaire"])
def test_a_posted_definition_is_validated_as_a_resource(kind: str) -> None:
    """A caller's StructureDefinition (or Questionnaire) is validated as a resource, never loaded as a
    definition: malformed, it gives errors, not a validator failure."""
    validator = Validator(load_index(Settings()))
    base = json.loads(SOURCES["profile"].read_text()) if kind == "StructureDefinition" else {"resourceType": kind}
    for value in JUNK:
        for key in ("differential", "snapshot", "baseDefinition", "item", "type"):
            resource = {**base, key: value}
            issues = validator.validate(resource)
            assert not [i for i in issues if i.code == "exception"], (key, value, issues)
        if kind == "StructureDefinition":
            resource = copy.deepcopy(base)
            resource["differential"]["element"][1] = value
            issues = validator.validate(resource)
            assert not [i for i in issues if i.code == "exception"], (value, issues)
