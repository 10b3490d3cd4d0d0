# `make repro` and `make test` each create the virtual environment they need (.venv) from the lock file.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: venv repro fast fast-small test test-fast lint lock benchmark mutation clean-venv

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

repro: $(STAMP)  ## download -> normalize -> train -> evaluate with params.yaml
	dvc repro

# One `-S` per line of recipes/NAME.overrides (comments skipped), each quoted for the shell.
recipe_args = $(foreach o,$(shell grep -v '^\#' recipes/$(1).overrides),-S '$(o)')

fast fast-small: $(STAMP)  ## a recipe of recipes/ as a DVC experiment (README: the fast recipe)
	dvc exp run $(call recipe_args,$@)

test: $(STAMP)  ## the whole suite, offline, one worker per core (the end-to-end runs are mostly one-threaded)
	python -m pytest -n auto --dist worksteal

test-fast: $(STAMP)  ## unit tests only, without the end-to-end dvc runs
	python -m pytest -m "not slow"

benchmark: $(STAMP)  ## the train stage against the tutorial's own script, same data, arms alternated
	python benchmarks/compare_tutorial.py

mutation: $(STAMP)  ## mutation testing of the library's core against its unit tests (hours on 2 cores: not part of CI)
	rm -rf mutants
	python -m mutmut run --max-children 2
	python -m mutmut results

lint: $(STAMP)  ## ruff (pinned in requirements.lock)
	python -m ruff check cifar10 stages tests benchmarks

lock: $(STAMP)  ## re-pin requirements.lock from the current environment
	(echo "# Pinned environment for Python 3.11 on Linux x86-64, CPU (pip freeze of a fresh venv: make lock)."; python -m pip freeze --exclude-editable) > requirements.lock

clean-venv:
	rm -rf $(VENV)
