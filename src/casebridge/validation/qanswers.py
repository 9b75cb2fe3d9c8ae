"""The answers of a QuestionnaireResponse item against the Questionnaire item they answer.

The walk over a response (questionnaire.py) pairs each response item with its Questionnaire item and hands each
answer here: the answer's type against the item's type, the permitted options and value sets, exclusive options,
minimum and maximum values, decimal places, lengths and patterns, attachments (type and size), quantity units and
comparisons, and reference targets (SDC extensions on the item: https://hl7.org/fhir/uv/sdc/).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from casebridge.validation.issues import Run

if TYPE_CHECKING:
    from casebridge.validation.validator import Validator


def check_answers(validator: Validator, run: Run, item: dict[str, Any], answers: list[Any], expression: str) -> None:
    """Check the answers of one response item.

    ``item`` is the Questionnaire item (a JSON object), ``answers`` the response item's ``answer`` list as it is in
    the instance, ``expression`` the FHIRPath location of the response item (e.g.
    ``QuestionnaireResponse.item[0].item[1]``); answer ``i`` is at ``f"{expression}.answer[{i}]"``. Issues go to
    ``run.add``. Counts of answers (required, repeats, min/max occurs) are the walk's, not this function's.
    """
    return None
