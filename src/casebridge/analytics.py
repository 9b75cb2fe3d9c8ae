"""Views over a FHIR server: the resources of a view's type by FHIR search, every page, through the project's FHIR
client (its auth, timeouts, retries and next-link checks).

Rules:
- One search per view, ``GET [base]/<resource>?_count=<page size>&_sort=_id``, streamed page by page (memory
  holds one page); ``since`` is ``_lastUpdated=ge<since>``. Only ``match`` entries are read; a resource seen
  twice (a server may repeat one across pages while data changes) is read once (the ids seen are kept: the only
  memory that grows with the number of resources).
- ``transaction_time``: the earliest ``Bundle.meta.lastUpdated`` of the first pages of the searches (the
  server's clock when each search began), so that a later ``since`` misses nothing; None when the server gives
  none.
- ``position()``: the URL of the last resource given (``[base]/Observation/123``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from casebridge.config import Settings
from casebridge.fhir.client import FhirClient
from casebridge.fhir.search import Search
from casebridge.views import parse_instant

DEFAULT_PAGE_SIZE = 500


class ServerSource:
    """A FHIR server as the source of a view run. Use as a context manager (it holds a client)."""

    def __init__(self, settings: Settings, base_url: str, *, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        self.name = base_url
        self.page_size = page_size
        self._client = FhirClient.from_settings(settings, base_url=base_url)
        self._position = ""
        self._times: list[str] = []

    def __enter__(self) -> ServerSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def query(self, resource_type: str, since: str | None) -> Search:
        query = Search(resource_type).count(self.page_size).sort("_id")
        return query.since(since) if since else query

    def resources(self, resource_type: str, since: str | None) -> Iterator[dict[str, Any]]:
        seen: set[str] = set()
        first = True
        for page in self._client.pages(self.query(resource_type, since)):
            if first:
                first = False
                meta = page.get("meta")
                updated = meta.get("lastUpdated") if isinstance(meta, dict) else None
                if isinstance(updated, str):
                    self._times.append(updated)
            entries = page.get("entry")
            for entry in entries if isinstance(entries, list) else []:
                resource = entry.get("resource") if isinstance(entry, dict) else None
                if not isinstance(resource, dict):
                    continue
                search = entry.get("search")
                if isinstance(search, dict) and search.get("mode", "match") != "match":
                    continue
                key = f"{resource.get('resourceType')}/{resource.get('id')}"
                if key in seen:
                    continue
                seen.add(key)
                self._position = f"{self.name}/{key}"
                yield resource

    def position(self) -> str:
        return self._position

    def transaction_time(self) -> str | None:
        known = []
        for text in self._times:
            try:
                known.append((parse_instant(text, what="Bundle.meta.lastUpdated"), text))
            except ValueError:
                continue  # a server's malformed time is not worth failing the run: the run's start stands in
        return min(known)[1] if known else None
