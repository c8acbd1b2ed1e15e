"""The train stage with ``train.nproc: 2`` relaunches itself under torchrun (gloo on the CPU): both ranks train,
the main rank alone writes the model files and the MLflow run, which is logged once."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import mlflow
import pytest
import torch

from segpipe.training.checkpoint import load_checkpoint
from tiny_project import make_tiny_project, train_command


def stage_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SEGPIPE_PIPELINE_RUN": "ddp-stage-test"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


@pytest.mark.slow
def test_train_stage_with_two_processes_trains_once_and_logs_one_run(tmp_path: Path):
    project = make_tiny_project(tmp_path / "ddp", train={"nproc": 2, "batch_size": 2}, tracking={"live": True})
    done = subprocess.run(train_command(project), cwd=project, env=stage_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch.distributed.run" not in done.stderr  # no launcher error or warning dump

    model, meta = load_checkpoint(project / "models" / "unet" / "model.pt", torch.device("cpu"))
    assert meta.architecture == "unet" and 1 <= meta.epoch <= 2
    history = json.loads((project / "models" / "unet" / "history.json").read_text())
    assert [epoch["epoch"] for epoch in history["epochs"]] == [1, 2]
    record = json.loads((project / "models" / "unet" / "run.json").read_text())
    assert record["tracking"] == "live"

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("segpipe-synthetic")
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'unet'")
    assert len(runs) == 1, "each rank logged its own run"
    [run] = runs
    assert run.info.status == "FINISHED" and run.data.tags["segpipe.run_key"] == record["run_key"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_miou")] == [1, 2]  # once per epoch
    assert run.data.tags["segpipe.model_uri"].startswith("models:/")
    assert not (project / ".segpipe" / "resume" / "segment" / "unet").exists()  # the main rank cleared its states
