# segflow: `make demo` sets everything up and runs the pipeline on generated data;
# `make test` runs the tests. `make help` lists the rest.
SHELL := /bin/bash
# Every recipe runs under umask 077, and so does what it starts (segflow, dbt, airflow
# standalone, mlflow server): what they create is readable by its owner only (ml/privacy/permissions.py).
# Recipes are run as `bash -c 'umask 077 && eval "$1"' segflow-make '<recipe>'`.
.SHELLFLAGS := -c 'umask 077 && eval "$$1"' segflow-make
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := $(CURDIR)/.venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
INSTALLED := $(VENV)/.installed

# Tools started by tools (airflow standalone starts `airflow ...`) must find the project's.
export PATH := $(BIN):$(PATH)

# Everything lives inside the project unless the environment says otherwise (ml/config.py).
export SEGFLOW_DATA_DIR ?= $(CURDIR)/data
export SEGFLOW_LANDING_DIR ?= $(SEGFLOW_DATA_DIR)/landing
export AIRFLOW_HOME ?= $(CURDIR)/.airflow
export AIRFLOW__CORE__DAGS_FOLDER ?= $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES ?= False
export AIRFLOW__CORE__EXECUTOR ?= LocalExecutor
export AIRFLOW__API__HOST ?= 127.0.0.1
export AIRFLOW__API__PORT ?= 8080
# Links in logs and failure records point at the UI that `make up` serves.
export AIRFLOW__API__BASE_URL ?= http://$(AIRFLOW__API__HOST):$(AIRFLOW__API__PORT)
# Workers reach the API server that `make up` started, on whichever port it listens.
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL ?= http://$(AIRFLOW__API__HOST):$(AIRFLOW__API__PORT)/execution/
# Two cores: a few task slots, not Airflow's default of 32 idle worker processes.
export AIRFLOW__CORE__PARALLELISM ?= 4
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS ?= admin:admin
# Customer data never phones home (ml/__init__.py does the same for every process using ml).
export DO_NOT_TRACK := true
export AIRFLOW__COSMOS__ENABLE_TELEMETRY := False
export MLFLOW_PORT ?= 5000
# segflow runs no MLflow server jobs: the server's eight idle job consumers cost 25 to 30 CPU
# seconds at each start (ml/models/tracking_server.py does the same for the stack's server).
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION ?= false
# A task's worker slot frees at the supervisor's next heartbeat after the task ends (default
# every 5 s): the logs showed 5 s gaps between the tasks of a run.
export AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL ?= 1

DEMO_CUSTOMERS ?= 10000
DEMO_DAYS ?= 540
DEMO_END ?= 2026-10-31
DEMO_SEED ?= 7
DEMO_RUN_DAYS ?= 2
DEMO_STAMP := $(SEGFLOW_LANDING_DIR)/.generated-$(DEMO_CUSTOMERS)-$(DEMO_DAYS)-$(DEMO_END)-$(DEMO_SEED)
AIRFLOW_READY := $(AIRFLOW_HOME)/.initialized
RUN_LOGS := $(AIRFLOW_HOME)/run-logs
DBT_MANIFEST := dbt_project/target/manifest.json
DBT_SOURCES := $(shell find dbt_project/models dbt_project/macros dbt_project/tests -type f) \
	dbt_project/dbt_project.yml dbt_project/profiles.yml
SCALE ?= 100000

.PHONY: help setup demo run backfill test test-fast lint format up down bench drift-check delivery-check clean airflow-init dbt-docs

help:
	@echo "make demo                 set up, generate $(DEMO_CUSTOMERS) customers, run the pipeline through Airflow"
	@echo "make run AS_OF=YYYY-MM-DD the daily pipeline for one date (honours SEGFLOW_* overrides)"
	@echo "make backfill START=... END=...  recompute a date range through the scheduler (after make up)"
	@echo "make test                 all tests (make test-fast: the fast tier, under two minutes)"
	@echo "make up / make down       Airflow UI and MLflow UI on 127.0.0.1"
	@echo "make bench [SCALE=N]      benchmarks -> docs/benchmarks.md"
	@echo "make drift-check          a month of daily drift monitoring, steady vs drifted -> docs/drift-check.md"
	@echo "make delivery-check       60 daily runs through Airflow on data as shops export it -> docs/delivery-check.md"
	@echo "make lint / make format   ruff"

setup: $(INSTALLED) $(DBT_MANIFEST)

# Cosmos renders the dbt tasks from this manifest, so parsing the DAG never runs dbt.
$(DBT_MANIFEST): $(INSTALLED) $(DBT_SOURCES)
	$(BIN)/segflow dbt parse --quiet

$(INSTALLED): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(BIN)/uv pip sync --quiet --compile-bytecode --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	@touch $@

airflow-init: $(AIRFLOW_READY)

# The manifest only has to exist: a newer one needs no new Airflow database.
$(AIRFLOW_READY): $(INSTALLED) | $(DBT_MANIFEST)
	@mkdir -p $(AIRFLOW_HOME)
	$(BIN)/airflow db migrate > $(AIRFLOW_HOME)/db-migrate.log 2>&1 || (cat $(AIRFLOW_HOME)/db-migrate.log; exit 1)
	$(BIN)/airflow pools set warehouse 1 "DuckDB allows one writer: every warehouse-writing task" > /dev/null
	@touch $@

$(DEMO_STAMP): $(INSTALLED)
	$(BIN)/segflow generate --customers $(DEMO_CUSTOMERS) --days $(DEMO_DAYS) \
		--end-date $(DEMO_END) --seed $(DEMO_SEED) --out $(SEGFLOW_LANDING_DIR)
	@touch $@

# The daily pipeline for the last DEMO_RUN_DAYS days up to DEMO_END, oldest first; the first
# run finds no models and trains them (ensure_champions, the same code as train_models). Data
# generation and Airflow's set-up use a core each.
demo:
	@$(MAKE) --no-print-directory -j2 $(DEMO_STAMP) $(AIRFLOW_READY)
	@for day in $$($(BIN)/python -c 'import datetime as d; end = d.date.fromisoformat("$(DEMO_END)"); \
		print(*(end - d.timedelta(days=n) for n in reversed(range($(DEMO_RUN_DAYS)))))'); do \
		$(MAKE) --no-print-directory run AS_OF=$$day || exit 1; \
	done
	@$(BIN)/segflow status
	@echo "where to look:"
	@echo "  Airflow UI   make up, then http://127.0.0.1:$(AIRFLOW__API__PORT) (DAG runs, task logs, asset lineage)"
	@echo "  MLflow UI    make up, then http://127.0.0.1:$(MLFLOW_PORT) (runs, model cards, registered models and aliases)"
	@echo "  reports      $(SEGFLOW_DATA_DIR)/reports (Data Docs, segment reports, drift reports)"
	@echo "  exports      $(SEGFLOW_DATA_DIR)/exports (the audiences an e-mail tool reads)"
	@echo "  triggers     make up, unpause refresh_triggers, then: .venv/bin/segflow generate --increment --out $(SEGFLOW_LANDING_DIR)"
	@echo "               and watch $(SEGFLOW_DATA_DIR)/exports/triggers (docs/operations.md, event-driven refresh)"

define CHECK_AS_OF
import sys
from ml.errors import AsOfDateError
from ml.orchestration.dag_defaults import runnable_as_of
try:
    runnable_as_of(sys.argv[1])
except AsOfDateError as error:
    sys.exit(f"AS_OF={sys.argv[1]}: {error}")
endef
export CHECK_AS_OF

# `airflow dags test` reports success even when it ran no task: the run's task states decide.
define CHECK_RUN_RAN
import json, sys
from ml.errors import RunDidNotRun
from ml.orchestration.dag_defaults import check_run_ran
try:
    print(check_run_ran(json.load(sys.stdin), required_task="publish"))
except RunDidNotRun as error:
    sys.exit(f"Airflow reported success, but the run did not run: {error}")
endef
export CHECK_RUN_RAN

run: $(AIRFLOW_READY)
	@test -n "$(AS_OF)" || (echo "usage: make run AS_OF=YYYY-MM-DD" >&2; exit 2)
	@$(BIN)/python -c "$$CHECK_AS_OF" "$(AS_OF)"
	@$(BIN)/segflow config > /dev/null
	@mkdir -p $(RUN_LOGS)
	@echo "segment_pipeline for $(AS_OF): airflow dags test, log in $(RUN_LOGS)/segment_pipeline_$(AS_OF).log"
	@start=$$(date +%s); log=$(RUN_LOGS)/segment_pipeline_$(AS_OF).log; \
	if ! $(BIN)/airflow dags test segment_pipeline $(AS_OF) > $$log 2>&1; then \
		tail -n 60 $$log; echo "run for $(AS_OF) failed: full log in $$log" >&2; exit 1; \
	fi; \
	if ! states=$$($(BIN)/airflow tasks states-for-dag-run segment_pipeline $(AS_OF) -o json 2>>$$log) \
		|| ! tasks=$$($(BIN)/python -c "$$CHECK_RUN_RAN" <<< "$$states"); then \
		echo "run for $(AS_OF) failed: full log in $$log" >&2; exit 1; \
	fi; \
	sed -n '/ingest as of/,/reviews /p' $$log | sed -E 's/^[^ ]+ \[info *\] /  /; s/ \[ml\.ingest\].*$$//'; \
	echo "run for $(AS_OF) succeeded in $$(( $$(date +%s) - start )) s (tasks: $$tasks)"

define CHECK_DATE_RANGE
import sys
from ml.errors import AsOfDateError
from ml.orchestration.dag_defaults import runnable_as_of
try:
    start, end = (runnable_as_of(value) for value in sys.argv[1:3])
except AsOfDateError as error:
    sys.exit(f"START and END: {error}")
if end < start:
    sys.exit(f"END {end} is before START {start}")
endef
export CHECK_DATE_RANGE

# Airflow's own backfill of segment_pipeline, executed by the scheduler `make up` started:
# every date from START to END is recomputed (also those that ran before), one run at a time,
# oldest first. The last date's run has its logical date at 02:00, hence END's 23:59:59.
backfill: $(AIRFLOW_READY)
	@test -n "$(START)" -a -n "$(END)" || (echo "usage: make backfill START=YYYY-MM-DD END=YYYY-MM-DD" >&2; exit 2)
	@$(BIN)/python -c "$$CHECK_DATE_RANGE" "$(START)" "$(END)"
	@curl -sf http://127.0.0.1:$(AIRFLOW__API__PORT)/api/v2/monitor/health > /dev/null \
		|| (echo "no Airflow is serving on 127.0.0.1:$(AIRFLOW__API__PORT): start it with make up" >&2; exit 1)
	@$(BIN)/airflow dags list -o plain 2>/dev/null | awk '$$1 == "segment_pipeline" && $$4 == "True" {exit 1}' \
		|| (echo "segment_pipeline is paused, and the scheduler runs no backfill of a paused DAG: unpause it in the UI or with 'airflow dags unpause segment_pipeline' (it then also runs on its daily schedule)" >&2; exit 1)
	$(BIN)/airflow backfill create --dag-id segment_pipeline --from-date $(START) --to-date $(END)T23:59:59 \
		--reprocess-behavior completed --max-active-runs 1
	@echo "progress: http://127.0.0.1:$(AIRFLOW__API__PORT)/dags/segment_pipeline (runs of type backfill), or: airflow dags list-runs segment_pipeline"

# Every tier on two workers, a module each at a time, in the order tests/conftest.py gives them
# (costliest tier first) rather than pytest-xdist's own (most tests first).
test: $(INSTALLED) $(DBT_MANIFEST)
	$(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder

# The fast tier (no test marked slow, airflow or stack) on two workers: under two minutes.
test-fast: $(INSTALLED) $(DBT_MANIFEST)
	$(BIN)/pytest -n 2 --dist loadfile -m "not (slow or airflow or stack)"

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALLED)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

RUN_DIR := $(AIRFLOW_HOME)/run

# Each server runs in its own process group (setsid), so `make down` stops it with its children.
# The tracking URI may hold a password: mlflow gets it from its environment, not its command line.
up: $(AIRFLOW_READY)
	@mkdir -p $(RUN_DIR) $(SEGFLOW_DATA_DIR)/mlflow/artifacts
	@if [ -f $(RUN_DIR)/airflow.pid ] && kill -0 $$(cat $(RUN_DIR)/airflow.pid) 2>/dev/null; then \
		echo "Airflow already running"; \
	else \
		setsid nohup $(BIN)/airflow standalone > $(RUN_DIR)/airflow.log 2>&1 < /dev/null & echo $$! > $(RUN_DIR)/airflow.pid; \
	fi
	@if [ -f $(RUN_DIR)/mlflow.pid ] && kill -0 $$(cat $(RUN_DIR)/mlflow.pid) 2>/dev/null; then \
		echo "MLflow already running"; \
	else \
		MLFLOW_BACKEND_STORE_URI="$$($(BIN)/segflow config --get mlflow_tracking_uri)" \
		setsid nohup $(BIN)/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) \
			--artifacts-destination $(SEGFLOW_DATA_DIR)/mlflow/artifacts \
			> $(RUN_DIR)/mlflow.log 2>&1 < /dev/null & echo $$! > $(RUN_DIR)/mlflow.pid; \
	fi
	@for i in $$(seq 1 120); do \
		curl -sf http://127.0.0.1:$(AIRFLOW__API__PORT)/api/v2/monitor/health > /dev/null \
		&& curl -sf http://127.0.0.1:$(MLFLOW_PORT)/health > /dev/null && break; sleep 1; \
	done
	@curl -sf http://127.0.0.1:$(AIRFLOW__API__PORT)/api/v2/monitor/health > /dev/null \
		|| (echo "Airflow did not start: see $(RUN_DIR)/airflow.log" >&2; $(MAKE) --no-print-directory down; exit 1)
	@curl -sf http://127.0.0.1:$(MLFLOW_PORT)/health > /dev/null \
		|| (echo "MLflow did not start: see $(RUN_DIR)/mlflow.log" >&2; $(MAKE) --no-print-directory down; exit 1)
	@echo "Airflow UI: http://127.0.0.1:$(AIRFLOW__API__PORT)  login: $$(cut -d: -f1 <<< '$(AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS)') / password in $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated: $$(cat $(AIRFLOW_HOME)/simple_auth_manager_passwords.json.generated 2>/dev/null)"
	@echo "MLflow UI:  http://127.0.0.1:$(MLFLOW_PORT)"
	@echo "logs in $(RUN_DIR); stop with: make down"

down:
	@for name in airflow mlflow; do \
		if [ -f $(RUN_DIR)/$$name.pid ]; then \
			group=$$(cat $(RUN_DIR)/$$name.pid); \
			kill -TERM -- -$$group 2>/dev/null; \
			for i in $$(seq 1 30); do kill -0 -- -$$group 2>/dev/null || break; sleep 0.5; done; \
			kill -KILL -- -$$group 2>/dev/null; \
			rm -f $(RUN_DIR)/$$name.pid; echo "stopped $$name"; \
		fi; \
	done

dbt-docs: $(INSTALLED)
	$(BIN)/segflow dbt docs generate --static --vars '{as_of_date: $(DEMO_END)}'
	@echo "dbt docs: open dbt_project/target/static_index.html in a browser"

bench: $(INSTALLED) $(DBT_MANIFEST)
	$(BIN)/python bench/run.py --customers $(SCALE)

drift-check: $(INSTALLED) $(DBT_MANIFEST)
	$(BIN)/python bench/drift_check.py

delivery-check: $(INSTALLED) $(DBT_MANIFEST)
	$(BIN)/python bench/delivery_check.py

clean:
	rm -rf $(SEGFLOW_DATA_DIR) $(AIRFLOW_HOME)
