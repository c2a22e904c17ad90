# deathmetal-lake: the two-command start (`make dev`) and the test entry point CI calls.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# uv installs the locked versions several times faster than pip; it is bootstrapped into the venv.
# --compile-bytecode: uv, unlike pip, leaves .py files uncompiled, and every process then compiles
# the ~3,000 modules it imports (seconds per process, each time where PYTHONDONTWRITEBYTECODE is set).
UV_VERSION ?= 0.13.9
UV := $(BIN)/uv
# Exact versions with hashes, made by `make lock` from pyproject.toml (runtime, runtime + test).
LOCK := requirements.lock
TEST_LOCK := requirements-test.lock
# `make lock LOCK_FLAGS=--upgrade` moves every pin to the newest allowed; without, pins are kept.
LOCK_FLAGS ?=
LOCK_ARGS = --universal --python-version 3.11 --generate-hashes --quiet \
	--custom-compile-command "make lock" $(LOCK_FLAGS)
# The settings make needs come from the environment, else `.env` (what the lake's Python reads,
# with the same precedence), else the defaults: DAGSTER_HOME follows a LAKE_STATE_DIR set in `.env`.
dotenv = $(shell sed -n 's/^$(1)=//p' .env 2>/dev/null | tail -n 1)
LAKE_STATE_DIR ?= $(or $(call dotenv,LAKE_STATE_DIR),.lake)
export DAGSTER_HOME ?= $(or $(call dotenv,DAGSTER_HOME),$(abspath $(LAKE_STATE_DIR))/dagster)

.PHONY: dev run test test-localstack provision localstack-up localstack-down lint lock audit \
	aws-up aws-down aws-status clean-state

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(UV): | $(BIN)/python
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)

# The lock is complete, so nothing is resolved at install time (--no-deps); `pip check` fails
# if pyproject.toml gained a dependency the lock lacks.
CHECK_LOCKED = $(UV) pip check --quiet --python $(BIN)/python || \
	{ echo "pyproject.toml and the lock disagree: run 'make lock'" >&2; exit 1; }

$(VENV)/.installed: $(LOCK) pyproject.toml | $(UV)
	$(UV) pip install --quiet --compile-bytecode --python $(BIN)/python --no-deps -r $(LOCK) -e .
	$(CHECK_LOCKED)
	touch $@

$(VENV)/.installed-test: $(TEST_LOCK) pyproject.toml | $(UV)
	$(UV) pip install --quiet --compile-bytecode --python $(BIN)/python --no-deps -r $(TEST_LOCK) -e .
	$(CHECK_LOCKED)
	touch $(VENV)/.installed $@

# Regenerates both locks from pyproject.toml, for every platform (--universal). The runtime lock
# is constrained by the test lock so the two never disagree. The resolver chooses boto3 (s3fs ->
# aiobotocore pins botocore) and keeps polars below 2 (dagster-polars 0.27 passes
# scan_parquet(rechunk=...), which polars 2 removed): both are pyproject.toml's bounds, not pins.
lock: | $(UV)
	$(UV) pip compile pyproject.toml --extra test $(LOCK_ARGS) -o $(TEST_LOCK)
	$(UV) pip compile pyproject.toml -c $(TEST_LOCK) $(LOCK_ARGS) -o $(LOCK)

# Known vulnerabilities in the locked dependencies; pip-audit runs from uv's cache, not the venv.
# It asks PyPI's (or OSV's, with PIP_AUDIT_VULNERABILITY_SERVICE=osv) advisory database.
audit: | $(UV)
	$(UV) tool run pip-audit --strict --disable-pip --require-hashes --progress-spinner off -r $(LOCK)
	$(UV) tool run pip-audit --strict --disable-pip --require-hashes --progress-spinner off -r $(TEST_LOCK)

# The instance's settings (run queue, telemetry); a dagster.yaml already there is the user's own.
$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

dev: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m deathmetal_lake.local_aws up
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

run: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m deathmetal_lake.run

# Two workers (pytest-xdist), a test module each at a time: most tests wait on the emulator,
# Firehose or Dagster's event log, and a module's fixtures are built once.
test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The lake's resources on the embedded AWS or LocalStack, then a wait until every delivery stream
# delivers a probe; on LAKE_AWS_MODE=aws it refuses (that is Terraform's job, infra/).
provision: $(VENV)/.installed
	$(BIN)/python -m deathmetal_lake.provision

# The end-to-end tests (marker `localstack`, left out of `make test`) against a host-mode LocalStack
# of their own on a free port: installed once into ~/.cache/deathmetal-lake, stopped at the end.
test-localstack: $(VENV)/.installed-test
	$(BIN)/python -m deathmetal_lake_tools.localstack run -- \
		sh -c '$(MAKE) --no-print-directory provision && $(BIN)/python -m pytest -q -m localstack'

# A host-mode LocalStack on 127.0.0.1:4566 for LAKE_AWS_MODE=localstack (log in .lake/localstack/).
localstack-up: $(VENV)/.installed
	$(BIN)/python -m deathmetal_lake_tools.localstack up

localstack-down: $(VENV)/.installed
	$(BIN)/python -m deathmetal_lake_tools.localstack down

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

aws-up: $(VENV)/.installed
	$(BIN)/python -m deathmetal_lake.local_aws up

aws-down: $(VENV)/.installed
	$(BIN)/python -m deathmetal_lake.local_aws down

aws-status: $(VENV)/.installed
	$(BIN)/python -m deathmetal_lake.local_aws status

# Stops the embedded AWS and deletes its state and the Dagster instance together.
clean-state: $(VENV)/.installed
	$(BIN)/python -m deathmetal_lake.local_aws down
	rm -rf $(LAKE_STATE_DIR)
