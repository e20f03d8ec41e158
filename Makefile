# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared/data/fruit_dev

.PHONY: demo test test-deps lint typecheck bench setup setup-dev clean

$(BIN)/sorter: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(BIN)/sorter
	$(BIN)/pip install -q -e '.[train,report,bench,dev]'
	touch $@

setup: $(BIN)/sorter
setup-dev: $(VENV)/.dev

## demo: install the light runtime and sort the bundled sample photos with the shipped model
demo: $(BIN)/sorter
	rm -rf demo && mkdir -p demo/incoming && cp samples/*.jpg demo/incoming/
	$(BIN)/sorter classify samples
	$(BIN)/sorter watch demo/incoming --out demo/out --db demo/sorter.db --once
	$(BIN)/sorter db stats --db demo/sorter.db
	@find demo/out -type f | sort

## test: install everything (training extra and the system programs the tests use), lint, type-check, run the suite
test: $(VENV)/.dev test-deps lint typecheck
	$(BIN)/python -m pytest -q -ra

## test-deps: mosquitto, systemd-analyze, shellcheck, chromium, buildah, mmdebstrap (apt-get as root, else what to run)
test-deps:
	tools/install-test-deps.sh

lint: $(VENV)/.dev
	$(BIN)/ruff check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

bench: $(VENV)/.dev
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf demo runs .pytest_cache build/containers
