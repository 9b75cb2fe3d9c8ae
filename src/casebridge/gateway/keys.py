"""API keys are parsed with the settings, so they live low in the package (casebridge.access.keys); these names
stay importable from here for the HTTP layer's existing imports."""

from casebridge.access.keys import ApiKey, digest

__all__ = ["ApiKey", "digest"]
