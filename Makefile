# The two commands of the README. Both set everything up themselves (scripts/setup.sh, idempotent).
.PHONY: repro test setup

setup:
	@bash scripts/setup.sh

repro: setup
	@. .venv/bin/activate && dvc repro

test: setup
	@. .venv/bin/activate && python -m pytest
