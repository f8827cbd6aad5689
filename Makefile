# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# Pins for this project's machines (their local CPU torch); empty it elsewhere: make install CONSTRAINTS=
CONSTRAINTS ?= -c .ci/constraints.txt

.PHONY: install install-test demo test test-min lint format services browser clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The service and the engine; `pip install .` alone is the API, CLI and client without torch.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q $(CONSTRAINTS) -e '.[engine]'
	touch $@

$(TEST_STAMP): pyproject.toml $(STAMP)
	$(PIP) install -q $(CONSTRAINTS) -e '.[engine,test]'
	touch $@

install: $(STAMP)  ## create .venv with .venv/bin/vidq, service and engine (idempotent)

install-test: $(TEST_STAMP)

demo: install  ## run the whole product in one process and render a clip
	$(VENV)/bin/vidq demo

services:  ## make sure the PostgreSQL and Redis the tests use are up
	@bash scripts/ensure-services.sh

browser:  ## Debian's chromium for the browser tests (installed only if missing)
	@bash scripts/ensure-chromium.sh

test: install-test services browser  ## lint, then the whole suite against the real services
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q -ra

test-min: install-test services  ## the declared minimum versions: API-only install without torch, unit tests
	VENV=$(VENV) bash scripts/test-min-versions.sh

lint: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .venv-min .pytest_cache
