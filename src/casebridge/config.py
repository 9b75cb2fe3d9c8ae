"""Settings: one class, read from the environment (prefix ``CASEBRIDGE_``) and checked at start."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from casebridge._data import data_dir
from casebridge.access.keys import ApiKey, load_api_keys_file, merge_keys, parse_api_keys
from casebridge.errors import MappingError

__all__ = ["DATA_DIR", "ApiKey", "Settings", "get_settings", "parse_api_keys"]

# The data files shipped inside the package (mappings, profiles, the FHIR package lock, schemas, terminology,
# example cases): the defaults of the settings below, wherever the package is installed.
DATA_DIR = data_dir()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CASEBRIDGE_", extra="ignore")

    mappings_dir: Path = Field(
        DATA_DIR / "mappings", description="The mapping folder (bundle.yaml, resources/, codes/)."
    )
    terminology_file: Path | None = Field(
        None,
        description=(
            "The terminology file code tables are checked against at load. Default: the project's own "
            "terminology/case-codes.yaml."
        ),
    )
    max_case_bytes: int = Field(5 * 1024 * 1024, gt=0, description="Largest case file accepted, in bytes.")
    max_resource_bytes: int = Field(
        5 * 1024 * 1024, gt=0, description="Largest FHIR resource or Bundle accepted for validation, in bytes."
    )
    max_outcome_issues: int = Field(
        1000, ge=1, description="Most issues listed in one OperationOutcome; one more issue counts the rest."
    )
    fhir_packages_lock: Path = Field(
        DATA_DIR / "fhir-packages.json",
        description="The pinned FHIR packages, in priority order (the first that defines a URL wins).",
    )
    fhir_package_cache: Path | None = Field(
        None, description="The FHIR package cache (default: CASEBRIDGE_FHIR_PACKAGE_CACHE or ~/.fhir/packages)."
    )
    profiles_dir: Path = Field(DATA_DIR / "profiles", description="casebridge's own profiles (a FHIR package).")
    unknown_profiles: Literal["warning", "error"] = Field(
        "warning",
        description=(
            "A profile a resource claims (meta.profile) that is in none of the loaded packages: warning (reported as "
            "not checked, as the HL7 validator does) or error (refused). POST /bundles follows the forwarding "
            "policy's unknown_profiles instead."
        ),
    )

    # The FHIR server pushes go to and pulls come from. The default is where `casebridge fhir-server` listens.
    fhir_base_url: str = Field(
        "http://127.0.0.1:8090/fhir", description="FHIR server base URL (http or https), e.g. http://hapi:8080/fhir."
    )
    upstream: Literal["generic", "hapi"] = Field(
        "generic",
        description=(
            "What kind of FHIR server fhir_base_url is: generic (the embedded server, or any other) or hapi (HAPI "
            "FHIR). With hapi, POST /bundles first refuses (422, naming the entry) what HAPI's default settings "
            "refuse as a whole: numeric client ids, absolute references, references to resources absent from the "
            "Bundle and the server (the forwarding policy's hapi_checks switch each)."
        ),
    )
    fhir_timeout: float = Field(60.0, gt=0, description="Seconds to wait for a FHIR server's answer (read/write).")
    fhir_connect_timeout: float = Field(10.0, gt=0, description="Seconds to wait for a connection to the FHIR server.")
    fhir_max_connections: int = Field(16, ge=1, le=1000, description="Size of the shared connection pool.")
    fhir_retry_attempts: int = Field(
        6, ge=1, le=100, description="Attempts per idempotent request on 429/502/503/504 and connection errors."
    )
    fhir_retry_max_wait: float = Field(
        30.0, gt=0, description="Longest single wait between retries, Retry-After included, in seconds."
    )
    fhir_token: SecretStr | None = Field(None, description="A static bearer token for the FHIR server.")
    smart_token_url: str | None = Field(None, description="SMART Backend Services: the token endpoint.")
    smart_client_id: str | None = Field(None, description="SMART Backend Services: the registered client id.")
    smart_private_key: Path | None = Field(
        None, description="SMART Backend Services: the PEM private key (RSA or EC P-384) that signs the assertion."
    )
    smart_key_id: str | None = Field(None, description="SMART Backend Services: the key id (kid) of that key.")
    smart_algorithm: Literal["RS384", "ES384"] = Field("RS384", description="SMART assertion signing algorithm.")
    smart_scope: str = Field("system/*.rs system/*.cud", description="SMART Backend Services: the scopes requested.")
    lock_dir: Path | None = Field(
        None,
        description=(
            "Where per-patient write locks live, so concurrent pushes of one case are serialized across processes "
            "(default: $XDG_CACHE_HOME/casebridge/locks or ~/.cache/casebridge/locks)."
        ),
    )

    # The HTTP API (`casebridge serve`).
    api_keys: SecretStr | None = Field(
        None,
        description=(
            "API keys, comma-separated, each NAME:SCOPES:SECRET with SCOPES ro (read and validate: system/*.rs), "
            "rw (also create and update: system/*.rs system/*.cu) or space-separated SMART v2 system scopes; SECRET "
            "at least 24 characters. Every API endpoint but health, readiness and metrics needs one as "
            "`Authorization: Bearer SECRET`."
        ),
    )
    api_keys_file: Path | None = Field(
        None,
        description=(
            "A YAML list of API keys holding SHA-256 digests of their secrets, their scopes and optionally the "
            "identifier namespaces of the patients each may write (see fixtures/api-keys.example.yaml)."
        ),
    )
    max_body_bytes: int = Field(5 * 1024 * 1024, gt=0, description="Largest request body the API accepts (413).")
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        le=16 * 1024 * 1024,
        description=(
            "Largest request head (request line and headers) the API reads, in bytes; beyond, 431 and the connection "
            "is closed. Clients send a few hundred bytes; common proxies allow 8-32 KiB."
        ),
    )
    validation_budget: float = Field(
        20.0,
        gt=0,
        le=3600,
        description=(
            "Seconds one piece of reading, conversion or validation may run in a worker process; beyond, the process "
            "is stopped and replaced and the request gets 422 (too-costly). Not enforced with --workers 0."
        ),
    )
    view_run_max_resources: int = Field(
        100_000,
        ge=1,
        le=100_000_000,
        description=(
            "Resources one POST /ViewDefinition/$viewdefinition-run may read from the FHIR server: 422 (too-costly) "
            "before the answer starts when the search's total is over it; a stream cut short past it otherwise."
        ),
    )
    view_run_max_rows: int = Field(
        1_000_000,
        ge=1,
        le=100_000_000,
        description=(
            "Rows one POST /ViewDefinition/$viewdefinition-run may answer, and the largest _limit it takes: a run "
            "without _limit that would write more is cut short (the client sees an incomplete answer)."
        ),
    )
    api_docs_public: bool = Field(
        False, description="Serve /docs, /redoc and /openapi.json without a key (they hold no data, only the API)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="The API's log level.")
    audit_file: Path | None = Field(
        None,
        description=(
            "Also append the audit trail (one JSON line per write or read of patient data; logger casebridge.audit) "
            "to this file."
        ),
    )
    audit_events_file: Path | None = Field(
        None, description="Append a FHIR AuditEvent (IHE BALP shape) per audited interaction to this NDJSON file."
    )
    audit_events_to_server: bool = Field(
        False,
        description=(
            "Also store the AuditEvents on the FHIR server, in the background: never holding up or failing the "
            "request they describe (failures are counted in /metrics as casebridge_audit_events)."
        ),
    )

    @field_validator("api_keys")
    @classmethod
    def _keys_parse(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_api_keys(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _keys_load(self) -> Self:
        # Checked now, so a mistake in the keys file stops the service at start with its file and line.
        if self.api_keys_file is not None:
            try:
                self.keys()
            except MappingError as exc:
                raise ValueError(str(exc)) from None
        return self

    def keys(self) -> list[ApiKey]:
        """The keys of CASEBRIDGE_API_KEYS and of the keys file; ``MappingError`` (file and line) for a mistake in
        the file, ``ValueError`` for a name or secret used in both."""
        inline = parse_api_keys(self.api_keys.get_secret_value()) if self.api_keys is not None else []
        listed = load_api_keys_file(self.api_keys_file) if self.api_keys_file is not None else []
        return merge_keys(inline, listed)

    @field_validator("fhir_base_url", "smart_token_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.fullmatch(r"[Hh][Tt][Tt][Pp][Ss]?://[^/\s?#@]+(/[^\s?#]*)?", value):
            # No user:password@ either: it would be printed with every URL (messages, fullUrls of pulled Bundles).
            raise ValueError("not an http(s) URL without user info, query or fragment")
        return value.rstrip("/")

    @field_validator("smart_private_key")
    @classmethod
    def _key_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} does not exist")
        return value

    @model_validator(mode="after")
    def _one_auth(self) -> Self:
        smart = {
            "smart_token_url": self.smart_token_url,
            "smart_client_id": self.smart_client_id,
            "smart_private_key": self.smart_private_key,
        }
        given = [k for k, v in smart.items() if v is not None]
        if given and len(given) != len(smart):
            missing = ", ".join(k for k in smart if k not in given)
            raise ValueError(f"SMART Backend Services needs {missing} too")
        if given and self.fhir_token is not None:
            raise ValueError("set either fhir_token or the smart_* settings, not both")
        return self

    def locks(self) -> Path:
        if self.lock_dir is not None:
            return self.lock_dir
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(cache) / "casebridge" / "locks"

    @field_validator("mappings_dir")
    @classmethod
    def _mappings_exist(cls, value: Path) -> Path:
        if not (value / "bundle.yaml").is_file():
            raise ValueError(f"{value} is not a mapping folder (no bundle.yaml)")
        return value

    @field_validator("terminology_file")
    @classmethod
    def _terminology_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} does not exist")
        return value

    def terminology(self) -> Path | None:
        """The configured terminology file, else the project's own (None only when that one is missing too)."""
        if self.terminology_file is not None:
            return self.terminology_file
        default = DATA_DIR / "terminology" / "case-codes.yaml"
        return default if default.is_file() else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
