"""docker-compose.yml, Dockerfile and .dockerignore agree with each other and with the code. No Docker needed.

Each ``check_*`` function returns the inconsistencies it finds, as sentences naming what disagrees with what;
the tests assert that there are none. The negative tests break a copy of the files and assert that the check
meant for that mistake reports it, so none of the checks can pass vacuously.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shlex
import tomllib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from casebridge.cli.core import SEED_CASE
from casebridge.cli.core import app as cli_app
from casebridge.config import DATA_DIR, Settings, get_settings
from tests.paths import PROJECT_ROOT

COMPOSE_FILE = PROJECT_ROOT / "docker-compose.yml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
DOCKERIGNORE = PROJECT_ROOT / ".dockerignore"

HAPI_IMAGE = "hapiproject/hapi"
POSTGRES_IMAGE = "postgres"
POSTGRES_MAJOR = "16"
HAPI_DEFAULT_PORT = 8080  # the HAPI JPA starter's server.port (SERVER_PORT overrides it)
HAPI_SERVLET_PATH = "/fhir"  # the starter's FHIR servlet path: base URL http://<host>:8080/fhir
POSTGRES_DEFAULT_PORT = 5432
POSTGRES_DRIVER = "org.postgresql.Driver"
HAPI_POSTGRES_DIALECT = "ca.uhn.fhir.jpa.model.dialect.HapiFhirPostgresDialect"
LOCAL_ONLY = "127.0.0.1"

# hapiproject/hapi tags whose image carries the starter's health probe, /app/HealthCheck.class. The starter's Dockerfile
# (build-distroless stage) copies src/main/java/HealthCheck.java to /app and compiles it there (`javac
# /app/HealthCheck.java`); the distroless final stage copies /app. Run as `java -cp /app HealthCheck`: it GETs
# http://localhost:$SERVER_PORT/fhir/metadata with 10 s connect and read timeouts and exits 0 on a CapabilityStatement
# (hapifhir/hapi-fhir-jpaserver-starter, src/main/java/HealthCheck.java at 3edd75bf; issue #958 and PR #959 later
# moved it to /actuator/health). Tags per issue K's reading of the starter: image/v8.10.0-1 to -3; v8.8.0-1 lacks it.
# A tag not listed here may well have it too: check its Dockerfile, then add it.
HAPI_TAGS_WITH_PROBE = ("v8.10.0-1", "v8.10.0-2", "v8.10.0-3")
HAPI_PROBE = ["CMD", "java", "-cp", "/app", "HealthCheck"]
HAPI_PROBE_OWN_TIMEOUTS = 20.0  # seconds: the probe's connect timeout plus its read timeout
HAPI_MIN_START_PERIOD = 300.0  # seconds: a first start builds the schema in Postgres (minutes on a slow machine)

# The hapi.fhir settings the compose file must write out, with the values it must keep (the starter's defaults in
# AppProperties.java, hapifhir/hapi-fhir-jpaserver-starter at 01005f4b, except the search cache), and why. Each is
# explained in docker-compose.yml and docs/hapi.md.
HAPI_REQUIRED = {
    "hapi.fhir.fhir_version": ("R4", "casebridge writes FHIR R4"),
    "hapi.fhir.reuse_cached_search_results_millis": ("-1", "a pull right after a push must see what was pushed"),
    "hapi.fhir.client_id_strategy": ("ALPHANUMERIC", "casebridge PUTs client-assigned UUID ids"),
    "hapi.fhir.enforce_referential_integrity_on_write": ("true", "as production HAPI: dangling references refused"),
    "hapi.fhir.allow_external_references": ("false", "as production HAPI: absolute references refused"),
    "hapi.fhir.subscription.resthook_enabled": ("false", "nothing here consumes subscriptions"),
    "hapi.fhir.subscription.websocket_enabled": ("false", "nothing here consumes subscriptions"),
    "hapi.fhir.server_address": ("", "next links must follow the request's Host (paging inside the compose network)"),
}
# Long-running services that are not built here: restarted unless someone stopped them.
SERVER_RESTART = ("unless-stopped", "always")

# What the build stage must COPY: what `pip install` needs (pyproject.toml names README.md as the readme) and src/,
# the package, whose data files (mappings, profiles, the FHIR package lock, schemas, terminology, example cases)
# travel inside it.
BUILD_INPUTS = ("pyproject.toml", "constraints.txt", "README.md", "src")
PACKAGE = PROJECT_ROOT / "src" / "casebridge"
# The package's data files as the build context holds them (src/casebridge/data/...): none may be left out.
PACKAGE_DATA = tuple(
    sorted(
        p.relative_to(PROJECT_ROOT).as_posix()
        for p in (PACKAGE / "data").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
)
# The demo's default case (casebridge.cli.core.SEED_CASE), where the package keeps it and where the context has it.
SEED_IN_PACKAGE = SEED_CASE.relative_to(DATA_DIR.parent.parent).as_posix()  # casebridge/data/cases/...
SEED_IN_CONTEXT = f"src/{SEED_IN_PACKAGE}"
# Built here by `make setup` for the developer's Python; the image compiles its own.
COMPILED_HERE = (
    "src/casebridge/_native.json",
    "src/casebridge/_native_group__mypyc.cpython-311-x86_64-linux-gnu.so",
    "src/casebridge/validation/validator.cpython-311-x86_64-linux-gnu.so",
)

Compose = dict[str, Any]


# -- reading the files ----------------------------------------------------------------------------------------


def load_compose(path: Path = COMPOSE_FILE) -> Compose:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and isinstance(doc.get("services"), dict), f"{path}: no services"
    return doc


def services(compose: Compose) -> dict[str, dict[str, Any]]:
    return {name: svc or {} for name, svc in compose["services"].items()}


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment, from either compose form (mapping, or list of KEY=VALUE)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, "") for item in env)
        return {k: v for k, v in pairs}
    return {k: "" if v is None else str(v) for k, v in env.items()}


def split_image(image: str) -> tuple[str, str | None]:
    """``repo[:tag][@digest]`` -> (repo, tag); a registry's port is not a tag."""
    image = image.split("@", 1)[0]
    repo, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, None
    return repo, tag


def service_with_image(compose: Compose, repo: str) -> str | None:
    for name, svc in services(compose).items():
        if split_image(str(svc.get("image", "")))[0] in (repo, f"docker.io/{repo}", f"docker.io/library/{repo}"):
            return name
    return None


def built_services(compose: Compose) -> list[str]:
    return [name for name, svc in services(compose).items() if "build" in svc]


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Target -> condition (the short list form means service_started)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def setting_env_names() -> dict[str, str]:
    """CASEBRIDGE_<FIELD> -> field, for every field of casebridge.config.Settings."""
    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper(): name for name in Settings.model_fields}


def spring_key(name: str) -> str:
    """Spring Boot relaxed binding, enough to compare names: ``hapi.fhir.fhir_version``, ``HAPI_FHIR_FHIR_VERSION``
    and ``spring.datasource.driver-class-name`` / ``SPRING_DATASOURCE_DRIVERCLASSNAME`` compare equal."""
    return name.lower().replace("_", ".").replace("-", "")


def spring_value(env: dict[str, str], prop: str) -> str | None:
    wanted = spring_key(prop)
    found = [v for k, v in env.items() if spring_key(k) == wanted]
    return found[0] if found else None


def hapi_listen_port(env: dict[str, str]) -> int:
    value = spring_value(env, "server.port")
    return int(value) if value else HAPI_DEFAULT_PORT


def parse_port(spec: Any) -> tuple[str | None, str | None, str]:
    """A ports entry -> (host ip, host port, container port)."""
    if isinstance(spec, dict):
        published = spec.get("published")
        return spec.get("host_ip"), None if published is None else str(published), str(spec.get("target"))
    text = str(spec).split("/", 1)[0]
    host_ip = None
    if text.startswith("["):  # [::1]:8080:8080
        host_ip, _, text = text[1:].partition("]:")
    parts = text.split(":")
    if len(parts) == 3:
        host_ip, host, container = parts
        return host_ip, host, container
    if len(parts) == 2:
        return host_ip, parts[0], parts[1]
    return host_ip, None, parts[0]


def invocations(service: dict[str, Any]) -> list[list[str]]:
    """The ``casebridge ...`` command lines a service runs, in order, as argument lists (``casebridge`` first).

    Either the image's ENTRYPOINT ["casebridge"] with the service's command, or an ``sh -c`` entrypoint whose
    script runs ``casebridge ...`` and may end with ``exec casebridge "$@"`` (the command's arguments).
    """
    command = service.get("command") or []
    command = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    entrypoint = service.get("entrypoint")
    if entrypoint is None:
        return [["casebridge", *command]]
    entrypoint = shlex.split(entrypoint) if isinstance(entrypoint, str) else [str(a) for a in entrypoint]
    if entrypoint == ["casebridge"]:
        return [["casebridge", *command]]
    if len(entrypoint) < 3 or PurePosixPath(entrypoint[0]).name not in ("sh", "bash") or entrypoint[1] != "-c":
        return []
    script = entrypoint[2].replace("$$", "$")  # compose's escape for a literal $
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lines: list[list[str]] = []
    current: list[str] = []
    for token in [*lexer, ";"]:
        if token in ("&&", "||", ";", "|", "&"):
            if current:
                lines.append(current)
            current = []
        elif token[:1] in "<>" or (current[-1:] and current[-1][:1] in "<>" and token.isdigit()):
            continue  # a redirection (>&2 comes as '>&' and '2')
        else:
            current.append(token)
    out = []
    for line in lines:
        while line and line[0] in ("exec", "command"):
            line = line[1:]
        if line[:1] == ["casebridge"]:
            out.append([a for arg in line for a in (command if arg == "$@" else [arg])])
    return out


def resolve(arg: str, env: dict[str, str]) -> str:
    """``$VAR`` / ``${VAR}`` -> the service's value for it (the shell expands it at run time)."""
    match = re.fullmatch(r"\$\{?(\w+)\}?", arg)
    return env.get(match.group(1), arg) if match else arg


def option_value(argv: list[str], option: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    return None


def seconds(duration: Any) -> float | None:
    """A compose duration (``1m30s``, ``600s``, ``500ms``, a bare number of seconds) in seconds; None if unreadable."""
    text = str(duration).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * units[u] for n, u in parts)


# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}, ${VAR:+alt}, ${VAR+alt}
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}")


def interpolate(value: str, user_env: dict[str, str]) -> str:
    """What compose makes of a value in the user's environment ``user_env`` (``$$`` stays a literal ``$``)."""

    def one(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"] or "", match["arg"] or ""
        present = name in user_env and (user_env[name] != "" or not op.startswith(":"))
        if op.endswith("-"):
            return user_env[name] if present else arg
        if op.endswith("+"):
            return arg if present else ""
        if op.endswith("?") and not present:
            raise ValueError(f"required variable {name} is missing: {arg}")
        return user_env.get(name, "")

    parts = value.split("$$")
    return "$".join(INTERPOLATION.sub(one, part) for part in parts)


def strings(node: Any, path: str = "") -> list[tuple[str, str]]:
    """Every string value of the compose document (mapping keys are not interpolated), with where it is."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in strings(v, f"{path}.{k}" if path else str(k))]
    if isinstance(node, list):
        return [s for i, v in enumerate(node) for s in strings(v, f"{path}[{i}]")]
    return [(path, node)] if isinstance(node, str) else []


def restart_policy(service: dict[str, Any]) -> tuple[str, int | None]:
    """(policy, max retries) of a service's ``restart:`` (compose's default is ``no``)."""
    policy, _, retries = str(service.get("restart", "no")).partition(":")
    return policy, int(retries) if retries.isdigit() else None


def runs_serve(service: dict[str, Any]) -> bool:
    return any(argv[1:2] == ["serve"] for argv in invocations(service))


# -- the checks on docker-compose.yml ----------------------------------------------------------------------------


def check_casebridge_settings(compose: Compose) -> list[str]:
    """Every CASEBRIDGE_* variable a service sets is a casebridge setting, with a value Settings accepts."""
    known = setting_env_names()
    problems = []
    for name, svc in services(compose).items():
        ours = {k: v for k, v in environment(svc).items() if k.startswith("CASEBRIDGE_") and k != "CASEBRIDGE_DEBUG"}
        for key in sorted(set(ours) - set(known)):
            problems.append(f"service {name!r} sets {key}, which is not a field of casebridge.config.Settings")
        # A value from the user's environment (${VAR:?...}) is only known at `docker compose up`.
        given = {known[k]: v for k, v in ours.items() if k in known and "${" not in str(v)}
        try:
            Settings(**given)
        except ValidationError as exc:
            problems.append(f"service {name!r}: Settings refuses its CASEBRIDGE_* values: {exc}")
    return problems


def check_base_url(compose: Compose) -> list[str]:
    """CASEBRIDGE_FHIR_BASE_URL points at the HAPI service: its name, the port HAPI listens on, /fhir."""
    hapi = service_with_image(compose, HAPI_IMAGE)
    if hapi is None:
        return [f"no service runs the {HAPI_IMAGE} image"]
    port = hapi_listen_port(environment(services(compose)[hapi]))
    problems = []
    envs = {name: environment(svc) for name, svc in services(compose).items()}
    users = {name: env["CASEBRIDGE_FHIR_BASE_URL"] for name, env in envs.items() if "CASEBRIDGE_FHIR_BASE_URL" in env}
    if not any(name in users for name in built_services(compose)):
        problems.append("the casebridge service (the one built here) does not set CASEBRIDGE_FHIR_BASE_URL")
    for name, url in users.items():
        where = f"service {name!r}: CASEBRIDGE_FHIR_BASE_URL={url}"
        parts = urlsplit(url)
        if parts.scheme != "http":
            problems.append(f"{where}: HAPI is reached over plain http inside the compose network, not {parts.scheme}")
        if parts.hostname != hapi:
            problems.append(f"{where}: host {parts.hostname!r} is not the HAPI service's name {hapi!r}")
        if (parts.port or 80) != port:
            problems.append(f"{where}: port {parts.port or 80} is not the port HAPI listens on ({port})")
        if parts.path.rstrip("/") != HAPI_SERVLET_PATH:
            problems.append(f"{where}: path {parts.path!r} is not HAPI's FHIR servlet path {HAPI_SERVLET_PATH!r}")
        try:
            accepted = Settings(fhir_base_url=url).fhir_base_url
        except ValidationError as exc:
            problems.append(f"{where}: casebridge.config.Settings refuses it: {exc}")
        else:
            if accepted != url:
                problems.append(f"{where}: Settings normalises it to {accepted!r}; write that instead")
        for argv in invocations(services(compose)[name]):
            server = option_value(argv, "--server")
            if server is not None and resolve(server, envs[name]) != url:
                problems.append(f"{where}: but `{' '.join(argv)}` uses --server {server}")
    return problems


def check_images(compose: Compose) -> list[str]:
    """HAPI's image is pinned to a release; Postgres is major 16 with a pinned minor version."""
    problems = []
    hapi = service_with_image(compose, HAPI_IMAGE)
    if hapi is None:
        problems.append(f"no service runs the {HAPI_IMAGE} image")
    else:
        image = services(compose)[hapi]["image"]
        tag = split_image(image)[1]
        if tag is None or tag == "latest" or not re.match(r"v?\d+\.\d+\.\d+", tag):
            problems.append(f"service {hapi!r}: image {image} is not pinned to a release (e.g. {HAPI_IMAGE}:v8.8.0-1)")
    db = service_with_image(compose, POSTGRES_IMAGE)
    if db is None:
        problems.append(f"no service runs the {POSTGRES_IMAGE} image")
    else:
        image = services(compose)[db]["image"]
        tag = split_image(image)[1]
        if tag is None or not re.fullmatch(rf"{POSTGRES_MAJOR}\.\d+(-[a-z0-9.]+)?", tag):
            problems.append(
                f"service {db!r}: image {image} is not PostgreSQL {POSTGRES_MAJOR} with a pinned minor (16.N[-alpine])"
            )
    return problems


def check_dependencies(compose: Compose) -> list[str]:
    """depends_on targets exist; service_healthy targets have a healthcheck; db has one (pg_isready) and HAPI
    waits for it to be healthy."""
    svcs = services(compose)
    problems = []
    for name, svc in svcs.items():
        for target, condition in depends_on(svc).items():
            if target not in svcs:
                problems.append(f"service {name!r} depends on {target!r}, which is not a service")
            elif condition == "service_healthy":
                check = svcs[target].get("healthcheck") or {}
                if not check.get("test") or check.get("disable"):
                    problems.append(f"service {name!r} waits for {target!r} to be healthy, but it has no healthcheck")
    db = service_with_image(compose, POSTGRES_IMAGE)
    hapi = service_with_image(compose, HAPI_IMAGE)
    if db is not None:
        test = (svcs[db].get("healthcheck") or {}).get("test") or []
        if "pg_isready" not in (test if isinstance(test, str) else " ".join(map(str, test))):
            problems.append(f"service {db!r} has no pg_isready healthcheck")
        if hapi is not None and depends_on(svcs[hapi]).get(db) != "service_healthy":
            problems.append(f"service {hapi!r} does not depend on {db!r} with condition service_healthy")
    if hapi is not None:
        for name in built_services(compose):
            awaited = depends_on(svcs[name]).get(hapi)
            if awaited != "service_healthy":
                problems.append(
                    f"service {name!r} depends on {hapi!r} with {awaited or 'no condition'}, not service_healthy: "
                    "it would start while HAPI is still building its schema"
                )
    return problems


def check_datasource(compose: Compose) -> list[str]:
    """HAPI's Spring datasource is the db service: host, port, database, user, password; Postgres driver and
    HAPI's Postgres dialect."""
    db = service_with_image(compose, POSTGRES_IMAGE)
    hapi = service_with_image(compose, HAPI_IMAGE)
    if db is None or hapi is None:
        return ["the compose file needs both a postgres and a hapi service"]
    pg = environment(services(compose)[db])
    env = environment(services(compose)[hapi])
    problems = []
    url = spring_value(env, "spring.datasource.url") or ""
    if not url.startswith("jdbc:postgresql://"):
        return [f"service {hapi!r}: SPRING_DATASOURCE_URL={url!r} is not a jdbc:postgresql:// URL"]
    parts = urlsplit(url.removeprefix("jdbc:"))
    database = pg.get("POSTGRES_DB") or pg.get("POSTGRES_USER") or "postgres"  # the image's own default
    if parts.hostname != db:
        problems.append(f"SPRING_DATASOURCE_URL host {parts.hostname!r} is not the database service {db!r}")
    if (parts.port or POSTGRES_DEFAULT_PORT) != POSTGRES_DEFAULT_PORT:
        problems.append(f"SPRING_DATASOURCE_URL port {parts.port} is not Postgres's {POSTGRES_DEFAULT_PORT}")
    if parts.path.lstrip("/") != database:
        problems.append(f"SPRING_DATASOURCE_URL database {parts.path.lstrip('/')!r} is not POSTGRES_DB {database!r}")
    for prop, var in (
        ("spring.datasource.username", "POSTGRES_USER"),
        ("spring.datasource.password", "POSTGRES_PASSWORD"),
    ):
        if spring_value(env, prop) != pg.get(var):
            problems.append(f"service {hapi!r}: {prop} is not the {db!r} service's {var}")
    if spring_value(env, "spring.datasource.driver-class-name") != POSTGRES_DRIVER:
        problems.append(f"service {hapi!r}: the datasource driver is not {POSTGRES_DRIVER}")
    if spring_value(env, "spring.jpa.properties.hibernate.dialect") != HAPI_POSTGRES_DIALECT:
        problems.append(f"service {hapi!r}: the Hibernate dialect is not {HAPI_POSTGRES_DIALECT}")
    return problems


def check_hapi_settings(compose: Compose) -> list[str]:
    """HAPI's settings that casebridge relies on are written out with their required values (HAPI_REQUIRED)."""
    hapi = service_with_image(compose, HAPI_IMAGE)
    if hapi is None:
        return [f"no service runs the {HAPI_IMAGE} image"]
    env = environment(services(compose)[hapi])
    problems = []
    for prop, (wanted, why) in HAPI_REQUIRED.items():
        variable = prop.upper().replace(".", "_")
        value = spring_value(env, prop)
        if value is None:
            problems.append(f"service {hapi!r}: {prop} ({variable}) is not set; it must be {wanted!r}: {why}")
        elif value.strip().upper() != wanted.upper():
            problems.append(f"service {hapi!r}: {prop} ({variable}) is {value!r}, not {wanted!r}: {why}")
    return problems


def check_hapi_healthcheck(compose: Compose) -> list[str]:
    """HAPI's image is a tag known to ship the starter's probe, and the healthcheck runs it (exec form: the image
    has no shell), with a timeout the probe fits in and a start period long enough for a first schema build."""
    hapi = service_with_image(compose, HAPI_IMAGE)
    if hapi is None:
        return [f"no service runs the {HAPI_IMAGE} image"]
    svc = services(compose)[hapi]
    problems = []
    tag = split_image(str(svc.get("image", "")))[1]
    if tag not in HAPI_TAGS_WITH_PROBE:
        problems.append(
            f"service {hapi!r}: tag {tag} is not one known to ship the HealthCheck probe "
            f"({', '.join(HAPI_TAGS_WITH_PROBE)}); check that tag's Dockerfile and add it to HAPI_TAGS_WITH_PROBE"
        )
    check = svc.get("healthcheck") or {}
    test = check.get("test")
    if not test or check.get("disable") or test == ["NONE"]:
        return [*problems, f"service {hapi!r} has no healthcheck: nothing can wait for it to be healthy"]
    if isinstance(test, str) or test[:1] == ["CMD-SHELL"]:
        problems.append(f"service {hapi!r}: the healthcheck needs a shell, which the distroless HAPI image has not")
    elif [str(a) for a in test] != HAPI_PROBE:
        problems.append(f"service {hapi!r}: the healthcheck runs {test}, not the image's probe {HAPI_PROBE}")
    timeout = seconds(check.get("timeout", "30s"))
    if timeout is None or timeout < HAPI_PROBE_OWN_TIMEOUTS:
        problems.append(
            f"service {hapi!r}: healthcheck timeout {check.get('timeout')} is shorter than the probe's own "
            f"timeouts ({HAPI_PROBE_OWN_TIMEOUTS:g} s): a slow answer would count as a failure"
        )
    start = seconds(check.get("start_period", "0s"))
    if start is None or start < HAPI_MIN_START_PERIOD:
        problems.append(
            f"service {hapi!r}: healthcheck start_period {check.get('start_period')} is under "
            f"{HAPI_MIN_START_PERIOD:g} s: a first start (schema build) would mark HAPI unhealthy and stop "
            "`docker compose up`"
        )
    return problems


def check_restart_policies(compose: Compose) -> list[str]:
    """Servers not built here (db, HAPI) restart unless stopped; the API restarts after a crash but gives up on an
    error that repeats (a configuration error exits 3 on every start); a one-shot command is never run again."""
    problems = []
    for name, svc in services(compose).items():
        policy, retries = restart_policy(svc)
        if "build" not in svc:
            if policy not in SERVER_RESTART:
                problems.append(f"service {name!r} has restart {policy!r}: a server should be {SERVER_RESTART[0]}")
        elif runs_serve(svc):
            if policy != "on-failure" or not retries:
                problems.append(
                    f"service {name!r} runs `casebridge serve` with restart {svc.get('restart', 'no')!r}: it should "
                    "be on-failure:N, restarted after a crash but not forever on a configuration error (exit 3)"
                )
        elif policy in ("always", "unless-stopped") or (policy == "on-failure" and not retries):
            problems.append(
                f"service {name!r} runs a one-shot command with restart {svc.get('restart')!r}: it would run "
                "again and again"
            )
    return problems


def check_api_keys_variable(compose: Compose) -> list[str]:
    """No value requires a variable (``${X:?}``, ``${X?}``): compose interpolates the whole file for every command,
    so `docker compose run`/`down` would fail without it. The API's keys come from the user's environment, empty
    when unset (serve then refuses to start), never written into the file."""
    problems = []
    for where, value in strings(compose):
        for match in INTERPOLATION.finditer(value.replace("$$", "")):
            if (match["op"] or "").endswith("?"):
                problems.append(
                    f"{where}: ${{{match['name']}{match['op']}...}} makes every compose command fail when "
                    f"{match['name']} is not set; use ${{{match['name']}:-}}"
                )
    for name, svc in services(compose).items():
        if not runs_serve(svc):
            continue
        keys = environment(svc).get("CASEBRIDGE_API_KEYS")
        if keys is None:
            problems.append(f"service {name!r} runs serve without CASEBRIDGE_API_KEYS from the user's environment")
            continue
        source = INTERPOLATION.fullmatch(keys)
        if source is None or source["name"] != "CASEBRIDGE_API_KEYS":
            problems.append(
                f"service {name!r}: CASEBRIDGE_API_KEYS is not taken from the user's environment "
                "(${CASEBRIDGE_API_KEYS:-}): keys written into the compose file are secrets in the repository"
            )
        elif source["op"] not in (":-", "-") or source["arg"]:
            problems.append(
                f"service {name!r}: CASEBRIDGE_API_KEYS={keys}: write ${{CASEBRIDGE_API_KEYS:-}} (empty when "
                "unset, no default key)"
            )
    return problems


def check_ports(compose: Compose) -> list[str]:
    """Every published port binds 127.0.0.1; HAPI's is the port HAPI listens on."""
    problems = []
    hapi = service_with_image(compose, HAPI_IMAGE)
    for name, svc in services(compose).items():
        for spec in svc.get("ports") or []:
            host_ip, _, container = parse_port(spec)
            if host_ip != LOCAL_ONLY:
                problems.append(
                    f"service {name!r} publishes {spec!r} on {host_ip or 'every interface'}, not {LOCAL_ONLY}"
                )
            if name == hapi and container != str(hapi_listen_port(environment(svc))):
                problems.append(f"service {name!r} publishes container port {container}, but HAPI listens on another")
    return problems


def check_build(compose: Compose, root: Path = PROJECT_ROOT) -> list[str]:
    """casebridge is built from the Dockerfile at the project root."""
    built = built_services(compose)
    if not built:
        return ["no service is built from this project (build: .)"]
    problems = []
    for name in built:
        build = services(compose)[name]["build"]
        if isinstance(build, str):
            build = {"context": build}
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
        if (root / context).resolve() != root.resolve():
            problems.append(f"service {name!r} builds from {context!r}, not the project root")
        elif not (root / context / dockerfile).is_file():
            problems.append(f"service {name!r} builds with {dockerfile!r}, which does not exist")
        elif (root / context / dockerfile).resolve() != DOCKERFILE.resolve():
            problems.append(f"service {name!r} builds with {dockerfile!r}, not the project's Dockerfile")
    return problems


def check_waits_for_hapi(compose: Compose) -> list[str]:
    """Without a healthcheck on HAPI (an image without the probe), a service that uses HAPI must first wait for it
    with `casebridge ping --wait N`, against the same base URL."""
    hapi = service_with_image(compose, HAPI_IMAGE)
    if hapi is None:
        return [f"no service runs the {HAPI_IMAGE} image"]
    if (services(compose)[hapi].get("healthcheck") or {}).get("test"):
        return []
    problems = []
    for name, svc in services(compose).items():
        if hapi not in depends_on(svc):
            continue
        argv_list = invocations(svc)
        first = argv_list[0] if argv_list else []
        wait = option_value(first, "--wait")
        if first[1:2] != ["ping"] or not wait or float(wait) <= 0:
            problems.append(f"service {name!r} uses {hapi!r} without waiting for it first (`casebridge ping --wait N`)")
        elif len(argv_list) < 2:
            problems.append(f'service {name!r} waits for {hapi!r} but then runs nothing (no exec casebridge "$@")')
    return problems


def registered_commands(app: typer.Typer) -> set[str]:
    names = {cmd.name or cmd.callback.__name__.replace("_", "-") for cmd in app.registered_commands if cmd.callback}
    names |= {group.name or group.typer_instance.info.name for group in app.registered_groups}
    return {n for n in names if n}


def check_subcommands(compose: Compose, app: typer.Typer = cli_app) -> list[str]:
    """Every `casebridge <sub> [--option]...` the compose file runs exists in casebridge.cli.core.app."""
    names = registered_commands(app)
    root = typer.main.get_command(app)
    problems = []
    for name, svc in services(compose).items():
        if "build" not in svc:
            continue
        for argv in invocations(svc):
            sub = argv[1] if len(argv) > 1 else None
            if sub is None or sub.startswith("-"):
                continue
            if sub not in names:
                problems.append(
                    f"service {name!r} runs `casebridge {sub}`, but casebridge.cli.core.app has no {sub!r} command "
                    f"(it has: {', '.join(sorted(names))})"
                )
                continue
            command = root.commands[sub] if hasattr(root, "commands") else root
            args = argv[2:]
            if hasattr(command, "commands") and args and args[0] in command.commands:
                command, args = command.commands[args[0]], args[1:]
            options = {opt for param in command.params for opt in getattr(param, "opts", ())}
            for arg in args:
                option = arg.split("=", 1)[0]
                if option.startswith("--") and option not in options:
                    problems.append(f"service {name!r} runs `casebridge {sub} ... {option}`, which has no such option")
    return problems


COMPOSE_CHECKS: list[Callable[[Compose], list[str]]] = [
    check_casebridge_settings,
    check_base_url,
    check_images,
    check_dependencies,
    check_datasource,
    check_hapi_settings,
    check_ports,
    check_build,
    check_waits_for_hapi,
    check_hapi_healthcheck,
    check_restart_policies,
    check_api_keys_variable,
]


# -- the checks on Dockerfile and .dockerignore ------------------------------------------------------------------


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """The stages, each a list of (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((instruction, args.strip()))
    return stages


def env_pairs(args: str) -> dict[str, str]:
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:  # legacy form: ENV KEY value with spaces
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(t.split("=", 1) for t in tokens if "=" in t)


PIP_OPTIONS_WITH_VALUE = {
    "-c", "--constraint", "-r", "--requirement", "-t", "--target", "--prefix", "--root", "-i", "--index-url",
    "--extra-index-url", "-f", "--find-links", "--cache-dir", "--python",
}  # fmt: skip


def run_commands(stage: list[tuple[str, str]]) -> list[list[str]]:
    """The commands of a stage's RUN instructions, in order, as argument lists: split at && || ; |, without
    RUN's own flags (--mount=...), leading VAR=value assignments and redirections."""
    commands: list[list[str]] = []
    for instr, args in stage:
        if instr != "RUN":
            continue
        lexer = shlex.shlex(args, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        current: list[str] = []
        tokens = list(lexer)
        while tokens and tokens[0].startswith("--"):
            tokens.pop(0)
        for token in [*tokens, ";"]:
            if token in ("&&", "||", ";", "|"):
                while current and re.match(r"^\w+=", current[0]):
                    current.pop(0)
                if current:
                    commands.append(current)
                current = []
            elif token[:1] in "<>" or (current[-1:] and current[-1][:1] in "<>"):
                continue  # a redirection and its target
            else:
                current.append(token)
    return commands


def project_installs(commands: list[list[str]], workdir: str) -> list[tuple[int, str, bool]]:
    """(index in commands, folder, editable) of each `pip install` of a local folder (the project)."""
    found = []
    for index, argv in enumerate(commands):
        if argv[:2] == ["pip", "install"]:
            rest = argv[2:]
        elif PurePosixPath(argv[0]).name.startswith("python") and argv[1:4] == ["-m", "pip", "install"]:
            rest = argv[4:]
        else:
            continue
        editable = skip = False
        for arg in rest:
            if skip:
                skip = False
            elif arg in ("-e", "--editable"):
                editable = True
            elif arg in PIP_OPTIONS_WITH_VALUE:
                skip = True
            elif arg.startswith((".", "/")):
                folder = str(PurePosixPath(workdir) / arg) if arg.startswith(".") else arg
                found.append((index, folder.rstrip("/") or "/", editable))
    return found


def _runs_build_native(argv: list[str]) -> bool:
    return any(PurePosixPath(a).as_posix().endswith("scripts/build_native.py") for a in argv)


def compile_commands(commands: list[list[str]]) -> list[int]:
    """The indexes of the commands that compile with scripts/build_native.py (not --install or --remove it)."""
    return [
        i for i, argv in enumerate(commands) if _runs_build_native(argv) and not {"--install", "--remove"} & set(argv)
    ]


def check_install(stages: list[list[tuple[str, str]]]) -> list[str]:
    """The project is installed into the virtualenv the final stage copies; installed editable, the final stage
    also needs the sources; installed as a wheel (which leaves out the modules compiled by mypyc), build_native.py
    --install must copy those into it."""
    final = stages[-1]
    build = [step for stage in stages[:-1] for step in stage]
    workdirs = [args for instr, args in build if instr == "WORKDIR"]
    commands = [c for stage in stages[:-1] for c in run_commands(stage)]
    installs = project_installs(commands, workdirs[-1] if workdirs else "/")
    problems = []
    if not installs:
        problems.append("the build stage does not pip install the project: the image would have no casebridge")
    venv = {k: v for instr, args in final if instr == "ENV" for k, v in env_pairs(args).items()}.get("VIRTUAL_ENV")
    copied = {
        src.rstrip("/")
        for instr, args in final
        if instr == "COPY" and "--from=" in args
        for src in shlex.split(args)[:-1]
        if not src.startswith("--")
    }
    if not venv or venv not in copied:
        problems.append(f"the final stage does not copy the virtualenv ({venv}) from the build stage")
    compiled = compile_commands(commands)
    copied_in = [i for i, argv in enumerate(commands) if _runs_build_native(argv) and "--install" in argv]
    for index, folder, editable in installs:
        if editable and not any(folder == c or folder.startswith(c + "/") for c in copied):
            problems.append(
                f"the project is installed editable from {folder}, which the final stage does not copy: "
                "the package would be missing from the image"
            )
        elif not editable and compiled and not any(i > max(index, *compiled) for i in copied_in):
            problems.append(
                f"the project is installed from {folder} as a wheel, which leaves out the modules compiled by "
                "mypyc, and no later scripts/build_native.py --install copies them into it: the image would "
                "validate uncompiled"
            )
    return problems


def check_dockerfile(text: str, root: Path = PROJECT_ROOT) -> list[str]:
    stages = dockerfile_stages(text)
    if not stages:
        return ["the Dockerfile has no FROM"]
    final = stages[-1]
    problems = []
    entrypoints = [args for instr, args in final if instr == "ENTRYPOINT"]
    try:
        entrypoint = json.loads(entrypoints[-1]) if entrypoints else None
    except json.JSONDecodeError:
        entrypoint = entrypoints[-1]
    if entrypoint != ["casebridge"]:
        problems.append(f'the final stage\'s ENTRYPOINT is {entrypoint!r}, not ["casebridge"] (exec form)')
    known = setting_env_names()
    envs = [env_pairs(args) for stage in stages for instr, args in stage if instr == "ENV"]
    for key in sorted({k for env in envs for k in env if k.startswith("CASEBRIDGE_")} - set(known)):
        problems.append(f"the Dockerfile sets {key}, which is not a field of casebridge.config.Settings")
    final_env = {k: v for instr, args in final if instr == "ENV" for k, v in env_pairs(args).items()}
    cache = final_env.get("CASEBRIDGE_FHIR_PACKAGE_CACHE")
    build_env = {
        k: v for stage in stages[:-1] for instr, args in stage if instr == "ENV" for k, v in env_pairs(args).items()
    }
    if not cache:
        problems.append(
            "the final stage does not set CASEBRIDGE_FHIR_PACKAGE_CACHE: the packages fetched at build time "
            "would not be found"
        )
    elif len(stages) > 1:
        if build_env.get("CASEBRIDGE_FHIR_PACKAGE_CACHE") != cache:
            problems.append(f"the build stage fetches the FHIR packages somewhere else than {cache} (final stage)")
        copied = [args for instr, args in final if instr == "COPY" and "--from=" in args]
        if not any(cache in shlex.split(args)[:-1] for args in copied):
            problems.append(f"the final stage does not copy the FHIR package cache {cache} from the build stage")
    runs = " ".join(args for stage in stages for instr, args in stage if instr == "RUN")
    problems += check_install(stages)
    if "casebridge packages fetch" not in runs:
        problems.append("the Dockerfile does not run `casebridge packages fetch`: validation would find no packages")
    if not compile_commands([c for stage in stages[:-1] for c in run_commands(stage)]):
        problems.append("the Dockerfile does not run scripts/build_native.py: the image would validate uncompiled")
    elif not any(
        instr == "COPY" and "scripts/build_native.py" in args for stage in stages[:-1] for instr, args in stage
    ):
        problems.append("the build stage runs scripts/build_native.py without copying it in")
    copies = [shlex.split(args) for stage in stages for instr, args in stage if instr == "COPY"]
    local = [src for words in copies if not any(w.startswith("--from=") for w in words) for src in words[:-1]]
    local = [src for src in local if not src.startswith("--")]
    sources = {PurePosixPath(src).parts[0] for src in local}
    for path in BUILD_INPUTS:
        if path not in sources:
            problems.append(f"the Dockerfile does not COPY {path} into the image")
    for src in local:
        if not (root / src).exists():
            problems.append(f"the Dockerfile copies {src}, which is not in the project (a path of an older layout?)")
    users = [args for instr, args in final if instr == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the final stage runs as root (no USER, or USER root)")
    return problems


def check_dockerignore(text: str) -> list[str]:
    """.dockerignore keeps out what must stay out, and lets in what the image needs."""
    patterns = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    excluded = [p.rstrip("/") for p in patterns if not p.startswith("!")]

    def ignored(path: str) -> bool:
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]  # an excluded folder takes its files
        return any(
            fnmatch.fnmatchcase(prefix, p) or fnmatch.fnmatchcase(prefix, p.removeprefix("**/"))
            for p in excluded
            for prefix in prefixes
        )

    needed = (*BUILD_INPUTS, "src/casebridge/__init__.py", "src/casebridge/py.typed", SEED_IN_CONTEXT, *PACKAGE_DATA)
    problems = [f".dockerignore excludes {path}, which the image needs" for path in needed if ignored(path)]
    for path in (".venv", ".git", ".fhir-server", "tests", ".env"):
        if not ignored(path):
            problems.append(f".dockerignore does not exclude {path}")
    # Modules compiled for the developer's Python must not reach the image, which compiles its own.
    for path in COMPILED_HERE:
        if not ignored(path):
            problems.append(f".dockerignore lets in {path} (compiled here)")
    if ignored("scripts/build_native.py"):
        problems.append(".dockerignore excludes scripts/build_native.py, which the image's build runs")
    return problems


# -- tests -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> Compose:
    return load_compose()


@pytest.mark.parametrize("check", COMPOSE_CHECKS, ids=lambda c: c.__name__)
def test_compose_is_consistent(compose: Compose, check: Callable[[Compose], list[str]]) -> None:
    problems = check(compose)
    assert not problems, f"docker-compose.yml: {check.__doc__}\n" + "\n".join(f"- {p}" for p in problems)


def test_compose_subcommands_exist_in_the_cli(compose: Compose) -> None:
    # `ping` and `demo --server` come from the push/pull work (casebridge/cli/transfer.py, core.py): this test is what
    # keeps the compose file and the command line in step.
    problems = check_subcommands(compose)
    assert not problems, (
        "docker-compose.yml runs casebridge commands or options that casebridge.cli.core.app does not register:\n"
        + "\n".join(f"- {p}" for p in problems)
    )


def test_casebridge_services_know_their_upstream_is_hapi(compose: Compose) -> None:
    """With CASEBRIDGE_UPSTREAM=hapi the gateway refuses first what HAPI would refuse as a whole (issue K)."""
    for name in built_services(compose):
        env = environment(services(compose)[name])
        assert env.get("CASEBRIDGE_UPSTREAM") == "hapi", (
            f"{name}: CASEBRIDGE_UPSTREAM is {env.get('CASEBRIDGE_UPSTREAM')!r}"
        )


def test_compose_services_are_the_documented_ones(compose: Compose) -> None:
    """README.md and the comments refer to these names (docker compose run --rm casebridge ...)."""
    assert {"db", "hapi", "casebridge", "api"} <= set(services(compose)), f"services: {sorted(services(compose))}"
    assert service_with_image(compose, HAPI_IMAGE) == "hapi", "the HAPI service is not called 'hapi'"
    assert service_with_image(compose, POSTGRES_IMAGE) == "db", "the Postgres service is not called 'db'"
    assert sorted(built_services(compose)) == ["api", "casebridge"], f"services built here: {built_services(compose)}"
    api = services(compose)["api"]
    assert any(argv[1:2] == ["serve"] for argv in invocations(api)), "the api service does not run casebridge serve"
    assert "CASEBRIDGE_API_KEYS" in environment(api), "the api service has no API keys setting"
    assert (api.get("healthcheck") or {}).get("test"), "the api service has no healthcheck"
    assert "/healthz" in " ".join(api["healthcheck"]["test"]), "the api healthcheck does not call /healthz"


def test_compose_volumes_are_declared(compose: Compose) -> None:
    declared = set(compose.get("volumes") or {})
    for name, svc in services(compose).items():
        for spec in svc.get("volumes") or []:
            source = spec.get("source") if isinstance(spec, dict) else str(spec).split(":", 1)[0]
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"service {name!r} mounts the named volume {source!r}, not declared"


def test_dockerfile_is_consistent() -> None:
    assert DOCKERFILE.is_file(), f"{DOCKERFILE} does not exist (docker-compose.yml builds from it)"
    problems = check_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    assert not problems, "Dockerfile:\n" + "\n".join(f"- {p}" for p in problems)


def test_the_image_carries_the_seed_case_as_package_data() -> None:
    """The demo's default case is package data: under casebridge/data, matched by pyproject.toml's package-data, so
    the image's regular install of src/ carries it (.dockerignore letting it in is checked above)."""
    assert SEED_CASE.is_relative_to(DATA_DIR), f"the demo's default case {SEED_CASE} is not package data"
    assert (PROJECT_ROOT / SEED_IN_CONTEXT).is_file(), f"{SEED_IN_CONTEXT} is not in the project"
    patterns = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    in_package = SEED_CASE.relative_to(DATA_DIR.parent).as_posix()
    assert any(fnmatch.fnmatchcase(in_package, p) for p in patterns.get("casebridge", [])), (
        f"pyproject.toml's [tool.setuptools.package-data] does not take {in_package} into the wheel"
    )


def test_dockerignore_is_consistent() -> None:
    assert DOCKERIGNORE.is_file(), f"{DOCKERIGNORE} does not exist: the whole project, .venv included, is sent"
    problems = check_dockerignore(DOCKERIGNORE.read_text(encoding="utf-8"))
    assert not problems, ".dockerignore:\n" + "\n".join(f"- {p}" for p in problems)


# -- the checks find what they are for -------------------------------------------------------------------------


def _set_env(service: str, key: str, value: str | None) -> Callable[[Compose], None]:
    def mutate(doc: Compose) -> None:
        env = doc["services"][service].setdefault("environment", {})
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value

    return mutate


def _set(path: str, value: Any) -> Callable[[Compose], None]:
    """Set doc[a][b][c] for path 'a.b.c' (None deletes)."""

    def mutate(doc: Compose) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[key]
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value

    return mutate


def _both(*mutations: Callable[[Compose], None]) -> Callable[[Compose], None]:
    def mutate(doc: Compose) -> None:
        for mutation in mutations:
            mutation(doc)

    return mutate


BROKEN_COMPOSE = [
    ("unknown-setting", _set_env("casebridge", "CASEBRIDGE_FHIR_BASEURL", "http://hapi:8080/fhir"),
     check_casebridge_settings, "CASEBRIDGE_FHIR_BASEURL"),
    ("bad-setting-value", _set_env("casebridge", "CASEBRIDGE_FHIR_TIMEOUT", "-5"), check_casebridge_settings,
     "refuses"),
    ("url-host", _set_env("casebridge", "CASEBRIDGE_FHIR_BASE_URL", "http://hapi-fhir:8080/fhir"), check_base_url,
     "not the HAPI service's name"),
    ("url-port", _set_env("casebridge", "CASEBRIDGE_FHIR_BASE_URL", "http://hapi:8090/fhir"), check_base_url,
     "not the port HAPI listens on"),
    ("url-path", _set_env("casebridge", "CASEBRIDGE_FHIR_BASE_URL", "http://hapi:8080/baseR4"), check_base_url,
     "servlet path"),
    ("url-unparseable", _set_env("casebridge", "CASEBRIDGE_FHIR_BASE_URL", "http://hapi:8080/fhir?x=1"),
     check_base_url, "Settings refuses it"),
    ("server-port-moved", _set_env("hapi", "SERVER_PORT", "9090"), check_base_url, "not the port HAPI listens on"),
    ("demo-elsewhere", _set("services.casebridge.command", ["demo", "--server", "http://localhost:8080/fhir"]),
     check_base_url, "uses --server"),
    ("hapi-latest", _set("services.hapi.image", "hapiproject/hapi:latest"), check_images, "not pinned"),
    ("hapi-untagged", _set("services.hapi.image", "hapiproject/hapi"), check_images, "not pinned"),
    ("postgres-17", _set("services.db.image", "postgres:17.2-alpine"), check_images, "PostgreSQL 16"),
    ("postgres-floating", _set("services.db.image", "postgres:16-alpine"), check_images, "pinned minor"),
    ("no-db-healthcheck", _set("services.db.healthcheck", None), check_dependencies, "no healthcheck"),
    ("hapi-starts-early", _set("services.hapi.depends_on", ["db"]), check_dependencies, "service_healthy"),
    ("missing-target", _set("services.casebridge.depends_on", {"fhir": {"condition": "service_started"}}),
     check_dependencies, "not a service"),
    ("datasource-db", _set_env("hapi", "SPRING_DATASOURCE_URL", "jdbc:postgresql://db:5432/fhir"),
     check_datasource, "POSTGRES_DB"),
    ("datasource-host", _set_env("hapi", "SPRING_DATASOURCE_URL", "jdbc:postgresql://postgres:5432/hapi"),
     check_datasource, "not the database service"),
    ("datasource-password", _set_env("db", "POSTGRES_PASSWORD", "changed"), check_datasource, "POSTGRES_PASSWORD"),
    ("datasource-h2", _set_env("hapi", "SPRING_DATASOURCE_URL", "jdbc:h2:file:./target/database/h2"),
     check_datasource, "not a jdbc:postgresql"),
    ("old-dialect", _set_env("hapi", "SPRING_JPA_PROPERTIES_HIBERNATE_DIALECT", "org.hibernate.dialect.H2Dialect"),
     check_datasource, "dialect"),
    ("fhir-r5", _set_env("hapi", "HAPI_FHIR_FHIR_VERSION", "R5"), check_hapi_settings, "R4"),
    ("search-cache-on", _set_env("hapi", "HAPI_FHIR_REUSE_CACHED_SEARCH_RESULTS_MILLIS", None), check_hapi_settings,
     "-1"),
    ("port-all-interfaces", _set("services.hapi.ports", ["8080:8080"]), check_ports, "every interface"),
    ("port-long-form", _set("services.hapi.ports", [{"target": 8080, "published": 8080, "host_ip": "0.0.0.0"}]),
     check_ports, "0.0.0.0"),
    ("port-wrong-target", _set("services.hapi.ports", ["127.0.0.1:8080:80"]), check_ports, "container port 80"),
    ("build-elsewhere", _set("services.casebridge.build", "./docker"), check_build, "not the project root"),
    ("build-no-dockerfile", _set("services.casebridge.build", {"context": ".", "dockerfile": "Nope.Dockerfile"}),
     check_build, "does not exist"),
    ("no-wait", _both(_set("services.hapi.healthcheck", None), _set("services.casebridge.entrypoint", None)),
     check_waits_for_hapi, "without waiting"),
    ("wait-then-nothing", _both(_set("services.hapi.healthcheck", None),
     _set("services.casebridge.entrypoint", ["sh", "-c", "casebridge ping --wait 300"])),
     check_waits_for_hapi, "runs nothing"),
    ("hapi-without-probe", _set("services.hapi.image", "hapiproject/hapi:v8.8.0-1"), check_hapi_healthcheck,
     "not one known to ship"),
    ("no-hapi-healthcheck", _set("services.hapi.healthcheck", None), check_hapi_healthcheck, "has no healthcheck"),
    ("hapi-healthcheck-disabled", _set("services.hapi.healthcheck.disable", True), check_hapi_healthcheck,
     "has no healthcheck"),
    ("hapi-curl", _set("services.hapi.healthcheck.test", ["CMD-SHELL", "curl -f http://localhost:8080/fhir/metadata"]),
     check_hapi_healthcheck, "needs a shell"),
    ("hapi-probe-elsewhere", _set("services.hapi.healthcheck.test", ["CMD", "java", "-cp", "/opt", "HealthCheck"]),
     check_hapi_healthcheck, "not the image's probe"),
    ("hapi-short-start", _set("services.hapi.healthcheck.start_period", "1m30s"), check_hapi_healthcheck,
     "start_period 1m30s"),
    ("hapi-no-start-period", _set("services.hapi.healthcheck.start_period", None), check_hapi_healthcheck,
     "start_period None"),
    ("hapi-short-timeout", _set("services.hapi.healthcheck.timeout", "5s"), check_hapi_healthcheck,
     "shorter than the probe's own"),
    ("demo-starts-early", _set("services.casebridge.depends_on", {"hapi": {"condition": "service_started"}}),
     check_dependencies, "'casebridge' depends on 'hapi' with service_started"),
    ("api-no-hapi", _set("services.api.depends_on", {"db": {"condition": "service_healthy"}}),
     check_dependencies, "'api' depends on 'hapi' with no condition"),
    ("hapi-no-healthcheck-but-awaited", _set("services.hapi.healthcheck", None), check_dependencies,
     "waits for 'hapi' to be healthy, but it has no healthcheck"),
    ("hapi-not-restarted", _set("services.hapi.restart", "no"), check_restart_policies, "'hapi' has restart 'no'"),
    ("db-default-restart", _set("services.db.restart", None), check_restart_policies, "'db' has restart 'no'"),
    ("api-loops", _set("services.api.restart", "unless-stopped"), check_restart_policies, "on-failure:N"),
    ("api-never-restarted", _set("services.api.restart", "no"), check_restart_policies, "on-failure:N"),
    ("api-retries-forever", _set("services.api.restart", "on-failure"), check_restart_policies, "on-failure:N"),
    ("demo-loops", _set("services.casebridge.restart", "always"), check_restart_policies, "again and again"),
    ("keys-required", _set_env("api", "CASEBRIDGE_API_KEYS", "${CASEBRIDGE_API_KEYS:?set CASEBRIDGE_API_KEYS}"),
     check_api_keys_variable, "makes every compose command fail"),
    ("keys-required-no-colon", _set_env("api", "CASEBRIDGE_API_KEYS", "${CASEBRIDGE_API_KEYS?}"),
     check_api_keys_variable, "makes every compose command fail"),
    ("other-required", _set_env("casebridge", "CASEBRIDGE_FHIR_TOKEN", "${TOKEN:?}"), check_api_keys_variable,
     "services.casebridge.environment.CASEBRIDGE_FHIR_TOKEN"),
    ("keys-in-file", _set_env("api", "CASEBRIDGE_API_KEYS", "job:rw:0123456789abcdef0123456789"),
     check_api_keys_variable, "secrets in the repository"),
    ("keys-default", _set_env("api", "CASEBRIDGE_API_KEYS", "${CASEBRIDGE_API_KEYS:-job:rw:0123456789abcdef0123}"),
     check_api_keys_variable, "no default key"),
    ("keys-missing", _set_env("api", "CASEBRIDGE_API_KEYS", None), check_api_keys_variable, "without"),
    ("cache-reuse-60s", _set_env("hapi", "HAPI_FHIR_REUSE_CACHED_SEARCH_RESULTS_MILLIS", "60000"),
     check_hapi_settings, "is '60000', not '-1'"),
    ("client-ids-any", _set_env("hapi", "HAPI_FHIR_CLIENT_ID_STRATEGY", "ANY"), check_hapi_settings,
     "client_id_strategy"),
    ("client-ids-implicit", _set_env("hapi", "HAPI_FHIR_CLIENT_ID_STRATEGY", None), check_hapi_settings,
     "client_id_strategy (HAPI_FHIR_CLIENT_ID_STRATEGY) is not set"),
    ("integrity-off", _set_env("hapi", "HAPI_FHIR_ENFORCE_REFERENTIAL_INTEGRITY_ON_WRITE", "false"),
     check_hapi_settings, "enforce_referential_integrity_on_write"),
    ("external-refs-on", _set_env("hapi", "HAPI_FHIR_ALLOW_EXTERNAL_REFERENCES", "true"), check_hapi_settings,
     "allow_external_references"),
    ("resthook-on", _set_env("hapi", "HAPI_FHIR_SUBSCRIPTION_RESTHOOK_ENABLED", "true"), check_hapi_settings,
     "resthook_enabled"),
    ("websocket-implicit", _set_env("hapi", "HAPI_FHIR_SUBSCRIPTION_WEBSOCKET_ENABLED", None), check_hapi_settings,
     "websocket_enabled"),
    ("server-address-set", _set_env("hapi", "HAPI_FHIR_SERVER_ADDRESS", "http://localhost:8080/fhir"),
     check_hapi_settings, "next links must follow the request's Host"),
    ("server-address-implicit", _set_env("hapi", "HAPI_FHIR_SERVER_ADDRESS", None), check_hapi_settings,
     "server_address (HAPI_FHIR_SERVER_ADDRESS) is not set"),
    ("server-address-dotted", _both(_set_env("hapi", "HAPI_FHIR_SERVER_ADDRESS", None),
     _set_env("hapi", "hapi.fhir.server_address", "http://hapi:8080/fhir")), check_hapi_settings,
     "server_address (HAPI_FHIR_SERVER_ADDRESS) is 'http://hapi:8080/fhir'"),
    ("unknown-subcommand", _set("services.casebridge.command", ["demo-against-hapi"]), check_subcommands,
     "no 'demo-against-hapi' command"),
    ("unknown-option", _set("services.casebridge.command", ["demo", "--url", "http://hapi:8080/fhir"]),
     check_subcommands, "--url"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "check", "expected"), [c[1:] for c in BROKEN_COMPOSE], ids=[c[0] for c in BROKEN_COMPOSE]
)
def test_checks_find_a_broken_compose_file(
    compose: Compose, mutate: Callable[[Compose], None], check: Callable[[Compose], list[str]], expected: str
) -> None:
    broken = copy.deepcopy(compose)
    mutate(broken)
    problems = check(broken)
    assert any(expected in p for p in problems), f"{check.__name__} did not report {expected!r}; it said: {problems}"


def test_the_api_without_keys_refuses_to_start_and_says_why(compose: Compose, monkeypatch: pytest.MonkeyPatch) -> None:
    """With CASEBRIDGE_API_KEYS unset, compose gives the api service an empty value, other commands still run,
    and `casebridge serve` with the api service's environment exits 3 naming the variable (its container log)."""
    api = services(compose)["api"]
    env = {k: interpolate(v, {}) for k, v in environment(api).items()}
    assert env["CASEBRIDGE_API_KEYS"] == "", env
    for key in [k for k in os.environ if k.startswith("CASEBRIDGE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    serve = next(argv for argv in invocations(api) if argv[1:2] == ["serve"])
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli_app, serve[1:])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 3, result.output
    assert "configuration error: no API keys" in result.output and "CASEBRIDGE_API_KEYS=" in result.output


def test_interpolation_reads_compose_forms() -> None:
    assert interpolate("${K:-}", {}) == "" and interpolate("${K:-}", {"K": "x"}) == "x"
    assert interpolate("${K:-d}", {"K": ""}) == "d" and interpolate("${K-d}", {"K": ""}) == ""
    assert interpolate("$${K} ${K}", {"K": "v"}) == "${K} v"
    with pytest.raises(ValueError, match="K is missing"):
        interpolate("${K:?set K}", {})
    assert interpolate("${K:?set K}", {"K": "v"}) == "v"


def test_durations_read_compose_forms() -> None:
    assert [seconds(d) for d in ("600s", "1m30s", "10m", "1h", "500ms", "20", 30)] == [600, 90, 600, 3600, 0.5, 20, 30]
    assert seconds("ten minutes") is None and seconds("10x") is None


def test_invocations_read_the_entrypoint_wrapper(compose: Compose) -> None:
    argv = invocations(services(compose)["casebridge"])
    assert [a[:2] for a in argv] == [["casebridge", "ping"], ["casebridge", "demo"]], argv
    assert invocations({"command": ["push", "x.yaml"]}) == [["casebridge", "push", "x.yaml"]]


BROKEN_DOCKERFILE = [
    ("entrypoint", lambda t: t.replace('ENTRYPOINT ["casebridge"]', 'ENTRYPOINT ["python", "-m", "casebridge"]'),
     "ENTRYPOINT"),
    ("entrypoint-shell-form", lambda t: t.replace('ENTRYPOINT ["casebridge"]', "ENTRYPOINT casebridge"), "exec form"),
    ("unknown-setting", lambda t: t + "\nENV CASEBRIDGE_PACKAGE_CACHE=/opt/fhir-packages\n",
     "CASEBRIDGE_PACKAGE_CACHE"),
    ("editable-not-copied", lambda t: t.replace("-c constraints.txt /app\n", "-c constraints.txt -e /app\n"),
     "installed editable from /app"),
    ("compiled-not-installed", lambda t: t.replace(" && python scripts/build_native.py --install \\\n", ""),
     "build_native.py --install"),
    ("compiled-installed-first", lambda t: t.replace("-c constraints.txt /app\n", "-c constraints.txt /app \\\n && "
     "python scripts/build_native.py --install\n").replace(" && python scripts/build_native.py --install \\\n", ""),
     "build_native.py --install"),
    ("venv-not-copied", lambda t: t.replace("COPY --from=build /opt/venv /opt/venv", ""), "virtualenv (/opt/venv)"),
    ("not-installed", lambda t: t.replace("-c constraints.txt /app\n", "-c constraints.txt\n"),
     "pip install the project"),
    ("no-src", lambda t: t.replace("COPY src/ ./src/", ""), "COPY src"),
    ("old-layout", lambda t: t.replace("COPY src/ ./src/", "COPY src/ ./src/\nCOPY service/ ./service/"),
     "service/, which is not in the project"),
    ("cache-not-copied", lambda t: t.replace("COPY --from=build /opt/fhir-packages /opt/fhir-packages", ""),
     "does not copy the FHIR package cache"),
    ("root", lambda t: t.replace("USER 10001:10001", "USER root"), "root"),
    ("not-compiled", lambda t: t.replace(" && PYTHONPATH=/tmp/mypyc python scripts/build_native.py \\\n", ""),
     "build_native.py"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("mutate", "expected"), [c[1:] for c in BROKEN_DOCKERFILE], ids=[c[0] for c in BROKEN_DOCKERFILE]
)
def test_checks_find_a_broken_dockerfile(mutate: Callable[[str], str], expected: str) -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    broken = mutate(text)
    assert broken != text, "the mutation did not apply: the Dockerfile changed, update this test"
    problems = check_dockerfile(broken)
    assert any(expected in p for p in problems), f"check_dockerfile did not report {expected!r}; it said: {problems}"


def test_checks_find_a_broken_dockerignore() -> None:
    text = DOCKERIGNORE.read_text(encoding="utf-8")
    assert any("data/mappings" in p for p in check_dockerignore(text + "\nsrc/casebridge/data/mappings\n"))
    assert any("profiles" in p for p in check_dockerignore(text + "\n**/profiles\n"))
    assert any(SEED_IN_CONTEXT in p for p in check_dockerignore(text + "\n**/cases\n"))
    assert any("fhir-packages.json" in p for p in check_dockerignore(text + "\n**/*.json\n"))
    assert any(".venv" in p for p in check_dockerignore(text.replace("\n.venv\n", "\n")))
    assert any("_native.json" in p for p in check_dockerignore(text.replace("\nsrc/casebridge/_native.json\n", "\n")))
    assert any(".so" in p for p in check_dockerignore(text.replace("\nsrc/**/*.so\n", "\n")))
    assert any("build_native" in p for p in check_dockerignore(text + "\nscripts\n"))


def test_subcommand_check_reads_the_registered_commands(compose: Compose) -> None:
    """An app without `ping` (as before the push/pull work) is reported, by command name."""
    bare = typer.Typer()

    @bare.command()
    def demo(server: str = typer.Option("", "--server")) -> None:
        """A stand-in."""

    @bare.command("check-mappings")
    def check_mappings() -> None:
        """A stand-in."""

    problems = check_subcommands(compose, bare)
    assert any("no 'ping' command" in p for p in problems), problems
    assert not any("'demo'" in p for p in problems), problems
