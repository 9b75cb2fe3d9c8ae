"""How much of each MACCROBAT report the quotes of its case fixture cover.

For every `<PMID>.yaml` of FOLDER (default fixtures/cases) with the report `<PMID>.txt` and its brat annotations
`<PMID>.ann` beside it: every `quote` of the case file must be a verbatim substring of the report (exactly, or with
runs of whitespace taken as one space), and an annotated entity of the types in ENTITY_TYPES counts as covered when
every non-whitespace character of its span lies inside some occurrence of some quote. Quotes of the top-level
`unrepresented` list (facts the model cannot hold) are checked but cover nothing.

    .venv/bin/python scripts/case_coverage.py [FOLDER] [--min 95] [--show-missing] [--json FILE|-]

Exit status: 0 when every quote is verbatim and the total (micro-averaged) coverage is at least --min; 1 when a
quote is not verbatim or the coverage is below --min; 2 when the input is unusable (a missing file, a malformed
.ann line, a case file that is not YAML).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

# How the case model joins the passages of one quote (casebridge.domain.case.QUOTE_JOIN).
QUOTE_JOIN = " … "

# The annotation types whose entities a transcription is expected to carry; the others (Detailed_description,
# Severity, Coreference, Clinical_event, ...) qualify or link these and are not counted.
ENTITY_TYPES: tuple[str, ...] = (
    "Age",
    "Sex",
    "History",
    "Family_history",
    "Sign_symptom",
    "Disease_disorder",
    "Diagnostic_procedure",
    "Lab_value",
    "Biological_structure",
    "Medication",
    "Dosage",
    "Therapeutic_procedure",
    "Date",
    "Duration",
    "Outcome",
)

DEFAULT_FOLDER = Path(__file__).resolve().parent.parent / "fixtures" / "cases"
UNREPRESENTED = "unrepresented"

_PMID_FILE = re.compile(r"^\d+\.yaml$")
_RANGE = re.compile(r"^(\d+) (\d+)$")
# A sentence ends at . ? or ! before whitespace, or at a blank line; a single line break may fall inside one.
_SENTENCE_END = re.compile(r"[.?!](?=\s)|\n\s*\n")


class InputError(Exception):
    """The input cannot be measured (exit 2)."""


@dataclass(frozen=True)
class Entity:
    id: str
    type: str
    ranges: tuple[tuple[int, int], ...]
    text: str

    @property
    def start(self) -> int:
        return self.ranges[0][0]


@dataclass(frozen=True)
class QuoteError:
    file: str
    path: str
    quote: str
    problem: str

    def __str__(self) -> str:
        shown = self.quote if len(self.quote) <= 60 else self.quote[:60] + "…"
        return f"{self.file}: {self.path}: {self.problem}: {shown!r}"


@dataclass
class Report:
    pmid: str
    entities: list[Entity]
    uncovered: list[Entity]
    quotes: int
    unrepresented: int
    text: str = field(repr=False)

    @property
    def covered(self) -> int:
        return len(self.entities) - len(self.uncovered)

    @property
    def uncovered_by_type(self) -> Counter[str]:
        return Counter(e.type for e in self.uncovered)


def parse_ann(path: Path, text: str, types: tuple[str, ...] = ENTITY_TYPES) -> list[Entity]:
    """The T lines of a brat .ann whose type is in `types`; a malformed T line raises InputError naming file:line."""
    entities = []
    try:
        # Split on line feeds only: str.splitlines would also split inside an entity's text at \u2028 and kin.
        with path.open(encoding="utf-8", newline="") as handle:
            lines = [line.removesuffix("\r") for line in handle.read().split("\n")]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot be read: {exc}") from exc
    for number, line in enumerate(lines, 1):
        if not line.startswith("T"):
            continue
        where = f"{path}:{number}"
        fields = line.split("\t")
        if len(fields) != 3 or " " not in fields[1]:
            raise InputError(f"{where}: malformed entity line (expected 'T<n><TAB><Type> <start> <end><TAB><text>')")
        kind, spans = fields[1].split(" ", 1)
        ranges = []
        for span in spans.split(";"):
            match = _RANGE.match(span)
            if not match:
                raise InputError(f"{where}: malformed span {span!r} (expected '<start> <end>')")
            start, end = int(match[1]), int(match[2])
            if not start <= end <= len(text):
                raise InputError(f"{where}: span {start} {end} lies outside the text ({len(text)} characters)")
            ranges.append((start, end))
        # brat joins the fragments of a discontinuous span with one space and cannot keep a line break in the
        # text field: compared up to whitespace, a mismatch means the .ann belongs to another text.
        if " ".join(text[s:e] for s, e in ranges).split() != fields[2].split():
            raise InputError(f"{where}: the span's text in the report is not {fields[2]!r}")
        if kind in types:
            entities.append(Entity(fields[0], kind, tuple(ranges), fields[2]))
    return entities


def collect_quotes(document: Any) -> tuple[list[tuple[str, Any]], list[tuple[str, Any]]]:
    """(path, value) of every `quote` key: those outside the top-level `unrepresented` list, and those inside it."""
    counted: list[tuple[str, Any]] = []
    unrepresented: list[tuple[str, Any]] = []

    def walk(node: Any, path: str, into: list[tuple[str, Any]]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                child = f"{path}.{key}" if path else str(key)
                if key == "quote":
                    into.append((child, value))
                else:
                    walk(value, child, into)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{path}[{index}]", into)

    if isinstance(document, dict):
        for key, value in document.items():
            walk({key: value}, "", unrepresented if key == UNREPRESENTED else counted)
    return counted, unrepresented


def _occurrences(haystack: str, needle: str) -> Iterator[int]:
    position = haystack.find(needle)
    while position >= 0:
        yield position
        position = haystack.find(needle, position + 1)


def locate(text: str, quote: str) -> list[tuple[int, int]]:
    """Every occurrence of `quote` in `text` as (start, end) offsets of `text`: exact matches, or when there is
    none, matches with every run of whitespace (in either) taken as one space."""
    exact = [(start, start + len(quote)) for start in _occurrences(text, quote)]
    if exact:
        return exact
    words = quote.split()
    if not words:
        return []
    # The text with each whitespace run as one space, and for each of its characters the original offset.
    normal: list[str] = []
    offsets: list[int] = []
    for index, char in enumerate(text):
        if char.isspace():
            if normal and normal[-1] == " ":
                continue
            char = " "
        normal.append(char)
        offsets.append(index)
    needle = " ".join(words)
    return [(offsets[start], offsets[start + len(needle) - 1] + 1) for start in _occurrences("".join(normal), needle)]


def measure(case_path: Path, errors: list[QuoteError], types: tuple[str, ...] = ENTITY_TYPES) -> Report:
    """Checks the quotes of one case file (adding to `errors`) and measures its report's coverage."""
    pmid = case_path.stem
    text_path, ann_path = case_path.with_suffix(".txt"), case_path.with_suffix(".ann")
    for needed in (text_path, ann_path):
        if not needed.is_file():
            raise InputError(f"{case_path}: the report file {needed.name} is missing beside it")
    try:
        # newline="" keeps \r\n as two characters: brat offsets count the file's characters as they are.
        with text_path.open(encoding="utf-8", newline="") as handle:
            text = handle.read()
        document = yaml.safe_load(case_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{case_path}: cannot be read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise InputError(f"{case_path}: not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise InputError(f"{case_path}: a case file must be a mapping")
    entities = parse_ann(ann_path, text, types)

    counted, unrepresented = collect_quotes(document)
    covered = bytearray(len(text))
    for quotes, covers in ((counted, True), (unrepresented, False)):
        for path, quote in quotes:
            if quote is None:
                continue
            if isinstance(quote, list) and quote and all(isinstance(q, str) for q in quote):
                quote = QUOTE_JOIN.join(quote)
            if not isinstance(quote, str):
                errors.append(QuoteError(case_path.name, path, str(quote), "quote is not text (write it in quotes)"))
                continue
            # A quote of several passages is their list, or one text joined with a spaced ellipsis (as the case
            # model joins such a list): each passage must be verbatim.
            for fragment in quote.split(QUOTE_JOIN) if isinstance(quote, str) else []:
                # An empty quote would "occur" between every two characters and cover nothing: it is a slip.
                found = locate(text, fragment) if fragment.strip() else []
                if not found:
                    problem = "empty quote" if not fragment.strip() else "quote not found verbatim in the report"
                    errors.append(QuoteError(case_path.name, path, fragment, problem))
                elif covers:
                    for start, end in found:
                        covered[start:end] = b"\x01" * (end - start)

    uncovered = [
        entity
        for entity in entities
        if not all(covered[i] or text[i].isspace() for start, end in entity.ranges for i in range(start, end))
    ]
    entries = document.get(UNREPRESENTED)
    return Report(
        pmid=pmid,
        entities=entities,
        uncovered=uncovered,
        quotes=sum(1 for _, quote in counted if quote is not None),
        unrepresented=len(entries) if isinstance(entries, list) else 0,
        text=text,
    )


def sentence_of(text: str, start: int, end: int, width: int = 110) -> str:
    """The sentence around text[start:end] on one line, the entity in [[ ]], shortened to about `width`."""
    left = max((m.end() for m in _SENTENCE_END.finditer(text, 0, start)), default=0)
    stop = _SENTENCE_END.search(text, end)
    right = len(text) if stop is None else stop.end() if stop[0][0] in ".?!" else stop.start()
    before_raw, after_raw = text[left:start], text[end:right]
    before = " ".join(before_raw.split()) + (" " if before_raw[-1:].isspace() and before_raw.strip() else "")
    after = (" " if after_raw[:1].isspace() else "") + " ".join(after_raw.split())
    room = max(0, (width - (end - start)) // 2)
    if len(before) > room:
        before = "…" + before[len(before) - room :]
    if len(after) > room:
        after = after[:room] + "…"
    entity = " ".join(text[start:end].split())
    return f"{before}[[{entity}]]{after}".strip()


def _percent(covered: int, total: int) -> float:
    return 100.0 * covered / total if total else 100.0


def _by_type(counts: Counter[str]) -> str:
    return ", ".join(f"{kind} {counts[kind]}" for kind in ENTITY_TYPES if counts[kind]) or "-"


def print_table(reports: list[Report], show_missing: bool, out: TextIO) -> None:
    header = f"{'PMID':<10} {'entities':>8} {'covered':>8} {'%':>6} {'quotes':>7} {'unrepr.':>7}  uncovered by type"
    print(header, file=out)
    for report in reports:
        print(
            f"{report.pmid:<10} {len(report.entities):>8} {report.covered:>8} "
            f"{_percent(report.covered, len(report.entities)):>6.1f} {report.quotes:>7} {report.unrepresented:>7}  "
            f"{_by_type(report.uncovered_by_type)}",
            file=out,
        )
    entities = sum(len(r.entities) for r in reports)
    covered = sum(r.covered for r in reports)
    total_types: Counter[str] = sum((r.uncovered_by_type for r in reports), Counter())
    print(
        f"{'total':<10} {entities:>8} {covered:>8} {_percent(covered, entities):>6.1f} "
        f"{sum(r.quotes for r in reports):>7} {sum(r.unrepresented for r in reports):>7}  {_by_type(total_types)}",
        file=out,
    )
    if show_missing:
        for report in reports:
            if report.uncovered:
                print(f"\n{report.pmid}: {len(report.uncovered)} uncovered", file=out)
            for entity in sorted(report.uncovered, key=lambda e: e.ranges):
                first, last = entity.ranges[0][0], entity.ranges[-1][1]
                print(
                    f"  {entity.type:<22} {entity.text!r} at {entity.start}: {sentence_of(report.text, first, last)}",
                    file=out,
                )


def figures(reports: list[Report], errors: list[QuoteError], minimum: float, passed: bool) -> dict[str, Any]:
    def summary(entities: int, covered: int, uncovered: Counter[str]) -> dict[str, Any]:
        return {
            "entities": entities,
            "covered": covered,
            "percent": round(_percent(covered, entities), 2),
            "uncovered_by_type": {kind: uncovered[kind] for kind in ENTITY_TYPES if uncovered[kind]},
        }

    entities_by_type: Counter[str] = Counter(e.type for r in reports for e in r.entities)
    uncovered_by_type: Counter[str] = Counter(e.type for r in reports for e in r.uncovered)
    return {
        "min": minimum,
        "passed": passed,
        "entity_types": list(ENTITY_TYPES),
        "total": {
            **summary(sum(len(r.entities) for r in reports), sum(r.covered for r in reports), uncovered_by_type),
            "quotes": sum(r.quotes for r in reports),
            "unrepresented": sum(r.unrepresented for r in reports),
        },
        "by_type": {
            kind: summary(entities_by_type[kind], entities_by_type[kind] - uncovered_by_type[kind], Counter())
            for kind in ENTITY_TYPES
            if entities_by_type[kind]
        },
        "reports": [
            {
                "pmid": r.pmid,
                **summary(len(r.entities), r.covered, r.uncovered_by_type),
                "quotes": r.quotes,
                "unrepresented": r.unrepresented,
                "uncovered": [
                    {"id": e.id, "type": e.type, "text": e.text, "ranges": [list(span) for span in e.ranges]}
                    for e in r.uncovered
                ],
            }
            for r in reports
        ],
        "quote_errors": [{"file": e.file, "path": e.path, "quote": e.quote, "problem": e.problem} for e in errors],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_FOLDER, help="default: fixtures/cases")
    parser.add_argument("--min", type=float, default=95.0, help="least total coverage in percent (default 95)")
    parser.add_argument("--show-missing", action="store_true", help="list every uncovered entity with its sentence")
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON to FILE ('-': standard output)")
    args = parser.parse_args(argv)
    # With the JSON on standard output, the table goes to standard error so that the output stays parseable.
    out = sys.stderr if args.json == "-" else sys.stdout

    errors: list[QuoteError] = []
    reports: list[Report] = []
    try:
        if not args.folder.is_dir():
            raise InputError(f"{args.folder}: no such folder")
        cases = sorted(p for p in args.folder.iterdir() if _PMID_FILE.match(p.name))
        if not cases:
            raise InputError(f"{args.folder}: no <PMID>.yaml case files")
        for case in cases:
            reports.append(measure(case, errors))
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    print_table(reports, args.show_missing, out)
    pending = sorted(
        p.stem
        for p in args.folder.glob("*.txt")
        if p.with_suffix(".ann").is_file() and p.stem not in {r.pmid for r in reports}
    )
    if pending:
        print(f"reports without a case file (not counted): {', '.join(pending)}", file=out)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)

    entities = sum(len(r.entities) for r in reports)
    covered = sum(r.covered for r in reports)
    # Multiplied out rather than compared as a rounded percentage, so that exactly --min passes.
    enough = covered * 100 >= args.min * entities
    if not enough:
        print(f"coverage {_percent(covered, entities):.1f}% is below {args.min:g}%", file=sys.stderr)
    passed = enough and not errors
    if args.json:
        text = json.dumps(figures(reports, errors, args.min, passed), indent=2, ensure_ascii=False) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            Path(args.json).write_text(text, encoding="utf-8")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
