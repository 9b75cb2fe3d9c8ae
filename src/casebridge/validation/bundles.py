"""A Bundle as a whole: the index of its entries that references resolve against, and the rules the HL7
validator applies to the Bundle itself (unique fullUrls, link relations, fullUrls that are absolute and, when
RESTful, end with their resource's type and id; the validator reports these fullUrl rules at ``entry[0]``
whichever entry breaks them).

Apart from the walk because these look at all the entries together, once per Bundle, not at one value.
"""

from __future__ import annotations

import re
from typing import Any

from casebridge.validation.issues import Run, as_list, as_obj

_NO_FULL_URL = ("transaction", "batch", "transaction-response", "batch-response")
_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# A RESTful server URL as the HL7 validator knows one: http(s)://base/Type/id, maybe /_history/version.
_RESTFUL = re.compile(
    r"^https?://(?:[A-Za-z0-9\\.:%$_\-]*/)*[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?$"
)


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
                run.by_full_url.setdefault(full_url, []).append(resource)
                run.full_urls[id(resource)] = full_url
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
        # The HL7 validator reports its fullUrl checks at the first entry, whichever entry it is.
        where = f"{expr}.entry[0]"
        if isinstance(full_url, str) and full_url:
            if not _ABSOLUTE.match(full_url):
                # Any absolute URI (a scheme, then a colon) will do; a relative one will not.
                run.add("error", "invalid", f"The fullUrl must be an absolute URL (not '{full_url}')", where)
            elif isinstance(resource.get("resourceType"), str) and _RESTFUL.match(full_url):
                # A RESTful fullUrl is the resource's identity on a server: it says what the id is (bundle.html).
                rid = resource.get("id")
                if rid is None:
                    message = f"The fullUrl '{full_url}' looks like a RESTful server URL, but the resource has no id"
                    run.add("error", "invalid", message, where)
                elif not full_url.endswith(f"/{resource['resourceType']}/{rid}"):
                    message = (
                        f"The fullUrl '{full_url}' looks like a RESTful server URL, so it must end with the correct "
                        f"type and id (/{resource['resourceType']}/{rid})"
                    )
                    run.add("error", "invalid", message, where)
        if full_url is None and resource and bundle.get("type") not in _NO_FULL_URL:
            # Bundle.entry.fullUrl: "except for transactions and batches, each entry in a Bundle must have a
            # fullUrl"; their responses carry outcomes rather than identified resources.
            message = (
                "Except for transactions and batches, each entry in a Bundle must have a fullUrl which is the "
                "identity of the resource in the entry"
            )
            run.add("error", "invalid", message, f"{expr}.entry[{i}]")
