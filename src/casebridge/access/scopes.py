"""SMART App Launch v2 system scopes, as API keys carry them: ``system/Observation.cu``, ``system/*.rs``.

A scope grants interactions on one resource type (or ``*``, every type): ``c`` create, ``r`` read, ``u`` update,
``d`` delete, ``s`` search, written in that order (SMART v2); SMART v1's ``.read``, ``.write`` and ``.*`` are
read as ``rs``, ``cud`` and ``cruds``. An API key acts for a system, never for a user or a patient in context:
``patient/`` and ``user/`` scopes, and scopes narrowed by search parameters (``?category=...``), are refused when
the keys are loaded rather than granted more widely than written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

PERMISSIONS = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"(?P<context>[a-z]+)/(?P<type>\*|[A-Z][A-Za-z]{1,63})\.(?P<perms>[a-z*]+)")
# The names of the legacy ro/rw keys, and what they mean: ro reads and validates, rw also creates and updates.
LEGACY = {"ro": "system/*.rs", "rw": "system/*.rs system/*.cu"}


@dataclass(frozen=True)
class Scopes:
    """What a key may do, by resource type (``*``: any type)."""

    grants: Mapping[str, frozenset[str]]
    text: str  # as written, for messages

    def allows(self, resource_type: str, permission: str) -> bool:
        return permission in self.grants.get(resource_type, frozenset()) or permission in self.grants.get(
            "*", frozenset()
        )

    def missing(self, needs: Iterable[tuple[str, str]]) -> list[str]:
        """The scopes lacking for ``(resource type, permission)`` pairs, as ``system/Type.p``, in first-need order."""
        out: list[str] = []
        for resource_type, permission in needs:
            scope = f"system/{resource_type}.{permission}"
            if not self.allows(resource_type, permission) and scope not in out:
                out.append(scope)
        return out

    @property
    def writes(self) -> bool:
        return any(p in perms for perms in self.grants.values() for p in "cud")


def parse_scopes(text: str) -> Scopes:
    """Space-separated SMART scopes; ``ValueError`` naming the first scope that cannot be granted as written."""
    grants: dict[str, set[str]] = {}
    words = text.split()
    if not words:
        raise ValueError("no scope given (e.g. system/*.rs system/Observation.cu)")
    for word in words:
        if "?" in word:
            raise ValueError(f"{word!r}: scopes narrowed by search parameters are not supported; grant whole types")
        match = _SCOPE.fullmatch(word)
        if match is None:
            raise ValueError(f"{word!r} is not a SMART scope (system/Type.cruds, system/*.rs, system/Type.read)")
        if match["context"] != "system":
            raise ValueError(f"{word!r}: an API key acts for a system; use system/ scopes, not {match['context']}/")
        perms = _V1.get(match["perms"], match["perms"])
        if not re.fullmatch("c?r?u?d?s?", perms) or not perms:
            raise ValueError(f"{word!r}: permissions are c, r, u, d, s in that order (SMART v2), or read/write/*")
        grants.setdefault(match["type"], set()).update(perms)
    return Scopes({t: frozenset(p) for t, p in grants.items()}, " ".join(words))
