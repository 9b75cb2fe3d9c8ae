"""Where the tests find things: the checkout (fixtures/, tests/data/) and the package's own data files."""

from pathlib import Path

from casebridge.config import DATA_DIR

TESTS_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = TESTS_DIR.parent
__all__ = ["DATA_DIR", "PROJECT_ROOT", "TESTS_DIR"]
