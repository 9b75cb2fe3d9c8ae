"""The functions mapping templates may call, and the conversion context they read.

Each function takes the context first (supplied by the evaluator) and returns JSON-ready FHIR fragments
(dicts, lists, strings) or None, which drops the element. Table names and roles given as constants are
checked when the mappings load.
"""

from __future__ import annotations

import ast
import datetime as dt
import hashlib
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from casebridge.domain import ucum
from casebridge.domain.case import Age, BodySite, CaseReport, Concept, Quantity, TimeElement
from casebridge.mapping.codes import CodeTable
from casebridge.mapping.expressions import Function

# Fixed namespace: resource ids are uuid5(namespace, "<case id>/<role>/<key>"), the same on every run and
# every machine, so re-sending a case updates the same resources instead of creating new ones.
ID_NAMESPACE = uuid.UUID("5b0f3c1e-6a43-4d39-9c51-2f1d6f4a7e21")
# uuid.uuid5 builds UUID objects and looks SHA-1 up by name on every call (a sixth of a case's conversion):
# the same RFC 4122 computation on bytes, from a SHA-1 state that has taken the namespace once.
_NAMESPACE_SHA1 = hashlib.sha1(ID_NAMESPACE.bytes, usedforsecurity=False)


def name_uuid_bytes(name: str) -> bytes:
    """The 16 bytes of uuid.uuid5(ID_NAMESPACE, name)."""
    sha = _NAMESPACE_SHA1.copy()
    sha.update(name.encode())
    digest = bytearray(sha.digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return bytes(digest)


def name_uuid(name: str) -> str:
    """str(uuid.uuid5(ID_NAMESPACE, name)): a resource id."""
    h = name_uuid_bytes(name).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class Planned:
    role: str
    key: str
    resource_type: str
    id: str
    seed: str  # "<case id>/<role>/<key>": also the resource's identifier value
    title: str | None

    @property
    def full_url(self) -> str:
        return f"urn:uuid:{self.id}"

    def reference(self) -> dict[str, str]:
        out = {"reference": self.full_url}
        if self.title:
            out["display"] = self.title
        return out


@dataclass
class Context:
    tables: dict[str, CodeTable]
    case_id: str = ""
    planned: dict[tuple[str, str], Planned] = field(default_factory=dict)
    by_role: dict[str, list[Planned]] = field(default_factory=dict)
    recorded: dt.datetime | None = None


def _table(ctx: Context, name: str) -> CodeTable:
    return ctx.tables[name]


def _one_site(bs: BodySite | list[BodySite] | None) -> BodySite | None:
    if isinstance(bs, list):
        return bs[0] if len(bs) == 1 else None
    return bs


def concept(
    ctx: Context, c: Concept | str | None, table: str = "concepts", site: BodySite | list[BodySite] | None = None
) -> dict[str, Any] | None:
    """A CodeableConcept: the codings of the concept's key (if any) and the source's words as text.

    With ``site`` (one site), codes that have the site built in (rows keyed ``key@site|side`` or ``key@site``)
    are added to the key's own codes.
    """
    if c is None:
        return None
    site = _one_site(site)
    if isinstance(c, str):
        return code(ctx, table, c)
    out: dict[str, Any] = {}
    if c.key is not None:
        t = _table(ctx, table)
        codings = t.codings(c.key)
        if site is not None and site.site.key is not None:
            qualified = f"{c.key}@{site.site.key}" + (f"|{site.laterality}" if site.laterality else "")
            codings = codings + t.codings(qualified)
        if codings:
            out["coding"] = codings
    out["text"] = c.text
    return out


def code(ctx: Context, table: str, key: str | None) -> dict[str, Any] | None:
    """A CodeableConcept for a fixed key of a table: its codings, or its display as text when uncoded."""
    if key is None:
        return None
    t = _table(ctx, table)
    if key not in t:
        return None
    codings = t.codings(key)
    return {"coding": codings} if codings else {"text": t.text(key)}


def coding(ctx: Context, table: str, key: str | None) -> dict[str, str] | None:
    """The first Coding of a key, or None when the key is unknown or uncoded."""
    if key is None:
        return None
    codings = _table(ctx, table).codings(key)
    return codings[0] if codings else None


def _site_rows(ctx: Context, bs: BodySite) -> list[dict[str, str]]:
    sites = _table(ctx, "body-sites")
    if bs.site.key is None:
        return []
    if bs.laterality:
        # A coding without the side would say less than the text: use only a lateralised code.
        return sites.codings(f"{bs.site.key}|{bs.laterality}")
    return sites.codings(bs.site.key)


def site(ctx: Context, bs: BodySite | list[BodySite] | None) -> dict[str, Any] | None:
    """A body site CodeableConcept: a lateralised code where one is confirmed, and the words. Several sites in one
    element that holds one (Observation.bodySite) are their words only: codings of different sites side by side
    would say the concept is each of them."""
    if isinstance(bs, list):
        if len(bs) > 1:
            label = " and ".join(b.label for b in bs)
            return {"text": label[:1].upper() + label[1:]}
        bs = bs[0] if bs else None
    if bs is None:
        return None
    out: dict[str, Any] = {}
    codings = _site_rows(ctx, bs)
    if codings:
        out["coding"] = codings
    out["text"] = bs.label[:1].upper() + bs.label[1:]
    return out


def sites(ctx: Context, bss: list[BodySite] | BodySite | None) -> list[dict[str, Any]]:
    """One body site CodeableConcept per site, for elements that repeat (Condition.bodySite)."""
    if bss is None:
        return []
    items = bss if isinstance(bss, list) else [bss]
    return [c for c in (site(ctx, b) for b in items) if c is not None]


def site_coding(ctx: Context, bs: BodySite | None) -> dict[str, str] | None:
    """The body structure alone as a Coding (for elements that carry laterality apart)."""
    if bs is None or bs.site.key is None:
        return None
    return coding(ctx, "body-sites", bs.site.key)


def laterality(ctx: Context, bs: BodySite | None) -> dict[str, str] | None:
    if bs is None or bs.laterality is None:
        return None
    return coding(ctx, "laterality", bs.laterality)


def quantity(ctx: Context, q: Quantity | None) -> dict[str, Any] | None:
    """A FHIR Quantity with its UCUM system and code: the units table's row for the unit, else the unit itself.

    The case model accepts only valid UCUM units, and a valid UCUM expression is its own code; the check here
    keeps a Quantity built without the model from being given a code it does not have.
    """
    if q is None:
        return None
    out: dict[str, Any] = {"value": q.value, "unit": q.unit}
    row = coding(ctx, "units", q.unit)
    if row is not None:
        out["system"] = row["system"]
        out["code"] = row["code"]
    elif ucum.is_ucum(q.unit):
        out["system"] = ucum.SYSTEM
        out["code"] = q.unit
    return out


def ref(ctx: Context, role: str, key: object = None) -> dict[str, str] | None:
    """A Reference to the resource of ``role`` (and ``key`` for a role with many), or None if absent."""
    planned = ctx.planned.get((role, "" if key is None else str(key)))
    return planned.reference() if planned else None


def refs(ctx: Context, role: str) -> list[dict[str, str]]:
    """References to every resource of ``role``, in bundle order."""
    return [p.reference() for p in ctx.by_role.get(role, ())]


def all_refs(ctx: Context, exclude: list[str] | None = None) -> list[dict[str, str]]:
    """References to every resource of the bundle except the excluded roles."""
    skip = set(exclude or ())
    return [p.reference() for ps in ctx.by_role.values() for p in ps if p.role not in skip]


def dicom_uid(ctx: Context, kind: str, key: object) -> str:
    """A DICOM UID of the "2.25.<uuid as integer>" form (ISO/IEC 9834-8), deterministic per case and key.

    Case reports carry no DICOM UIDs, but R4 requires one on each ImagingStudy series; a derived UID
    is an identifier of ours, not a clinical fact.
    """
    return f"2.25.{int.from_bytes(name_uuid_bytes(f'{ctx.case_id}/dicom/{kind}/{key}'))}"


_AGE_UCUM = {"years": "a", "months": "mo", "weeks": "wk", "days": "d", "hours": "h"}


def age(ctx: Context, a: Age | None) -> dict[str, Any] | None:
    """A FHIR Age: the value and the case's unit word, coded in UCUM (R4's age-1: an Age with a value has a UCUM
    code of time)."""
    if a is None:
        return None
    return {"value": a.value, "unit": a.unit, "system": ucum.SYSTEM, "code": _AGE_UCUM[a.unit]}


# The roles that stand for what a diagnostic step produced, most specific first: its report, else its impression.
_STEP_ROLES = ("histopathology-report", "imaging-report", "laboratory-report", "step-impression")


def step_ref(ctx: Context, step_id: str | None) -> dict[str, str] | None:
    """A reference to what a diagnostic step produced: its report, or for a step without one (an examination)
    its ClinicalImpression, which lists what was looked at."""
    if step_id is None:
        return None
    for role in _STEP_ROLES:
        found = ref(ctx, role, step_id)
        if found is not None:
            return found
    return None


def when(ctx: Context, t: TimeElement | None, case: CaseReport) -> str | None:
    """A time element in words, the events it is relative to named ("2 weeks after Surgical excision")."""
    return None if t is None else t.words(case.event_names)


def when_untyped(ctx: Context, t: TimeElement | None, case: CaseReport) -> str | None:
    """The words of a time FHIR has no typed place for (neither an age nor a date), capitalised."""
    if t is None or t.untyped is None:
        return None
    words = t.words(case.event_names)
    return words[:1].upper() + words[1:]


def recorded(ctx: Context) -> str | None:
    """When this conversion ran (an instant): for Provenance.recorded, never a clinical date."""
    return ctx.recorded.isoformat(timespec="seconds") if ctx.recorded else None


def join(ctx: Context, items: Iterable[object] | None, sep: str = "; ") -> str | None:
    parts = [str(i) for i in (items or ()) if i not in (None, "")]
    return sep.join(parts) or None


def key_of(ctx: Context, first: object, second: object = None, third: object = None) -> str | None:
    """Parts joined with "|" into a table key, e.g. key_of(step.kind, site_key) -> "xray|forearm"."""
    parts = [first, second, third]
    if first is None or (second is None and third is not None):
        return None
    return "|".join(str(p) for p in parts if p is not None)


def capitalize(ctx: Context, text: str | None) -> str | None:
    return text[:1].upper() + text[1:] if text else text


def texts(ctx: Context, concepts: Iterable[Concept] | None) -> list[str]:
    """The words of a list of concepts."""
    return [c.text for c in concepts or ()]


# --- load-time checks of constant arguments -----------------------------------------------------------------


def _const(node: ast.expr | None) -> object:
    return node.value if isinstance(node, ast.Constant) else None


def table_check(
    tables: dict[str, CodeTable],
    *,
    position: int,
    keyword: str,
    default: str | None = None,
    key_position: int | None = None,
) -> Callable[[list[ast.expr], dict[str, ast.expr]], str | None]:
    def check(args: list[ast.expr], kwargs: dict[str, ast.expr]) -> str | None:
        node = args[position] if len(args) > position else kwargs.get(keyword)
        name = _const(node) if node is not None else default
        if node is not None and not isinstance(name, str):
            return "the table name must be a constant string"
        if name is not None and name not in tables:
            return f"no code table {name!r}; tables: {', '.join(sorted(tables))}"
        if key_position is not None and isinstance(name, str):
            key = _const(args[key_position] if len(args) > key_position else kwargs.get("key"))
            if isinstance(key, str) and key not in tables[name]:
                return f"table {name!r} has no key {key!r}"
        return None

    return check


def role_check(roles: set[str]) -> Callable[[list[ast.expr], dict[str, ast.expr]], str | None]:
    def check(args: list[ast.expr], kwargs: dict[str, ast.expr]) -> str | None:
        node = args[0] if args else kwargs.get("role")
        role = _const(node)
        if not isinstance(role, str):
            return "the role must be a constant string"
        if role not in roles:
            return f"no resource template has role {role!r}; roles: {', '.join(sorted(roles))}"
        return None

    return check


def registry(tables: dict[str, CodeTable], roles: set[str]) -> dict[str, Function]:
    def fn(impl: Callable[..., Any], check: Any = None) -> Function:
        return Function(impl.__name__, impl, (impl.__doc__ or "").strip(), check=check)

    return {
        "concept": fn(concept, table_check(tables, position=1, keyword="table", default="concepts")),
        "code": fn(code, table_check(tables, position=0, keyword="table", key_position=1)),
        "coding": fn(coding, table_check(tables, position=0, keyword="table", key_position=1)),
        "site": fn(site),
        "sites": fn(sites),
        "site_coding": fn(site_coding),
        "laterality": fn(laterality),
        "quantity": fn(quantity),
        "ref": fn(ref, role_check(roles)),
        "refs": fn(refs, role_check(roles)),
        "all_refs": fn(all_refs),
        "recorded": fn(recorded),
        "age": fn(age),
        "when": fn(when),
        "when_untyped": fn(when_untyped),
        "step_ref": fn(step_ref),
        "dicom_uid": fn(dicom_uid),
        "join": fn(join),
        "capitalize": fn(capitalize),
        "key_of": fn(key_of),
        "texts": fn(texts),
    }
