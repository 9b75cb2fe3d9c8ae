"""SQL on FHIR v2 ViewDefinitions (with 2.1's ``repeat`` and ``%rowIndex``): read a view into a plan, run it over
FHIR resources (JSON objects), get rows.

    plan = read_view(view_json)              # ViewDefinitionError naming the element if it cannot run
    for row in run_view(plan, resources):    # tuples, in the order of plan.columns
        ...

FHIRPath expressions are compiled to Python for the subset views commonly use and evaluated by fhirpathpy
otherwise (``plan.fallback_paths`` lists those).

Sources (``LocalSource``: NDJSON files and folders, JSON Bundles; ``ResourceList``: resources in memory) and
outputs (NDJSON, CSV, Parquet, DuckDB; to standard output, a file, or a folder with its manifest and incremental
runs): ``_sources`` and ``_outputs``.
"""

from casebridge.views._definition import OutputColumn, ViewDefinitionError, ViewPlan, read_view
from casebridge.views._outputs import (
    FORMATS,
    SUFFIXES,
    NamedView,
    output_name,
    run_to_file,
    run_to_folder,
    run_to_stdout,
    view_digest,
    view_rows,
)
from casebridge.views._outputs import _csv_text as csv_text  # a cell's text, as the CSV outputs write it
from casebridge.views._runner import ViewEvaluationError, run_to_dicts, run_view
from casebridge.views._sources import LocalSource, ResourceList, ResourceSource, parse_instant

__all__ = [
    "FORMATS",
    "SUFFIXES",
    "LocalSource",
    "NamedView",
    "OutputColumn",
    "ResourceList",
    "ResourceSource",
    "ViewDefinitionError",
    "ViewEvaluationError",
    "ViewPlan",
    "csv_text",
    "output_name",
    "parse_instant",
    "read_view",
    "run_to_dicts",
    "run_to_file",
    "run_to_folder",
    "run_to_stdout",
    "run_view",
    "view_digest",
    "view_rows",
]
