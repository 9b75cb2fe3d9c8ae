"""Validating FHIR R4 resources and Bundles against the loaded definitions and profiles (structure, invariants,
terminology), and the profiles posted Bundles must meet (inbound)."""
