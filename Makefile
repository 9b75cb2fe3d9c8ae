# casebridge front door: `make demo` and `make test` work on a fresh clone (both run `make setup`).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test faults lint bench bench-scale schema golden clean

# Python packages when pyproject/constraints change; the pinned FHIR packages (npm pack, checked against
# their integrity) whenever missing; the validator compiled by mypyc when its sources changed (it runs from
# the sources if that cannot be built). Each step does nothing when everything is in place.
setup: $(STAMP)
	@$(BIN)/casebridge packages fetch --quiet
	@$(BIN)/python scripts/build_native.py

# Reinstall when the dependency list changes; pip is quiet unless something fails.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)
	@echo "setup: $(VENV) ready"

demo: setup
	@$(BIN)/casebridge demo

# Lint, types and the import layers (.importlinter) first (seconds), then the suite.
test: setup
	@$(BIN)/ruff check -q src tests benchmarks scripts
	@$(BIN)/mypy src
	@$(BIN)/lint-imports --no-cache
	@$(BIN)/python -m pytest -q

# The ingestion fault scenarios at the issue's full size: 1,000 generated cases each (make test runs 200).
faults: setup
	@CASEBRIDGE_FAULT_CASES=1000 $(BIN)/python -m pytest -q tests/e2e/test_ingest_faults.py --durations=0

lint: setup
	@$(BIN)/ruff check src tests benchmarks scripts
	@$(BIN)/mypy src
	@$(BIN)/lint-imports --no-cache

bench: setup
	@$(BIN)/python benchmarks/bench_convert.py
	@$(BIN)/python benchmarks/bench_validate.py
	@$(BIN)/python benchmarks/bench_push_pull.py
	@$(BIN)/python benchmarks/bench_api.py
	@$(BIN)/python benchmarks/bench_ingest.py

# 10,000 and 100,000 synthetic cases converted and validated: about half an hour on two cores.
bench-scale: setup
	@$(BIN)/python benchmarks/bench_ingest_scale.py

# Mutation testing (mutmut) of the modules in scripts/mutation.toml, each against its own tests, in a copy under
# build/mutation/work/; the report is build/mutation/report.md. Not part of make test or CI: minutes per module.
# MODULES='files body' runs some of them; MUTATION_CHILDREN=2 runs two test processes at once.
mutation: setup
	@$(BIN)/python scripts/mutation.py $(MODULES)

schema: setup
	@$(BIN)/casebridge schema -o src/casebridge/data/schemas/case-report-2.0.schema.json
	@$(BIN)/casebridge schema --version 1.0 -o src/casebridge/data/schemas/case-report-1.0.schema.json

# Rewrite tests/golden/ after an intended mapping change, then review `git diff tests/golden`: the golden test only
# compares (it never writes). Needs only the virtualenv.
golden: $(STAMP)
	@$(BIN)/python scripts/update_golden.py

clean:
	-@test -x $(BIN)/python && $(BIN)/python scripts/build_native.py --remove
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
