"""SQL on FHIR v2 ViewDefinitions (with 2.1's ``repeat`` and ``%rowIndex``): read a view into a plan, run it over
FHIR resources (JSON objects), get rows.

    plan = read_view(view_json)              # ViewDefinitionError naming the element if it cannot run
    for row in run_view(plan, resources):    # tuples, in the order of plan.columns
        ...

FHIRPath expressions are compiled to Python for the subset views commonly use and evaluated by fhirpathpy
otherwise (``plan.fallback_paths`` lists those).
"""

from casebridge.views._definition import OutputColumn, ViewDefinitionError, ViewPlan, read_view
from casebridge.views._runner import ViewEvaluationError, run_to_dicts, run_view

__all__ = [
    "OutputColumn",
    "ViewDefinitionError",
    "ViewEvaluationError",
    "ViewPlan",
    "read_view",
    "run_to_dicts",
    "run_view",
]
