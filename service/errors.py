"""casebridge's exceptions.

Every error the project raises on purpose is a ``CasebridgeError``; third-party errors are translated
where they enter (``raise Ours(...) from exc``), so callers catch ours only.

    CasebridgeError
    ├── InputError                 bad input from a user: the CLI exits 2, the API answers 4xx
    │   ├── CaseFileError          the case file cannot be read: empty, too large, not JSON/YAML, not an object
    │   ├── CaseSchemaError        the case does not fit the case model: each problem with its field path
    │   └── ConversionError        a valid case the mappings cannot convert (e.g. an unknown vocabulary key)
    └── MappingError               a mapping, code table or terminology file is wrong: names file and line

``InputError`` and its subclasses carry ``problems``: (location, message) pairs, where location is a
field path such as ``patient.sex`` or ``diagnostic_steps[2].differential[0].key``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    location: str  # a field path in the input ("" for the whole document)
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class CasebridgeError(Exception):
    """Base of every error casebridge raises on purpose."""


class InputError(CasebridgeError):
    """Input from a user is unusable. ``source`` names the file (or "request body")."""

    def __init__(self, message: str, *, source: str = "", problems: Sequence[Problem] = ()):
        self.source = source
        self.problems = list(problems) or [Problem("", message)]
        super().__init__(message)

    def report(self) -> str:
        """A readable, multi-line account: the source, then one line per problem."""
        head = f"{self.source}: {self}" if self.source else str(self)
        lines = [head]
        if not (len(self.problems) == 1 and self.problems[0].message == str(self)):
            lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class CaseFileError(InputError):
    """The case file cannot be read as a JSON or YAML object."""


class CaseSchemaError(InputError):
    """The case does not fit the case model."""


class ConversionError(InputError):
    """A case that fits the model but that the mappings cannot convert."""


class MappingError(CasebridgeError):
    """A mapping, code table or terminology file is wrong. The message names the file and line."""

    def __init__(self, message: str, *, file: str = "", line: int | None = None):
        self.file = file
        self.line = line
        where = f"{file}:{line}" if file and line else file
        super().__init__(f"{where}: {message}" if where else message)
