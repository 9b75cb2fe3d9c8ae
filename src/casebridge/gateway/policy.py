"""The forwarding policy: which resource types POST /bundles may write, by which interactions, within which
limits. A data file (``mappings/forwarding-policy.yaml``) checked at start, with errors naming its line.

Deny by default: a type or an interaction the file does not list is refused. Some things are never forwarded,
whatever the file says, because they change what the FHIR server does rather than what it holds, or make it
reach another host:

- interactions other than create and update (and their conditional forms): DELETE, GET and HEAD (reads past the
  read API), PATCH (its result is not seen before the server applies it), operations (``$name``);
- Subscription and Endpoint (the server would send data to an address the caller chose), conformance resources
  (StructureDefinition, SearchParameter, OperationDefinition... change how the server validates and searches)
  and terminology resources (CodeSystem, ValueSet, ConceptMap, NamingSystem).

Binary, nested Bundles, AuditEvent and Provenance are refused unless the file lists them: an operator opts in.

``unknown_profiles`` (error, the default, or warning) says what a resource claiming a profile casebridge does not
know (``meta.profile``) gets at this gate, whatever CASEBRIDGE_UNKNOWN_PROFILES says elsewhere: refused, or forwarded
with a warning that the profile was not checked.

``hapi_checks`` switches the pre-checks that predict HAPI FHIR's refusals (``casebridge.gateway.hapi_checks``), run
only when CASEBRIDGE_UPSTREAM is hapi: each on unless set to false, and how many searches they may make.

Besides the file, each entry must be one the FHIR specification's transaction rules allow and one whose effect
validation sees (``check_entries``): a PUT names the resource's own id (``Type/id``) or is conditional
(``Type?search``); a POST names just its type; no two entries write the same URL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import yaml

from casebridge.errors import MappingError
from casebridge.validation.validator import UNKNOWN_PROFILE_SEVERITIES, Issue
from casebridge.yamlfile import compose, line_of, mapping_items, scalar, yaml_error

INTERACTIONS = ("create", "conditional-create", "update", "conditional-update")
NEVER = {
    "Subscription": "it makes the FHIR server send data to an address of the sender's choosing",
    "Endpoint": "it tells the FHIR server where to send data",
    **{
        t: "a conformance resource changes how the FHIR server validates, searches or operates"
        for t in (
            "CapabilityStatement",
            "CompartmentDefinition",
            "ExampleScenario",
            "GraphDefinition",
            "ImplementationGuide",
            "MessageDefinition",
            "OperationDefinition",
            "SearchParameter",
            "StructureDefinition",
            "StructureMap",
        )
    },
    **{
        t: "a terminology resource changes how the FHIR server checks codes"
        for t in ("CodeSystem", "ConceptMap", "NamingSystem", "TerminologyCapabilities", "ValueSet")
    },
}
_NEVER_METHODS = {
    "DELETE": "DELETE entries are never forwarded: deleting is not offered through this gateway",
    "GET": "GET entries are never forwarded: reads go through the read API (GET /diagnostic-reports)",
    "HEAD": "HEAD entries are never forwarded: reads go through the read API",
    "PATCH": "a PATCH cannot be validated before the FHIR server applies it: send the whole resource (PUT)",
}
_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


@dataclass(frozen=True)
class HapiChecks:
    """The pre-checks of ``casebridge.gateway.hapi_checks``, run when the FHIR server is HAPI (CASEBRIDGE_UPSTREAM):
    each on unless the policy's ``hapi_checks`` turns it off."""

    numeric_ids: bool = True  # HAPI-0960
    absolute_references: bool = True  # HAPI-0507
    missing_references: bool = True  # HAPI-1094
    max_lookups: int = 10  # _id searches of the FHIR server for one transaction; more: 422 too-costly

    @property
    def enabled(self) -> bool:
        return self.numeric_ids or self.absolute_references or self.missing_references


HAPI_CHECKS = ("numeric_ids", "absolute_references", "missing_references")
_MAX_LOOKUPS = (1, 100)


@dataclass(frozen=True)
class ForwardingPolicy:
    types: frozenset[str]
    interactions: frozenset[str]
    max_entries: int
    max_bytes: int
    file: str = "forwarding-policy.yaml"
    unknown_profiles: str = "error"  # the severity of an unknown claimed profile in POST /bundles
    hapi_checks: HapiChecks = HapiChecks()


@dataclass(frozen=True)
class Action:
    """What one transaction entry asks the FHIR server to do."""

    index: int
    interaction: str  # one of INTERACTIONS when the entry is well formed
    resource_type: str
    # update: the id in the URL (the resource's own); conditional-update: the resource's id, if it has one (with no
    # match, the server writes at that id)
    resource_id: str | None = None
    condition: str | None = None  # conditional-create: ifNoneExist; conditional-update: the URL's query
    contained: tuple[str, ...] = ()  # the types of the resources it contains, written with it

    @property
    def needs(self) -> list[tuple[str, str]]:
        """The SMART permissions it needs, by type: c to create, u to update (a PUT that creates is still FHIR's
        update), the same for what it contains; a conditional form also searches, and its answer may hold the
        stored match, so r and s as well."""
        permission = "c" if self.interaction.endswith("create") else "u"
        out = [(t, permission) for t in (self.resource_type, *self.contained)]
        if self.condition is not None:
            out += [(self.resource_type, "r"), (self.resource_type, "s")]
        return out


# Search result parameters shape or page what a search returns; in a condition they would make the match the
# server acts on differ from what was asked (and from what anyone checking it sees).
_RESULT_PARAMETERS = frozenset(
    {
        "_contained",
        "_containedType",
        "_count",
        "_elements",
        "_format",
        "_graph",
        "_include",
        "_maxresults",
        "_offset",
        "_pretty",
        "_revinclude",
        "_sort",
        "_summary",
        "_total",
    }
)


def load_forwarding_policy(
    path: Path, is_resource_type: Callable[[str], bool], *, root: Path | None = None
) -> ForwardingPolicy:
    file = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)
    try:
        return _load_forwarding_policy(path, file, is_resource_type)
    except yaml.YAMLError as exc:  # what the helpers below do not turn into a MappingError (a merge key, say)
        raise yaml_error(exc, file) from None


def _load_forwarding_policy(path: Path, file: str, is_resource_type: Callable[[str], bool]) -> ForwardingPolicy:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"cannot read: {getattr(exc, 'strerror', None) or exc}", file=file) from exc
    fields = {key: (value, line) for key, value, line in mapping_items(compose(text, file), file)}
    for key, (_, line) in fields.items():
        if key not in ("types", "interactions", "limits", "unknown_profiles", "hapi_checks"):
            raise MappingError(
                f"unknown key {key!r}; the policy has types, interactions, limits, unknown_profiles and hapi_checks",
                file=file,
                line=line,
            )
    for required in ("types", "interactions", "limits"):
        if required not in fields:
            raise MappingError(
                f"the policy needs {required!r} (deny by default: nothing is implied)", file=file, line=1
            )

    types: set[str] = set()
    for value, line in _list(fields["types"], file):
        if not isinstance(value, str) or not _TYPE.fullmatch(value) or not is_resource_type(value):
            raise MappingError(f"{value!r} is not a FHIR R4 resource type", file=file, line=line)
        if value in NEVER:
            raise MappingError(f"{value} can never be forwarded: {NEVER[value]}", file=file, line=line)
        types.add(value)

    interactions: set[str] = set()
    for value, line in _list(fields["interactions"], file):
        if value not in INTERACTIONS:
            raise MappingError(
                f"{value!r} is not an interaction that can be forwarded; the policy may list "
                f"{', '.join(INTERACTIONS)} (delete, read, search, patch and operations never are)",
                file=file,
                line=line,
            )
        interactions.add(str(value))

    limits_node, limits_line = fields["limits"]
    limits = {
        key: (scalar(v) if isinstance(v, yaml.ScalarNode) else None, line)
        for key, v, line in mapping_items(limits_node, file)
    }
    bounds = {"max_entries": (1, 100_000), "max_bytes": (1024, 1 << 30)}
    for key, (_, line) in limits.items():
        if key not in bounds:
            raise MappingError(f"unknown limit {key!r}; the limits are {', '.join(bounds)}", file=file, line=line)
    values: dict[str, int] = {}
    for key, (low, high) in bounds.items():
        if key not in limits:
            raise MappingError(f"limits needs {key!r}", file=file, line=limits_line)
        value, line = limits[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise MappingError(f"{key}: expected a whole number from {low} to {high}", file=file, line=line)
        values[key] = value
    unknown_profiles = "error"  # deny by default: what cannot be checked is not let through unless the file says so
    if "unknown_profiles" in fields:
        node, line = fields["unknown_profiles"]
        value = scalar(node) if isinstance(node, yaml.ScalarNode) else None
        if value not in UNKNOWN_PROFILE_SEVERITIES:
            raise MappingError(
                f"unknown_profiles: expected {' or '.join(UNKNOWN_PROFILE_SEVERITIES)}, not {value!r}",
                file=file,
                line=line,
            )
        unknown_profiles = str(value)
    hapi_checks = _hapi_checks(fields["hapi_checks"], file) if "hapi_checks" in fields else HapiChecks()
    return ForwardingPolicy(
        frozenset(types),
        frozenset(interactions),
        values["max_entries"],
        values["max_bytes"],
        file=file,
        unknown_profiles=unknown_profiles,
        hapi_checks=hapi_checks,
    )


def _hapi_checks(field: tuple[yaml.Node, int], file: str) -> HapiChecks:
    """The ``hapi_checks`` mapping: each check true or false (absent: true), ``max_lookups`` a whole number."""
    node, _ = field
    given: dict[str, Any] = {}
    for key, value_node, line in mapping_items(node, file):
        value = scalar(value_node) if isinstance(value_node, yaml.ScalarNode) else None
        if key in HAPI_CHECKS:
            if not isinstance(value, bool):
                raise MappingError(f"hapi_checks.{key}: expected true or false, not {value!r}", file=file, line=line)
        elif key == "max_lookups":
            low, high = _MAX_LOOKUPS
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                message = f"hapi_checks.max_lookups: expected a whole number from {low} to {high}"
                raise MappingError(message, file=file, line=line)
        else:
            message = f"unknown key {key!r} in hapi_checks; it has {', '.join(HAPI_CHECKS)} and max_lookups"
            raise MappingError(message, file=file, line=line)
        given[key] = value
    return HapiChecks(**given)


def _list(field: tuple[yaml.Node, int], file: str) -> list[tuple[Any, int]]:
    node, line = field
    if not isinstance(node, yaml.SequenceNode):
        raise MappingError("expected a list", file=file, line=line)
    return [(scalar(item) if isinstance(item, yaml.ScalarNode) else None, line_of(item)) for item in node.value]


def check_entries(bundle: Mapping[str, Any], policy: ForwardingPolicy | None) -> tuple[list[Action], list[Issue]]:
    """The actions of a transaction's entries, and an error for each entry the policy or the FHIR transaction
    rules refuse (nothing of the Bundle may then be forwarded). Entries without a request or resource are left to
    the validator, which reports them. ``policy`` None: casebridge's own Bundles, any type (the rules still hold)."""
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return [], []
    if policy is not None and len(entries) > policy.max_entries:
        message = (
            f"{len(entries)} entries: the forwarding policy ({policy.file}) takes at most {policy.max_entries} in one "
            "transaction; send them in several"
        )
        return [], [Issue("error", "too-costly", message, "Bundle.entry")]
    actions: list[Action] = []
    issues: list[Issue] = []
    written: dict[str, int] = {}  # what an entry writes -> the first entry writing it
    for i, entry in enumerate(entries):
        where = f"Bundle.entry[{i}]"
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict):
            continue
        resource = entry.get("resource")
        action, problem = _action(i, request, resource if isinstance(resource, dict) else None, policy)
        if problem is not None:
            issues.append(Issue("error", problem[0], problem[1], f"{where}.{problem[2]}"))
            continue
        if action is None:
            continue
        target = _target(action)
        if target is not None:
            if target in written:
                message = (
                    f"entry {written[target]} already writes {target[:120]}: a transaction may write a resource once "
                    "(FHIR transaction rules)"
                )
                issues.append(Issue("error", "business-rule", message, f"{where}.request.url"))
                continue
            written[target] = i
        actions.append(action)
        for j, inner in _contained(resource):
            inner_type = inner.get("resourceType")
            if policy is not None and isinstance(inner_type, str) and inner_type not in policy.types:
                issues.append(
                    Issue(
                        "error", "not-supported", _type_refusal(inner_type, policy), f"{where}.resource.contained[{j}]"
                    )
                )
    return actions, issues


def _action(
    index: int, request: Mapping[str, Any], resource: Mapping[str, Any] | None, policy: ForwardingPolicy | None
) -> tuple[Action | None, tuple[str, str, str] | None]:
    method, url = request.get("method"), request.get("url")
    if not isinstance(method, str) or not isinstance(url, str):
        return None, None  # the validator reports a request without them
    if method in _NEVER_METHODS:
        return None, ("not-supported", _NEVER_METHODS[method], "request.method")
    if method not in ("POST", "PUT"):
        return None, None  # not a code of http-verb: the validator says so
    condition = request.get("ifNoneExist")
    for text, field in ((url.partition("?")[2], "request.url"), (condition, "request.ifNoneExist")):
        if "#" in url or (isinstance(text, str) and "#" in text):
            return None, ("invalid", "a request URL or condition has no fragment (#): the server drops it", field)
        problem = _condition_problem(text)
        if problem is not None:
            return None, ("invalid", problem, field)
    path, _, query = url.partition("?")
    if "$" in unquote(path) or path.endswith("/_search"):  # %24 is a $ to the server
        return None, ("not-supported", "operations and searches are not forwarded, only resources", "request.url")
    if resource is None:
        return None, None  # the validator reports a POST or PUT without a resource
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str):
        return None, None
    segments = path.split("/")
    if segments[0] != resource_type:
        message = (
            f"the URL {url[:100]!r} does not start with the resource's type {resource_type!r}: a URL relative to the "
            "FHIR server's base (Type, Type/id or Type?search) is expected"
        )
        return None, ("invalid", message, "request.url")
    if policy is not None and resource_type not in policy.types:
        return None, ("not-supported", _type_refusal(resource_type, policy), "resource")
    if method == "POST":
        if len(segments) != 1 or query:
            return None, (
                "invalid",
                f"a POST creates at its type's URL ({resource_type}), not {url[:100]!r}",
                "request.url",
            )
        given = condition if isinstance(condition, str) and condition else None
        interaction = "conditional-create" if given else "create"
        action = Action(index, interaction, resource_type, condition=given, contained=_contained_types(resource))
    elif query:
        if len(segments) != 1:
            return None, ("invalid", f"a conditional PUT's URL is Type?search, not {url[:100]!r}", "request.url")
        own = resource.get("id")
        action = Action(
            index,
            "conditional-update",
            resource_type,
            resource_id=own if isinstance(own, str) and _ID.fullmatch(own) else None,
            condition=query,
            contained=_contained_types(resource),
        )
    else:
        if len(segments) != 2 or not segments[1]:
            message = f"a PUT names the resource it writes: {resource_type}/<id> (or {resource_type}?search)"
            return None, ("invalid", message, "request.url")
        if not _ID.fullmatch(segments[1]):
            return None, ("invalid", f"{segments[1][:80]!r} is not a FHIR id", "request.url")
        own = resource.get("id")
        if own != segments[1]:
            message = (
                f"the URL names {resource_type}/{segments[1]} but the resource's id is "
                f"{own!r}: they must be the same (FHIR update)"
                if own is not None
                else f"the resource has no id: a PUT to {resource_type}/{segments[1]} needs id {segments[1]!r}"
            )
            return None, ("invalid", message, "resource.id" if own is not None else "resource")
        action = Action(index, "update", resource_type, resource_id=segments[1], contained=_contained_types(resource))
    if policy is not None and action.interaction not in policy.interactions:
        message = f"{action.interaction} is not allowed by the forwarding policy ({policy.file})"
        return None, ("not-supported", message, "request")
    return action, None


def _target(action: Action) -> str | None:
    """What an entry writes, for finding two entries that write the same thing (a plain create writes new)."""
    if action.interaction == "update":
        return f"{action.resource_type}/{action.resource_id}"
    if action.condition:
        return f"{action.resource_type}?{action.condition}"
    return None


def _type_refusal(resource_type: str, policy: ForwardingPolicy) -> str:
    if resource_type in NEVER:
        return f"{resource_type} is never forwarded: {NEVER[resource_type]}"
    return f"{resource_type} is not a type the forwarding policy ({policy.file}) lets through"


def _condition_problem(query: object) -> str | None:
    if not isinstance(query, str) or not query:
        return None
    names = {name.split(":", 1)[0] for name, _ in parse_qsl(query, keep_blank_values=True)}
    shaping = sorted(names & _RESULT_PARAMETERS)
    if shaping:
        return f"a condition selects what is written; result parameters ({', '.join(shaping)}) shape a search's answer"
    return None


def _contained_types(resource: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(sorted({str(c.get("resourceType")) for _, c in _contained(resource) if c.get("resourceType")}))


def _contained(resource: Mapping[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """The contained resources that are objects, each with its index in ``contained`` (an issue names that)."""
    contained = resource.get("contained")
    return [(j, c) for j, c in enumerate(contained) if isinstance(c, dict)] if isinstance(contained, list) else []
