"""MLflow implementation of the tracking interface: runs, parameters, metrics and logged models.

A live training run's calls go through :class:`BufferedTracker`: what the tracking server cannot take because
it is down or unreachable is spooled on local disk (:mod:`segpipe.tracking.spool`) and sent, in order, when
the server answers again, at the end of the run, or later by ``segpipe sync`` (:func:`sync_spools`). A
deferred run (:mod:`segpipe.tracking.deferred`) spools every call, and :func:`sync_spools` sends it the same
way."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param

from segpipe.config import TrackingParams
from segpipe.serving.logged import log_checkpoint_model
from segpipe.tracking.context import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    MODEL_URI_TAG,
    PIPELINE_TAG,
    RUN_KEY_TAG,
    experiment_name,
    git_commit,
    pipeline_key,
    project_root,
)
from segpipe.tracking.deferred import (
    dataset_call,
    now_ms,
    spool_checkpoint,
    spooled_checkpoint,
    start_record,
)
from segpipe.tracking.mlflow_dataset import log_dataset_input
from segpipe.tracking.redact import redact_uri
from segpipe.tracking.spool import (
    Progress,
    ServerUnreachable,
    Spool,
    fail_fast,
    is_unreachable,
    new_spool_path,
    spool_dir,
    unreachable_reason,
)

__all__ = [
    "RunRef",
    "ServerUnreachable",
    "experiment_name",
    "find_runs",
    "pipeline_key",
    "start_run",
    "sync_spools",
]

CALL_TIMEOUT_S = 5
"""Limit on each wait for the server in a tracking call, so a hung server holds training up briefly."""
MODEL_TIMEOUT_S = 120
"""The same for logging a model, whose upload can legitimately take long."""
RETRY_INTERVAL_S = 30.0
"""While calls are spooled, other calls than ``log_metrics`` (once an epoch) retry the server at most this
often."""
SYNC_COMMAND = "segpipe sync"


LOCAL_SQLITE = "sqlite:///"


def tracking_uri(params: TrackingParams) -> str:
    """``MLFLOW_TRACKING_URI`` wins over params, so the same pipeline can point at an ``mlflow server``. A
    relative SQLite path is the project's (:func:`~segpipe.tracking.context.project_root`), also for a queued
    DVC experiment's stage, which runs in a temporary copy."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.uri
    root = project_root()
    relative = uri.startswith(LOCAL_SQLITE) and not uri[len(LOCAL_SQLITE) :].startswith("/")
    if relative and root != Path.cwd().absolute():
        return f"{LOCAL_SQLITE}{root / uri[len(LOCAL_SQLITE) :]}"
    return uri


def experiment_id(client: mlflow.MlflowClient, name: str) -> str:
    """Experiment ``name``'s id, created on first use; in a local store its artifacts go to the project's
    ``mlruns/`` (MLflow's default is under the working directory, which a queued DVC experiment deletes)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        if EXPERIMENT_KIND_TAG not in found.tags:  # made before segpipe tagged its experiments
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        return found.experiment_id
    root = project_root()
    local = not urllib.parse.urlparse(client.tracking_uri).scheme.startswith("http")
    location = (root / "mlruns" / name).as_uri() if local and root != Path.cwd().absolute() else None
    return client.create_experiment(
        name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
    )


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

    def log_dataset(self, dataset: Mapping[str, object]) -> None:
        log_dataset_input(self.client, self.run_id, dataset)

    def log_model(self, checkpoint: Path, input_example: np.ndarray) -> str:
        """Log the checkpoint pair as the run's model (see :mod:`segpipe.serving.logged`); return its URI."""
        return log_checkpoint_model(self.run_id, Path(checkpoint), input_example.shape[1])

    def log_artifact(self, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, path, artifact_path)


def pipeline_parent(
    client: mlflow.MlflowClient,
    experiment_id: str,
    key: str,
    tags: Mapping[str, str],
    start_time: int | None = None,
) -> str:
    """The parent run of pipeline execution ``key`` in the experiment, created on first use (starting at
    ``start_time``, ms, when given: its first child's start)."""
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{PIPELINE_TAG}` = '{key}'", max_results=1
    )
    if found:
        return found[0].info.run_id
    started = start_time / 1000 if start_time is not None else time.time()
    run = client.create_run(
        experiment_id,
        start_time=start_time,
        run_name=f"pipeline {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}",
        tags={PIPELINE_TAG: key, "git_commit": git_commit(), **tags},
    )
    return run.info.run_id


class RunWriter:
    """Sends tracking calls, as a spool records them, to the server; ``progress`` holds the ids it gave."""

    def __init__(self, client: mlflow.MlflowClient, progress: Progress) -> None:
        self.client = client
        self.progress = progress

    def apply(self, call: Mapping[str, object], models_dir: Path | None = None) -> None:
        """Make one recorded call (failing within :data:`CALL_TIMEOUT_S` or so when the server is down); a
        model record's checkpoint must lie in ``models_dir``, the spool's own folder."""
        with fail_fast(MODEL_TIMEOUT_S if call["op"] == "log_checkpoint" else CALL_TIMEOUT_S):
            match call["op"]:
                case "start_run":
                    self._start_run(call)
                case "log_params":
                    MlflowTracker(self._run_id(), self.client).log_params(call["params"])
                case "log_metrics":
                    metrics = [
                        Metric(key, value, call["timestamp"], call["step"])
                        for key, value in call["metrics"].items()
                    ]
                    self.client.log_batch(self._run_id(), metrics=metrics)
                case "log_input":
                    log_dataset_input(self.client, self._run_id(), call["dataset"])
                case "log_checkpoint" if models_dir is not None:
                    self._log_model(spooled_checkpoint(models_dir, call), int(call["channels"]))
                case "log_model" | "log_torch_model" if models_dir is not None:
                    raise ValueError(
                        f"{models_dir.with_suffix('.jsonl')}: a model record holds a pickled model of a "
                        f"previous segpipe, which is no longer loaded: refused; delete that spool and re-run "
                        f"train"
                    )
                case "end_run":
                    self.client.set_terminated(self._run_id(), call["status"], end_time=call["end_time"])
                case unknown:
                    raise ValueError(f"unknown tracking call {unknown!r} in a spool")

    def log_model(self, checkpoint: Path, channels: int) -> None:
        """Log a checkpoint pair (a spool holds a copy of it instead)."""
        with fail_fast(MODEL_TIMEOUT_S):
            self._log_model(checkpoint, channels)

    def _log_model(self, checkpoint: Path, channels: int) -> None:
        """Log the checkpoint as the run's model and tag the run with its URI (how the track stage finds
        it)."""
        self.progress.model_uri = log_checkpoint_model(self._run_id(), checkpoint, channels)
        self.client.set_tag(self._run_id(), MODEL_URI_TAG, self.progress.model_uri)

    def _run_id(self) -> str:
        assert self.progress.run_id is not None, "a spool's first call creates or names its run"
        return self.progress.run_id

    def _start_run(self, call: Mapping[str, object]) -> None:
        """Continue the run tagged with the call's run key where the store has it (a resumed training), else
        create the run (nested under its pipeline's parent run)."""
        experiment = experiment_id(self.client, str(call["experiment"]))
        resumed = _run_by_key(self.client, experiment, str(call["run_key"]))
        if resumed is not None:
            self.client.update_run(resumed.info.run_id, status="RUNNING")
            self.progress.run_id = resumed.info.run_id
            self.progress.parent_run_id = resumed.data.tags.get("mlflow.parentRunId")
            return
        tags = {**call["tags"], RUN_KEY_TAG: call["run_key"]}
        if call["pipeline"] is not None:
            parent_tags = {"dataset": call["dataset"], "git_commit": tags["git_commit"]}
            self.progress.parent_run_id = pipeline_parent(
                self.client, experiment, call["pipeline"], parent_tags, call["start_time"]
            )
            tags["mlflow.parentRunId"] = self.progress.parent_run_id
        run = self.client.create_run(
            experiment, start_time=call["start_time"], tags=tags, run_name=call["run_name"]
        )
        self.progress.run_id = run.info.run_id


def _run_by_key(client: mlflow.MlflowClient, experiment_id: str, run_key: str) -> mlflow.entities.Run | None:
    """The active run tagged with ``run_key`` in the experiment, if any."""
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=1
    )
    return found[0] if found else None


def send_spool(spool: Spool, writer: RunWriter) -> int:
    """Send the calls of ``spool`` not sent yet, in order, recording progress after each; return how many."""
    calls, writer.progress = spool.read()
    waiting = calls[writer.progress.sent :]
    for call in waiting:
        writer.apply(call, spool.models_dir)
        writer.progress.sent += 1
        spool.record_progress(writer.progress)
    return len(waiting)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class BufferedTracker:
    """Tracks one training run through tracking-server outages: a call the server cannot take is spooled, as
    is every later call until the spool is sent (keeping their order); ``run_id`` is None until the run
    exists."""

    def __init__(self, uri: str, spool: Spool, run_key: str, tags: Mapping[str, str]) -> None:
        self.uri = uri
        self.spool = spool
        self.run_key = run_key
        self.tags = dict(tags)
        self.writer = RunWriter(mlflow.MlflowClient(uri), Progress())
        self._last_failure = -math.inf
        self._sending = threading.Lock()  # system metrics are logged from a second thread

    @property
    def run_id(self) -> str | None:
        return self.writer.progress.run_id

    @property
    def parent_run_id(self) -> str | None:
        return self.writer.progress.parent_run_id

    @property
    def model_uri(self) -> str | None:
        """The logged model's URI, once it reached the server."""
        return self.writer.progress.model_uri

    def log_params(self, params: Mapping[str, object]) -> None:
        self._call({"op": "log_params", "params": {key: str(value) for key, value in params.items()}})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log metrics at ``step``; while calls are spooled, first retry the server (once an epoch)."""
        call = {
            "op": "log_metrics",
            "metrics": {key: float(value) for key, value in metrics.items()},
            "step": step or 0,
            "timestamp": now_ms(),
        }
        self._call(call, retry_now=True)

    def log_dataset(self, dataset: Mapping[str, object]) -> None:
        self._call(dataset_call(dataset))

    def log_model(self, checkpoint: Path, input_example: np.ndarray) -> str | None:
        """Log the checkpoint pair as the run's model; while the server is unreachable, copy it into the spool
        and return None."""
        checkpoint = Path(checkpoint)
        with self._sending:
            if self._caught_up(retry_now=False) and self._attempt(
                lambda: self.writer.log_model(checkpoint, int(input_example.shape[1]))
            ):
                return self.model_uri
            self.spool.append(spool_checkpoint(self.spool, checkpoint, input_example))
            return None

    def start(self, call: dict[str, object]) -> None:
        self._call(call, retry_now=True)

    def finish(self, status: str) -> None:
        """End the run with ``status``, sending what is spooled; if the server is still unreachable, keep the
        spool for ``segpipe sync`` and say where it is."""
        self._call({"op": "end_run", "status": status, "end_time": now_ms()}, retry_now=True)
        if self.spool.is_open:
            self.spool.close()
            _say(
                f"MLflow at {redact_uri(self.uri)} is still unreachable: this run's tracking is kept in "
                f"{self.spool.path}; "
                f"send it with `{SYNC_COMMAND}` once the server is up"
            )

    def _call(self, call: dict[str, object], retry_now: bool = False) -> None:
        with self._sending:
            if self._caught_up(retry_now) and self._attempt(lambda: self.writer.apply(call)):
                return
            self.spool.append(call)

    def _caught_up(self, retry_now: bool) -> bool:
        """Whether nothing is waiting in the spool, after trying to send it when a retry is due."""
        if not self.spool.is_open:
            return True
        if not retry_now and time.monotonic() - self._last_failure < RETRY_INTERVAL_S:
            return False
        try:
            sent = send_spool(self.spool, self.writer)
        except Exception as error:
            if not is_unreachable(error):
                raise
            self._last_failure = time.monotonic()
            return False
        self.spool.remove()
        _say(
            f"MLflow at {redact_uri(self.uri)} is reachable again: sent {sent} buffered tracking calls (run "
            f"{self.run_id})"
        )
        return True

    def _attempt(self, send: Callable[[], None]) -> bool:
        """Send directly; on an unreachable server start spooling (saying so) and return False."""
        try:
            send()
        except Exception as error:
            if not is_unreachable(error):
                raise
            self._last_failure = time.monotonic()
            self.spool.create(dataclasses.replace(self.writer.progress, sent=0))
            _say(
                f"MLflow at {redact_uri(self.uri)} is unreachable ({unreachable_reason(error)}); buffering "
                f"to {self.spool.path}; it will be sent when the server is back, or run `{SYNC_COMMAND}`"
            )
            return False
        return True


@contextmanager
def start_run(
    params: TrackingParams,
    dataset: str,
    run_name: str,
    tags: Mapping[str, str],
    pipeline: str | None = None,
    run_key: str | None = None,
    spool_path: Path | None = None,
) -> Iterator[BufferedTracker]:
    """Live tracking of run ``run_key`` (default: a new key) in experiment ``segpipe-<dataset>``: the run with
    that key continued if the store has it (a resumed training), else a new run nested under the parent run of
    pipeline execution ``pipeline`` (see :func:`pipeline_key`) when given. Marked FINISHED at the end, FAILED
    if the block raises. Calls the server cannot take go to ``spool_path`` (default: ``<spool dir>/<run
    name>-<timestamp>.jsonl``, see :func:`~segpipe.tracking.spool.spool_dir`)."""
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)  # MLflow logs a model to the global tracking URI
    key = run_key or uuid.uuid4().hex
    tracker = BufferedTracker(uri, Spool(spool_path or new_spool_path(run_name)), key, tags)
    tracker.start(start_record(dataset, run_name, tags, pipeline, key))
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        tracker.finish(status)


def sync_spools(
    tracking: TrackingParams | str, directory: Path | None = None
) -> list[tuple[Path, str | None]]:
    """Send every spool in ``directory`` (default :func:`~segpipe.tracking.spool.spool_dir`) to the tracking
    server (``tracking``: params, or a URI), deleting each once all of it is sent; spools a running training
    holds are skipped. Return (spool, run id) per spool sent. Raise :class:`ServerUnreachable` if the server
    does not answer (what was sent stays recorded, so running it again sends only the rest)."""
    uri = tracking if isinstance(tracking, str) else tracking_uri(tracking)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    sent: list[tuple[Path, str | None]] = []
    for path in sorted((directory or spool_dir()).glob("*.jsonl")):
        spool = Spool(path)
        if not spool.lock():
            continue
        writer = RunWriter(client, Progress())
        try:
            send_spool(spool, writer)
        except Exception as error:
            spool.close()
            if is_unreachable(error):
                raise ServerUnreachable(
                    f"MLflow at {redact_uri(uri)} is unreachable ({unreachable_reason(error)}); {path} is "
                    f"kept: run `{SYNC_COMMAND}` again once the server is up"
                ) from error
            raise
        spool.remove()
        sent.append((path, writer.progress.run_id))
    return sent


@dataclass(frozen=True)
class RunRef:
    """Where a training run landed in MLflow."""

    run_id: str
    parent_run_id: str | None
    model_uri: str | None


def find_runs(tracking: TrackingParams, dataset: str, run_keys: list[str]) -> dict[str, RunRef]:
    """The runs tagged with ``run_keys`` in experiment ``segpipe-<dataset>``, by key (keys not found are left
    out)."""
    uri = tracking_uri(tracking)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name(dataset))
    found: dict[str, RunRef] = {}
    if experiment is None:
        return found
    for key in run_keys:
        run = _run_by_key(client, experiment.experiment_id, key)
        if run is not None:
            tags = run.data.tags
            found[key] = RunRef(run.info.run_id, tags.get("mlflow.parentRunId"), tags.get(MODEL_URI_TAG))
    return found


def sent_run(tracking: TrackingParams, dataset: str, run_key: str) -> RunRef:
    """Run ``run_key`` in MLflow, after sending whatever is spooled (for code that trains and registers
    through the library, without the track stage)."""
    sync_spools(tracking)
    found = find_runs(tracking, dataset, [run_key])
    if run_key not in found:
        raise ValueError(
            f"no run with key {run_key} in {redact_uri(tracking_uri(tracking))}: train with tracking on"
        )
    return found[run_key]


def finish_parent(
    params: TrackingParams,
    parent_run_id: str,
    metrics: Mapping[str, float],
    artifacts: list[Path],
    tables: Mapping[str, pd.DataFrame] | None = None,
) -> None:
    """Log the pipeline's summary to its parent run (``tables``: artifact file -> frame, as MLflow tables the
    UI's artifact view shows and ``mlflow.load_table`` reads) and mark the parent FINISHED."""
    mlflow.set_tracking_uri(tracking_uri(params))
    tracker = MlflowTracker(parent_run_id, mlflow.MlflowClient())
    tracker.log_metrics(metrics)
    for path in artifacts:
        tracker.log_artifact(str(path))
    for artifact_file, frame in (tables or {}).items():
        tracker.client.log_table(parent_run_id, frame, artifact_file)
    tracker.client.set_terminated(parent_run_id, "FINISHED")


def resume_run(params: TrackingParams, run_id: str, architecture: str) -> MlflowTracker:
    """A tracker for a finished run (evaluate adds test metrics to the run that trained the model)."""
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    try:
        client.get_run(run_id)
    except mlflow.exceptions.MlflowException as error:
        if is_unreachable(error):
            raise
        raise ValueError(
            f"MLflow run {run_id} that trained {architecture} is not in the tracking store "
            f"{redact_uri(uri)}: point "
            f"MLFLOW_TRACKING_URI at the store that has it, or re-train (dvc repro -f train@{architecture})"
        ) from None
    return MlflowTracker(run_id, client)
