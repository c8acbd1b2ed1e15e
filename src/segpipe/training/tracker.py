"""The tracking interface the training core talks to; MLflow plugs in from ``segpipe.tracking``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np


class Tracker(Protocol):
    """Receives a run's parameters, its dataset, per-step metrics and the final model; ``log_metrics`` may be
    called from a second thread (system metrics)."""

    run_key: str | None
    """Names the run for good, also before it reaches the server and across a resumed training (None: not
    tracked)."""

    def log_params(self, params: Mapping[str, object]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None: ...

    def log_dataset(self, dataset: Mapping[str, object]) -> None:
        """Record the data the run trains on (see :func:`segpipe.tracking.dataset.dataset_record`)."""
        ...

    def log_model(self, checkpoint: Path, input_example: np.ndarray) -> str | None:
        """Store the checkpoint pair (``model.safetensors`` + ``model.json``) as the run's model; return its
        URI (``None`` where nothing is stored)."""
        ...


class NullTracker:
    """Tracks nothing: for tracking switched off, or hosts without MLflow."""

    run_key: str | None = None

    def log_params(self, params: Mapping[str, object]) -> None:
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        return None

    def log_dataset(self, dataset: Mapping[str, object]) -> None:
        return None

    def log_model(self, checkpoint: Path, input_example: np.ndarray) -> str | None:
        return None
