"""API keys: who may call the API, with which scopes, writing patients of which identifier namespaces.

Two sources, both checked at start:

- ``CASEBRIDGE_API_KEYS``: ``NAME:SCOPES:SECRET`` items, comma-separated. SCOPES is ``ro`` or ``rw`` (the
  original keys, meaning ``system/*.rs`` and ``system/*.rs system/*.cu``) or space-separated SMART scopes
  (``job:system/Patient.cu system/Observation.cu:SECRET``).
- ``CASEBRIDGE_API_KEYS_FILE``: a YAML list of keys that holds no secret, only its SHA-256 digest, so it can live
  in configuration management; a key there may also be bound to identifier namespaces (see the example file
  ``fixtures/api-keys.example.yaml``). Mistakes are reported with the file and line.

A key is found by comparing SHA-256 digests in constant time, every key compared (``casebridge.api.security``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from casebridge.access.scopes import LEGACY, Scopes, parse_scopes
from casebridge.errors import MappingError
from casebridge.yamlfile import compose, line_of, mapping_items, scalar, yaml_error

MIN_KEY_LENGTH = 24
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")


@dataclass(frozen=True)
class ApiKey:
    name: str
    scopes: Scopes
    digest: bytes = field(repr=False)  # SHA-256 of the secret: the secret itself is not kept
    # Identifier systems of the patients this key may write; empty: not bound (any patient).
    namespaces: tuple[str, ...] = ()

    @property
    def can_write(self) -> bool:
        return self.scopes.writes


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_api_keys(text: str) -> list[ApiKey]:
    """``NAME:SCOPES:SECRET[,...]``; errors name the entry by position and name, never the secret."""
    keys: list[ApiKey] = []
    secrets: set[str] = set()
    for position, item in enumerate((part.strip() for part in text.split(",")), 1):
        if not item:
            continue
        name, scope, secret = [*item.split(":", 2), "", ""][:3]
        where = f"API key {position}" + (f" ({name})" if _NAME.fullmatch(name) else "")
        if not _NAME.fullmatch(name):
            raise ValueError(f"{where}: the name must be 1-64 letters, digits, '.', '_' or '-' (NAME:SCOPES:SECRET)")
        try:
            scopes = parse_scopes(LEGACY.get(scope, scope))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}; SCOPES is ro, rw or space-separated SMART scopes") from None
        if len(secret) < MIN_KEY_LENGTH or not re.fullmatch(r"[\x21-\x7e]+", secret) or "," in secret:
            raise ValueError(
                f"{where}: the secret must be at least {MIN_KEY_LENGTH} visible ASCII characters, no comma"
            )
        if any(k.name == name for k in keys):
            raise ValueError(f"{where}: the name is used twice")
        if secret in secrets:
            raise ValueError(f"{where}: the secret is used twice")
        secrets.add(secret)
        keys.append(ApiKey(name, scopes, digest(secret)))
    return keys


_FIELDS = {"name", "secret_sha256", "scopes", "namespaces"}


def load_api_keys_file(path: Path) -> list[ApiKey]:
    """The keys of a keys file; ``MappingError`` with the file and line of the first mistake."""
    try:
        return _load_api_keys_file(path)
    except yaml.YAMLError as exc:  # what the helpers below do not turn into a MappingError (a merge key, say)
        raise yaml_error(exc, str(path)) from None


def _load_api_keys_file(path: Path) -> list[ApiKey]:
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"cannot read: {getattr(exc, 'strerror', None) or exc}", file=file) from exc
    node = compose(text, file)
    if not isinstance(node, yaml.SequenceNode):
        raise MappingError("expected a list of keys (- name: ...)", file=file, line=line_of(node))
    keys: list[ApiKey] = []
    for item in node.value:
        fields = {k: (v, line) for k, v, line in mapping_items(item, file)}
        line = line_of(item)
        unknown = sorted(set(fields) - _FIELDS)
        if unknown:
            raise MappingError(
                f"unknown field {unknown[0]!r}; a key has {', '.join(sorted(_FIELDS))}",
                file=file,
                line=fields[unknown[0]][1],
            )
        for required in ("name", "secret_sha256", "scopes"):
            if required not in fields:
                raise MappingError(f"a key needs {required!r}", file=file, line=line)
        name = _text(fields["name"], file)
        if not _NAME.fullmatch(name):
            raise MappingError(
                "the name must be 1-64 letters, digits, '.', '_' or '-'", file=file, line=fields["name"][1]
            )
        hexdigest = _text(fields["secret_sha256"], file).lower()
        if not _DIGEST.fullmatch(hexdigest):
            raise MappingError(
                "secret_sha256 must be the 64 hex digits of the secret's SHA-256 "
                '(printf %s "$SECRET" | sha256sum); the file holds no secret',
                file=file,
                line=fields["secret_sha256"][1],
            )
        try:
            scopes = parse_scopes(LEGACY.get(_text(fields["scopes"], file), _text(fields["scopes"], file)))
        except ValueError as exc:
            raise MappingError(str(exc), file=file, line=fields["scopes"][1]) from None
        namespaces: list[str] = []
        if "namespaces" in fields:
            value, at = fields["namespaces"]
            if not isinstance(value, yaml.SequenceNode) or not value.value:
                raise MappingError("namespaces: expected a list of identifier system URIs", file=file, line=at)
            for entry in value.value:
                uri = scalar(entry) if isinstance(entry, yaml.ScalarNode) else None
                if not isinstance(uri, str) or not _URI.fullmatch(uri):
                    raise MappingError(
                        "expected an identifier system URI (e.g. urn:oid:1.2.36.146.595.217.0.1)",
                        file=file,
                        line=line_of(entry),
                    )
                namespaces.append(uri)
        if any(k.name == name for k in keys):
            raise MappingError(f"the name {name!r} is used twice", file=file, line=fields["name"][1])
        raw = bytes.fromhex(hexdigest)
        if any(k.digest == raw for k in keys):
            raise MappingError("the same secret is used twice", file=file, line=fields["secret_sha256"][1])
        keys.append(ApiKey(name, scopes, raw, tuple(namespaces)))
    return keys


def _text(field_: tuple[yaml.Node, int], file: str) -> str:
    node, line = field_
    value = scalar(node) if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, str) or not value.strip():
        raise MappingError("expected text", file=file, line=line)
    return value.strip()


def merge_keys(*groups: list[ApiKey], where: str = "API keys") -> list[ApiKey]:
    """Keys from several sources: names and secrets must stay unique across them."""
    out: list[ApiKey] = []
    for key in (k for group in groups for k in group):
        if any(k.name == key.name for k in out):
            raise ValueError(f"{where}: the key name {key.name!r} is used twice")
        if any(k.digest == key.digest for k in out):
            raise ValueError(f"{where}: the key {key.name!r} has the same secret as another key")
        out.append(key)
    return out
