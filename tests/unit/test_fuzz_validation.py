"""Fuzzing, bounded in time: seeded mutations of every instance of the wide HL7 slice (JSON, and XML through the
XML reader) and of a rotating sample of the pinned packages' resources. No mutation may crash the validator
(raise, or report that it could not finish) and no validation may take 2 s or more.

The mutations are the shapes hostile or broken senders produce: a dropped field, a value of the wrong JSON type,
a null, an empty array or object, odd unicode, a huge array. A seeded ``random.Random`` picks the place in the
resource, so a failure names a case, a kind and a seed that reproduce it (``mutate``). The package sample is
fixed by ``CASEBRIDGE_FUZZ_SEED`` (default 0; change it to rotate) and ``CASEBRIDGE_FUZZ_SAMPLE`` (how many
resources; ``all`` takes every one, which runs for minutes).
"""

from __future__ import annotations

import copy
import os
import random
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, fromstring, tostring

import orjson
import pytest

from casebridge.config import Settings
from casebridge.definitions.packages import DefinitionIndex, PackageError, default_cache_dir, load_lock
from casebridge.definitions.xml import FhirXmlError, XmlReader
from casebridge.tools.conformance import (
    OverlayDefinitions,
    _global_profiles,
    _inside,
    _Plan,
    _plans,
    _profile_url,
    _read_json,
    _Unsupported,
    load_base_index,
    read_manifest,
)
from casebridge.validation.validator import Issue, Validator
from tests.conftest import pinned_packages_missing
from tests.paths import TESTS_DIR

WIDE = TESTS_DIR / "data" / "conformance" / "fhir-test-cases-r4-wide"
KINDS = ("drop", "wrong-type", "null", "empty", "unicode", "huge-array")
LIMIT_SECONDS = 2.0
HUGE = 1000  # items of a huge array of primitives
# Items of a huge array of objects: each one costs its FHIRPath invariants (about 10 ms for a Questionnaire item),
# so a thousand take seconds by design; fifty keep the runs short and still show a cost that grows faster.
HUGE_OBJECTS = 50
# Strings a careless or hostile sender produces: controls, NUL, a lone surrogate's replacement, right-to-left and
# combining marks, astral characters, a non-character, and a long one.
UNICODE = (
    "\u0000",
    "\ufeff\u200b",
    "\u202eevil\u202c",
    "e\u0301\u0301\u0301",
    "\U0001f600\U0001f9ec",
    "\uffff\ufffe",
    "\ufffd",
    "\u00e9" * 5000,
    " ",
    "",
)
# Values of each JSON type, for "wrong-type": one is picked whose type differs from the value it replaces.
TYPED: tuple[Any, ...] = ("x", 1, -1.5, True, False, {}, [], {"a": 1}, ["x"], 10**30)


def _jtype(value: Any) -> str:
    return "bool" if isinstance(value, bool) else type(value).__name__


# --- the mutator -------------------------------------------------------------------------------------------


def _places(node: Any, depth: int = 0) -> Iterator[tuple[Any, Any]]:
    """Every (container, key or index) of a JSON value, depth first."""
    if depth > 64:
        return
    if isinstance(node, dict):
        for key, value in node.items():
            yield node, key
            yield from _places(value, depth + 1)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield node, i
            yield from _places(value, depth + 1)


def mutate(doc: dict[str, Any], kind: str, seed: int) -> dict[str, Any]:
    """A copy of ``doc`` with one mutation of ``kind`` at a place ``seed`` picks (the same seed, the same place)."""
    rng = random.Random(seed)
    out = copy.deepcopy(doc)
    places = list(_places(out))
    if not places:
        return out
    parent, key = rng.choice(places)
    value = parent[key]
    if kind == "drop":
        del parent[key]
    elif kind == "wrong-type":
        parent[key] = rng.choice([t for t in TYPED if _jtype(t) != _jtype(value)])
    elif kind == "null":
        parent[key] = None
    elif kind == "empty":
        parent[key] = rng.choice(([], {}, ""))
    elif kind == "unicode":
        strings = [(p, k) for p, k in places if isinstance(p[k], str)] or [(parent, key)]
        parent, key = rng.choice(strings)
        parent[key] = rng.choice(UNICODE) + (parent[key] if isinstance(parent[key], str) and rng.random() < 0.5 else "")
    elif kind == "huge-array":
        arrays = [(p, k) for p, k in places if isinstance(p[k], list) and p[k]]
        if arrays:
            parent, key = rng.choice(arrays)
            items = parent[key]
            item = items[rng.randrange(len(items))]
            parent[key] = (
                [copy.deepcopy(item) for _ in range(HUGE_OBJECTS)] if isinstance(item, dict) else [item] * HUGE
            )
        else:  # no array: a single value turned into many (a repeated element where one is allowed)
            parent[key] = [copy.deepcopy(value) for _ in range(HUGE_OBJECTS if isinstance(value, dict) else HUGE)]
    else:
        raise ValueError(kind)
    return out


def _seed(*parts: object) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode("utf-8"))


# --- running and judging -----------------------------------------------------------------------------------


@dataclass
class Findings:
    crashes: list[str] = field(default_factory=list)
    slow: list[str] = field(default_factory=list)
    slowest: tuple[float, str] = (0.0, "")
    runs: int = 0

    def check(self, validator: Validator, instance: Any, profiles: list[str], label: str) -> None:
        started = time.perf_counter()
        try:
            issues = validator.validate(instance, profiles)
        except Exception as exc:  # noqa: BLE001 - a raise is the finding
            self.crashes.append(f"{label}: raised {type(exc).__name__}: {exc}")
            issues = []
        seconds = time.perf_counter() - started
        self.runs += 1
        self.crashes.extend(f"{label}: {i.message}" for i in issues if is_crash(i))
        if seconds >= LIMIT_SECONDS:
            self.slow.append(f"{label}: {seconds:.2f} s")
        if seconds > self.slowest[0]:
            self.slowest = (seconds, label)

    def assert_clean(self) -> None:
        print(f"\n{self.runs} validations; slowest {self.slowest[0]:.3f} s: {self.slowest[1]}")
        assert not self.crashes, "\n".join(self.crashes[:40])
        assert not self.slow, "\n".join(self.slow[:40])


def is_crash(issue: Issue) -> bool:
    """The validator's own failure: a defect of ours turned into an issue (validator.validate's last resort)."""
    return issue.code == "exception" or "could not finish" in issue.message


@pytest.fixture(scope="module")
def base() -> DefinitionIndex:
    try:
        return load_base_index(Settings())
    except PackageError as exc:
        pinned_packages_missing(f"the pinned FHIR packages are not installed: {exc}")


# --- the wide slice ----------------------------------------------------------------------------------------


@dataclass
class _Step:
    name: str
    instance: dict[str, Any]
    validator: Validator
    profiles: list[str]
    source: bytes | None  # the XML text of an XML instance
    xml: XmlReader


def _wide_steps(base: DefinitionIndex) -> Iterator[_Step]:
    """Each runnable step of the wide slice, its definitions loaded as the conformance harness loads them."""
    for i, entry in enumerate(read_manifest(WIDE)):
        name = entry.get("name") or f"case-{i + 1}"
        file = entry.get("file")
        for step, plan in _plans(entry):
            if not isinstance(plan, _Plan) or not isinstance(file, str):
                continue
            overlay = OverlayDefinitions(base)
            xml = XmlReader(overlay)
            try:
                instance = _read_json(WIDE, file, "instance", xml)
                for definition in dict.fromkeys(plan.definitions):
                    overlay.add_path(_inside(WIDE, definition))
                profiles = [*plan.urls, *(_profile_url(WIDE, p, xml) for p in plan.profiles)]
            except (_Unsupported, PackageError):
                continue
            if not isinstance(instance, dict):
                continue
            options = replace(plan.options, global_profiles=_global_profiles(WIDE, plan.definitions))
            source = _inside(WIDE, file).read_bytes() if file.lower().endswith(".xml") else None
            yield _Step(f"{name}/{step}", instance, Validator(overlay, options=options), profiles, source, xml)


def test_wide_slice_mutations_never_crash_nor_run_long(base: DefinitionIndex) -> None:
    findings = Findings()
    steps = 0
    for step in _wide_steps(base):
        steps += 1
        findings.check(step.validator, step.instance, step.profiles, f"{step.name} unmutated")
        for kind in KINDS:
            for n in range(1 if kind == "huge-array" else 2):  # the costly kind once, to stay within the time box
                seed = _seed(step.name, kind, n)
                label = f"{step.name} {kind} seed={seed}"
                findings.check(step.validator, mutate(step.instance, kind, seed), step.profiles, label)
    assert steps > 250  # the slice's 274 steps, but those whose files are not there
    findings.assert_clean()


# --- XML: the reader meets mutated XML ---------------------------------------------------------------------


def mutate_xml(data: bytes, kind: str, seed: int) -> bytes:
    """FHIR XML with one mutation at a place ``seed`` picks: an element dropped, emptied, given a wrong or odd
    value, or repeated many times."""
    rng = random.Random(seed)
    root = fromstring(data)
    parents = [(p, c) for p in root.iter() for c in list(p)]
    if not parents:
        return data
    parent, child = rng.choice(parents)
    if kind == "drop":
        parent.remove(child)
    elif kind in ("wrong-type", "null", "empty", "unicode"):
        valued = [(p, c) for p, c in parents if "value" in c.attrib] or [(parent, child)]
        parent, child = rng.choice(valued)
        if kind == "wrong-type":
            child.set("value", rng.choice(("x", "1.5e999", "-0", "true", "99999999999999999999999", "2020-13-45")))
        elif kind == "null":
            child.attrib.pop("value", None)
        elif kind == "empty":
            child.set("value", "")
            for grandchild in list(child):
                child.remove(grandchild)
        else:
            child.set("value", rng.choice(UNICODE[1:]))  # XML cannot carry NUL
    elif kind == "huge-array":
        at = list(parent).index(child)
        for _ in range(HUGE_OBJECTS if len(child) else HUGE):
            parent.insert(at, copy.deepcopy(child))
    return tostring(root)


def _xml_read(reader: XmlReader, data: bytes, label: str, findings: Findings) -> dict[str, Any] | None:
    started = time.perf_counter()
    try:
        return reader.read(data, label)
    except FhirXmlError:
        return None  # refused with a reason: what the reader is for
    except Exception as exc:  # noqa: BLE001 - anything else is a crash of the reader
        findings.crashes.append(f"{label}: the XML reader raised {type(exc).__name__}: {exc}")
        return None
    finally:
        if time.perf_counter() - started >= LIMIT_SECONDS:
            findings.slow.append(f"{label}: reading took {time.perf_counter() - started:.2f} s")


def test_wide_slice_xml_mutations_are_read_or_refused(base: DefinitionIndex) -> None:
    findings = Findings()
    xml_steps = 0
    for step in _wide_steps(base):
        if step.source is None or not step.name.endswith("/base"):
            continue
        xml_steps += 1
        for kind in KINDS:
            seed = _seed(step.name, "xml", kind)
            label = f"{step.name} xml {kind} seed={seed}"
            read = _xml_read(step.xml, mutate_xml(step.source, kind, seed), label, findings)
            if read is not None:
                findings.check(step.validator, read, step.profiles, label)
    assert xml_steps > 50
    findings.assert_clean()


# --- the pinned packages -----------------------------------------------------------------------------------


def _package_files() -> list[Path]:
    cache = Settings().fhir_package_cache or default_cache_dir()
    files: list[Path] = []
    for spec in load_lock(Settings().fhir_packages_lock):
        folder = cache / spec.folder_name / "package"
        files.extend(p for p in sorted(folder.glob("*.json")) if p.name not in ("package.json", ".index.json"))
    return files


# Resources above this size are left to the full run (CASEBRIDGE_FUZZ_SAMPLE=all): the core's definition Bundles
# (megabytes of StructureDefinitions) take seconds to validate unmutated, a cost of their FHIRPath invariants.
SAMPLE_MAX_BYTES = 64_000


def test_package_resources_mutations_never_crash_nor_run_long(base: DefinitionIndex) -> None:
    files = _package_files()
    if not files:
        pinned_packages_missing("no resource found in the pinned FHIR packages")
    seed = int(os.environ.get("CASEBRIDGE_FUZZ_SEED", "0"))
    size = os.environ.get("CASEBRIDGE_FUZZ_SAMPLE", "500")
    rng = random.Random(seed)
    if size == "all":
        sample = files
    else:
        small = [f for f in files if f.stat().st_size <= SAMPLE_MAX_BYTES]
        sample = rng.sample(small, min(int(size), len(small)))
    validator = Validator(base)
    findings = Findings()
    for i, path in enumerate(sample):
        try:
            doc = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError:
            continue
        if not isinstance(doc, dict):
            continue
        kind = KINDS[(i + seed) % len(KINDS)]  # each resource once, the kinds in rotation
        mutation_seed = _seed(path.parent.parent.name, path.name, kind, seed)
        findings.check(validator, mutate(doc, kind, mutation_seed), [], f"{path.name} {kind} seed={mutation_seed}")
    findings.assert_clean()


# --- the mutator itself ------------------------------------------------------------------------------------


def test_mutations_are_deterministic_and_change_the_resource() -> None:
    doc = {"resourceType": "Patient", "name": [{"given": ["A", "B"], "family": "C"}], "active": True}
    for kind in KINDS:
        assert mutate(doc, kind, 7) == mutate(doc, kind, 7)
        assert mutate(doc, kind, 7) != doc
    assert doc == {"resourceType": "Patient", "name": [{"given": ["A", "B"], "family": "C"}], "active": True}
    assert any(len(v) in (HUGE, HUGE_OBJECTS) for v in _lists(mutate(doc, "huge-array", 1)))


def _lists(node: Any) -> Iterator[list[Any]]:
    for parent, key in _places(node):
        if isinstance(parent[key], list):
            yield parent[key]


def test_xml_mutation_keeps_well_formed_xml() -> None:
    data = b'<Patient xmlns="http://hl7.org/fhir"><active value="true"/><name><family value="C"/></name></Patient>'
    for kind in KINDS:
        out = mutate_xml(data, kind, 3)
        assert isinstance(fromstring(out), Element)
        assert out == mutate_xml(data, kind, 3)


# --- regressions: the minimal inputs of crashes the fuzzing found ------------------------------------------


def _never_crashes(validator: Validator, resource: dict[str, Any], profiles: list[str] | None = None) -> list[Issue]:
    issues = validator.validate(resource, profiles or [])
    assert not [i for i in issues if is_crash(i)], issues
    return issues


def test_reference_to_a_target_whose_resource_type_is_not_a_string(base: DefinitionIndex) -> None:
    validator = Validator(base)
    contained = {
        "resourceType": "Patient",
        "contained": [{"resourceType": {}, "id": "x"}],
        "generalPractitioner": [{"reference": "#x"}],
    }
    bundled = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "fullUrl": "http://example.org/fhir/Patient/1",
                "resource": {
                    "resourceType": "Patient",
                    "id": "1",
                    "generalPractitioner": [{"reference": "http://example.org/fhir/Practitioner/2"}],
                },
            },
            {"fullUrl": "http://example.org/fhir/Practitioner/2", "resource": {"resourceType": ["Practitioner"]}},
        ],
    }
    for resource in (contained, bundled):
        issues = _never_crashes(validator, resource)
        # The malformed target is reported as such, once, not as a failure of the reference.
        assert [i.message for i in issues if i.severity == "error"][:1] == ["Unable to find resourceType property"]
    # must not fire: a well-formed contained target is still checked against the allowed types
    ok = {**contained, "contained": [{"resourceType": "Organization", "id": "x", "name": "O"}]}
    assert not [i for i in _never_crashes(validator, ok) if i.severity == "error"]
    wrong = {**contained, "contained": [{"resourceType": "Device", "id": "x"}]}
    assert any("Invalid Resource target type" in i.message for i in _never_crashes(validator, wrong))


def test_quantity_limit_with_a_system_that_is_not_a_string(base: DefinitionIndex) -> None:
    overlay = OverlayDefinitions(base)
    url = "http://example.org/fhir/StructureDefinition/obs-min-quantity"
    overlay.loose.add_resource(
        {
            "resourceType": "StructureDefinition",
            "url": url,
            "name": "ObsMinQuantity",
            "status": "active",
            "kind": "resource",
            "abstract": False,
            "type": "Observation",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
            "derivation": "constraint",
            "differential": {
                "element": [
                    {
                        "id": "Observation.value[x]",
                        "path": "Observation.value[x]",
                        "type": [{"code": "Quantity"}],
                        "minValueQuantity": {"value": 5, "system": "http://unitsofmeasure.org", "code": "mg"},
                    }
                ]
            },
        },
        "test",
    )
    validator = Validator(overlay)
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    for system in ({}, ["http://unitsofmeasure.org"], 5):
        quantity = {"value": 10, "system": system, "code": "mg"}
        _never_crashes(validator, {**obs, "valueQuantity": quantity}, [url])
    # must not fire / must still fire: the limit is checked as before for well-formed quantities
    low = {"value": 1, "system": "http://unitsofmeasure.org", "code": "mg"}
    high = {**low, "value": 10}
    assert any(
        "less than the specified minValue" in i.message
        for i in _never_crashes(validator, {**obs, "valueQuantity": low}, [url])
    )
    assert not [i for i in _never_crashes(validator, {**obs, "valueQuantity": high}, [url]) if i.severity == "error"]


_QUESTIONNAIRE = {
    "resourceType": "Questionnaire",
    "id": "q",
    "url": "http://example.org/fhir/Questionnaire/q",
    "status": "active",
    "item": [{"linkId": "1", "type": "string"}],
}


def test_questionnaire_response_status_that_is_not_a_string(base: DefinitionIndex) -> None:
    response = {
        "resourceType": "QuestionnaireResponse",
        "contained": [_QUESTIONNAIRE],
        "questionnaire": "#q",
        "status": {},
    }
    _never_crashes(Validator(base), response)


def test_quantity_answer_with_a_system_that_is_not_a_string(base: DefinitionIndex) -> None:
    unit_value_set = "http://hl7.org/fhir/StructureDefinition/questionnaire-unitValueSet"
    questionnaire = {
        **_QUESTIONNAIRE,
        "item": [
            {
                "linkId": "1",
                "type": "quantity",
                "extension": [{"url": unit_value_set, "valueCanonical": "http://hl7.org/fhir/ValueSet/iso3166-1-2"}],
            }
        ],
    }
    answer = {"valueQuantity": {"value": 10, "system": {}, "code": "BD"}}
    response = {
        "resourceType": "QuestionnaireResponse",
        "contained": [questionnaire],
        "questionnaire": "#q",
        "status": "completed",
        "item": [{"linkId": "1", "answer": [answer]}],
    }
    _never_crashes(Validator(base), response)
