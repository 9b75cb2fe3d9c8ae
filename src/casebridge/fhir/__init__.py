"""FHIR package tooling: the pinned packages, the local package cache and the index of their definitions."""
