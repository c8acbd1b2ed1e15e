"""MLflow implementation of the tracking interface: runs, parameters, metrics and logged models."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric, Param
from mlflow.models import infer_signature
from torch import nn

from segpipe.config import TrackingParams

MODEL_PIP_REQUIREMENTS = [
    f"torch=={torch.__version__.split('+')[0]}",
    "torchvision==0.29.1",
    "segmentation-models-pytorch==0.6.0",
    "numpy==2.4.6",
]


def tracking_uri(params: TrackingParams) -> str:
    """``MLFLOW_TRACKING_URI`` wins over params, so the same pipeline can point at an ``mlflow server``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params.uri


def experiment_name(dataset: str) -> str:
    return f"segpipe-{dataset}"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


@dataclass
class MlflowTracker:
    """Logs to one existing run through the client API (works for a live or a resumed run)."""

    run_id: str
    client: mlflow.MlflowClient
    parent_run_id: str | None = None

    def log_params(self, params: Mapping[str, object]) -> None:
        items = [Param(key, str(value)) for key, value in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(mlflow.utils.time.get_current_time_millis())
        batch = [Metric(key, float(value), now, step or 0) for key, value in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_model(self, model: nn.Module, input_example: np.ndarray) -> str:
        """Log ``model`` (pickle format, so any input size divisible by its stride works); return its URI."""
        model = model.eval()
        with torch.no_grad():
            output = model(torch.from_numpy(input_example).to(next(model.parameters()).device)).cpu().numpy()
        with _active(self.run_id):
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                serialization_format="pickle",
                pip_requirements=MODEL_PIP_REQUIREMENTS,
                signature=infer_signature(input_example, output),
                input_example=input_example,
            )
        return info.model_uri

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)


@contextmanager
def _active(run_id: str) -> Iterator[None]:
    """Make ``run_id`` the active run for fluent-only calls, without ending it afterwards."""
    already = mlflow.active_run()
    if already is not None and already.info.run_id == run_id:
        yield
        return
    mlflow.start_run(run_id=run_id)
    try:
        yield
    finally:
        mlflow.end_run()


PIPELINE_TAG = "segpipe.pipeline"
PIPELINE_ENV = "SEGPIPE_PIPELINE_RUN"


def _dvc_ancestor() -> str | None:
    """``<pid>-<start time>`` of the ``dvc repro`` / ``dvc exp`` process running this stage (Linux ``/proc``)."""
    pid = os.getppid()
    for _ in range(8):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        if any(Path(part.decode(errors="replace")).name == "dvc" for part in cmdline[:2]):
            return f"{pid}-{fields[19]}"  # field 22 of stat: start time since boot
        pid = int(fields[1])  # field 4: parent pid
        if pid <= 1:
            return None
    return None


def pipeline_key(config_digest: str) -> str:
    """Identifies one pipeline execution: ``$SEGPIPE_PIPELINE_RUN``, else the ``dvc`` process that runs the
    stages, else (a stage run by hand) the code commit + params + data digest."""
    explicit = os.environ.get(PIPELINE_ENV)
    if explicit:
        return explicit
    ancestor = _dvc_ancestor()
    if ancestor:
        return f"dvc-{ancestor}"
    return f"config-{git_commit()[:12]}-{config_digest[:12]}"


def pipeline_parent(client: mlflow.MlflowClient, experiment_id: str, key: str, tags: Mapping[str, str]) -> str:
    """The parent run of pipeline execution ``key`` in the experiment, created on first use."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{key}'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S')}",
        tags={PIPELINE_TAG: key, "git_commit": git_commit(), **tags},
    )
    return run.info.run_id


@contextmanager
def start_run(
    params: TrackingParams, dataset: str, run_name: str, tags: Mapping[str, str], pipeline: str | None = None
) -> Iterator[MlflowTracker]:
    """A new run in experiment ``segpipe-<dataset>``, nested under the parent run of pipeline execution
    ``pipeline`` (see :func:`pipeline_key`) when given; marked FAILED if the block raises."""
    mlflow.set_tracking_uri(tracking_uri(params))
    experiment = mlflow.set_experiment(experiment_name(dataset))
    all_tags = {"git_commit": git_commit(), **tags}
    parent = None
    if pipeline is not None:
        parent = pipeline_parent(mlflow.MlflowClient(), experiment.experiment_id, pipeline, {"dataset": dataset})
        all_tags["mlflow.parentRunId"] = parent
    with mlflow.start_run(run_name=run_name, tags=all_tags) as run:
        yield MlflowTracker(run.info.run_id, mlflow.MlflowClient(), parent)


def finish_parent(params: TrackingParams, parent_run_id: str, metrics: Mapping[str, float], artifacts: list[Path]) -> None:
    """Log the pipeline's summary to its parent run and mark the parent FINISHED."""
    mlflow.set_tracking_uri(tracking_uri(params))
    tracker = MlflowTracker(parent_run_id, mlflow.MlflowClient())
    tracker.log_metrics(metrics)
    for path in artifacts:
        tracker.log_artifact(str(path))
    tracker.client.set_terminated(parent_run_id, "FINISHED")


def resume_run(params: TrackingParams, run_id: str, architecture: str) -> MlflowTracker:
    """A tracker for a finished run (evaluate adds test metrics to the run that trained the model)."""
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    try:
        client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ValueError(
            f"MLflow run {run_id} that trained {architecture} is not in the tracking store {uri}: point "
            f"MLFLOW_TRACKING_URI at the store that has it, or re-train (dvc repro -f train@{architecture})"
        ) from None
    return MlflowTracker(run_id, client)
