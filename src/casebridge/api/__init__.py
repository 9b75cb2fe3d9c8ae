"""The HTTP API (FastAPI): ``create_app`` builds it, ``casebridge serve`` runs it on uvicorn."""
