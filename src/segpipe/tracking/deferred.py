"""Deferred tracking: a training run's calls are written to its spool and sent to MLflow later, by the compare stage
or ``segpipe sync``, in one process for every run of a pipeline execution (MLflow's import and store start-up cost
seconds per process: measured 2-4 s per train stage). Nothing here imports MLflow."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segpipe.tracking.context import experiment_name, git_commit, process_tags
from segpipe.tracking.spool import Progress, Spool, spool_dir


def start_record(dataset: str, run_name: str, tags: Mapping[str, str], pipeline: str | None,
                 run_key: str) -> dict[str, object]:
    """The spool record that opens run ``run_key`` (or continues it, where the store has a run with that key)."""
    commit = git_commit()
    return {"op": "start_run", "experiment": experiment_name(dataset), "run_name": run_name, "dataset": dataset,
            "tags": {**process_tags(commit), "git_commit": commit, **tags}, "pipeline": pipeline,
            "run_key": run_key, "start_time": now_ms()}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def deferred_spool_path(run_name: str, run_key: str, directory: Path | None = None) -> Path:
    """``<spool dir>/<run name>-<run key>.jsonl``: a resumed training finds its run's spool again by the key."""
    safe_name = re.sub(r"[^\w.-]+", "_", run_name)
    return (directory or spool_dir()) / f"{safe_name}-{run_key}.jsonl"


def input_example_path(model_path: Path) -> Path:
    return model_path.with_name(f"{model_path.name}-input-example.npy")


class SpoolTracker:
    """Records one run's calls in its spool, in the format :class:`~segpipe.tracking.mlflow_tracking.RunWriter`
    sends; the run id is known only once it is sent."""

    run_id: str | None = None
    parent_run_id: str | None = None
    model_uri: str | None = None

    def __init__(self, spool: Spool, run_key: str) -> None:
        self.spool = spool
        self.run_key = run_key

    def log_params(self, params: Mapping[str, object]) -> None:
        self.spool.append({"op": "log_params", "params": {key: str(value) for key, value in params.items()}})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self.spool.append({"op": "log_metrics", "metrics": {key: float(value) for key, value in metrics.items()},
                           "step": step or 0, "timestamp": now_ms()})

    def log_model(self, model: nn.Module, input_example: np.ndarray) -> None:
        """Pickle the model (as MLflow's pickle format does) beside the spool; it is logged when the spool is sent."""
        path = self.spool.models_dir / f"model-{time.time_ns()}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.eval().cpu(), path)
        np.save(input_example_path(path), input_example)
        self.spool.append({"op": "log_torch_model", "path": str(path)})


@contextmanager
def spool_run(dataset: str, run_name: str, tags: Mapping[str, str], pipeline: str | None, run_key: str,
              directory: Path | None = None) -> Iterator[SpoolTracker]:
    """Deferred tracking of run ``run_key``, recorded in its spool (see :func:`deferred_spool_path`): opened, or
    continued where an interrupted training of the same run left it; ended FINISHED, or FAILED if the block
    raises."""
    spool = Spool(deferred_spool_path(run_name, run_key, directory))
    if not spool.lock():
        spool.create(Progress())
        spool.append(start_record(dataset, run_name, tags, pipeline, run_key))
    tracker = SpoolTracker(spool, run_key)
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    finally:
        spool.append({"op": "end_run", "status": status, "end_time": now_ms()})
        spool.close()
