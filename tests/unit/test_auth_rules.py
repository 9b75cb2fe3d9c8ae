"""The API's access rules on their own, in the test process: ``authenticate`` finds a Bearer key among every key
(401 with a challenge otherwise) and records its name; ``require_scopes`` names the missing scopes (ten at most,
then how many more); ``namespace_guard`` checks only keys bound to namespaces, counts the namespaces of every
other key as foreign, and answers 403, or 422 when the check would cost too much; SMART scopes
(``casebridge.access.scopes``) are parsed, refused and granted exactly as written."""

from __future__ import annotations

import asyncio
import locale
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi.security import HTTPAuthorizationCredentials
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from casebridge.access.keys import ApiKey, digest, load_api_keys_file, merge_keys, parse_api_keys
from casebridge.access.scopes import LEGACY, Scopes, parse_scopes
from casebridge.api.errors import ApiError
from casebridge.api.security import authenticate, namespace_guard, require_scopes
from casebridge.errors import MappingError
from casebridge.fhir.client import AsyncFhirClient
from casebridge.gateway.policy import Action
from casebridge.validation.validator import Issue, operation_outcome

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="casebridge"'}


def _key(name: str, scopes: str = "system/*.rs", secret: str = "", namespaces: tuple[str, ...] = ()) -> ApiKey:
    return ApiKey(name, parse_scopes(scopes), digest(secret or f"{name}-secret-0123456789abcdef"), namespaces)


def _refusal(fn: Callable[..., Any], *args: Any) -> tuple[int, str, str, str, dict[str, str]]:
    with pytest.raises(ApiError) as caught:
        fn(*args)
    issue = caught.value.body["issue"][0]
    return caught.value.status, issue["severity"], issue["code"], issue["diagnostics"], caught.value.headers


# -- authenticate -------------------------------------------------------------------------------------------


KEYS = [_key("alpha"), _key("beta"), _key("gamma")]


def _auth_request(keys: list[ApiKey]) -> Request:
    app = SimpleNamespace(state=SimpleNamespace(services=SimpleNamespace(keys=keys)))
    return Request({"type": "http", "method": "GET", "path": "/", "headers": [], "app": app})


def _authenticate(request: Request, secret: str | None) -> ApiKey:
    credentials = None if secret is None else HTTPAuthorizationCredentials(scheme="Bearer", credentials=secret)
    return asyncio.run(authenticate(request, credentials))


@pytest.mark.parametrize("name", ["alpha", "beta", "gamma"])
def test_a_known_key_is_found_among_every_key_and_its_name_recorded(name: str) -> None:
    request = _auth_request(KEYS)
    found = _authenticate(request, f"{name}-secret-0123456789abcdef")
    assert found is next(k for k in KEYS if k.name == name)
    assert request.state.api_key == name


def test_no_credentials_is_a_401_with_a_challenge() -> None:
    assert _refusal(_authenticate, _auth_request(KEYS), None) == (
        401,
        "error",
        "login",
        "authentication required: Authorization: Bearer <API key>",
        CHALLENGE,
    )


@pytest.mark.parametrize(
    "secret",
    [
        "delta-secret-0123456789abcdef",
        "alpha-secret-0123456789abcde",  # one character short of a key
        "alpha-secret-0123456789abcdeff",  # one character more
        "ALPHA-SECRET-0123456789ABCDEF",
        "",
    ],
)
def test_an_unknown_key_is_a_401_with_a_challenge(secret: str) -> None:
    request = _auth_request(KEYS)
    assert _refusal(_authenticate, request, secret) == (401, "error", "login", "unknown API key", CHALLENGE)
    assert not hasattr(request.state, "api_key")


def test_with_no_keys_every_key_is_unknown() -> None:
    assert _refusal(_authenticate, _auth_request([]), "alpha-secret-0123456789abcdef")[3] == "unknown API key"


# -- require_scopes -----------------------------------------------------------------------------------------


TYPES = ["Type" + chr(ord("A") + i) for i in range(12)]  # TypeA .. TypeL


def test_a_key_with_every_scope_needed_passes() -> None:
    key = _key("job", "system/Observation.cu system/*.rs")
    require_scopes(key, [("Observation", "c"), ("Observation", "u"), ("Patient", "r"), ("Patient", "s")], "push")
    require_scopes(key, [], "push")


@pytest.mark.parametrize(
    ("needs", "shown"),
    [
        ([("Patient", "c")], "system/Patient.c"),
        ([("Observation", "c"), ("Patient", "u"), ("Observation", "c")], "system/Patient.u"),
        ([("Patient", "u"), ("Specimen", "c"), ("Patient", "u")], "system/Patient.u system/Specimen.c"),
        # Ten are named; past ten, how many more.
        ([(t, "c") for t in TYPES[:10]], " ".join(f"system/{t}.c" for t in TYPES[:10])),
        ([(t, "c") for t in TYPES[:11]], " ".join(f"system/{t}.c" for t in TYPES[:10]) + " (and 1 more)"),
        ([(t, "c") for t in TYPES[:12]], " ".join(f"system/{t}.c" for t in TYPES[:10]) + " (and 2 more)"),
    ],
)
def test_a_key_lacking_scopes_is_a_403_naming_them(needs: list[tuple[str, str]], shown: str) -> None:
    key = _key("job", "system/Observation.cu system/*.rs")
    assert _refusal(require_scopes, key, needs, "push this Bundle") == (
        403,
        "error",
        "forbidden",
        f"the API key 'job' lacks the scopes {shown} to push this Bundle",
        {},
    )


# -- namespace_guard ----------------------------------------------------------------------------------------


OURS = "urn:oid:1.2.36.1"
THEIRS = "urn:oid:1.2.36.2"
ELSEWHERE = "urn:oid:1.2.36.3"


def _patient(*systems: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": s, "value": "1"} for s in systems]}


def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": r} for r in resources]}


STORED = {"p-ours": (OURS,), "p-theirs": (THEIRS,)}


async def _read_patient(request: Request) -> JSONResponse:
    """The FHIR server behind the check: a read of a stored Patient, 404 for any other."""
    systems = STORED.get(request.path_params["id"])
    if systems is None:
        outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]}
        return JSONResponse(outcome, status_code=404, media_type="application/fhir+json")
    found = {"id": request.path_params["id"], **_patient(*systems)}
    return JSONResponse(found, media_type="application/fhir+json")


@pytest.fixture(scope="module")
def client() -> Iterator[AsyncFhirClient]:
    # A FHIR endpoint in the process (no network): the stored Patients a check reads.
    app = Starlette(routes=[Route("/fhir/Patient/{id}", _read_patient)])
    client = AsyncFhirClient("http://fhir.test/fhir", transport=httpx.ASGITransport(app=app))
    yield client
    asyncio.run(client.aclose())


def _guard(
    client: AsyncFhirClient, bundle: dict[str, Any], key: ApiKey, keys: list[ApiKey]
) -> Callable[[], Awaitable[None]] | None:
    actions = [Action(i, "create", e["resource"]["resourceType"]) for i, e in enumerate(bundle["entry"])]
    return namespace_guard(client, bundle, actions, key, keys)


def _check(
    client: AsyncFhirClient, bundle: dict[str, Any], key: ApiKey, keys: list[ApiKey]
) -> tuple[int, dict[str, Any]] | None:
    check = _guard(client, bundle, key, keys)
    assert check is not None
    try:
        asyncio.run(check())
    except ApiError as exc:
        return exc.status, exc.body
    return None


BOUND = _key("clinic", "system/*.cruds", namespaces=(OURS,))
OTHER = _key("lab", "system/*.cruds", namespaces=(THEIRS,))
FREE = _key("admin", "system/*.cruds")


def test_a_key_bound_to_no_namespace_is_not_checked(client: AsyncFhirClient) -> None:
    assert _guard(client, _bundle(_patient(THEIRS)), FREE, [FREE, BOUND, OTHER]) is None


def test_a_bound_key_writes_its_own_patients(client: AsyncFhirClient) -> None:
    assert _check(client, _bundle(_patient(OURS)), BOUND, [FREE, BOUND, OTHER]) is None
    assert _check(client, _bundle(_patient(OURS, ELSEWHERE)), BOUND, [FREE, BOUND, OTHER]) is None


def test_a_bound_key_writing_another_patient_is_a_403(client: AsyncFhirClient) -> None:
    message = f"the API key 'clinic' writes only patients with an identifier in {OURS}: this Patient has none"
    refused = [Issue("error", "forbidden", message, "Bundle.entry[0].resource")]
    assert _check(client, _bundle(_patient(ELSEWHERE)), BOUND, [FREE, BOUND, OTHER]) == (
        403,
        operation_outcome(refused),
    )


def test_another_keys_namespaces_are_foreign_and_the_keys_own_are_not(client: AsyncFhirClient) -> None:
    message = f"this Patient carries an identifier of {THEIRS}, bound to another key"
    refused = [Issue("error", "forbidden", message, "Bundle.entry[0].resource")]
    assert _check(client, _bundle(_patient(OURS, THEIRS)), BOUND, [FREE, BOUND, OTHER]) == (
        403,
        operation_outcome(refused),
    )
    # Without the other key, its system is nobody's.
    assert _check(client, _bundle(_patient(OURS, THEIRS)), BOUND, [FREE, BOUND]) is None
    # Another key bound to the same system as this one does not make it foreign to this one.
    same = _key("clinic2", "system/*.cruds", namespaces=(OURS,))
    assert _check(client, _bundle(_patient(OURS)), BOUND, [BOUND, same]) is None


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ("Patient/p-ours", None),
        ("Patient/p-theirs", "it refers to Patient/p-theirs, which has none"),
        ("Patient/p-gone", "it refers to Patient/p-gone, which neither this Bundle nor the FHIR server holds"),
    ],
)
def test_stored_patients_are_read_with_the_client_given(
    client: AsyncFhirClient, reference: str, problem: str | None
) -> None:
    observation = {"resourceType": "Observation", "subject": {"reference": reference}}
    found = _check(client, _bundle(observation), BOUND, [FREE, BOUND, OTHER])
    if problem is None:
        assert found is None
    else:
        message = f"the API key 'clinic' writes only patients with an identifier in {OURS}: {problem}"
        refused = [Issue("error", "forbidden", message, "Bundle.entry[0].resource")]
        assert found == (403, operation_outcome(refused))


def test_a_check_that_would_cost_too_much_is_a_422(client: AsyncFhirClient) -> None:
    refs = [{"reference": f"Patient/p{i}"} for i in range(101)]
    observation = {"resourceType": "Observation", "performer": refs}
    found = _check(client, _bundle(observation), BOUND, [BOUND])
    assert found is not None
    status, body = found
    assert status == 422
    assert [(i["severity"], i["code"]) for i in body["issue"]] == [("error", "too-costly")]


# -- SMART scopes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "grants", "written"),
    [
        ("system/*.rs", {"*": "rs"}, "system/*.rs"),
        ("system/Observation.cruds", {"Observation": "cruds"}, "system/Observation.cruds"),
        (
            "system/Observation.c system/Observation.u",
            {"Observation": "cu"},
            "system/Observation.c system/Observation.u",
        ),
        ("  system/Patient.r \t system/*.s\n", {"Patient": "r", "*": "s"}, "system/Patient.r system/*.s"),
        ("system/Patient.d", {"Patient": "d"}, "system/Patient.d"),
        # SMART v1
        ("system/Patient.read", {"Patient": "rs"}, "system/Patient.read"),
        ("system/Patient.write", {"Patient": "cud"}, "system/Patient.write"),
        ("system/*.*", {"*": "cruds"}, "system/*.*"),
        (LEGACY["ro"], {"*": "rs"}, "system/*.rs"),
        (LEGACY["rw"], {"*": "rscu"}, "system/*.rs system/*.cu"),
    ],
)
def test_scopes_granted_as_written(text: str, grants: dict[str, str], written: str) -> None:
    scopes = parse_scopes(text)
    assert scopes == Scopes({t: frozenset(p) for t, p in grants.items()}, written)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "no scope given (e.g. system/*.rs system/Observation.cu)"),
        (" \n ", "no scope given (e.g. system/*.rs system/Observation.cu)"),
        (
            "system/*.rs system/Observation.rs?category=laboratory",
            "'system/Observation.rs?category=laboratory': scopes narrowed by search parameters are not supported; "
            "grant whole types",
        ),
        ("system/*.rs ?", "'?': scopes narrowed by search parameters are not supported; grant whole types"),
        ("system/P.rs", "'system/P.rs' is not a SMART scope (system/Type.cruds, system/*.rs, system/Type.read)"),
        ("Observation.rs", "'Observation.rs' is not a SMART scope (system/Type.cruds, system/*.rs, system/Type.read)"),
        (
            "patient/Observation.rs",
            "'patient/Observation.rs': an API key acts for a system; use system/ scopes, not patient/",
        ),
        ("user/*.read", "'user/*.read': an API key acts for a system; use system/ scopes, not user/"),
        (
            "system/*.sr",
            "'system/*.sr': permissions are c, r, u, d, s in that order (SMART v2), or read/write/*",
        ),
        (
            "system/*.rr",
            "'system/*.rr': permissions are c, r, u, d, s in that order (SMART v2), or read/write/*",
        ),
        (
            "system/*.x",
            "'system/*.x': permissions are c, r, u, d, s in that order (SMART v2), or read/write/*",
        ),
        (
            "system/*.**",
            "'system/*.**': permissions are c, r, u, d, s in that order (SMART v2), or read/write/*",
        ),
    ],
)
def test_scopes_that_cannot_be_granted_as_written(text: str, words: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_scopes(text)
    assert str(caught.value) == words


@pytest.mark.parametrize(
    ("resource_type", "permission", "allowed"),
    [
        ("Observation", "c", True),  # its type's grant
        ("Observation", "r", True),  # the wildcard's
        ("Observation", "d", False),
        ("Patient", "r", True),  # a type with no grant of its own: the wildcard's
        ("Patient", "c", False),
        ("*", "s", True),
    ],
)
def test_what_a_scope_allows(resource_type: str, permission: str, allowed: bool) -> None:
    assert parse_scopes("system/Observation.cu system/*.rs").allows(resource_type, permission) is allowed


def test_without_a_wildcard_only_the_named_types_are_allowed() -> None:
    scopes = parse_scopes("system/Observation.cu")
    assert scopes.allows("Observation", "u")
    assert not scopes.allows("Patient", "c")
    assert not scopes.allows("Observation", "r")


def test_the_missing_scopes_in_first_need_order_once_each() -> None:
    scopes = parse_scopes("system/Observation.cu system/*.r")
    needs = [("Observation", "u"), ("Patient", "u"), ("Patient", "u"), ("Specimen", "s"), ("Patient", "r")]
    assert scopes.missing(needs) == ["system/Patient.u", "system/Specimen.s"]
    assert scopes.missing([("Patient", "d"), ("Observation", "d"), ("Patient", "d")]) == [
        "system/Patient.d",
        "system/Observation.d",
    ]
    assert scopes.missing([]) == []


@pytest.mark.parametrize(
    ("text", "writes"),
    [
        ("system/*.rs", False),
        ("system/Observation.r system/*.s", False),
        ("system/Observation.c", True),
        ("system/Observation.u", True),
        ("system/Patient.d", True),
        ("system/*.rs system/Patient.write", True),
    ],
)
def test_a_key_writes_when_it_may_create_update_or_delete(text: str, writes: bool) -> None:
    scopes = parse_scopes(text)
    assert scopes.writes is writes
    assert ApiKey("k", scopes, digest("k" * 24)).can_write is writes


# -- API keys: CASEBRIDGE_API_KEYS --------------------------------------------------------------------------


SECRET = "s" * 24


def test_inline_keys_with_their_scopes_and_digests() -> None:
    keys = parse_api_keys(f" , a:ro:{SECRET}1 ,, b:rw:{SECRET}2,c:system/Observation.cu system/*.s:{SECRET}:3, ")
    assert keys == [
        ApiKey("a", parse_scopes("system/*.rs"), digest(f"{SECRET}1")),
        ApiKey("b", parse_scopes("system/*.rs system/*.cu"), digest(f"{SECRET}2")),
        # The secret is everything after the second colon, colons included.
        ApiKey("c", parse_scopes("system/Observation.cu system/*.s"), digest(f"{SECRET}:3")),
    ]
    assert parse_api_keys("") == [] and parse_api_keys(" , ") == []


@pytest.mark.parametrize(
    ("secret", "accepted"),
    [
        ("s" * 24, True),
        ("s" * 23, False),
        ("!~" * 12, True),  # the first and the last visible ASCII characters
        ("s" * 12 + " " + "s" * 12, False),
        ("s" * 24 + "\x7f", False),
        ("s" * 24 + "é", False),
        ("s" * 12 + "\t" + "s" * 12, False),
    ],
)
def test_an_inline_secret_is_at_least_24_visible_ascii_characters(secret: str, accepted: bool) -> None:
    if accepted:
        assert [k.digest for k in parse_api_keys(f"a:ro:{secret}")] == [digest(secret)]
    else:
        with pytest.raises(ValueError) as caught:
            parse_api_keys(f"a:ro:{secret}")
        assert str(caught.value) == ("API key 1 (a): the secret must be at least 24 visible ASCII characters, no comma")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            f"a:ro:{SECRET}1,,b c:ro:{SECRET}2",
            "API key 3: the name must be 1-64 letters, digits, '.', '_' or '-' (NAME:SCOPES:SECRET)",
        ),
        (
            f"{'n' * 65}:ro:{SECRET}",
            "API key 1: the name must be 1-64 letters, digits, '.', '_' or '-' (NAME:SCOPES:SECRET)",
        ),
        (f":ro:{SECRET}", "API key 1: the name must be 1-64 letters, digits, '.', '_' or '-' (NAME:SCOPES:SECRET)"),
        (
            "job",
            "API key 1 (job): no scope given (e.g. system/*.rs system/Observation.cu); SCOPES is ro, rw or "
            "space-separated SMART scopes",
        ),
        (
            f"job:admin:{SECRET}",
            "API key 1 (job): 'admin' is not a SMART scope (system/Type.cruds, system/*.rs, system/Type.read); "
            "SCOPES is ro, rw or space-separated SMART scopes",
        ),
        ("job:ro", "API key 1 (job): the secret must be at least 24 visible ASCII characters, no comma"),
        (f"a:ro:{SECRET}1,a:rw:{SECRET}2", "API key 2 (a): the name is used twice"),
        (f"a:ro:{SECRET},b:rw:{SECRET}", "API key 2 (b): the secret is used twice"),
    ],
)
def test_inline_key_mistakes_name_the_entry_never_the_secret(text: str, words: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_api_keys(text)
    assert str(caught.value) == words


def test_a_name_of_64_characters_is_accepted() -> None:
    assert [k.name for k in parse_api_keys(f"{'n' * 64}:ro:{SECRET}")] == ["n" * 64]


# -- API keys: CASEBRIDGE_API_KEYS_FILE ---------------------------------------------------------------------


DIGEST_WORDS = (
    'secret_sha256 must be the 64 hex digits of the secret\'s SHA-256 (printf %s "$SECRET" | sha256sum); '
    "the file holds no secret"
)


URI_WORDS = "expected an identifier system URI (e.g. urn:oid:1.2.36.146.595.217.0.1)"


def _sha(secret: str) -> str:
    return digest(secret).hex()


def _entry(name: str = "ehr", secret: str = "x" * 30, scopes: str = "system/Observation.cu", extra: str = "") -> str:
    return f"- name: {name}\n  secret_sha256: {_sha(secret)}\n  scopes: {scopes}\n{extra}"


def _load(tmp_path: Path, text: str) -> list[ApiKey]:
    path = tmp_path / "keys.yaml"
    path.write_text(text, encoding="utf-8")
    return load_api_keys_file(path)


def _file_refusal(tmp_path: Path, text: str) -> tuple[int | None, str]:
    with pytest.raises(MappingError) as caught:
        _load(tmp_path, text)
    assert caught.value.file == str(tmp_path / "keys.yaml")
    return caught.value.line, str(caught.value).removeprefix(f"{tmp_path / 'keys.yaml'}:{caught.value.line}: ")


def test_a_keys_file(tmp_path: Path) -> None:
    text = (
        _entry()
        + _entry("job", "y" * 30, "rw", "  namespaces:\n    - urn:oid:1.2.3\n    - https://example.org/mrn\n")
        + f"- name: ' spaced '\n  secret_sha256: {_sha('z' * 30).upper()}\n  scopes: ' ro '\n"
    )
    assert _load(tmp_path, text) == [
        ApiKey("ehr", parse_scopes("system/Observation.cu"), digest("x" * 30)),
        ApiKey("job", parse_scopes(LEGACY["rw"]), digest("y" * 30), ("urn:oid:1.2.3", "https://example.org/mrn")),
        # Text is stripped, the digest read in either case, ro and rw mean what they do inline.
        ApiKey("spaced", parse_scopes(LEGACY["ro"]), digest("z" * 30)),
    ]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("name: ehr\n", 1, "expected a list of keys (- name: ...)"),
        (
            _entry() + _entry("job", "y" * 30, extra="  zeta: 1\n  alpha: 2\n"),
            8,
            "unknown field 'alpha'; a key has name, namespaces, scopes, secret_sha256",
        ),
        (_entry() + f"- secret_sha256: {_sha('y' * 30)}\n  scopes: ro\n", 4, "a key needs 'name'"),
        (_entry() + "- name: job\n  scopes: ro\n", 4, "a key needs 'secret_sha256'"),
        (_entry() + f"- name: job\n  secret_sha256: {_sha('y' * 30)}\n", 4, "a key needs 'scopes'"),
        (_entry("a b"), 1, "the name must be 1-64 letters, digits, '.', '_' or '-'"),
        (_entry("n" * 65), 1, "the name must be 1-64 letters, digits, '.', '_' or '-'"),
        (_entry().replace(_sha("x" * 30), _sha("x" * 30)[:63]), 2, DIGEST_WORDS),
        (_entry().replace(_sha("x" * 30), _sha("x" * 30) + "0"), 2, DIGEST_WORDS),
        (_entry().replace(_sha("x" * 30), "x" * 64), 2, DIGEST_WORDS),
        (
            _entry(scopes="patient/Observation.cu"),
            3,
            "'patient/Observation.cu': an API key acts for a system; use system/ scopes, not patient/",
        ),
        (_entry(extra="  namespaces: urn:oid:1.2.3\n"), 4, "namespaces: expected a list of identifier system URIs"),
        (_entry(extra="  namespaces: []\n"), 4, "namespaces: expected a list of identifier system URIs"),
        (
            _entry(extra="  namespaces:\n    - urn:oid:1.2.3\n    - not a uri\n"),
            6,
            URI_WORDS,
        ),
        (
            _entry(extra="  namespaces:\n    - [urn:oid:1.2.3]\n"),
            5,
            URI_WORDS,
        ),
        (
            _entry(extra="  namespaces: [5]\n"),
            4,
            URI_WORDS,
        ),
        (_entry() + _entry(secret="y" * 30), 4, "the name 'ehr' is used twice"),
        (_entry() + _entry("job"), 5, "the same secret is used twice"),
        ("- ehr\n", 1, "expected a mapping, found a scalar"),
        (_entry() + "  name: job\n", 4, "duplicate key 'name'"),
        (_entry().replace(_sha("x" * 30), "5"), 2, "expected text"),
        # A node of an unknown tag is refused by its kind, never constructed (the constructor would fail).
        (_entry("!foo [1]"), 1, "expected text"),
        (_entry(extra="  namespaces: [!foo [urn:a:b]]\n"), 4, URI_WORDS),
        (_entry("5"), 1, "expected text"),
        (_entry("' '"), 1, "expected text"),
        (_entry(scopes="[ro]"), 3, "expected text"),
        ("", 1, "the file is empty"),
        ("- [1\n", 2, "malformed YAML: expected ',' or ']', but got '<stream end>'"),
        (
            "- <<: {x: 1}\n  " + _entry()[2:],
            1,
            "malformed YAML: could not determine a constructor for the tag 'tag:yaml.org,2002:merge'",
        ),
    ],
)
def test_keys_file_mistakes_name_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    assert _file_refusal(tmp_path, text) == (line, words)


def test_a_keys_file_is_read_as_utf_8_whatever_the_locale(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("# clé de l'EHR\n" + _entry(), encoding="utf-8")
    # A service started under a non-UTF-8 locale (here ASCII) still reads the file as UTF-8.
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        assert [k.name for k in load_api_keys_file(path)] == ["ehr"]
    finally:
        locale.setlocale(locale.LC_CTYPE, before)


def test_a_keys_file_that_cannot_be_read(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(MappingError) as caught:
        load_api_keys_file(missing)
    assert (str(caught.value), caught.value.line) == (f"{missing}: cannot read: No such file or directory", None)
    (tmp_path / "keys.yaml").write_bytes(b"\xff- name: x\n")
    with pytest.raises(MappingError) as caught:
        load_api_keys_file(tmp_path / "keys.yaml")
    assert str(caught.value) == (
        f"{tmp_path / 'keys.yaml'}: cannot read: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"
    )


def test_keys_from_two_sources_keep_names_and_secrets_unique() -> None:
    a, b = _key("a", secret="a" * 24), _key("b", secret="b" * 24)
    assert merge_keys([a], [b]) == [a, b]
    assert merge_keys([], [a, b], []) == [a, b]
    with pytest.raises(ValueError) as caught:
        merge_keys([a, b], [_key("a", secret="c" * 24)])
    assert str(caught.value) == "API keys: the key name 'a' is used twice"
    with pytest.raises(ValueError) as caught:
        merge_keys([a], [b, _key("c", secret="b" * 24)], where="CASEBRIDGE_API_KEYS_FILE")
    assert str(caught.value) == "CASEBRIDGE_API_KEYS_FILE: the key 'c' has the same secret as another key"
