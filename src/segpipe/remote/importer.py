"""``segpipe remote import``: bring a remote run's output folder into MLflow and the model registry.

The folder comes from another machine, so it is checked before use: every file against ``manifest.json``
(sha256), ``run.json``'s fields, each trained architecture's checkpoint (safetensors and JSON only, every
tensor's shape against the rebuilt model). The run must have trained on this project's prepared data
(same digest), its declared best must be the argmax of the recorded test mIoU, and every trained model is
re-evaluated here on the prepared test split: the run is refused if any mIoU differs from the recorded one
by more than ``tolerance``, so no unverified number is ever logged as ``test_miou``. Only then: one MLflow
run per architecture (nested under one parent run), tagged with the host's ``device`` and ``gpu_name`` as
the run recorded them (provenance, not proof), who imported it, and the run's timing evidence
(:mod:`segpipe.remote.evidence`), which ``promote --require-gpu`` checks; and the best model registered as
the register stage does.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
from torch import nn

from segpipe import io
from segpipe.config import DataParams, TrackingParams
from segpipe.data.cache import load_split
from segpipe.data.loader import make_loader
from segpipe.metrics import metrics_from_confusion
from segpipe.paths import ProjectPaths
from segpipe.registry.versions import RegisteredVersion, register_version, registered_model_name
from segpipe.remote.bundle import data_digest
from segpipe.remote.evidence import (
    DEFAULT_BATCH,
    EVIDENCE_TAG,
    cpu_images_per_second,
    device_evidence,
    importer_tags,
    run_images_per_second,
)
from segpipe.remote.manifest import verify_folder
from segpipe.remote.run import RUN_FILE, RUN_FORMAT
from segpipe.tasks.segment import evaluate_split
from segpipe.tracking.mlflow_tracking import MlflowTracker, experiment_name, tracking_uri
from segpipe.tracking.mlflow_tracking import experiment_id as mlflow_experiment_id  # the name is taken here
from segpipe.training.checkpoint import CheckpointMeta, load_checkpoint

MIOU_TOLERANCE = 0.005
"""0.5 mIoU points: mixed precision / TF32 on a GPU against fp32 here stays well inside it."""
REMOTE_RUN_TAG = "segpipe.remote_run"
METRIC = "test_miou"


class RunFolderError(ValueError):
    """A remote run folder that is incomplete, malformed, for other data or already imported."""


class ReevaluationMismatch(ValueError):
    """The re-evaluation here does not reproduce the recorded test mIoU."""


@dataclass(frozen=True)
class RunFolder:
    """A checked remote run folder: its run.json, and per trained architecture its metrics and checkpoint."""

    path: Path
    run: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
    models: dict[str, tuple[nn.Module, CheckpointMeta]]

    @property
    def best(self) -> str:
        """The architecture run.json declares best (checked to be the argmax of the recorded test mIoU)."""
        return str(self.run["best"])

    @property
    def host(self) -> dict[str, Any]:
        return self.run["host"]


def _field(run: dict[str, Any], path: Path, key: str, valid: bool, expected: str) -> None:
    if not valid:
        raise RunFolderError(f"{path}: {key} is {run.get(key)!r}, expected {expected}; copy the folder again")


def _check_run(path: Path, run: Any) -> dict[str, Any]:
    if not isinstance(run, dict) or run.get("format") != RUN_FORMAT:
        raise RunFolderError(f"{path} is not a {RUN_FORMAT} record: give a folder `segpipe remote run` wrote")
    host, data, records = run.get("host"), run.get("data"), run.get("architectures")
    _field(
        run,
        path,
        "run_id",
        isinstance(run.get("run_id"), str) and re.fullmatch(r"[0-9a-f]{32}", run["run_id"]) is not None,
        "32 hex digits",
    )
    _field(
        run,
        path,
        "host",
        isinstance(host, dict)
        and isinstance(host.get("device"), str)
        and (host.get("gpu_name") is None or isinstance(host.get("gpu_name"), str)),
        "device and gpu_name",
    )
    _field(
        run,
        path,
        "data",
        isinstance(data, dict)
        and isinstance(data.get("sha256"), str)
        and isinstance(data.get("dataset"), str),
        "dataset and sha256",
    )
    _field(
        run,
        path,
        "architectures",
        isinstance(records, dict)
        and all(
            isinstance(r, dict) and r.get("status") in ("trained", "skipped", "failed")
            for r in records.values()
        ),
        "architecture -> {status}",
    )
    if not any(record["status"] == "trained" for record in records.values()):
        raise RunFolderError(f"{path}: no architecture finished training, so there is nothing to import")
    return run


def _check_metrics(path: Path, record: Any, name: str) -> dict[str, Any]:
    if not isinstance(record, dict) or record.get("architecture") != name:
        raise RunFolderError(f"{path} is not {name}'s metrics record; copy the folder again")
    score = record.get(METRIC)
    if type(score) not in (int, float) or not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise RunFolderError(f"{path}: {METRIC} is {score!r}, expected a number in [0, 1]")
    return record


def read_run_folder(path: Path) -> RunFolder:
    """Verify ``path`` against its manifest, then read run.json, metrics and checkpoints (on the CPU)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder: give the --out folder of `segpipe remote run`")
    verify_folder(path)
    run = _check_run(path / RUN_FILE, io.read_json(path / RUN_FILE))
    paths = ProjectPaths(path)
    metrics, models = {}, {}
    for name, record in run["architectures"].items():
        if record["status"] != "trained":
            continue
        metrics[name] = _check_metrics(paths.metrics(name), io.read_json(paths.metrics(name)), name)
        models[name] = load_checkpoint(paths.checkpoint(name), torch.device("cpu"))
        if models[name][1].architecture != name:
            raise RunFolderError(
                f"{paths.checkpoint(name)} holds a {models[name][1].architecture}, not {name}"
            )
    _check_best(path / RUN_FILE, run.get("best"), metrics)
    return RunFolder(path, run, metrics, models)


def _check_best(path: Path, declared: Any, metrics: dict[str, dict[str, Any]]) -> None:
    argmax = max(metrics, key=lambda name: metrics[name][METRIC])
    top = metrics[argmax][METRIC]
    if not isinstance(declared, str) or declared not in metrics or metrics[declared][METRIC] < top:
        raise RunFolderError(
            f"{path}: best is {declared!r}, but the highest recorded {METRIC} is {argmax}'s "
            f"({metrics[argmax][METRIC]:.4f}): the record was altered; copy the folder again"
        )


def reevaluate(
    folder: RunFolder, paths: ProjectPaths, data: DataParams = DataParams()
) -> tuple[dict[str, float], torch.Tensor]:
    """Every trained model's test mIoU on this project's prepared test split (read as ``data`` says), on the
    CPU, and one test image."""
    from segpipe.data.manifest import DatasetInfo

    info = DatasetInfo.load(paths.prepared)
    if data_digest(paths.prepared) != folder.run["data"]["sha256"]:
        raise RunFolderError(
            f"{paths.prepared} is not the prepared data the run trained on (its digest differs "
            f"from {folder.path / RUN_FILE}): re-evaluating on other data proves nothing; import "
            f"it in the project that packed the bundle"
        )
    loader = make_loader(load_split(paths.prepared, "test"), data, 8, torch.device("cpu"))
    scores = {}
    for name, (model, _) in folder.models.items():
        _, matrix = evaluate_split(model, loader, info.num_classes, info.ignore_index)
        scores[name] = metrics_from_confusion(matrix).miou
    return scores, next(iter(loader))[0][:1]


def _check_scores(folder: RunFolder, scores: dict[str, float], tolerance: float) -> None:
    """ReevaluationMismatch naming the first architecture whose recorded test mIoU is not reproduced."""
    for name, local in scores.items():
        recorded = folder.metrics[name][METRIC]
        if abs(local - recorded) > tolerance:
            raise ReevaluationMismatch(
                f"{folder.path}: {name}'s test mIoU re-evaluated here is {local:.4f}, but its metrics "
                f"record {recorded:.4f} (difference {abs(local - recorded):.4f} > {tolerance}); nothing was "
                f"registered. The record or the weights were altered, or do not belong together"
            )


def evidence_tags(folder: RunFolder, paths: ProjectPaths) -> dict[str, dict[str, str]]:
    """Per architecture: the training images/s its record implies and, where the run claims CUDA, this
    machine's CPU rate for the same architecture, image size and batch, with the verdict on the claim."""
    settings = folder.run.get("settings")
    settings = settings if isinstance(settings, dict) else {}
    batch = settings.get("batch_size")
    batch = batch if type(batch) is int and 0 < batch <= 1024 else DEFAULT_BATCH
    train_images = len(load_split(paths.prepared, "train"))
    device = folder.host["device"]
    tags = {}
    for name, (_, meta) in folder.models.items():
        record = folder.run["architectures"][name]
        claimed = run_images_per_second(record, train_images, settings.get("epochs"))
        local = cpu_images_per_second(meta, batch) if device.startswith("cuda") else None
        tags[name] = {
            "train_images_per_second": "unknown" if claimed is None else f"{claimed:.1f}",
            "local_cpu_train_images_per_second": "not measured" if local is None else f"{local:.1f}",
            EVIDENCE_TAG: device_evidence(device, claimed, local),
        }
    return tags


@dataclass(frozen=True)
class ImportedRun:
    experiment: str
    parent_run_id: str
    run_ids: dict[str, str]
    architecture: str
    device: str
    recorded_miou: float
    local_miou: float
    registered: RegisteredVersion
    evidence: str
    """The verdict of :func:`segpipe.remote.evidence.device_evidence` on the device the run claims."""

    def summary(self) -> str:
        """What ``segpipe remote import`` prints."""
        difference = abs(self.local_miou - self.recorded_miou)
        registered = self.registered
        return "\n".join(
            [
                f"imported {len(self.run_ids)} runs into experiment {self.experiment} "
                f"(parent run {self.parent_run_id})",
                f"re-evaluation of {self.architecture} here: test mIoU {self.local_miou:.4f}, recorded on "
                f"{self.device} {self.recorded_miou:.4f} (difference {difference:.4f})",
                f"registered {registered.name} version {registered.version} as @{registered.alias}",
                f"device {self.device} as the run recorded it (provenance, not proof); timing evidence: "
                f"{self.evidence}",
            ]
        )


def _refuse_repeat(client: mlflow.MlflowClient, experiment: str, folder: RunFolder) -> None:
    found = client.get_experiment_by_name(experiment)
    run_id = folder.run["run_id"]
    earlier = found and client.search_runs(
        [found.experiment_id], f"tags.`{REMOTE_RUN_TAG}` = '{run_id}'", max_results=1
    )
    if earlier:
        raise RunFolderError(
            f"{folder.path}: remote run {run_id} is already imported (run "
            f"{earlier[0].info.run_id} in {experiment}); nothing was imported again"
        )


def _host_tags(folder: RunFolder) -> dict[str, str]:
    host = folder.host
    return {
        **importer_tags(),
        "gpu_properties": json.dumps(host.get("gpu_properties")) if host.get("gpu_properties") else "none",
        REMOTE_RUN_TAG: folder.run["run_id"],
        "dataset": folder.run["data"]["dataset"],
        "data_hash": f"sha256:{folder.run['data']['sha256'][:20]}",
        "device": host["device"],
        "gpu_name": host.get("gpu_name") or "none",
        "torch_version": str(host.get("torch")),
        "python_version": str(host.get("python")),
    }


def _log_architecture(
    client: mlflow.MlflowClient,
    experiment_id: str,
    folder: RunFolder,
    name: str,
    parent_id: str,
    example: torch.Tensor,
    evidence: dict[str, str],
) -> tuple[str, str | None]:
    """One child run with params, per-epoch history and final metrics; the best one also logs its model."""
    paths, record = ProjectPaths(folder.path), folder.metrics[name]
    meta = folder.models[name][1]
    created = client.create_run(
        experiment_id,
        run_name=name,
        tags={
            **_host_tags(folder),
            **evidence,
            "architecture": name,
            "family": str(record.get("family", "")),
            "task": meta.task,
            "mlflow.parentRunId": parent_id,
        },
    )
    tracker = MlflowTracker(run_id=created.info.run_id, client=client)
    tracker.log_params(
        {
            "arch": name,
            "epochs": folder.run.get("settings", {}).get("epochs"),
            **{f"model.{key}": value for key, value in meta.options.items()},
        }
    )
    for epoch in io.read_json(paths.history(name)).get("epochs", []):
        scores = {
            key: value for key, value in epoch.items() if isinstance(value, float) and math.isfinite(value)
        }
        tracker.log_metrics({**scores, **epoch.get("validation", {})}, step=epoch["epoch"])
    tracker.log_metrics(
        {key: value for key, value in record.items() if type(value) in (int, float) and math.isfinite(value)}
    )
    model_uri = None
    if name == folder.best:
        model_uri = tracker.log_model(paths.checkpoint(name), example.numpy())
    client.set_terminated(created.info.run_id, "FINISHED")
    return created.info.run_id, model_uri


def _log_runs(
    client: mlflow.MlflowClient,
    experiment_id: str,
    folder: RunFolder,
    example: torch.Tensor,
    evidence: dict[str, dict[str, str]],
) -> tuple[str, dict[str, str], str | None]:
    """A parent run for the remote run and one nested run per architecture; their ids and the model URI."""
    parent = client.create_run(
        experiment_id,
        run_name=f"remote run {folder.run['created']} on {folder.host['device']}",
        tags=_host_tags(folder),
    )
    parent_id = parent.info.run_id
    MlflowTracker(run_id=parent_id, client=client).log_artifact(str(folder.path / RUN_FILE))
    run_ids, model_uri = {}, None
    for name in folder.metrics:
        run_ids[name], uri = _log_architecture(
            client, experiment_id, folder, name, parent_id, example, evidence[name]
        )
        model_uri = uri or model_uri
    client.set_terminated(parent_id, "FINISHED")
    return parent_id, run_ids, model_uri


def import_run(
    run_dir: Path,
    paths: ProjectPaths,
    tracking: TrackingParams,
    alias: str = "challenger",
    tolerance: float = MIOU_TOLERANCE,
    data: DataParams = DataParams(),
) -> ImportedRun:
    """Check ``run_dir``, re-evaluate every model on ``paths``' prepared test split (read as ``data``
    says), then log one MLflow run per architecture and register the best model with ``alias``. Nothing is
    logged when a check fails."""
    folder = read_run_folder(run_dir)
    mlflow.set_tracking_uri(tracking_uri(tracking))
    client = mlflow.MlflowClient()
    dataset = folder.run["data"]["dataset"]
    experiment = experiment_name(dataset)
    _refuse_repeat(client, experiment, folder)
    best = folder.best
    scores, example = reevaluate(folder, paths, data)
    _check_scores(folder, scores, tolerance)
    local_miou, recorded = scores[best], folder.metrics[best][METRIC]
    evidence = {  # what this machine checked, next to what the run recorded
        name: {**tags, "local_test_miou": f"{scores[name]:.6f}"}
        for name, tags in evidence_tags(folder, paths).items()
    }
    experiment_id = mlflow_experiment_id(client, experiment)
    parent_id, run_ids, model_uri = _log_runs(client, experiment_id, folder, example, evidence)
    record = {
        **folder.metrics[best],
        "dataset": dataset,
        "device": folder.host["device"],
        "run_id": run_ids[best],
        "model_uri": model_uri,
    }
    registered = register_version(tracking, dataset, record, METRIC, alias)
    for key, value in {**_host_tags(folder), **evidence[best]}.items():
        client.set_model_version_tag(registered_model_name(dataset), registered.version, key, value)
    return ImportedRun(
        experiment,
        parent_id,
        run_ids,
        best,
        folder.host["device"],
        recorded,
        local_miou,
        registered,
        evidence[best][EVIDENCE_TAG],
    )
