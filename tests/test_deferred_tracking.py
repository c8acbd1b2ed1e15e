"""Deferred tracking (``tracking.live: false``, the default): a train stage records its run in a local spool
without importing MLflow; the track stage (or ``segpipe sync``) sends it, and the run in MLflow is what live
tracking would have made: params, per-epoch metrics at their training-time timestamps, the logged model, the
parent run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from conftest import ROOT

from segpipe import io
from segpipe.config import parse_params
from segpipe.paths import ProjectPaths
from segpipe.serving.logged import load_logged_model
from segpipe.stages.register import run_register
from segpipe.stages.track import tracking_record
from segpipe.tracking.mlflow_tracking import find_runs, sync_spools
from segpipe.training.checkpoint import load_checkpoint

TRAIN_IN_A_FRESH_PROCESS = """
import runpy, sys
sys.argv = ["train.py", "--root", {root!r}, "--params", {params!r}, "--architecture", "unet"]
try:
    runpy.run_path({script!r}, run_name="__main__")
except SystemExit as done:
    assert not done.code, done.code
imported = sorted(name for name in sys.modules if name.split(".")[0] in ("mlflow", "sqlalchemy", "alembic"))
assert not imported, "the deferred train stage imported " + ", ".join(imported[:5])
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_project) -> Path:
    """A tiny project whose unet was trained by the train stage in a fresh process, with deferred tracking."""
    project = tiny_project(tmp_path_factory.mktemp("deferred"), tracking={"live": False})
    code = TRAIN_IN_A_FRESH_PROCESS.format(
        root=str(project), params=str(project / "params.yaml"), script=str(ROOT / "pipelines" / "train.py")
    )
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "SEGPIPE_PIPELINE_RUN": "deferred-test"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return project


def spool_records(project: Path) -> list[dict]:
    [spool] = (project / ".segpipe" / "tracking-spool").glob("*.jsonl")
    return [json.loads(line) for line in spool.read_text().splitlines()]


def test_the_train_stage_spools_its_run_and_touches_no_tracking_store(trained):
    record = json.loads((trained / "models" / "unet" / "run.json").read_text())
    assert record["tracking"] == "deferred" and len(record["run_key"]) == 32
    assert not (trained / "mlflow.db").exists() and not (trained / "mlruns").exists()
    calls = [r for r in spool_records(trained) if "op" in r]
    assert [c["op"] for c in calls][:2] == ["start_run", "log_params"]
    assert calls[0]["run_key"] == record["run_key"] and calls[0]["pipeline"] == "deferred-test"
    assert [c["step"] for c in calls if c["op"] == "log_metrics" and "val_miou" in c["metrics"]] == [1, 2]
    assert [c["op"] for c in calls][-2:] == ["log_checkpoint", "end_run"]
    [spool] = (trained / ".segpipe" / "tracking-spool").glob("*.jsonl")
    spooled = spool.with_suffix(".models") / calls[-2]["checkpoint"]
    assert sorted(p.name for p in spooled.iterdir()) == ["model.json", "model.safetensors"]
    assert calls[-1]["status"] == "FINISHED"


def test_sending_makes_the_run_live_tracking_would_have_made(trained, monkeypatch):
    monkeypatch.chdir(trained)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    calls = [r for r in spool_records(trained) if "op" in r]
    recorded = {
        c["step"]: c["timestamp"] for c in calls if c["op"] == "log_metrics" and "val_miou" in c["metrics"]
    }
    time.sleep(0.05)  # metric timestamps must be the recorded ones, not the time of sending
    params = parse_params(yaml.safe_load((trained / "params.yaml").read_text()))
    [(spool, run_id)] = sync_spools(params.tracking)
    assert not spool.exists() and not spool.with_suffix(".models").exists()

    key = json.loads((trained / "models" / "unet" / "run.json").read_text())["run_key"]
    [(found_key, run)] = find_runs(params.tracking, "synthetic", [key, "not-a-key"]).items()
    assert found_key == key and run.run_id == run_id
    client = mlflow.MlflowClient("sqlite:///mlflow.db")
    logged = client.get_run(run_id)
    assert logged.info.status == "FINISHED" and logged.info.start_time == calls[0]["start_time"]
    assert logged.data.params["arch"] == "unet" and logged.data.params["epochs"] == "2"
    assert logged.data.tags["architecture"] == "unet"
    assert logged.data.tags["mlflow.source.name"].endswith("train.py")
    history = client.get_metric_history(run_id, "val_miou")
    assert {m.step: m.timestamp for m in history} == recorded
    parent = client.get_run(run.parent_run_id)
    assert parent.data.tags["segpipe.pipeline"] == "deferred-test"

    model, _ = load_logged_model(run.model_uri)
    checkpoint, _ = load_checkpoint(trained / "models" / "unet" / "model.safetensors", torch.device("cpu"))
    example = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(example), checkpoint.eval()(example))
    assert sync_spools(params.tracking) == []  # sent once; sending again sends nothing


def test_register_refuses_a_best_model_without_a_logged_model(tmp_path):
    paths = ProjectPaths(tmp_path)
    io.write_text(
        paths.leaderboard_csv,
        "rank,architecture,family,test_miou\n1,unet,builtin,0.4\n2,majority_class,reference,0.1\n",
    )
    params = parse_params({"tracking": {"enabled": True}})
    with pytest.raises(FileNotFoundError, match=r"tracking.json is missing: run the track stage"):
        run_register(params, paths)
    io.write_json(
        tracking_record(paths),
        {
            "enabled": True,
            "runs": [
                {"architecture": "unet", "task": "segment", "run_key": "k", "run_id": None, "model_uri": None}
            ],
        },
    )
    with pytest.raises(ValueError, match=r"no model_uri for unet.*dvc repro -f train@unet"):
        run_register(params, paths)
    assert not paths.registry_record.exists()


def test_a_queued_experiments_stage_tracks_into_the_repository_not_its_temporary_copy(tmp_path, monkeypatch):
    """DVC runs a queued experiment in ``<repo>/.dvc/tmp/exps/<tmp>`` and deletes it afterwards: the relative
    default store, the experiment's artifacts and the spools belong to the repository."""
    from segpipe.config import TrackingParams
    from segpipe.tracking.context import project_root
    from segpipe.tracking.mlflow_tracking import start_run, tracking_uri
    from segpipe.tracking.spool import spool_dir

    repo = tmp_path / "repo"
    copy = repo / ".dvc" / "tmp" / "exps" / "tmpq1w2e3"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("SEGPIPE_TRACKING_SPOOL", raising=False)
    assert project_root() == repo and spool_dir() == repo / ".segpipe" / "tracking-spool"
    params = TrackingParams()  # sqlite:///mlflow.db
    assert tracking_uri(params) == f"sqlite:///{repo / 'mlflow.db'}"
    assert tracking_uri(TrackingParams(uri="sqlite:////srv/mlflow.db")) == "sqlite:////srv/mlflow.db"
    with start_run(params, "toy", "unet", {}) as tracker:
        tracker.log_metrics({"val_miou": 0.5}, step=1)
    assert (repo / "mlflow.db").is_file() and not (copy / "mlflow.db").exists()
    client = mlflow.MlflowClient(tracking_uri(params))
    experiment = client.get_experiment_by_name("segpipe-toy")
    assert experiment.artifact_location == (repo / "mlruns" / "segpipe-toy").as_uri()

    monkeypatch.chdir(repo)  # outside a queued experiment nothing is rewritten
    monkeypatch.delenv(
        "MLFLOW_TRACKING_URI", raising=False
    )  # mlflow.set_tracking_uri exports what it is given
    assert project_root() == repo and tracking_uri(params) == "sqlite:///mlflow.db"
