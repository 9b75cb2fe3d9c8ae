"""Profiles for tests: a StructureDefinition that constrains a core type by a differential (the validator builds
its snapshot), as the profile, slicing and cardinality tests write them."""

from __future__ import annotations

from typing import Any

CORE = "http://hl7.org/fhir/StructureDefinition"


def profile(url: str, rtype: str, elements: list[dict[str, Any]]) -> dict[str, Any]:
    """A draft profile of the core ``rtype``, version 1.0.0, named after the last part of its URL."""
    return {
        "resourceType": "StructureDefinition",
        "url": url,
        "version": "1.0.0",
        "name": url.rsplit("/", 1)[-1].replace("-", ""),
        "status": "draft",
        "fhirVersion": "4.0.1",
        "kind": "resource",
        "abstract": False,
        "type": rtype,
        "baseDefinition": f"{CORE}/{rtype}",
        "derivation": "constraint",
        "differential": {"element": elements},
    }


def element(path: str, **rules: Any) -> dict[str, Any]:
    """A differential element: its id is its path."""
    return {"id": path, "path": path, **rules}
