# make run: the dev controller + the daemon against it on loopback. make test: the unit/integration suite.
SHELL := /bin/bash
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-system lint typecheck bench deb rpm clean

$(STAMP): setup.cfg pyproject.toml
	@scripts/bootstrap.sh "$(PYTHON)" "$(VENV)"
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m aiwm_devtools --spawn-agent

test: $(STAMP)
	$(BIN)/ruff check aiwm_agentd aiwm_devtools tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -m "not system" tests

test-system: $(STAMP)
	$(BIN)/pytest -m system tests/system

lint: $(STAMP)
	$(BIN)/ruff check aiwm_agentd aiwm_devtools tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache

-include packaging/packaging.mk
