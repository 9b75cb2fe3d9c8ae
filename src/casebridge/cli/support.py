"""What every ``casebridge`` subcommand shares: the consoles, failing with an exit code, settings, and the
pipeline's inputs (mappings, validator, case files) with their failures as exit codes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NoReturn

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console

from casebridge import pipeline
from casebridge.config import Settings, get_settings
from casebridge.definitions.packages import PackageError
from casebridge.domain.case import CaseReport
from casebridge.errors import MappingError
from casebridge.files import shown
from casebridge.mapping.engine import MappingSet
from casebridge.validation.validator import Validator

err = Console(stderr=True, soft_wrap=True)  # never wrap: messages carry file names and paths
# Wide enough for the demo tables when output is piped (CI logs, make), where rich would assume 80 columns.
out = Console(width=shutil.get_terminal_size((120, 40)).columns)


def fail(code: int, message: str) -> NoReturn:
    err.print(shown(message, keep_newlines=True), markup=False, highlight=False)
    raise typer.Exit(code)


def cli_settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        fail(3, f"configuration error (CASEBRIDGE_* environment): {problems}")


def load_mappings(settings: Settings) -> MappingSet:
    terminology = settings.terminology()
    if terminology is None:
        err.print(
            "warning: no terminology file, so code citations in the code tables are not checked "
            "(set CASEBRIDGE_TERMINOLOGY_FILE)",
            highlight=False,
        )
    try:
        return pipeline.load_mappings(settings)
    except MappingError as exc:
        fail(3, f"mapping error: {exc}")


def load_validator(settings: Settings) -> Validator:
    try:
        return pipeline.load_validator(settings)
    except PackageError as exc:
        fail(2, f"{exc} (run `casebridge packages fetch`)")


def read_case_file(path: Path, settings: Settings) -> CaseReport:
    return pipeline.read_case_file(path, max_bytes=settings.max_case_bytes)


def dump_json(doc: object) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"
