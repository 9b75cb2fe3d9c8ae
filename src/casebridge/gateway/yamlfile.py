"""The gateway's data files are YAML: an error of the YAML library itself, as a MappingError naming the file and
line (the mapping helpers turn most into one already; a merge key or an unknown tag reaches the constructor)."""

from __future__ import annotations

import yaml

from casebridge.errors import MappingError


def yaml_error(exc: yaml.YAMLError, file: str) -> MappingError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return MappingError(f"malformed YAML: {problem}", file=file, line=mark.line + 1 if mark else None)
