"""MLflow model registry: register the pipeline's best run as a new version and point an alias at it."""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow

from segpipe.config import TrackingParams
from segpipe.tracking.mlflow_tracking import tracking_uri
from segpipe.tracking.redact import redact_uri


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    alias: str
    architecture: str
    run_id: str
    model_uri: str
    metric: str
    value: float
    tracking_uri: str
    """Where it was registered, credentials masked (the record is committed to git)."""
    onnx_uri: str = ""
    """The version's model exported to ONNX (:func:`log_onnx`), "" where it could not be exported."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


ONNX_TAG = "onnx"
PER_CLASS_IOU = "test_iou_"
"""Prefix of the per-class test IoU keys of a metrics record (``segpipe.stages.evaluate`` writes them)."""


def registered_model_name(dataset: str) -> str:
    return f"segpipe-{dataset}"


def model_card(
    record: dict[str, Any],
    metric: str,
    run_params: dict[str, str] | None = None,
    data_hash: str | None = None,
) -> str:
    """A version description: what was trained, on which data, how, and how it scored."""
    flat = {
        key.removeprefix(PER_CLASS_IOU): value
        for key, value in record.items()
        if key.startswith(PER_CLASS_IOU)
    }
    per_class = record.get("test_per_class_iou") or flat  # a remote run's record nests them
    lines = [
        f"**{record['architecture']}** ({record['family']}) trained on `{record['dataset']}` "
        f"(data hash `{data_hash or 'unknown'}`), best epoch {record['best_epoch']}, device "
        f"{record['device']}. "
        f"Selected by `{metric}`. The device is provenance recorded by whoever ran the training, not "
        f"proof; for a remote run, its tags hold who imported it and the run's own timing evidence.",
        "",
        "| metric | value |",
        "|---|---:|",
        *(
            f"| {key} | {record[key]:.4f} |"
            for key in ("test_miou", "test_dice", "test_pixel_acc", "test_mean_class_acc")
        ),
        f"| params (M) | {record['params_m']:.2f} |",
        f"| inference img/s | {record['infer_img_per_s']:.1f} |",
        "",
        "| class | IoU |",
        "|---|---:|",
        *(f"| {name} | {'n/a' if value is None else f'{value:.4f}'} |" for name, value in per_class.items()),
    ]
    if run_params:
        lines += [
            "",
            "| training param | value |",
            "|---|---|",
            *(f"| {key} | {value} |" for key, value in sorted(run_params.items())),
        ]
    return "\n".join(lines)


def register_version(
    tracking: TrackingParams, dataset: str, record: dict[str, Any], metric: str, alias: str
) -> RegisteredVersion:
    """Register ``record['model_uri']`` as a new version of ``segpipe-<dataset>`` and set ``alias`` on it."""
    uri = tracking_uri(tracking)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    name = registered_model_name(dataset)
    run = client.get_run(record["run_id"])
    version = mlflow.register_model(
        record["model_uri"],
        name,
        tags={
            "architecture": record["architecture"],
            "dataset": dataset,
            metric: f"{record[metric]:.6f}",
            "device": str(record.get("device", "unknown")),
            "data_hash": run.data.tags.get("data_hash", "unknown"),
        },
    )
    description = model_card(record, metric, run.data.params, run.data.tags.get("data_hash"))
    client.update_model_version(name, version.version, description=description)
    client.set_registered_model_alias(name, alias, version.version)
    onnx_uri = log_onnx(client, name, str(version.version), record["run_id"], record["model_uri"])
    return RegisteredVersion(
        name,
        str(version.version),
        alias,
        record["architecture"],
        record["run_id"],
        record["model_uri"],
        metric,
        float(record[metric]),
        redact_uri(uri),
        onnx_uri,
    )


def log_onnx(client: mlflow.MlflowClient, name: str, version: str, run_id: str, model_uri: str) -> str:
    """Export version ``version`` of ``name`` to ONNX, log it to run ``run_id`` as ``onnx/model.onnx`` and tag
    the version with its URI (tag :data:`ONNX_TAG`); return the URI, or "" (saying why) where the
    architecture does not export."""
    from segpipe.serving.logged import load_logged_model
    from segpipe.serving.onnx_export import ExportError, export_onnx

    model, meta = load_logged_model(model_uri)
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = export_onnx(model, meta.architecture, Path(folder) / "model.onnx")
        except ExportError as error:
            client.set_model_version_tag(name, version, ONNX_TAG, f"not exported: {error}")
            print(f"register: no ONNX file for version {version} of {name}: {error}")
            return ""
        client.log_artifact(run_id, str(path), "onnx")
    onnx_uri = f"runs:/{run_id}/onnx/model.onnx"
    client.set_model_version_tag(name, version, ONNX_TAG, onnx_uri)
    return onnx_uri
