# Each target bootstraps .venv from requirements.lock when it is missing.
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed
export HF_HUB_OFFLINE := 1
export OMP_WAIT_POLICY := PASSIVE
export DVC_NO_ANALYTICS := 1
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export PATH := $(CURDIR)/.venv/bin:$(PATH)
# Every stage, DVC and Airflow subprocess re-imports the stack: let Python keep its bytecode cache
# (.dvcignore keeps __pycache__ out of stage dependency hashes).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test bench venv clean-data airflow airflow-stop airflow-cli airflow-env

venv: $(VENV_STAMP)

$(VENV_STAMP): requirements.lock pyproject.toml
	@command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv
	@test -x $(PY) || uv venv -q --python 3.11 .venv
	VIRTUAL_ENV=$(CURDIR)/.venv uv pip install -q --compile-bytecode --index-strategy unsafe-best-match $$(python3 pipelines/install.py requirements.lock) -r requirements.lock
	VIRTUAL_ENV=$(CURDIR)/.venv uv pip install -q --no-deps -e .
	@touch $(VENV_STAMP)

demo: $(VENV_STAMP)
	$(PY) -m pipelines demo

test: $(VENV_STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Local Airflow (api-server, scheduler, dag-processor, triggerer; SQLite; auth on) on
# AIRFLOW_PORT (8080); the admin password is generated and printed once.
airflow: $(VENV_STAMP)
	$(PY) -m pipelines.local_airflow.services start

airflow-stop:
	$(PY) -m pipelines.local_airflow.services stop

# The airflow CLI with the project's AIRFLOW_HOME (.airflow): make airflow-cli ARGS="dags list";
# eval "$$(make -s airflow-env)" sets the same up in your shell.
airflow-cli: $(VENV_STAMP)
	@$(PY) -m pipelines.local_airflow.cli $(ARGS)

airflow-env: $(VENV_STAMP)
	@$(PY) -m pipelines.local_airflow.cli --env

bench: $(VENV_STAMP)
	$(PY) -m bench

clean-data:
	rm -rf data models metrics reports/checks reports/gx .airflow
