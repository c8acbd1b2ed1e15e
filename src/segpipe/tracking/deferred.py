"""Deferred tracking: a training run's calls are written to its spool and sent to MLflow later, by the track
stage or ``segpipe sync``, in one process for every run of a pipeline execution (MLflow's import and store
start-up cost seconds per process: measured 2-4 s per train stage). Nothing here imports MLflow."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from segpipe.tracking.context import experiment_name, git_commit, process_tags
from segpipe.tracking.spool import Progress, Spool, spool_dir
from segpipe.training.checkpoint import meta_path

SPOOLED_WEIGHTS = "model.safetensors"


def start_record(
    dataset: str, run_name: str, tags: Mapping[str, str], pipeline: str | None, run_key: str
) -> dict[str, object]:
    """The spool record that opens run ``run_key`` (or continues it, where the store has a run with that
    key)."""
    commit = git_commit()
    return {
        "op": "start_run",
        "experiment": experiment_name(dataset),
        "run_name": run_name,
        "dataset": dataset,
        "tags": {**process_tags(commit), "git_commit": commit, **tags},
        "pipeline": pipeline,
        "run_key": run_key,
        "start_time": now_ms(),
    }


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def dataset_call(dataset: Mapping[str, object]) -> dict[str, object]:
    """The call record that logs a run's dataset input (see :mod:`segpipe.tracking.dataset`)."""
    return {"op": "log_input", "dataset": dict(dataset)}


def deferred_spool_path(run_name: str, run_key: str, directory: Path | None = None) -> Path:
    """``<spool dir>/<run name>-<run key>.jsonl``: a resumed training finds its run's spool again by the
    key."""
    safe_name = re.sub(r"[^\w.-]+", "_", run_name)
    return (directory or spool_dir()) / f"{safe_name}-{run_key}.jsonl"


def spool_checkpoint(spool: Spool, checkpoint: Path, input_example: np.ndarray) -> dict[str, object]:
    """Copy the checkpoint pair into the spool's own models folder; return the call record that logs it."""
    folder = spool.models_dir / f"model-{time.time_ns()}"
    folder.mkdir(parents=True)
    shutil.copyfile(checkpoint, folder / SPOOLED_WEIGHTS)
    shutil.copyfile(meta_path(checkpoint), meta_path(folder / SPOOLED_WEIGHTS))
    return {"op": "log_checkpoint", "checkpoint": folder.name, "channels": int(input_example.shape[1])}


def spooled_checkpoint(models_dir: Path, call: Mapping[str, object]) -> Path:
    """The checkpoint a ``log_checkpoint`` record names, which must lie in the spool's own ``models_dir``;
    ValueError for any other path (a spool is replayed as it is found on disk)."""
    name = str(call.get("checkpoint", ""))
    folder = models_dir / name
    weights = folder / SPOOLED_WEIGHTS
    inside = name and Path(name).name == name and name not in (".", "..")
    if not inside or any(path.is_symlink() for path in (folder, weights, meta_path(weights))):
        raise ValueError(
            f"{models_dir.with_suffix('.jsonl')}: a model record names {name!r}, which is not a checkpoint "
            f"folder inside {models_dir}: refused; delete that spool and re-run train for its architecture"
        )
    return weights


class SpoolTracker:
    """Records one run's calls in its spool, in the format
    :class:`~segpipe.tracking.mlflow_tracking.RunWriter` sends; the run id is known only once it is sent."""

    run_id: str | None = None
    parent_run_id: str | None = None
    model_uri: str | None = None

    def __init__(self, spool: Spool, run_key: str, tags: Mapping[str, str]) -> None:
        self.spool = spool
        self.run_key = run_key
        self.tags = dict(tags)

    def log_params(self, params: Mapping[str, object]) -> None:
        self.spool.append({"op": "log_params", "params": {key: str(value) for key, value in params.items()}})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.spool.append(
            {
                "op": "log_metrics",
                "metrics": {key: float(value) for key, value in metrics.items()},
                "step": step or 0,
                "timestamp": now_ms(),
            }
        )

    def log_dataset(self, dataset: Mapping[str, object]) -> None:
        self.spool.append(dataset_call(dataset))

    def log_model(self, checkpoint: Path, input_example: np.ndarray) -> None:
        """Copy the checkpoint pair into the spool; it is logged when the spool is sent."""
        self.spool.append(spool_checkpoint(self.spool, Path(checkpoint), input_example))


@contextmanager
def spool_run(
    dataset: str,
    run_name: str,
    tags: Mapping[str, str],
    pipeline: str | None,
    run_key: str,
    directory: Path | None = None,
) -> Iterator[SpoolTracker]:
    """Deferred tracking of run ``run_key``, recorded in its spool (see :func:`deferred_spool_path`): opened,
    or continued where an interrupted training of the same run left it; ended FINISHED, or FAILED if the block
    raises."""
    spool = Spool(deferred_spool_path(run_name, run_key, directory))
    if not spool.lock():
        spool.create(Progress())
        spool.append(start_record(dataset, run_name, tags, pipeline, run_key))
    tracker = SpoolTracker(spool, run_key, tags)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        spool.append({"op": "end_run", "status": status, "end_time": now_ms()})
        spool.close()
