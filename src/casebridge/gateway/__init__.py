"""The gateway's rules for what callers may make the FHIR server do: the forwarding policy (which resource types
and interactions POST /bundles forwards, within which limits) and the identifier namespaces a key may write
patients in (the keys and their scopes are casebridge.access), and for a HAPI FHIR server the pre-checks that
predict its refusals (hapi_checks). Pure rules over data: the HTTP layer
(casebridge.api) turns their refusals into answers, and looks stored resources up for them through the FHIR
client."""
