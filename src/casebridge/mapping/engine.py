"""The mapping engine: loads a mapping folder once, then converts cases into transaction Bundles.

A mapping folder holds ``bundle.yaml`` (which template files, in which order, and how entries are sent),
``resources/*.yaml`` (one file per resource type, see ``templates.py``) and ``codes/*.csv`` (code tables,
see ``codes.py``). Everything is checked when the folder loads; errors name the file and line.

Conversion is two passes: first every resource the case needs is *planned* (role, key, deterministic
id), so that any resource can reference any other; then every body is rendered, given its identifier
and narrative, and wrapped in a Bundle entry whose request is idempotent.
"""

from __future__ import annotations

import datetime as dt
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import yaml
from fhir.resources.R4B import get_fhir_model_class
from pydantic import BaseModel

from casebridge.domain.case import BodySite, CaseReport, Concept
from casebridge.errors import ConversionError, MappingError, Problem
from casebridge.mapping.codes import CodeTable, check_citations, load_tables, load_terminology
from casebridge.mapping.expressions import StaticType
from casebridge.mapping.functions import Context, Planned, name_uuid, registry
from casebridge.mapping.narrative import narrative
from casebridge.mapping.templates import BodyCompiler, ResourceTemplate
from casebridge.yamlfile import compose, line_of, mapping_items, scalar

RequestMode = Literal["put", "conditional-create"]
_TEMPLATE_KEYS = {"role", "title", "for_each", "as", "key", "when", "identity", "body", "description", "profile"}


@dataclass
class MappingSet:
    root: Path
    tables: dict[str, CodeTable]
    templates: list[ResourceTemplate]
    request: RequestMode
    identifier_system: str
    settings: SimpleNamespace
    identifier_field: dict[str, bool] = field(default_factory=dict)  # type -> identifier is a list

    # --- loading ---------------------------------------------------------------------------------------

    @classmethod
    def load(cls, root: Path, *, terminology: Path | None = None) -> MappingSet:
        """Load and check a mapping folder. ``terminology``: the file code citations are checked against."""
        root = root.resolve()
        bundle_file = root / "bundle.yaml"
        rel = _relative(bundle_file, root)
        try:
            text = bundle_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise MappingError(f"cannot read the bundle mapping: {exc.strerror}", file=rel) from exc
        top = {k: (v, line) for k, v, line in mapping_items(compose(text, rel), rel)}
        unknown = set(top) - {"request", "identifier_system", "settings", "resources", "codes", "description"}
        if unknown:
            key = sorted(unknown)[0]
            raise MappingError(f"unknown key {key!r}", file=rel, line=top[key][1])
        for required in ("identifier_system", "resources"):
            if required not in top:
                raise MappingError(f"{required!r} is required", file=rel, line=1)
        request: RequestMode = scalar(top["request"][0]) if "request" in top else "put"
        if request not in ("put", "conditional-create"):
            raise MappingError("request must be put or conditional-create", file=rel, line=top["request"][1])
        identifier_system = scalar(top["identifier_system"][0])
        if not isinstance(identifier_system, str) or ":" not in identifier_system:
            raise MappingError("identifier_system must be an absolute URI", file=rel, line=top["identifier_system"][1])
        settings = SimpleNamespace()
        if "settings" in top:
            for key, node, _line in mapping_items(top["settings"][0], rel):
                setattr(settings, key, scalar(node) if isinstance(node, yaml.ScalarNode) else None)
        codes_dir = root / (scalar(top["codes"][0]) if "codes" in top else "codes")
        tables = load_tables(codes_dir, root=root.parent)  # names files as mappings/codes/x.csv
        for needed in ("concepts", "body-sites", "laterality", "units"):
            if needed not in tables:
                raise MappingError(f"the code table {needed}.csv is missing", file=_relative(codes_dir, root))
        if terminology is not None:
            check_citations(tables, load_terminology(terminology), file=terminology.name)

        files_node, files_line = top["resources"]
        if not isinstance(files_node, yaml.SequenceNode) or not files_node.value:
            raise MappingError("resources must list the template files", file=rel, line=files_line)
        parsed = []
        for item in files_node.value:
            name = scalar(item)
            path = root / str(name)
            if not path.is_file():
                raise MappingError(f"template file {name!r} does not exist", file=rel, line=line_of(item))
            file = _relative(path, root)
            parsed.append((file, compose(path.read_text(encoding="utf-8"), file)))

        headers = [h for file, node in parsed for h in _headers(file, node)]
        roles: dict[str, str] = {}
        for h in headers:
            if h.role in roles:
                raise MappingError(f"role {h.role!r} is already defined in {roles[h.role]}", file=h.file, line=h.line)
            roles[h.role] = f"{h.file}:{h.line}"
        functions = registry(tables, set(roles))
        templates = [h.compile(functions) for h in headers]
        identifier_field = {t.resource_type: _identifier_is_list(t.resource_type) for t in templates}
        return cls(
            root,
            tables,
            templates,
            request,
            identifier_system,
            settings,
            {k: v for k, v in identifier_field.items() if v is not None},
        )

    # --- conversion ------------------------------------------------------------------------------------

    def check_vocabulary(self, case: CaseReport) -> list[Problem]:
        """Every vocabulary key in the case must be known to the code tables."""
        problems = []
        for path, obj in _walk(case, ""):
            if isinstance(obj, BodySite) and obj.site.key is not None:
                if obj.site.key not in self.tables["body-sites"]:
                    problems.append(Problem(f"{path}.site.key", f"unknown body site key {obj.site.key!r}"))
            elif isinstance(obj, Concept) and obj.key is not None and not path.endswith(".site"):
                if obj.key not in self.tables["concepts"]:
                    problems.append(Problem(f"{path}.key", f"unknown vocabulary key {obj.key!r}"))
        return problems

    def convert(self, case: CaseReport, *, recorded: dt.datetime | None = None, source: str = "") -> dict[str, Any]:
        return self.convert_detailed(case, recorded=recorded, source=source).bundle

    def convert_detailed(
        self, case: CaseReport, *, recorded: dt.datetime | None = None, source: str = ""
    ) -> Conversion:
        problems = self.check_vocabulary(case)
        if problems:
            upgraded = case.upgraded_from
            raise ConversionError(
                "the case uses vocabulary keys the code tables do not know (see mappings/codes)"
                + (
                    f"; the paths are those of the case upgraded from schema {upgraded} to {case.schema_version} "
                    "(casebridge migrate FILE shows it)"
                    if upgraded
                    else ""
                ),
                source=source,
                problems=problems,
            )
        ctx = Context(tables=self.tables, case_id=case.case_id, recorded=recorded or dt.datetime.now(dt.UTC))
        base_env: dict[str, Any] = {"case": case, "settings": self.settings, "$ctx": ctx}
        jobs: list[tuple[ResourceTemplate, Planned, dict[str, Any]]] = []
        ids: dict[str, str] = {}
        for t in self.templates:
            for key, env in self._instances(t, base_env):
                identity = _guarded(t, t.identity, env) if t.identity is not None else None
                # Shared identities (a registry's patient) and per-case seeds live in separate namespaces.
                seed = (
                    f"identity/{t.role}/{identity}"
                    if identity
                    else f"{case.case_id}/{t.role}" + (f"/{key}" if key else "")
                )
                if (t.role, key) in ctx.planned:
                    raise ConversionError(f"two {t.role} resources share the key {key!r}", source=source)
                title = _guarded(t, t.title, env) if t.title is not None else None
                planned = Planned(t.role, key, t.resource_type, name_uuid(seed), seed, title)
                if planned.id in ids:  # uuid5 of distinct seeds: cannot happen unless seeds coincide
                    raise ConversionError(f"{seed!r} and {ids[planned.id]!r} give the same id", source=source)
                ids[planned.id] = seed
                ctx.planned[(t.role, key)] = planned
                ctx.by_role.setdefault(t.role, []).append(planned)
                jobs.append((t, planned, env))
        entries = [_guarded(t, self._entry, t, p, env) for t, p, env in jobs]
        bundle = {
            "resourceType": "Bundle",
            "identifier": {"system": self.identifier_system, "value": case.case_id},
            "type": "transaction",
            "entry": entries,
        }
        return Conversion(bundle, {p.full_url: p.title or p.role for _, p, _ in jobs})

    def _instances(self, t: ResourceTemplate, env: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        """The resources a template makes for a case. ``when`` is checked per item (with the item bound)."""
        if t.for_each is None:
            if t.when is None or _guarded(t, t.when, env):
                yield "", env
            return
        var = t.var or "item"  # always set with for_each (checked at load)
        for item in _guarded(t, t.for_each, env) or ():
            inner = {**env, var: item}
            if t.when is not None and not _guarded(t, t.when, inner):
                continue
            key = _guarded(t, t.key, inner) if t.key is not None else None
            if key in (None, ""):
                raise MappingError(f"role {t.role!r}: the key evaluated to nothing", file=t.file, line=t.line)
            yield str(key), inner

    def _entry(self, t: ResourceTemplate, p: Planned, env: dict[str, Any]) -> dict[str, Any]:
        body = t.body(env) or {}
        resource: dict[str, Any] = {"resourceType": t.resource_type, "id": p.id}
        identifier = {"system": self.identifier_system, "value": p.seed}
        as_list = self.identifier_field.get(t.resource_type)
        if as_list is not None:
            existing = body.pop("identifier", None)
            if as_list:
                resource["identifier"] = [identifier, *(existing or [])]
            else:
                resource["identifier"] = identifier
        resource.update(body)
        head: dict[str, Any] = {"resourceType": resource.pop("resourceType"), "id": resource.pop("id")}
        if t.profile:
            head["meta"] = {"profile": [t.profile]}
        resource = {**head, "text": narrative(resource | {"resourceType": t.resource_type}, p.title), **resource}
        if self.request == "conditional-create" and as_list is not None:
            request = {
                "method": "POST",
                "url": t.resource_type,
                "ifNoneExist": f"identifier={_escape(self.identifier_system)}|{_escape(p.seed)}",
            }
        else:
            request = {"method": "PUT", "url": f"{t.resource_type}/{p.id}"}
        return {"fullUrl": p.full_url, "resource": resource, "request": request}


# --- helpers -------------------------------------------------------------------------------------------------


def _relative(path: Path, root: Path) -> str:
    try:
        return f"{root.name}/{path.relative_to(root)}"
    except ValueError:
        return str(path)


def _identifier_is_list(resource_type: str) -> bool | None:
    """Whether the type's ``identifier`` is a list (True), single (False), or absent (None)."""
    info = get_fhir_model_class(resource_type).model_fields.get("identifier")
    if info is None:
        return None
    annotation = info.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # Optional[...]
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return typing.get_origin(annotation) is list


def _escape(value: str) -> str:
    """A token for a FHIR search parameter: backslash, pipe, comma and dollar are escaped."""
    return re.sub(r"([\\|,$])", r"\\\1", value)


@dataclass(frozen=True)
class Conversion:
    bundle: dict[str, Any]
    titles: dict[str, str]  # fullUrl -> what the resource is, in words


T = typing.TypeVar("T")


def _guarded(t: ResourceTemplate, fn: typing.Callable[..., T], *args: Any) -> T:
    """Run a template's compiled code; a failure is the template's fault and names its file and line."""
    try:
        return fn(*args)
    except (MappingError, ConversionError):
        raise
    except Exception as exc:
        raise MappingError(f"role {t.role!r} failed: {type(exc).__name__}: {exc}", file=t.file, line=t.line) from exc


def _element_names(resource_type: str) -> set[str]:
    fields = get_fhir_model_class(resource_type).model_fields
    return {f.alias or name for name, f in fields.items()}


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _walk(obj: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every model object of a case, with its field path (leaves are not visited: keys live in models)."""
    yield path, obj
    cls = type(obj)
    names = _FIELD_NAMES.get(cls)
    if names is None:  # model_fields is a descriptor calling a classmethod on every read
        names = _FIELD_NAMES[cls] = tuple(cls.model_fields)
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, BaseModel):
            yield from _walk(value, f"{path}.{name}" if path else name)
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            for i, item in enumerate(value):
                yield from _walk(item, f"{path}.{name}[{i}]" if path else f"{name}[{i}]")


@dataclass
class _Header:
    file: str
    line: int
    role: str
    resource_type: str
    entries: dict[str, tuple[yaml.Node, int]]

    def compile(self, functions: dict[str, Any]) -> ResourceTemplate:
        bc = BodyCompiler(functions, self.file)
        scope: dict[str, StaticType] = {"case": CaseReport, "settings": None}
        for_each = key = when = identity = None
        var = None
        e = self.entries
        if "for_each" in e:
            if "as" not in e or "key" not in e:
                raise MappingError(
                    "for_each needs 'as' (the item's name) and 'key' (what tells items apart)",
                    file=self.file,
                    line=e["for_each"][1],
                )
            for_each, source_type = bc.expr(str(scalar(e["for_each"][0])), scope, e["for_each"][1])
            var = str(scalar(e["as"][0]))
            if not var.isidentifier() or var in scope:
                raise MappingError(f"'as' must be a new plain name, not {var!r}", file=self.file, line=e["as"][1])
            item_type = getattr(source_type, "item", None) if source_type is not None else None
            if source_type is not None and not hasattr(source_type, "item"):
                raise MappingError("for_each needs a list", file=self.file, line=e["for_each"][1])
            scope = {**scope, var: item_type}
            key = bc.expr(str(scalar(e["key"][0])), scope, e["key"][1])[0]
        elif "as" in e or "key" in e:
            k = "as" if "as" in e else "key"
            raise MappingError(f"{k!r} only goes with for_each", file=self.file, line=e[k][1])
        if "when" in e:  # with the item in scope: it filters items
            when = bc.expr(str(scalar(e["when"][0])), scope, e["when"][1])[0]
        if "identity" in e:
            identity = bc.expr(str(scalar(e["identity"][0])), scope, e["identity"][1])[0]
        title = bc.value(e["title"][0], scope) if "title" in e else None
        if "body" not in e:
            raise MappingError(f"role {self.role!r} has no body", file=self.file, line=self.line)
        body_node, _ = e["body"]
        allowed = _element_names(self.resource_type)
        for name, _node, line in mapping_items(body_node, self.file):
            if name in ("resourceType", "id", "text", "meta"):
                raise MappingError(f"{name!r} is set by casebridge, not by the template", file=self.file, line=line)
            # The model's aliases name the companions of primitives only ("_birthDate"): "_code" is refused.
            if not name.startswith("$") and name not in allowed:
                raise MappingError(f"{self.resource_type} has no element {name!r}", file=self.file, line=line)
        body = bc.value(body_node, scope)
        profile = None
        if "profile" in e:
            profile = scalar(e["profile"][0])
            if not isinstance(profile, str) or not profile.startswith(("http://", "https://")):
                raise MappingError(
                    "profile must be the canonical URL of a profile", file=self.file, line=e["profile"][1]
                )
        return ResourceTemplate(
            self.role,
            self.resource_type,
            self.file,
            self.line,
            title,
            for_each,
            var,
            key,
            when,
            body,
            identity,
            profile,
        )


def _headers(file: str, node: yaml.Node) -> list[_Header]:
    top = {k: (v, line) for k, v, line in mapping_items(node, file)}
    unknown = set(top) - {"resourceType", "resources", "description"}
    if unknown:
        key = sorted(unknown)[0]
        raise MappingError(f"unknown key {key!r}", file=file, line=top[key][1])
    if "resourceType" not in top or "resources" not in top:
        raise MappingError("a template file needs resourceType and resources", file=file, line=1)
    rtype = scalar(top["resourceType"][0])
    try:
        get_fhir_model_class(str(rtype))
    except ValueError:
        raise MappingError(f"{rtype!r} is not a FHIR resource type", file=file, line=top["resourceType"][1]) from None
    items = top["resources"][0]
    if not isinstance(items, yaml.SequenceNode) or not items.value:
        raise MappingError("resources must be a non-empty list", file=file, line=top["resources"][1])
    out = []
    for item in items.value:
        entries = {k: (v, line) for k, v, line in mapping_items(item, file)}
        bad = set(entries) - _TEMPLATE_KEYS
        if bad:
            key = sorted(bad)[0]
            raise MappingError(
                f"unknown key {key!r} (allowed: {', '.join(sorted(_TEMPLATE_KEYS))})", file=file, line=entries[key][1]
            )
        if "role" not in entries:
            raise MappingError("each resource needs a role", file=file, line=line_of(item))
        role = scalar(entries["role"][0])
        if not isinstance(role, str) or not role or not all(c.isalnum() or c in "-_" for c in role):
            raise MappingError(
                f"role must be a name of letters, digits, - and _, not {role!r}", file=file, line=entries["role"][1]
            )
        out.append(_Header(file, entries["role"][1], role, str(rtype), entries))
    return out
