# The README's commands. Each sets everything up itself (scripts/setup.sh, idempotent).
.PHONY: setup repro test test-fast lint format promote retrain server

VENV ?= .venv
ACTIVATE = . $(VENV)/bin/activate
# Where `make retrain` pushes DVC data when the repository has no DVC remote yet.
DVC_REMOTE_DIR = $(or $(DVC_REMOTE),$(HOME)/.cache/segpipe/dvc-remote)
# Production: only a CUDA-trained model may become champion (make retrain REQUIRE_GPU=true).
REQUIRE_GPU ?= false
PROMOTE_FLAGS = $(if $(filter true,$(REQUIRE_GPU)),--require-gpu,)

setup:
	@SEGPIPE_VENV=$(VENV) bash scripts/setup.sh

repro: setup
	@$(ACTIVATE) && dvc repro

# The whole suite: unit tests, real DVC/MLflow/PostgreSQL stages and the browser test.
test: setup
	@$(ACTIVATE) && ruff check . && ruff format --check . && python -m pytest

# The inner loop: everything but the tests marked slow.
test-fast: setup
	@$(ACTIVATE) && python -m pytest -m "not slow"

lint: setup
	@$(ACTIVATE) && ruff check . && ruff format --check .

# Fix what ruff can fix and reformat.
format: setup
	@$(ACTIVATE) && ruff check --fix . && ruff format .

promote: setup
	@$(ACTIVATE) && segpipe promote $(PROMOTE_FLAGS)

# What the scheduled CI job runs: fetch data/outputs, retrain what changed, gate the promotion, store results.
retrain: setup
	@$(ACTIVATE) && { dvc remote list | grep -q . || dvc remote add --local --default local "$(DVC_REMOTE_DIR)"; } \
	  && { dvc pull --allow-missing || echo "[retrain] nothing to pull yet"; } \
	  && dvc repro \
	  && segpipe promote $(PROMOTE_FLAGS) \
	  && dvc push

# A team MLflow server (README: Scaling out), e.g.
#   make server BACKEND=postgresql://USER:PASSWORD@HOST:5432/mlflow ARTIFACTS=/srv/mlflow/artifacts SERVER_HOST=0.0.0.0
# BACKEND / ARTIFACTS default to $MLFLOW_BACKEND_STORE_URI / $MLFLOW_ARTIFACTS_DESTINATION: set in the
# environment rather than on the make command line, the database password stays out of `ps`.
SERVER_HOST ?= 127.0.0.1
SERVER_PORT ?= 5000
server: setup
	@$(ACTIVATE) && export MLFLOW_BACKEND_STORE_URI="$${BACKEND:-$${MLFLOW_BACKEND_STORE_URI:-}}" \
	  MLFLOW_ARTIFACTS_DESTINATION="$${ARTIFACTS:-$${MLFLOW_ARTIFACTS_DESTINATION:-}}" \
	  && exec segpipe server --host "$(SERVER_HOST)" --port "$(SERVER_PORT)"
