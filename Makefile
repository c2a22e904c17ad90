# deathmetal-lake: the two-command start (`make dev`) and the test entry point CI calls.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LAKE_STATE_DIR ?= .lake
export DAGSTER_HOME ?= $(abspath $(LAKE_STATE_DIR))/dagster

.PHONY: dev run test lint aws-up aws-down aws-status clean-state

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(VENV)/.installed $@

# The instance's settings (run queue, telemetry); a dagster.yaml already there is the user's own.
$(DAGSTER_HOME)/dagster.yaml:
	mkdir -p $(DAGSTER_HOME)
	cp dagster.yaml $@

dev: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m deathmetal_lake.local_aws up
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000

run: $(VENV)/.installed $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/python -m deathmetal_lake.run

test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

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
