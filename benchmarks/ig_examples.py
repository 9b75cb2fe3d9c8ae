"""How many of an implementation guide's own examples validate with 0 errors, and why the others do not.

The IG must be pinned in a lock file and installed in a package cache first, for example:

    cp src/casebridge/data/fhir-packages.json /tmp/ig/lock.json
    casebridge packages add hl7.fhir.au.base@6.0.0 --lock /tmp/ig/lock.json --cache /tmp/ig/cache --keep-pinned
    .venv/bin/python benchmarks/ig_examples.py hl7.fhir.au.base#6.0.0 --lock /tmp/ig/lock.json --cache /tmp/ig/cache

The validator is loaded from that lock as the service loads it (``validation.service.load_validator``: the
project's profiles, then the pinned packages in lock order). The examples are the package's
``package/example/*`` files and the resources in ``package/*`` that are not conformance resources; each is
validated as it stands (its ``meta.profile`` claims apply). The report counts the examples with 0 errors and
groups the others by the family of their first error (the message with quoted values, numbers and URLs
blanked), with one example of each family. When the package holds the IG publisher's own validation results
(``package/other/validation-oo.json``, one OperationOutcome per resource, by the HL7 validator), each example's
error count there is shown beside ours. ``--json`` prints the figures as JSON instead.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from casebridge.config import Settings  # noqa: E402
from casebridge.definitions.packages import default_cache_dir  # noqa: E402
from casebridge.validation.service import load_validator  # noqa: E402

# Resources that define rather than exemplify: not counted as examples.
CONFORMANCE = frozenset(
    {
        "StructureDefinition",
        "ValueSet",
        "CodeSystem",
        "ConceptMap",
        "NamingSystem",
        "ImplementationGuide",
        "CapabilityStatement",
        "SearchParameter",
        "OperationDefinition",
        "StructureMap",
        "CompartmentDefinition",
        "MessageDefinition",
        "GraphDefinition",
    }
)
ERRORS = frozenset({"fatal", "error"})


def examples(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """(relative file name, resource) of the package's examples, sorted by file name."""
    found = []
    package = folder / "package"
    candidates = sorted((package / "example").glob("*")) + sorted(package.glob("*"))
    for file in candidates:
        if not file.is_file() or file.name in ("package.json", ".index.json") or file.name.startswith("."):
            continue
        try:
            data = json.loads(file.read_bytes())
        except (ValueError, UnicodeDecodeError):
            continue  # not JSON (XML, schematron, text)
        if isinstance(data, dict) and isinstance(data.get("resourceType"), str):
            if data["resourceType"] not in CONFORMANCE:
                found.append((file.relative_to(package).as_posix(), data))
    return found


def publisher_errors(folder: Path) -> dict[str, int]:
    """``{"<resourceType>-<id>": error count}`` from the IG publisher's validation results, when the package has
    them; empty otherwise."""
    try:
        bundle = json.loads((folder / "package" / "other" / "validation-oo.json").read_bytes())
    except (OSError, ValueError):
        return {}
    counts = {}
    for entry in bundle.get("entry", []) if isinstance(bundle, dict) else []:
        outcome = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(outcome, dict) and isinstance(outcome.get("id"), str):
            issues = outcome.get("issue", [])
            counts[outcome["id"]] = sum(1 for i in issues if isinstance(i, dict) and i.get("severity") in ERRORS)
    return counts


def family(message: str) -> str:
    """A message with its particulars blanked, so that messages of one kind group together."""
    text = re.sub(r"https?://\S+?(?=['\")\s,]|$)", "<url>", message)
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"\b\d+(\.\d+)*\b", "N", text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", help="The package folder name in the cache, NAME#VERSION (or NAME@VERSION).")
    parser.add_argument("--lock", type=Path, required=True, help="The lock file that pins the package.")
    parser.add_argument("--cache", type=Path, help="The package cache (default: the configured one).")
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    args = parser.parse_args(argv)

    cache = args.cache or default_cache_dir()
    folder = cache / args.package.replace("@", "#")
    if not (folder / "package" / "package.json").is_file():
        parser.error(f"{folder} is not an installed package")
    settings = Settings(fhir_packages_lock=args.lock, fhir_package_cache=cache)
    validator = load_validator(settings)

    publisher = publisher_errors(folder)
    results: list[dict[str, Any]] = []
    for name, resource in examples(folder):
        issues = validator.validate(resource)
        errors = [i for i in issues if i.severity in ERRORS]
        results.append(
            {
                "file": name,
                "errors": len(errors),
                "publisher_errors": publisher.get(f"{resource['resourceType']}-{resource.get('id')}"),
                "first": f"{errors[0].message} @ {errors[0].expression}" if errors else None,
                "family": family(errors[0].message) if errors else None,
                "all_families": sorted({family(i.message) for i in errors}),
            }
        )

    clean = sum(1 for r in results if r["errors"] == 0)
    families: dict[str, list[str]] = defaultdict(list)
    for r in results:
        if r["errors"]:
            families[r["family"]].append(r["file"])
    any_error = Counter(f for r in results for f in r["all_families"])

    if args.json:
        summary = {
            "package": folder.name,
            "examples": len(results),
            "zero_errors": clean,
            "first_error_families": {f: files for f, files in sorted(families.items(), key=lambda x: -len(x[1]))},
            "examples_with_error_family": dict(any_error.most_common()),
            "results": results,
        }
        print(json.dumps(summary, indent=1, ensure_ascii=False))
        return 0

    print(f"{folder.name}: {clean} of {len(results)} examples validate with 0 errors")
    if publisher:
        both = [r for r in results if r["publisher_errors"] is not None]
        print(
            f"IG publisher (HL7 validator), same examples: {sum(1 for r in both if r['publisher_errors'] == 0)} of "
            f"{len(both)} with 0 errors; we report errors where it reports none on "
            f"{sum(1 for r in both if r['errors'] and not r['publisher_errors'])}, and none where it reports some on "
            f"{sum(1 for r in both if not r['errors'] and r['publisher_errors'])}"
        )
    print("\nFirst error, by family (examples: family):")
    for text, files in sorted(families.items(), key=lambda x: -len(x[1])):
        first = next(r["first"] for r in results if r["file"] == files[0])
        print(f"  {len(files):3}  {text}\n       e.g. {files[0]}: {first}")
    print("\nExamples with at least one error of a family:")
    for text, count in any_error.most_common():
        print(f"  {count:3}  {text}")
    print("\nPer example (our errors, the IG publisher's errors or '-', file):")
    for r in results:
        theirs = "-" if r["publisher_errors"] is None else r["publisher_errors"]
        print(f"  {r['errors']:3}  {theirs:>3}  {r['file']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
