"""Building a ready validator from the settings: the pinned packages, our profiles, extra definitions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from casebridge.config import Settings
from casebridge.definitions.packages import DefinitionIndex, default_cache_dir, ensure_all, load_lock
from casebridge.validation.validator import ValidationOptions, Validator


def load_index(settings: Settings, extra: Sequence[Path] = ()) -> DefinitionIndex:
    """The definitions: loose files first (``extra``, then our profiles), then the pinned packages in lock
    order. Packages must already be installed (``make setup`` / ``casebridge packages fetch``): validation
    never downloads."""
    cache = settings.fhir_package_cache or default_cache_dir()
    folders = ensure_all(load_lock(settings.fhir_packages_lock), cache, offline=True)
    loose = [*extra]
    if settings.profiles_dir.is_dir():
        loose.append(settings.profiles_dir)
    return DefinitionIndex.load(folders, extra=loose)


def load_validator(settings: Settings, extra: Sequence[Path] = ()) -> Validator:
    return Validator(load_index(settings, extra), options=ValidationOptions(unknown_profiles=settings.unknown_profiles))
