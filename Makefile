# The two commands of the README. Each does all of its own set-up first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup up test lint bench proto

setup:
	bash scripts/setup.sh

## make up: install, then start the whole stack on embedded defaults (Ctrl-C stops it)
up: setup
	$(VENV)/bin/wakeline up

## make test: install, then lint, import contracts and the CPU test suite
test: setup lint
	$(PY) -m pytest -m "not gpu and not multigpu and not docker" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

proto: setup
	$(VENV)/bin/wakeline proto gen
