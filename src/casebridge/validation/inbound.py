"""The profiles Bundles posted by integrators must meet, by resource type: a data file integrators edit
(``mappings/inbound-profiles.yaml``), checked when loaded (every profile must be known to the validator)
with errors that name the file and line."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from casebridge.errors import MappingError
from casebridge.validation.validator import Validator
from casebridge.yamlfile import compose, line_of, mapping_items, scalar

_TYPE = re.compile(r"[A-Z][A-Za-z]+")


def load_inbound_profiles(path: Path, validator: Validator, *, root: Path | None = None) -> dict[str, list[str]]:
    file = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(f"cannot read: {exc.strerror}", file=file) from exc
    node = compose(text, file)
    profiles: dict[str, list[str]] = {}
    for resource_type, value, line in mapping_items(node, file):
        if not _TYPE.fullmatch(resource_type) or validator.type_tree(resource_type) is None:
            raise MappingError(f"{resource_type!r} is not a FHIR R4 resource type", file=file, line=line)
        if not isinstance(value, yaml.SequenceNode):
            raise MappingError("expected a list of profile URLs", file=file, line=line_of(value))
        urls = []
        for item in value.value:
            url = scalar(item) if isinstance(item, yaml.ScalarNode) else None
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise MappingError("expected a profile's canonical URL", file=file, line=line_of(item))
            tree = validator.tree(url)
            if tree is None:
                raise MappingError(
                    f"profile {url} is not loaded (not in the FHIR packages)", file=file, line=line_of(item)
                )
            urls.append(url)
        profiles[resource_type] = urls
    return profiles


def with_inbound_profiles(bundle: Mapping[str, Any], profiles: Mapping[str, list[str]]) -> dict[str, Any]:
    """A copy of the Bundle whose entries, and the resources they contain, also claim the configured profiles,
    so validation applies them (a Patient does not escape the Patient profile by being contained)."""
    out = copy.deepcopy(dict(bundle))
    entries = out.get("entry")
    for entry in entries if isinstance(entries, list) else ():  # not an array: the validator says so
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            continue
        _claim(resource, profiles)
        contained = resource.get("contained")
        for inner in contained if isinstance(contained, list) else ():
            if isinstance(inner, dict):
                _claim(inner, profiles)
    return out


def _claim(resource: dict[str, Any], profiles: Mapping[str, list[str]]) -> None:
    wanted = profiles.get(str(resource.get("resourceType")))
    if not wanted:
        return
    meta = resource.setdefault("meta", {})
    if not isinstance(meta, dict):
        return
    existing = meta.get("profile", [])
    if not isinstance(existing, list):
        return  # malformed: left as it is, so the validator reports it (replacing it would hide it)
    claimed: list[Any] = existing
    meta["profile"] = [*claimed, *(url for url in wanted if url not in claimed)]
