"""The train stage with ``train.nproc: 2`` relaunches itself under torchrun (gloo on the CPU): both ranks
train, the main rank alone writes the model files, the curves and the MLflow run, which is logged once."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import stage_env

from segpipe.training.checkpoint import load_checkpoint


@pytest.mark.slow
def test_train_stage_with_two_processes_trains_once_and_logs_one_run(tmp_path: Path, tiny_project, run_stage):
    project = tiny_project(tmp_path / "ddp", train={"nproc": 2, "batch_size": 2}, tracking={"live": True})
    done = run_stage(project, env=stage_env(SEGPIPE_PIPELINE_RUN="ddp-stage-test"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "torch.distributed.run" not in done.stderr  # no launcher error or warning dump

    model, meta = load_checkpoint(project / "models" / "unet" / "model.safetensors", torch.device("cpu"))
    assert meta.architecture == "unet" and 1 <= meta.epoch <= 2
    history = json.loads((project / "models" / "unet" / "history.json").read_text())
    assert [epoch["epoch"] for epoch in history["epochs"]] == [1, 2]
    curves = (project / "reports" / "curves" / "unet.csv").read_text().splitlines()
    assert curves[0] == "epoch,train_loss,val_loss,val_miou,lr,seconds" and len(curves) == 3
    record = json.loads((project / "models" / "unet" / "run.json").read_text())
    assert record["tracking"] == "live"

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("segpipe-synthetic")
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'unet'")
    assert len(runs) == 1, "each rank logged its own run"
    [run] = runs
    assert run.info.status == "FINISHED" and run.data.tags["segpipe.run_key"] == record["run_key"]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_miou")]
    assert steps == [1, 2]  # once per epoch
    assert run.data.tags["segpipe.model_uri"].startswith("models:/")
    assert not (project / ".segpipe" / "resume" / "segment" / "unet").exists()  # cleared by the main rank
