"""The register stage: the leaderboard's best model becomes a new registry version with the configured alias."""

from __future__ import annotations

import pandas as pd

from segpipe import io
from segpipe.config import Params
from segpipe.data.manifest import DatasetInfo
from segpipe.paths import ProjectPaths
from segpipe.registry.versions import RegisteredVersion, register_version
from segpipe.stages.compare import REFERENCE


def run_register(params: Params, paths: ProjectPaths) -> RegisteredVersion | None:
    """Register the best architecture by ``register.metric``; write ``reports/registry.json``.

    With tracking off there is no MLflow model to register: the record says so, and the pipeline ends normally.
    """
    metric = params.register_.metric
    board = pd.read_csv(paths.leaderboard_csv)
    candidates = board[board["architecture"] != REFERENCE].sort_values(metric, ascending=False, kind="stable")
    if candidates.empty:
        raise ValueError(f"{paths.leaderboard_csv} lists no trained model: run the compare stage after training")
    best = str(candidates.iloc[0]["architecture"])
    if not params.tracking.enabled:
        reason = "tracking.enabled is false: nothing was logged to MLflow, so nothing was registered"
        io.write_json(paths.registry_record, {"registered": False, "reason": reason, "architecture": best,
                                              "metric": metric, "value": float(candidates.iloc[0][metric])})
        print(f"register: {reason} (best model: {best})")
        return None
    row = candidates.iloc[0]
    if not isinstance(row["model_uri"], str) or not row["model_uri"]:
        raise ValueError(
            f"{paths.leaderboard_csv} has no model_uri for {best}: the compare stage found no MLflow run with its "
            f"logged model; re-train it with tracking enabled (dvc repro -f train@{best})"
        )
    record = {**io.read_json(paths.metrics(best)), "run_id": row["run_id"], "model_uri": row["model_uri"]}
    info = DatasetInfo.load(paths.prepared)
    registered = register_version(params.tracking, info.name, record, metric, params.register_.alias)
    io.write_json(paths.registry_record, registered.as_dict())
    return registered
