"""The register stage: the leaderboard's best model becomes a new registry version with the configured
alias."""

from __future__ import annotations

import pandas as pd

from segpipe import io
from segpipe.config import Params
from segpipe.data.manifest import DatasetInfo
from segpipe.paths import ProjectPaths
from segpipe.registry.versions import RegisteredVersion, register_version
from segpipe.stages.compare import REFERENCE
from segpipe.stages.track import tracking_record


def run_register(params: Params, paths: ProjectPaths) -> RegisteredVersion | None:
    """Register the best architecture by ``register.metric``; write ``reports/registry.json``.

    With tracking off there is no MLflow model to register: the record says so, and the pipeline ends
    normally."""
    metric = params.register_.metric
    board = pd.read_csv(paths.leaderboard_csv)
    candidates = board[board["architecture"] != REFERENCE].sort_values(metric, ascending=False, kind="stable")
    if candidates.empty:
        raise ValueError(
            f"{paths.leaderboard_csv} lists no trained model: run the compare stage after training"
        )
    best = str(candidates.iloc[0]["architecture"])
    if not params.tracking.enabled:
        reason = "tracking.enabled is false: nothing was logged to MLflow, so nothing was registered"
        io.write_json(
            paths.registry_record,
            {
                "registered": False,
                "reason": reason,
                "architecture": best,
                "metric": metric,
                "value": float(candidates.iloc[0][metric]),
            },
        )
        print(f"register: {reason} (best model: {best})")
        return None
    run = _training_run(paths, best)
    record = {**io.read_json(paths.metrics(best)), "run_id": run["run_id"], "model_uri": run["model_uri"]}
    info = DatasetInfo.load(paths.prepared)
    registered = register_version(params.tracking, info.name, record, metric, params.register_.alias)
    io.write_json(paths.registry_record, registered.as_dict())
    return registered


def _training_run(paths: ProjectPaths, architecture: str) -> dict[str, object]:
    """The MLflow run (id and logged model) that trained ``architecture``, from the track stage's record."""
    path = tracking_record(paths)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the track stage first (dvc repro track)")
    runs = [
        run
        for run in io.read_json(path)["runs"]
        if run["architecture"] == architecture and run["task"] == "segment" and run.get("model_uri")
    ]
    if not runs:
        raise ValueError(
            f"{path} has no model_uri for {architecture}: the track stage found no MLflow run with its "
            f"logged model; re-train it with tracking enabled (dvc repro -f train@{architecture})"
        )
    return runs[0]
