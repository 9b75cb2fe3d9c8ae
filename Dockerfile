# syntax=docker/dockerfile:1
# casebridge image: the `casebridge` command line (its data files inside the package) and the pinned FHIR packages.
#
#   docker build -t casebridge .
#   docker run --rm --network host casebridge ping --server http://localhost:8080/fhir   # (Linux)
#   docker compose up --build     # with HAPI and PostgreSQL: see docker-compose.yml
#
# Two stages. `build` has Node.js + npm, needed only by `casebridge packages fetch` (it runs `npm pack`), and a
# C compiler with mypy, needed only to compile the validator and the mapping engine (scripts/build_native.py, as
# `make setup` does); the final stage copies the virtualenv and the package cache out of it, so no Node.js, npm,
# compiler, mypy, pip cache or source tree ends up in the image.

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

# A regular install, not an editable one: the data files (mappings, profiles, the FHIR package lock, schemas,
# terminology, example cases) are package data, found through the package wherever it is installed, so the final
# stage needs the virtualenv alone. An editable install would tie the virtualenv to /app/src, to be copied along,
# for the sole sake of the compiled modules; the wheel leaves those out, and they are copied into it below instead.
COPY README.md ./
COPY src/ ./src/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps -c constraints.txt /app

# The validator and the mapping engine compiled with mypyc (about twice as fast). mypy, the type stubs its strict
# check needs and setuptools go to a folder of their own that the final stage does not copy. build_native.py
# compiles beside the sources in /app/src; --install then copies the compiled modules, with the manifest that lets
# casebridge/_native.py use them, into the installed package (whose sources it checks are the ones compiled).
# Should the compile fail, the script says so and the image runs from the Python sources.
COPY scripts/build_native.py ./scripts/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install -c constraints.txt --target /tmp/mypyc mypy types-PyYAML setuptools \
 && PYTHONPATH=/tmp/mypyc python scripts/build_native.py \
 && python scripts/build_native.py --install \
 && rm -rf /tmp/mypyc

# The pinned FHIR packages (verified against the integrity in the package's data/fhir-packages.json) into a fixed
# cache; `packages list` then writes each package's definition index, so runs start without re-indexing.
RUN --mount=type=cache,target=/root/.npm \
    casebridge packages fetch --quiet \
 && casebridge packages list

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

# Code citations are checked against the package's data/terminology/case-codes.yaml;
# CASEBRIDGE_TERMINOLOGY_FILE points at another.

RUN groupadd --system --gid 10001 casebridge \
 && useradd --system --uid 10001 --gid casebridge --create-home --home-dir /home/casebridge \
        --shell /usr/sbin/nologin casebridge \
 && install -d -o 10001 -g 10001 /var/lib/casebridge/locks
# /var/lib/casebridge/locks: owned by the user, so a named volume mounted there (docker-compose.yml) is too.

# Owned by root and read-only to the casebridge user: code, data and packages are not changed at run time.
# Per-patient write locks go to the user's ~/.cache/casebridge/locks (CASEBRIDGE_LOCK_DIR to change it).
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/fhir-packages /opt/fhir-packages

# The user's home: writable, for what commands write relative to it (the demo's embedded server keeps its data in
# ./.fhir-demo).
WORKDIR /home/casebridge
USER 10001:10001

# `casebridge serve --host 0.0.0.0` (the HTTP API) listens on 8000; GET /healthz needs no key. The image also
# runs one-off commands (push, pull, demo), so its health check is set where it serves: docker-compose.yml's api.
EXPOSE 8000

ENTRYPOINT ["casebridge"]
CMD ["--help"]
