"""``segpipe ui``: the MLflow UI on the project's local tracking store, opened on the dataset's training runs.

MLflow 3's UI opens an experiment in its GenAI view unless the experiment is tagged as model training
(:data:`~segpipe.tracking.context.EXPERIMENT_KIND_TAG`) or the URL asks for the training workflow; every URL
built here does the latter, so links work for experiments made before segpipe tagged them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from segpipe.tracking.context import PIPELINE_TAG, experiment_name

TRAINING_VIEW = {"workflowType": "machine_learning"}
"""Query that opens an experiment route in MLflow's "Model training" view."""
RANKING_METRIC = "test_miou"
"""What the printed runs page sorts by, best first (the leaderboard's default metric)."""
HEALTH_TIMEOUT_S = 60.0


def browser_base(server_uri: str) -> str:
    """A tracking server's URI without user and password: what a browser opens (it asks for them)."""
    parts = urllib.parse.urlsplit(server_uri)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl().rstrip("/")


def experiments_url(base: str) -> str:
    """The UI's experiment list, in the training view."""
    return f"{base.rstrip('/')}/#/experiments?{urllib.parse.urlencode(TRAINING_VIEW)}"


def nested_runs_filter(parent_run_id: str, task: str = "segment") -> str:
    """MLflow search filter for a pipeline execution's runs of one task: segmentation and denoising runs
    have different parameters and metrics, so they are compared apart."""
    return f"tags.`mlflow.parentRunId` = '{parent_run_id}' AND params.task = '{task}'"


def runs_url(base: str, experiment_id: str, parent_run_id: str | None = None) -> str:
    """The runs page of an experiment in the training view; with ``parent_run_id``, that pipeline execution's
    segmentation runs as a flat list, best :data:`RANKING_METRIC` first (sorted by anything but the start
    time, the UI neither fetches nor nests under the parent run, whose expansion is not URL state)."""
    query = dict(TRAINING_VIEW)
    if parent_run_id:
        query |= {
            "searchFilter": nested_runs_filter(parent_run_id),
            "orderByKey": f"metrics.`{RANKING_METRIC}`",
            "orderByAsc": "false",
        }
    route = f"/#/experiments/{urllib.parse.quote(experiment_id)}/runs"
    return f"{base.rstrip('/')}{route}?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}"


def compare_url(base: str, experiment_id: str, run_ids: list[str]) -> str:
    """The UI's compare page of ``run_ids`` (parallel coordinates, scatter plots, params and metrics side by
    side), in the training view."""
    query = {
        "runs": json.dumps(run_ids, separators=(",", ":")),
        "experiments": json.dumps([experiment_id]),
        **TRAINING_VIEW,
    }
    return f"{base.rstrip('/')}/#/compare-runs?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}"


@dataclass(frozen=True)
class LatestPipeline:
    """A dataset's experiment and its latest pipeline execution: the parent run and its segmentation runs,
    best first."""

    experiment_id: str
    parent_run_id: str | None
    run_ids: list[str]


def latest_pipeline(tracking_uri: str, dataset: str) -> LatestPipeline | None:
    """The latest pipeline execution in ``segpipe-<dataset>`` (None: no such experiment)."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name(dataset))
    if experiment is None:
        return None
    ids = [experiment.experiment_id]
    parents = client.search_runs(
        ids, f"tags.`{PIPELINE_TAG}` != ''", order_by=["attributes.start_time DESC"], max_results=1
    )
    if not parents:
        return LatestPipeline(experiment.experiment_id, None, [])
    parent = parents[0].info.run_id
    runs = client.search_runs(ids, nested_runs_filter(parent), order_by=[f"metrics.`{RANKING_METRIC}` DESC"])
    return LatestPipeline(experiment.experiment_id, parent, [run.info.run_id for run in runs])


def dataset_runs_url(base: str, tracking_uri: str, dataset: str) -> str:
    """The runs page of ``segpipe-<dataset>`` in store ``tracking_uri``, showing its latest pipeline
    execution's runs; the experiment list when the dataset has no experiment yet."""
    latest = latest_pipeline(tracking_uri, dataset)
    if latest is None:
        return experiments_url(base)
    return runs_url(base, latest.experiment_id, latest.parent_run_id)


def dataset_compare_url(base: str, tracking_uri: str, dataset: str) -> str | None:
    """The compare page of the latest pipeline execution's segmentation runs (None: no such runs)."""
    latest = latest_pipeline(tracking_uri, dataset)
    if latest is None or not latest.run_ids:
        return None
    return compare_url(base, latest.experiment_id, latest.run_ids)


@dataclass(frozen=True)
class UiServer:
    """A local ``mlflow server`` for one browser user: one worker, no job execution, loopback only."""

    tracking_uri: str
    port: int = 5000
    host: str = "127.0.0.1"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.tracking_uri,
            "--host", self.host, "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip

    def start(self) -> subprocess.Popen[bytes]:
        """Start the server; return once ``/health`` answers (a ValueError naming the port if it does not)."""
        if not 1 <= self.port <= 65535:
            raise ValueError(f"--port must be between 1 and 65535, not {self.port}")
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        process = subprocess.Popen(self.argv(), env=env)
        if not wait_healthy(self.base_url, process):
            process.terminate()
            process.wait(timeout=30)
            raise ValueError(
                f"the MLflow server did not come up on {self.base_url}: is port {self.port} in use? "
                "Pick another with --port"
            )
        return process


def wait_healthy(base: str, process: subprocess.Popen[bytes], timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
    """Whether ``base``/health answers OK before ``timeout_s`` or the process ends."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as answer:
                if answer.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False


def serve_ui(server: UiServer, dataset: str | None) -> int:
    """Start the server, print where to look, and run until Ctrl-C; the server's exit status."""
    process = server.start()
    try:
        if dataset:
            print(f"MLflow UI: {dataset_runs_url(server.base_url, server.tracking_uri, dataset)}")
            compare = dataset_compare_url(server.base_url, server.tracking_uri, dataset)
            if compare:
                print(f"Compare: {compare}")
        else:
            print(f"MLflow UI: {experiments_url(server.base_url)}")
        print("(Ctrl-C stops it)", flush=True)
        return process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if process.poll() is None:
            process.terminate()  # the server's parent stops its workers
            process.wait(timeout=30)
