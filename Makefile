# herd: the two entry points the README promises, plus their set-up.
#   make run    install (first time) and run the whole pipeline on the embedded default (local Ray + sqlite MLflow)
#   make test   install (first time) and run the test suite
# Both create ./.venv with Python 3.11 and `pip install -e '.[dev]'`; torch is pinned to 2.13 (CPU build here).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RECIPE ?= tiny
PYTEST_ARGS ?=

.PHONY: install run test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/herd run --recipe $(RECIPE)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check herd tests benchmarks

clean:
	rm -rf $(VENV) .herd .pytest_cache
