"""The MLflow UI a user lands on: training-view URLs, the latest segmentation runs, ``segpipe ui``."""

import os
import signal
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import pytest

from segpipe.config import TrackingParams
from segpipe.tracking.mlflow_tracking import start_run
from segpipe.tracking.ui import (
    browser_base,
    dataset_runs_url,
    experiments_url,
    nested_runs_filter,
    runs_url,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return TrackingParams(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def _pipeline(store: TrackingParams, key: str) -> dict[str, str]:
    """Train-like runs of one pipeline execution: two segmenters and a denoiser; their run ids by name."""
    ids = {}
    for name, task in (("unet", "segment"), ("fcn8s", "segment"), ("autoencoder-denoise", "denoise")):
        with start_run(store, "toy", name, {"architecture": name}, pipeline=key) as tracker:
            tracker.log_params({"arch": name, "task": task})
            tracker.log_metrics({"test_miou": 0.5})
        ids[name] = tracker.run_id
    return ids


def _query(url: str) -> dict[str, str]:
    fragment = urllib.parse.urlsplit(url).fragment
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(fragment).query))


def test_urls_open_the_training_view():
    assert experiments_url("http://h:5000/") == "http://h:5000/#/experiments?workflowType=machine_learning"
    url = runs_url("http://h:5000", "3")
    assert url == "http://h:5000/#/experiments/3/runs?workflowType=machine_learning"
    query = _query(runs_url("http://h:5000", "3", "abc"))
    assert query == {"workflowType": "machine_learning", "searchFilter": nested_runs_filter("abc")}


def test_browser_urls_carry_no_credentials():
    assert browser_base("https://ann:secret@mlflow.example.org:8443/") == "https://mlflow.example.org:8443"


def test_dataset_url_shows_the_latest_pipelines_segmentation_runs(store):
    _pipeline(store, "first")
    latest = _pipeline(store, "second")
    url = dataset_runs_url("http://127.0.0.1:5000", store.uri, "toy")
    client = mlflow.MlflowClient(store.uri)
    experiment = client.get_experiment_by_name("segpipe-toy")
    assert f"/#/experiments/{experiment.experiment_id}/runs?" in url
    shown = client.search_runs([experiment.experiment_id], filter_string=_query(url)["searchFilter"])
    assert {run.info.run_id for run in shown} == {latest["unet"], latest["fcn8s"]}


def test_dataset_without_experiment_gets_the_experiment_list(store):
    mlflow.MlflowClient(store.uri).search_experiments()  # creates the empty store
    assert dataset_runs_url("http://x:1", store.uri, "toy") == experiments_url("http://x:1")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_segpipe_ui_serves_the_store_and_prints_the_runs_url(store, tmp_path):
    ids = _pipeline(store, "only")
    port = _free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store.uri}
    command = [sys.executable, "-m", "segpipe.cli", "--params", str(REPO / "params.yaml"), "ui"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--dataset", "toy"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = next((text for text in process.stdout if text.startswith("MLflow UI")), "")
        assert line.startswith(f"MLflow UI: http://127.0.0.1:{port}/#/experiments/"), line
        assert "workflowType=machine_learning" in line
        parent = mlflow.MlflowClient(store.uri).get_run(ids["unet"]).data.tags["mlflow.parentRunId"]
        assert _query(line.split(": ", 1)[1].strip())["searchFilter"] == nested_runs_filter(parent)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as answer:
            assert answer.read().decode().strip() == "OK"
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)


def test_segpipe_ui_on_a_tracking_server_points_at_its_ui(monkeypatch, capsys):
    from segpipe.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://ann:secret@mlflow.example.org")
    assert main(["--params", str(REPO / "params.yaml"), "ui"]) == 1
    error = capsys.readouterr().err
    assert experiments_url("https://mlflow.example.org") in error and "secret" not in error
