"""A Bundle as a whole: the index of its entries that references resolve against, and the rules the HL7
validator applies to the Bundle itself (unique fullUrls, fullUrls that match their resources, link relations).

Apart from the walk because these look at all the entries together, once per Bundle, not at one value.
"""

from __future__ import annotations

import re
from typing import Any

from casebridge.validation.issues import Run, as_list, as_obj

_NO_FULL_URL = ("transaction", "batch", "transaction-response", "batch-response")


def index_bundle(bundle: dict[str, Any], run: Run, expr: str) -> None:
    """Indexes the entries that references resolve against (by fullUrl and Type/id); duplicate fullUrls are errors."""
    index: dict[str, dict[str, Any]] = {}
    full_urls: dict[str, int] = {}
    for i, entry in enumerate(as_list(bundle.get("entry"))):
        if not isinstance(entry, dict):
            continue
        resource = entry.get("resource")
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str):
            if full_url in full_urls and isinstance(resource, dict):
                other = as_obj(bundle["entry"][full_urls[full_url]].get("resource"))
                if as_obj(other.get("meta")).get("versionId") == as_obj(resource.get("meta")).get("versionId"):
                    run.add(
                        "error",
                        "invalid",
                        f"Duplicate fullUrl '{full_url}' in the bundle (entries {full_urls[full_url]} and {i})",
                        f"{expr}.entry[{i}]",
                    )
            full_urls.setdefault(full_url, i)
            if isinstance(resource, dict):
                index[full_url] = resource
        if (
            isinstance(resource, dict)
            and isinstance(resource.get("resourceType"), str)
            and isinstance(resource.get("id"), str)
        ):
            key = f"{resource['resourceType']}/{resource['id']}"
            index.setdefault(key, resource)
            run.by_type_id.setdefault(key, []).append(resource)
    run.bundle_index = index
    bundle_type = bundle.get("type")
    run.bundle_type = bundle_type if isinstance(bundle_type, str) else ""


def bundle_rules(bundle: dict[str, Any], run: Run, expr: str) -> None:
    """The Bundle's own rules: link relations that occur once, fullUrls that are absolute and match their resource."""
    relations: set[object] = set()
    for i, link in enumerate(as_list(bundle.get("link"))):
        relation = link.get("relation") if isinstance(link, dict) else None
        if relation in ("self", "first", "previous", "next", "last") and relation in relations:
            message = f"The link relationship type '{relation}' can only occur once"
            run.add("error", "invalid", message, f"{expr}.link[{i}]")
        relations.add(relation)
    for i, entry in enumerate(as_list(bundle.get("entry"))):
        if not isinstance(entry, dict):
            continue
        full_url = entry.get("fullUrl")
        resource = as_obj(entry.get("resource"))
        named = (
            re.match(r"^https?://.+/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})$", full_url or "")
            if isinstance(full_url, str)
            else None
        )
        if named and resource.get("resourceType") and resource.get("id") is None:
            # A RESTful fullUrl is the resource's identity on a server: it says what the id is (bundle.html).
            message = f"The fullUrl '{full_url}' looks like a RESTful server URL, but the resource has no id"
            run.add("error", "invalid", message, f"{expr}.entry[{i}]")
        if named and isinstance(resource.get("id"), str) and resource.get("resourceType"):
            if (named.group(1), named.group(2)) != (resource["resourceType"], resource["id"]):
                message = (
                    f"The fullUrl '{full_url}' does not match the resource {resource['resourceType']}/{resource['id']}"
                )
                run.add("error", "invalid", message, f"{expr}.entry[{i}]")
        if full_url is None and resource and bundle.get("type") not in _NO_FULL_URL:
            # Bundle.entry.fullUrl: "except for transactions and batches, each entry in a Bundle must have a
            # fullUrl"; their responses carry outcomes rather than identified resources.
            message = (
                "Except for transactions and batches, each entry in a Bundle must have a fullUrl which is the "
                "identity of the resource in the entry"
            )
            run.add("error", "invalid", message, f"{expr}.entry[{i}]")
        # Any absolute URI (a scheme, then a colon) will do; a relative one will not.
        if isinstance(full_url, str) and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", full_url):
            run.add("error", "invalid", f"The fullUrl must be an absolute URL (not '{full_url}')", f"{expr}.entry[{i}]")
