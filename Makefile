# safecity developer entry points. `make help` lists them.
VENV := .venv
PYTEST_ARGS ?=
# Test files spread over this many workers (pytest-xdist); 1 runs them in one process.
TEST_JOBS ?= 2

.DEFAULT_GOAL := help
.PHONY: help setup run test fuzz compose-test lint lock bench soak clean

help:
	@echo "make setup  install mosquitto/influxdb if missing, create $(VENV), install the project"
	@echo "make run    the whole local stack (broker, InfluxDB, ingest, API + console, simulated city;"
	@echo "           CITIES=\"tashkent samarkand\" runs several cities, each with its own fleet;"
	@echo "           REGION=1 adds a regional instance the cities federate to)"
	@echo "make test   the test suite against real local services (PYTEST_ARGS=... to pass flags)"
	@echo "make fuzz   the device-bytes fuzz tests with a long budget (FUZZ_EXAMPLES=20000)"
	@echo "make compose-test  docker-compose.yml run for real under podman (part of make test)"
	@echo "make lint   ruff and mypy"
	@echo "make lock   re-pin requirements*.lock (hashed) from pyproject.toml's ranges (uv)"
	@echo "make bench  the benchmarks"
	@echo "make soak   an hour of the city at 10x with a fault every 3 minutes (SOAK_ARGS=...)"
	@echo "make clean  remove caches, build output and var/ (keeps $(VENV))"

setup:
	bash scripts/setup.sh

# CITIES="tashkent samarkand": several cities, each with its own fleet and database.
CITIES ?=
# REGION=1: a regional instance beside the cities, bridged (docs/federation.md).
REGION ?=
run: setup
	$(VENV)/bin/safecity run $(if $(strip $(CITIES)),--cities $(CITIES)) $(if $(filter 1 yes true,$(REGION)),--region)

# Ends by printing how long the set-up and the suite took together.
test:
	@start=$$(date +%s); rc=0; \
	bash scripts/setup.sh --test && $(VENV)/bin/pytest -n $(TEST_JOBS) --dist loadfile $(PYTEST_ARGS) || rc=$$?; \
	echo "make test: exit $$rc after $$(( $$(date +%s) - start )) s (set-up and suite)"; exit $$rc

# The fuzz tests of every path that reads device bytes, with a long budget and random
# seeds (make test runs them with a small fixed one; docs/testing.md).
FUZZ_EXAMPLES ?= 20000
FUZZ_TESTS := tests/ingest/test_fuzz_device_bytes.py tests/edge/test_fuzz_spool.py \
	tests/alerts/test_fuzz_parse.py tests/api/test_fuzz_readback.py
fuzz:
	bash scripts/setup.sh --python-only
	SAFECITY_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(VENV)/bin/pytest -q --timeout 0 \
		-W ignore::hypothesis.errors.HypothesisWarning $(PYTEST_ARGS) $(FUZZ_TESTS)

# The compose stack built and run under podman (docs/compose.md); `make test` runs it too.
compose-test:
	bash scripts/setup.sh --test
	$(VENV)/bin/pytest $(PYTEST_ARGS) tests/test_compose_podman.py

# Linting needs only the virtualenv, not the broker and database packages.
lint:
	bash scripts/setup.sh --python-only
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy deploy/local/podman_stack.py deploy/local/podman_build.py

# The locks every install uses (setup.sh, the Dockerfile): the test lock first, then the
# runtime lock constrained to its versions, so the image runs what the tests ran.
# uv keeps a pin that still satisfies pyproject.toml; UPGRADE=1 moves every pin to the newest.
LOCK_FLAGS = --universal --generate-hashes --quiet $(if $(UPGRADE),--upgrade)
lock:
	bash scripts/setup.sh --python-only
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev $(LOCK_FLAGS) -o requirements-dev.lock
	$(VENV)/bin/uv pip compile pyproject.toml -c requirements-dev.lock $(LOCK_FLAGS) -o requirements.lock
	$(VENV)/bin/uv pip compile requirements-nodeps.in --no-deps $(LOCK_FLAGS) -o requirements-nodeps.lock

bench:
	bash scripts/setup.sh --test
	$(VENV)/bin/python -m benchmarks

soak:
	bash scripts/setup.sh --test
	$(VENV)/bin/python -m benchmarks.soak $(SOAK_ARGS)

clean:
	rm -rf var build dist .mypy_cache .ruff_cache .pytest_cache .hypothesis
	find . -path ./$(VENV) -prune -o \( -name __pycache__ -o -name '*.egg-info' \) -type d -prune -exec rm -rf {} +
