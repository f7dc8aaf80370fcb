# tim-recall: `make demo` shows every outcome; `make test` runs every gate. Both set themselves up.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The venv's tools (hadolint, tim-recall) come first on PATH for every recipe and test.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: demo test faults test-rabbitmq4 rabbitmq4 cluster cluster-down bench bench-update broker install lint typecheck unit clean

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

# The tiers (markers set in tests/conftest.py): `unit` needs no broker (the sandbox's own tests
# included); `faults` is the kill/restart/partition tier alone; `test` runs every tier, as CI does.
unit: install
	$(BIN)/pytest -m "not broker"

faults: install broker
	$(BIN)/pytest -m faults

# --durations: the slowest tests, so that the suite's length has names (CI prints them).
test: install broker lint typecheck
	$(BIN)/pytest --durations=15

# The broker tier of the integration and fault suites again, against RabbitMQ 4.0.5 (Debian 13's, in a debootstrap
# tree cached under /var/cache/tim-recall, started as a second node on 127.0.0.1:5680). The
# broker-restart test stops and starts that node's app, never the host's.
RABBITMQ4_PORT ?= 5680
rabbitmq4:
	@scripts/rabbitmq4.sh start

test-rabbitmq4: install rabbitmq4
	TEST_AMQP_HOST=127.0.0.1 TEST_AMQP_PORT=$(RABBITMQ4_PORT) \
	TEST_RABBITMQCTL="$(CURDIR)/scripts/rabbitmq4.sh ctl" \
	$(BIN)/pytest $(PYTEST_FLAGS) --durations=15 -m broker tests/integration tests/faults

# A three-node cluster of the host's RabbitMQ on 127.0.0.1:5691-5693 (scripts/cluster.sh);
# `make cluster-down` removes it. The cluster tests (tests/cluster) start their own.
cluster:
	@scripts/cluster.sh up

cluster-down:
	@scripts/cluster.sh down

# `make bench` writes under bench/out/ (ignored by git); `make bench-update` rewrites the
# committed figures in bench/ (results.json records the commit and the machine measured).
bench: install broker rabbitmq4
	$(BIN)/python -m bench.run

bench-update: install broker rabbitmq4
	BENCH_UPDATE=1 $(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
