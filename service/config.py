"""Settings: one class, read from the environment (prefix ``CASEBRIDGE_``) and checked at start."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CASEBRIDGE_", extra="ignore")

    mappings_dir: Path = Field(
        PROJECT_ROOT / "mappings", description="The mapping folder (bundle.yaml, resources/, codes/)."
    )
    terminology_file: Path | None = Field(
        None,
        description=(
            "The terminology file code tables are checked against at load. Default: "
            "../shared/terminology/case-codes.yaml beside the project, when it exists."
        ),
    )
    max_case_bytes: int = Field(5 * 1024 * 1024, gt=0, description="Largest case file accepted, in bytes.")
    max_resource_bytes: int = Field(
        5 * 1024 * 1024, gt=0, description="Largest FHIR resource or Bundle accepted for validation, in bytes."
    )
    fhir_packages_lock: Path = Field(
        PROJECT_ROOT / "fhir-packages.json",
        description="The pinned FHIR packages, in priority order (the first that defines a URL wins).",
    )
    fhir_package_cache: Path | None = Field(
        None, description="The FHIR package cache (default: CASEBRIDGE_FHIR_PACKAGE_CACHE or ~/.fhir/packages)."
    )
    profiles_dir: Path = Field(PROJECT_ROOT / "profiles", description="casebridge's own profiles (a FHIR package).")

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
        """The configured terminology file, else the shared one when it is there."""
        if self.terminology_file is not None:
            return self.terminology_file
        default = PROJECT_ROOT.parent / "shared" / "terminology" / "case-codes.yaml"
        return default if default.is_file() else None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
