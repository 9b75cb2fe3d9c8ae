"""Who may call the API: API keys and the SMART scopes they carry. Low in the package, beside the settings, which
parse the keys so that a mistake stops the service at start; the HTTP layer (casebridge.api) enforces them."""
