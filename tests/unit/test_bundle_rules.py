"""Rule checks over the output of every fixture case.

Each rule holds for any well-formed conversion, so each runs over every example case (src/casebridge/data/cases/)
and every case transcribed from a MACCROBAT report (fixtures/cases/).
"""

from __future__ import annotations

import ast
import copy
import functools
import html
import re
from collections.abc import Iterator
from typing import Any
from xml.etree import ElementTree

import pytest
import yaml
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from casebridge.mapping.engine import MappingSet
from casebridge.mapping.narrative import _label
from tests.conftest import ALL_CASE_FILES, CASE_FILES, CASE_PATHS, FIXTURE_FILES, RECORDED, load_case
from tests.paths import DATA_DIR, PROJECT_ROOT

CASES = [p.name for p in ALL_CASE_FILES]


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}" if path else k)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


def test_there_are_several_fixture_cases() -> None:
    assert len(CASE_FILES) >= 3, "the seed and at least two cases of other shapes"
    assert len(FIXTURE_FILES) >= 16, "the cases transcribed from MACCROBAT reports"


@pytest.mark.parametrize("case", CASES)
def test_parses_with_r4b_models(all_bundles: dict[str, Any], case: str) -> None:
    bundle = all_bundles[case]
    Bundle.model_validate(bundle)
    for entry in bundle["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


@pytest.mark.parametrize("case", CASES)
def test_ids_are_unique_and_consistent(all_bundles: dict[str, Any], case: str) -> None:
    entries = all_bundles[case]["entry"]
    ids = [e["resource"]["id"] for e in entries]
    assert len(ids) == len(set(ids))
    for e in entries:
        r = e["resource"]
        assert e["fullUrl"] == f"urn:uuid:{r['id']}"
        assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", r["id"])


@pytest.mark.parametrize("case", CASES)
def test_requests_are_idempotent(all_bundles: dict[str, Any], case: str) -> None:
    for e in all_bundles[case]["entry"]:
        r, req = e["resource"], e["request"]
        if req["method"] == "PUT":
            assert req["url"] == f"{r['resourceType']}/{r['id']}"
        else:
            assert req["method"] == "POST" and req["ifNoneExist"].startswith("identifier=")


@pytest.mark.parametrize("case", CASES)
def test_every_reference_resolves_inside_the_bundle(all_bundles: dict[str, Any], case: str) -> None:
    entries = all_bundles[case]["entry"]
    full_urls = {e["fullUrl"] for e in entries}
    seen = 0
    for e in entries:
        for path, node in walk(e["resource"]):
            if path.endswith("reference") and isinstance(node, str):
                seen += 1
                assert node in full_urls, f"{e['resource']['resourceType']}.{path} -> {node} does not resolve"
    assert seen > len(entries)  # every resource but the Patient references something


@pytest.mark.parametrize("case", CASES)
def test_every_resource_is_reachable_from_provenance(all_bundles: dict[str, Any], case: str) -> None:
    entries = all_bundles[case]["entry"]
    provenance = [e["resource"] for e in entries if e["resource"]["resourceType"] == "Provenance"]
    assert len(provenance) == 1
    targets = {t["reference"] for t in provenance[0]["target"]}
    source = [e for e in entries if e["resource"]["resourceType"] == "DocumentReference"]
    others = {e["fullUrl"] for e in entries} - {e["fullUrl"] for e in source} - {f"urn:uuid:{provenance[0]['id']}"}
    assert targets == others
    assert provenance[0]["entity"][0]["what"]["reference"] == source[0]["fullUrl"]


@pytest.mark.parametrize("case", CASES)
def test_no_empty_elements(all_bundles: dict[str, Any], case: str) -> None:
    for path, node in walk(all_bundles[case]):
        assert node is not None, path
        assert node not in ("", [], {}), path
        if isinstance(node, str):
            assert node.strip() == node and node, f"{path}: {node!r}"


@pytest.mark.parametrize("case", CASES)
def test_every_component_has_a_value(all_bundles: dict[str, Any], case: str) -> None:
    """A component without value[x] or dataAbsentReason says nothing (FHIR allows it; casebridge never makes one)."""
    for entry in all_bundles[case]["entry"]:
        for i, component in enumerate(entry["resource"].get("component", [])):
            stated = [k for k in component if k.startswith("value") or k == "dataAbsentReason"]
            assert stated, f"{entry['fullUrl']} component[{i}] ({component['code']}) has no value"


@pytest.mark.parametrize("case", CASES)
def test_every_resource_has_a_generated_narrative(all_bundles: dict[str, Any], case: str) -> None:
    for e in all_bundles[case]["entry"]:
        text = e["resource"]["text"]
        assert text["status"] == "generated"
        assert text["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml">')
        assert text["div"].endswith("</div>")
        assert "<table>" in text["div"]
        ElementTree.fromstring(text["div"])  # well-formed XHTML


@pytest.mark.parametrize("case", CASES)
def test_conversion_is_deterministic(mappings: MappingSet, all_bundles: dict[str, Any], case: str) -> None:
    again = mappings.convert(load_case(CASE_PATHS[case]), recorded=RECORDED)
    assert again == all_bundles[case]


# --- every value traceable to the input ---------------------------------------------------------------------

# Paths whose values casebridge generates (ids, references, UIDs, the conversion time) rather than
# takes from the case: they are checked by the rules above, not traced.
GENERATED = re.compile(r"(^|\.)(id|fullUrl|reference|uid|recorded)$|^request\.|^text\.status$")


@functools.cache  # the same for every case: parsed once per session, not once per case
def _template_literals() -> frozenset[str]:
    """Every literal text the mapping templates and the domain's derived views can contribute."""
    out: set[str] = set()
    for path in (DATA_DIR / "mappings").rglob("*.yaml"):
        for node in _scalars(yaml.compose(path.read_text())):
            out.update(p for p in re.split(r"\{\{.*?\}\}", node) if p.strip())
            out.update(re.findall(r"'([^']+)'", node))
    # The domain's derived views and the narrative generator also write words of their own.
    for module in ("domain/case.py", "domain/case_v1.py", "mapping/narrative.py"):
        tree = ast.parse((PROJECT_ROOT / "src" / "casebridge" / module).read_text())
        out.update(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str))
    return frozenset(out)


def _scalars(node: yaml.Node) -> Iterator[str]:
    if isinstance(node, yaml.ScalarNode):
        yield node.value
    elif isinstance(node, yaml.SequenceNode):
        for n in node.value:
            yield from _scalars(n)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            yield from _scalars(v)


def _input_values(doc: Any) -> tuple[set[str], set[float]]:
    strings: set[str] = set()
    numbers: set[float] = set()
    for _, node in walk(doc):
        if isinstance(node, bool):
            continue
        if isinstance(node, (int, float)):
            numbers.add(float(node))
            strings.add(str(int(node)) if float(node).is_integer() else str(node))
        elif isinstance(node, str):
            strings.add(node)
        elif hasattr(node, "isoformat"):
            strings.add(node.isoformat())
    return strings, numbers


@functools.cache  # most fragments (template and table texts) recur in every case
def _fragment(f: str) -> tuple[str, re.Pattern[str]]:
    pattern = (
        re.compile(r"(?<![\w])" + re.escape(f) + r"(?![\w])", re.I)
        if f[:1].isalnum() and f[-1:].isalnum()
        else re.compile(re.escape(f), re.I)
    )
    return _fold(f), pattern


def _fold(text: str) -> str:
    # casefold equates every pair of characters re.I does, but for the Turkish i's (re.I: i = ı = İ).
    return text.casefold().replace("i\u0307", "i").replace("\u0131", "i")


def _untraceable(text: str, fragments: list[tuple[str, re.Pattern[str]]]) -> str:
    # A fragment not in the folded text cannot match it, so the substring test only skips substitutions that
    # would change nothing: most of a thousand fragments, for every value of the Bundle.
    folded = _fold(text)
    for needle, pattern in fragments:
        if needle in folded:
            text = pattern.sub(" ", text)
            folded = _fold(text)
    return re.sub(r"[\W_]+", "", text)


def untraceable_values(mappings: MappingSet, bundle: dict[str, Any], raw: dict[str, Any]) -> list[str]:
    """Output values that come neither from the case, nor from a code table, nor from a template's text."""
    strings, numbers = _input_values(raw)
    table_values = {
        v
        for t in mappings.tables.values()
        for rows in t.rows.values()
        for r in rows
        for v in (r.system, r.code, r.display)
    }
    element_labels = {
        _label(p.rsplit(".", 1)[-1].split("[")[0]) for e in bundle["entry"] for p, _ in walk(e["resource"]) if p
    }
    generated = {
        str(node)
        for e in bundle["entry"]
        for p, node in walk(e["resource"])
        if isinstance(node, str)
        and (GENERATED.search(p) or (p.startswith("identifier") and node.startswith(f"{raw['case_id']}/")))
    }
    pool = strings | table_values | _template_literals() | element_labels | generated | {mappings.identifier_system}
    fragments = [_fragment(f) for f in sorted((f for f in pool if f and f.strip()), key=len, reverse=True)]
    problems = []
    for e in bundle["entry"]:
        r = e["resource"]
        for path, node in walk(r):
            if GENERATED.search(path) or isinstance(node, (dict, list, bool)):
                continue
            if path.startswith("identifier") and isinstance(node, str) and node.startswith(f"{raw['case_id']}/"):
                continue  # the identifier seed: case id, role, key
            if isinstance(node, (int, float)):
                if float(node) not in numbers:
                    problems.append(f"{r['resourceType']}.{path}: number {node} is not in the case")
                continue
            text = html.unescape(re.sub(r"<[^>]+>", " ", node)) if path == "text.div" else node
            left = _untraceable(text, fragments)
            if left:
                problems.append(f"{r['resourceType']}.{path}: {left!r} of {node[:120]!r}")
    return problems


@pytest.mark.parametrize("case", CASES)
def test_every_value_is_traceable_to_the_input(mappings: MappingSet, all_bundles: dict[str, Any], case: str) -> None:
    raw = yaml.safe_load(CASE_PATHS[case].read_text())
    problems = untraceable_values(mappings, all_bundles[case], raw)
    assert not problems, "\n".join(problems)


def test_the_traceability_check_catches_invented_values(mappings: MappingSet, bundles: dict[str, Any]) -> None:
    """The rule must be able to fail: an invented calcium value and an invented name are both caught."""
    seed = "dystrophic-calcification-right-forearm.yaml"
    bundle = copy.deepcopy(bundles[seed])
    for e in bundle["entry"]:
        r = e["resource"]
        if r["resourceType"] == "Observation" and "dataAbsentReason" in r:
            r["valueQuantity"] = {"value": 9.4, "unit": "mg/dL"}
        if r["resourceType"] == "Patient":
            r["name"] = [{"family": "Doe"}]
    raw = yaml.safe_load((DATA_DIR / "cases" / seed).read_text())
    problems = "\n".join(untraceable_values(mappings, bundle, raw))
    assert "number 9.4" in problems
    assert "Doe" in problems
