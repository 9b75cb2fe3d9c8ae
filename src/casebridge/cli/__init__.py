"""The ``casebridge`` command line: a module per command group, gathered by ``main``."""

from casebridge.cli.core import app, main

__all__ = ["app", "main"]
