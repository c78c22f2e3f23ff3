# One entry point for a fresh machine: `make up` starts the service, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install browser up test test-fast bench lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,postgres]'
	touch $@

# Debian's chromium + chromium-driver for the Prefect UI test (idempotent, quiet; as root).
browser:
	@bash scripts/install-test-browser.sh

up: install
	$(VENV)/bin/dspy-service up

test: install browser
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow and not integration"

lint: install
	$(PY) -m ruff check .
