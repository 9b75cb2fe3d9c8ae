"""An OperationDefinition's own consistency (operationdefinition.html).

Apart from the walk because it reads other definitions (the Parameters profiles its inputProfile and
outputProfile name); called for OperationDefinition resources only.
"""

from __future__ import annotations

from typing import Any

from casebridge.definitions.structure import Definitions
from casebridge.validation.issues import Run


def check_operation_definition(opdef: dict[str, Any], definitions: Definitions, run: Run, expr: str) -> None:
    """Nothing yet: the checks of inputProfile and outputProfile against the parameters come here."""
