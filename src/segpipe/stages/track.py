"""The track stage: publish a pipeline execution to MLflow. It sends what the training runs spooled (deferred
tracking: MLflow starts here, once), adds each model's test metrics and figures to the run that trained it,
logs the leaderboard to the pipeline's parent run(s), marks them finished, and records the run ids in
``reports/tracking.json`` for the register stage."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

from segpipe import io
from segpipe.config import Params
from segpipe.data.manifest import DatasetInfo
from segpipe.figures import confusion_matrix_png, per_class_iou_png
from segpipe.paths import ProjectPaths
from segpipe.stages.compare import load_metrics, per_class_iou
from segpipe.tracking.mlflow_tracking import (
    RunRef,
    find_runs,
    finish_parent,
    resume_run,
    sync_spools,
    tracking_uri,
)
from segpipe.tracking.redact import redact_uri
from segpipe.tracking.ui import browser_base, dataset_runs_url


def tracking_record(paths: ProjectPaths) -> Path:
    """``reports/tracking.json``: where each model's training run landed in MLflow."""
    return paths.reports / "tracking.json"


def run_track(params: Params, paths: ProjectPaths) -> dict[str, object]:
    """Publish test results and the leaderboard to MLflow; write and return ``reports/tracking.json``.

    With tracking off nothing is sent: the record says so and lists no runs."""
    records = [
        *load_metrics(paths, params.train.architectures),
        *load_metrics(paths, params.denoise.architectures, "denoise"),
    ]
    if not params.tracking.enabled:
        summary: dict[str, object] = {"enabled": False, "runs": []}
        io.write_json(tracking_record(paths), summary)
        print("track: tracking.enabled is false: nothing sent to MLflow")
        return summary
    info = DatasetInfo.load(paths.prepared)
    runs = _tracked_runs(params, info.name, records)
    for record in records:
        run = runs.get(str(record.get("run_key")))
        if run is not None:
            _log_test_results(params, paths, record, run.run_id, info.class_names)
    _summarise_in_parent_runs(params, paths, {run.parent_run_id for run in runs.values()} - {None})
    summary = {
        "enabled": True,
        "tracking_uri": redact_uri(tracking_uri(params.tracking)),
        "runs": [_run_entry(record, runs.get(str(record.get("run_key")))) for record in records],
    }
    io.write_json(tracking_record(paths), summary)
    print(f"track: {_where_to_look(params, info.name)}")
    return summary


def _where_to_look(params: Params, dataset: str) -> str:
    """The runs page of this execution in the MLflow UI (training view); for a local store, the command
    that serves it."""
    uri = tracking_uri(params.tracking)
    if not uri.startswith(("http://", "https://")):
        return "browse the runs in the MLflow UI with: segpipe ui"
    return f"runs in the MLflow UI: {dataset_runs_url(browser_base(uri), uri, dataset)}"


def _run_entry(record: dict[str, object], run: RunRef | None) -> dict[str, object]:
    return {
        "architecture": record["architecture"],
        "task": record.get("task", "segment"),
        "run_key": record.get("run_key"),
        "run_id": run.run_id if run else None,
        "model_uri": run.model_uri if run else None,
        "parent_run_id": run.parent_run_id if run else None,
    }


def _tracked_runs(params: Params, dataset: str, records: list[dict[str, object]]) -> dict[str, RunRef]:
    """Send the spooled training runs, then find each model's run by the key its metrics record carries."""
    sent = sync_spools(params.tracking)
    if sent:
        print(f"track: sent {len(sent)} spooled training run(s) to MLflow")
    keys = [str(record["run_key"]) for record in records if record.get("run_key")]
    runs = find_runs(params.tracking, dataset, keys)
    lost = [
        f"{record['architecture']} ({record.get('task', 'segment')})"
        for record in records
        if not record.get("run_key") or record["run_key"] not in runs
    ]
    if lost:
        print(
            f"track: no MLflow run in {redact_uri(tracking_uri(params.tracking))} for {', '.join(lost)}: "
            "they "
            f"have no run_id / model_uri in reports/tracking.json. Re-train them with tracking on and this "
            f"MLFLOW_TRACKING_URI (dvc repro -f train@<architecture>)",
            file=sys.stderr,
        )
    return runs


def _log_test_results(
    params: Params, paths: ProjectPaths, record: dict[str, object], run_id: str, class_names: tuple[str, ...]
) -> None:
    """A model's test metrics, metrics file and figures go to the MLflow run that trained it."""
    architecture, task = str(record["architecture"]), str(record.get("task", "segment"))
    tracker = resume_run(params.tracking, run_id, architecture)
    metrics = {
        key: value
        for key, value in record.items()
        if key.startswith(("test_", "input_")) and isinstance(value, float)
    }
    tracker.log_metrics({**metrics, "infer_img_per_s": float(record["infer_img_per_s"])})
    tracker.log_artifact(str(paths.metrics(architecture, task)))
    if task != "segment":
        tracker.log_artifact(str(paths.denoise_examples(architecture)))
        return
    tracker.log_artifact(str(paths.confusion_matrix(architecture)))
    matrix = pd.read_csv(paths.confusion_matrix(architecture), index_col=0)
    with tempfile.TemporaryDirectory() as scratch:
        figures = Path(scratch)
        shutil.copyfile(paths.prediction_grid(architecture), figures / "predictions.png")
        title = f"{architecture}: test mIoU {record['test_miou']:.3f}"
        confusion_matrix_png(
            matrix.to_numpy(), tuple(matrix.columns), figures / "confusion_matrix.png", title
        )
        per_class_iou_png(per_class_iou(record, class_names), figures / "per_class_iou.png", title)
        for figure in sorted(figures.iterdir()):
            tracker.log_artifact(str(figure))


def _summarise_in_parent_runs(params: Params, paths: ProjectPaths, parents: set[str]) -> None:
    """The pipeline's parent run(s) get the leaderboard, the best score and each model's score; then
    FINISHED."""
    metric = params.compare.metric
    board = io.read_json(paths.leaderboard_summary)
    scores = {
        f"best_{metric}": float(board[f"best_{metric}"]),
        **{f"{metric}.{name}": float(value) for name, value in board[metric].items()},
    }
    artifacts = [
        paths.leaderboard_md,
        paths.leaderboard_csv,
        paths.plots / "leaderboard.png",
        paths.plots / "per_class_iou.png",
    ]
    tables = {"leaderboard.json": pd.read_csv(paths.leaderboard_csv)}
    for parent in sorted(parents):
        finish_parent(params.tracking, parent, scores, artifacts, tables)
