# syntax=docker/dockerfile:1
# casebridge image: the `casebridge` command line, the project's data folders and the pinned FHIR packages.
#
#   docker build -t casebridge .
#   docker run --rm --network host casebridge ping --server http://localhost:8080/fhir   # (Linux)
#   docker compose up --build     # with HAPI and PostgreSQL: see docker-compose.yml
#
# Two stages. `build` has Node.js + npm, needed only by `casebridge packages fetch` (it runs `npm pack`), and a
# C compiler with mypy, needed only to compile the validator and the mapping engine (scripts/build_native.py, as
# `make setup` does); the final stage copies the virtualenv, the project and the package cache out of it, so no
# Node.js, npm, compiler, mypy or pip cache ends up in the image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    CASEBRIDGE_FHIR_PACKAGE_CACHE=/opt/fhir-packages

RUN apt-get update \
 && apt-get install -y --no-install-recommends nodejs npm gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv

WORKDIR /app

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml or constraints.txt change.
# The list is read from pyproject.toml (no second copy of it to keep in step); constraints.txt pins versions.
COPY pyproject.toml constraints.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        >/tmp/requirements.txt \
 && pip install -c constraints.txt -r /tmp/requirements.txt

# Why an editable install (-e): service/config.py takes PROJECT_ROOT as the parent of the `service` package
# and finds mappings/, profiles/, fhir-packages.json there; the demo's seed case (fixtures/) and
# service/fhir/packages.py do the same, and only some of these have a CASEBRIDGE_* setting. A regular
# install would move `service` into site-packages, and PROJECT_ROOT with it. Installed editable, `service`
# is imported from /app/service, so PROJECT_ROOT is /app, where the data folders are copied below: the
# layout is the one of a checkout, with no per-folder settings to keep in step.
COPY README.md fhir-packages.json ./
COPY service/ ./service/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps -c constraints.txt -e /app \
 && python -m compileall -q /app/service

# The validator and the mapping engine compiled with mypyc (about twice as fast). mypy, the type stubs its strict
# check needs and setuptools go to a folder of their own that the final stage does not copy; the compiled
# modules stay beside their sources in /app/service, with the manifest that lets service/_native.py use them.
# Should the compile fail, the script says so and the image runs from the Python sources.
COPY scripts/build_native.py ./scripts/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c constraints.txt --target /tmp/mypyc mypy types-PyYAML setuptools \
 && PYTHONPATH=/tmp/mypyc python scripts/build_native.py \
 && rm -rf /app/.mypyc /tmp/mypyc

# The pinned FHIR packages (verified against the integrity in fhir-packages.json) into a fixed cache;
# `packages list` then writes each package's definition index, so runs start without re-indexing.
RUN --mount=type=cache,target=/root/.npm \
    casebridge packages fetch --quiet \
 && casebridge packages list

COPY mappings/ ./mappings/
COPY profiles/ ./profiles/
COPY fixtures/ ./fixtures/
COPY schemas/ ./schemas/
COPY terminology/ ./terminology/

# --------------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="casebridge" \
      org.opencontainers.image.description="Clinical case reports to validated FHIR R4, pushed to and pulled from FHIR servers." \
      org.opencontainers.image.licenses="Apache-2.0"

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CASEBRIDGE_FHIR_PACKAGE_CACHE=/opt/fhir-packages

# Code citations are checked against the project's terminology/case-codes.yaml, copied into /app with the
# other data folders; CASEBRIDGE_TERMINOLOGY_FILE points at another.

RUN groupadd --system --gid 10001 casebridge \
 && useradd --system --uid 10001 --gid casebridge --create-home --home-dir /home/casebridge \
        --shell /usr/sbin/nologin casebridge \
 && install -d -o 10001 -g 10001 /var/lib/casebridge/locks
# /var/lib/casebridge/locks: owned by the user, so a named volume mounted there (docker-compose.yml) is too.

# Owned by root and read-only to the casebridge user: code, data and packages are not changed at run time.
# Per-patient write locks go to the user's ~/.cache/casebridge/locks (CASEBRIDGE_LOCK_DIR to change it).
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/fhir-packages /opt/fhir-packages
COPY --from=build /app /app

WORKDIR /app
USER 10001:10001

# `casebridge serve --host 0.0.0.0` (the HTTP API) listens on 8000; GET /healthz needs no key. The image also
# runs one-off commands (push, pull, demo), so its health check is set where it serves: docker-compose.yml's api.
EXPOSE 8000

ENTRYPOINT ["casebridge"]
CMD ["--help"]
