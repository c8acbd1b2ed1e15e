#!/usr/bin/env bash
# Idempotent set-up: .venv with the pinned stack, the project installed editable, a git + DVC repo.
# Re-running is cheap: dependencies are reinstalled only when pyproject.toml or the constraints change.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV="${SEGPIPE_VENV:-.venv}"
WANT="$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -d' ' -f1)"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi

VENV="$(cd "$VENV" && pwd)"
STAMP="$VENV/.segpipe-installed"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "[setup] installing pinned dependencies (first time: a few minutes)"
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  # torch + torchvision first and pinned, so no other package can pull a different torch build.
  "$VENV/bin/pip" install -q -c requirements/constraints.txt torch torchvision
  "$VENV/bin/pip" install -q -c requirements/constraints.txt -e ".[dev]"
  "$VENV/bin/pip" check
  echo "$WANT" > "$STAMP"
fi

export PATH="$VENV/bin:$PATH"
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "[setup] initialising a git repository"
  git init -q
fi
if [ ! -d .dvc ]; then
  echo "[setup] initialising DVC"
  dvc init -q
fi
dvc config core.analytics false
