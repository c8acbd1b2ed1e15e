"""Bring a ``pipelines/gpu_run.py`` output folder into MLflow and the model registry.

The folder comes from another machine, so it is checked before use: run.json and metrics.json field by field
(types, known architecture names, sizes), model.json and its shards (plain names, sizes, sha256, safetensors only,
every tensor's dtype and shape against the rebuilt model). The best model is then re-evaluated on the CPU on the
same test images (from the same pack) and refused if its mIoU differs from the recorded one by more than
``tolerance``. Only then: one run per architecture in experiment ``segpipe-<dataset>`` (nested under one parent
run, tagged with the GPU's device string so that ``promote --require-gpu`` accepts it), and the best model
registered as the register stage does (``segpipe-<dataset>``, its tags, the alias).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
from torch import nn

from segpipe.config import TrackingParams
from segpipe.data.loader import BatchLoader
from segpipe.remote.bundle import apply_padding, open_pack
from segpipe.remote.run import FORMAT, LEADERBOARD_CSV, LEADERBOARD_MD, METRICS_FILE, RUN_FILE
from segpipe.remote.weights import META_FILE, WeightsMeta, load_model, read_meta
from segpipe.metrics import metrics_from_confusion
from segpipe.models import available_architectures
from segpipe.registry.versions import RegisteredVersion, register_version, registered_model_name
from segpipe.tasks.segment import evaluate_split
from segpipe.tracking.mlflow_tracking import MlflowTracker, experiment_name, tracking_uri
from segpipe.tracking.mlflow_tracking import experiment_id as mlflow_experiment_id  # the name is taken here

MIOU_TOLERANCE = 0.005
"""0.5 mIoU points: bf16 autocast / TF32 on the GPU against fp32 on the CPU stays well inside it."""
GPU_RUN_TAG = "segpipe.gpu_run"
METRIC = "test_miou"
_JSON_LIMIT = 16 * 2**20
_DEVICE = re.compile(r"^(?:cuda \((?P<gpu>.+)\)|cpu \(\d+ threads\))$")
_SCORES = ("test_miou", "test_dice", "test_pixel_acc", "test_mean_class_acc")
_SPEEDS = ("train_img_per_s", "bare_img_per_s", "loop_vs_bare", "infer_img_per_s", "params_m", "train_seconds")


class RunFolderError(ValueError):
    """A gpu_run output folder that is incomplete, malformed, inconsistent or already imported."""


class ReevaluationMismatch(ValueError):
    """The CPU re-evaluation of the exported model does not reproduce the recorded test mIoU."""


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _fraction(value: Any) -> bool:
    return _number(value) and 0.0 <= value <= 1.0


def _positive_int(value: Any) -> bool:
    return type(value) is int and value > 0


def _pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_positive_int(side) and side <= 8192 for side in value)


def _key(value: Any) -> bool:
    """A name that can become an MLflow metric, parameter or tag key."""
    return isinstance(value, str) and re.fullmatch(r"[a-z][a-z0-9_]{0,63}", value) is not None


def _text(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 500


class _Checker:
    """Field checks of one JSON file, each failure a RunFolderError naming the file and the field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, problem: str) -> RunFolderError:
        return RunFolderError(f"{self.path}: {problem}. Import the folder exactly as pipelines/gpu_run.py wrote it")

    def field(self, mapping: Mapping[str, Any], key: str, valid: Callable[[Any], bool], expected: str,
              where: str = "") -> Any:
        if key not in mapping:
            raise self.fail(f"{where}{key} is missing")
        value = mapping[key]
        if not valid(value):
            raise self.fail(f"{where}{key} is {str(value)[:80]!r}, expected {expected}")
        return value


def _read_json(path: Path) -> Any:
    if path.is_symlink() or not path.is_file():
        raise RunFolderError(f"{path} is missing (or not a plain file): copy the whole gpu_run output folder")
    if path.stat().st_size > _JSON_LIMIT:
        raise RunFolderError(f"{path} is over {_JSON_LIMIT // 2**20} MiB, too large for a gpu_run record")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFolderError(f"{path} is not JSON ({error})") from None


@dataclass(frozen=True)
class RunFolder:
    """A validated gpu_run output folder."""

    path: Path
    run: dict[str, Any]
    metrics: dict[str, dict[str, Any]]
    weights: WeightsMeta

    @property
    def best(self) -> str:
        return self.run["best"]["architecture"]

    @property
    def device(self) -> str:
        return self.run["environment"]["device"]

    @property
    def dataset(self) -> str:
        return self.run["data"]["dataset"]


def _check_run(path: Path, run: Any) -> dict[str, Any]:
    check = _Checker(path)
    if not isinstance(run, dict) or run.get("format") != FORMAT:
        raise check.fail(f"format is not {FORMAT}")
    check.field(run, "run_id", lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{32}", v), "32 hex digits")
    check.field(run, "created", _text, "a date")
    env = check.field(run, "environment", lambda v: isinstance(v, dict), "a mapping")
    device = check.field(env, "device", lambda v: isinstance(v, str) and _DEVICE.match(v),
                         "'cuda (<GPU name>)' or 'cpu (<n> threads)'", "environment.")
    gpu = _DEVICE.match(device)["gpu"]
    check.field(env, "gpu_name", lambda v: v == gpu, f"{gpu!r}, the name in environment.device", "environment.")
    for key in ("torch_version", "python_version"):
        check.field(env, key, _text, "a version", "environment.")
    data = check.field(run, "data", lambda v: isinstance(v, dict), "a mapping")
    check.field(data, "sha256", lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v), "64 hex digits", "data.")
    check.field(data, "dataset", lambda v: isinstance(v, str) and re.fullmatch(r"[a-z0-9_]+", v), "a dataset name", "data.")
    check.field(data, "class_names", lambda v: isinstance(v, list) and v and all(_text(n) for n in v), "names", "data.")
    check.field(data, "ignore_index", lambda v: type(v) is int and 0 <= v <= 255, "0..255", "data.")
    check.field(data, "image_size", _pair, "[height, width]", "data.")
    check.field(data, "input_size", _pair, "[height, width]", "data.")
    check.field(data, "padding", lambda v: isinstance(v, dict), "a mapping", "data.")
    check.field(data, "split_sizes", lambda v: isinstance(v, dict) and _positive_int(v.get("test")),
                "a mapping with the test count", "data.")
    check.field(data, "max_per_split", lambda v: v is None or _positive_int(v), "null or a count", "data.")
    known = set(available_architectures())
    names = check.field(run, "architectures", lambda v: isinstance(v, list) and v and len(set(v)) == len(v)
                        and set(v) <= known, f"distinct names among {sorted(known)}")
    check.field(run, "failures", lambda v: isinstance(v, dict) and set(v) <= set(names)
                and all(isinstance(e, str) for e in v.values()), "architecture -> error text")
    check.field(run, "timings", lambda v: isinstance(v, dict) and set(v) <= set(names) and all(
        isinstance(t, dict) and all(_key(k) and _number(s) for k, s in t.items()) for t in v.values()),
        "architecture -> {name: seconds}")
    best = check.field(run, "best", lambda v: isinstance(v, dict), "the best architecture (no architecture finished?)")
    check.field(best, "architecture", lambda v: v in names, "one of the run's architectures", "best.")
    check.field(best, "test_miou", _fraction, "a number in [0, 1]", "best.")
    return run


def _check_metrics(path: Path, metrics: Any, run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    check = _Checker(path)
    best = run["best"]["architecture"]
    if not isinstance(metrics, dict) or not set(metrics) <= set(run["architectures"]) or best not in metrics:
        raise check.fail("it must map the run's architectures, the best one included, to their records")
    classes = set(run["data"]["class_names"])
    for name, record in metrics.items():
        where = f"{name}."
        if not isinstance(record, dict):
            raise check.fail(f"{name} is not a record")
        check.field(record, "architecture", lambda v, name=name: v == name, repr(name), where)
        check.field(record, "family", _text, "a family", where)
        check.field(record, "options", lambda v: isinstance(v, dict) and all(map(_key, v)), "a mapping", where)
        for key in _SCORES:
            check.field(record, key, _fraction, "a number in [0, 1]", where)
        check.field(record, "test_per_class_iou", lambda v: isinstance(v, dict) and set(v) == classes
                    and all(x is None or _fraction(x) for x in v.values()), "class name -> IoU or null", where)
        for key in _SPEEDS:
            check.field(record, key, lambda v: _number(v) and v > 0, "a positive number", where)
        check.field(record, "best_epoch", _positive_int, "an epoch number", where)
        check.field(record, "epochs", lambda v, r=record: _positive_int(v) and v >= r["best_epoch"],
                    "the epoch count", where)
        check.field(record, "history", lambda v: isinstance(v, list) and len(v) <= 100_000 and all(
            isinstance(e, dict) and _positive_int(e.get("epoch")) and _number(e.get("train_loss"))
            and _number(e.get("lr")) and isinstance(e.get("validation"), dict)
            and all(_key(k) and _number(x) for k, x in e["validation"].items()) for e in v), "epoch records", where)
    if metrics[best]["test_miou"] != run["best"]["test_miou"]:
        raise check.fail(f"the best architecture's test_miou differs from {RUN_FILE}'s best.test_miou")
    return metrics


def read_run_folder(path: Path) -> RunFolder:
    """Validate ``run.json``, ``metrics.json`` and ``model.json`` of a gpu_run output folder (not the shards yet)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder: give the output folder of pipelines/gpu_run.py")
    run = _check_run(path / RUN_FILE, _read_json(path / RUN_FILE))
    metrics = _check_metrics(path / METRICS_FILE, _read_json(path / METRICS_FILE), run)
    weights = read_meta(path)
    data = run["data"]
    expected = {"architecture": run["best"]["architecture"], "class_names": tuple(data["class_names"]),
                "ignore_index": data["ignore_index"], "image_size": tuple(data["image_size"]),
                "input_size": tuple(data["input_size"]), "padding": data["padding"],
                "options": metrics[run["best"]["architecture"]]["options"]}
    for key, value in expected.items():
        found = getattr(weights, key)
        if (found.as_dict() if key == "padding" else found) != value:
            raise RunFolderError(f"{path / META_FILE}: {key} is {found!r} but {RUN_FILE} / "
                                 f"{METRICS_FILE} say {value!r}: the files are from different runs")
    return RunFolder(path, run, metrics, weights)


def reevaluate(folder: RunFolder, pack_path: Path) -> tuple[nn.Module, torch.Tensor, float]:
    """The exported model (checked shard by shard), one padded test image, and its test mIoU on the CPU, on the
    images the run used (same pack, same subset, size and padding)."""
    data, weights = folder.run["data"], folder.weights
    pack = open_pack(pack_path)
    if pack.info.sha256 != data["sha256"]:
        raise RunFolderError(f"{pack_path} (sha256 {pack.info.sha256[:12]}...) is not the pack the run used "
                             f"({data['sha256'][:12]}...): re-evaluating on other data proves nothing; use that pack")
    arrays = apply_padding(pack.split("test", data["max_per_split"], weights.image_size), weights.padding,
                           weights.ignore_index)
    if len(arrays) != data["split_sizes"]["test"]:
        raise RunFolderError(f"{folder.path / RUN_FILE} says {data['split_sizes']['test']} test images, the pack "
                             f"gives {len(arrays)}: the run and the pack do not belong together")
    model, _ = load_model(folder.path)
    loader = BatchLoader(arrays, 8, torch.device("cpu"))
    _, matrix = evaluate_split(model, loader, weights.num_classes, weights.ignore_index)
    return model, loader.images[:1].float().div(255), metrics_from_confusion(matrix).miou


@dataclass(frozen=True)
class ImportedRun:
    experiment: str
    parent_run_id: str
    run_ids: dict[str, str]
    architecture: str
    device: str
    recorded_miou: float
    cpu_miou: float
    registered: RegisteredVersion

    def summary(self) -> str:
        """What the ``segpipe import-run`` command prints."""
        return "\n".join([
            f"imported {len(self.run_ids)} runs into experiment {self.experiment} (parent run {self.parent_run_id})",
            f"CPU re-evaluation of {self.architecture}: test mIoU {self.cpu_miou:.4f}, recorded on {self.device} "
            f"{self.recorded_miou:.4f} (difference {abs(self.cpu_miou - self.recorded_miou):.4f})",
            f"registered {self.registered.name} version {self.registered.version} as @{self.registered.alias}",
        ])


def _run_params(folder: RunFolder, name: str) -> dict[str, object]:
    record, settings, data = folder.metrics[name], folder.run["settings"], folder.run["data"]
    return {
        "arch": name, "family": record["family"], "task": "segment", "dataset": folder.dataset,
        "epochs": record["epochs"], "upsample": record["options"].get("upsample", "n/a"),
        "batch_size": settings.get("batch_size"), "lr": settings.get("lr"),
        "weight_decay": settings.get("weight_decay"), "seed": settings.get("seed"),
        "image_size": "x".join(map(str, data["image_size"])), "input_size": "x".join(map(str, folder.weights.input_size)),
        "precision": record.get("precision"), "channels_last": record.get("channels_last"),
        "params_m": round(record["params_m"], 4), **{f"model.{key}": value for key, value in record["options"].items()},
    }


def _final_metrics(record: dict[str, Any]) -> dict[str, float]:
    metrics = {key: record[key] for key in (*_SCORES, *_SPEEDS, "best_epoch", "epochs")}
    metrics["best_val_miou"] = record.get("best_val_miou", 0.0)
    if _number(record.get("test_loss")):
        metrics["test_loss"] = record["test_loss"]
    if _number(record.get("peak_memory_mb")):
        metrics["peak_memory_mb"] = record["peak_memory_mb"]
    metrics.update({f"test_iou_{cls}": iou for cls, iou in record["test_per_class_iou"].items() if iou is not None})
    return metrics


def import_run(run_dir: Path, pack: Path, tracking: TrackingParams, alias: str = "challenger",
               tolerance: float = MIOU_TOLERANCE) -> ImportedRun:
    """Validate ``run_dir``, re-evaluate its best model on the CPU with ``pack``, then log one MLflow run per
    architecture and register the best model with ``alias`` (see the module docstring). Nothing is logged or
    registered when a check fails."""
    folder = read_run_folder(run_dir)
    run, env = folder.run, folder.run["environment"]
    mlflow.set_tracking_uri(tracking_uri(tracking))
    client = mlflow.MlflowClient()
    experiment = experiment_name(folder.dataset)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        earlier = client.search_runs([found.experiment_id], filter_string=f"tags.`{GPU_RUN_TAG}` = '{run['run_id']}'",
                                     max_results=1)
        if earlier:
            raise RunFolderError(f"{folder.path}: gpu run {run['run_id']} is already imported (run "
                                 f"{earlier[0].info.run_id} in {experiment}); nothing was imported again")

    model, example, cpu_miou = reevaluate(folder, pack)
    recorded = folder.metrics[folder.best][METRIC]
    if abs(cpu_miou - recorded) > tolerance:
        raise ReevaluationMismatch(
            f"{folder.path}: {folder.best}'s test mIoU re-evaluated on the CPU is {cpu_miou:.4f}, but "
            f"{METRICS_FILE} records {recorded:.4f} (difference {abs(cpu_miou - recorded):.4f} > {tolerance}); "
            f"nothing was registered. The record or the weights were altered, or do not belong together")

    experiment_id = mlflow_experiment_id(client, experiment)
    shared_tags = {GPU_RUN_TAG: run["run_id"], "dataset": folder.dataset, "data_hash": run["data"]["sha256"][:20],
                   "device": folder.device, "gpu_name": env["gpu_name"] or "none",
                   "torch_version": env["torch_version"], "python_version": env["python_version"]}
    parent = client.create_run(experiment_id, run_name=f"gpu_run {run['created']} on {folder.device}", tags=shared_tags)
    parent_id = parent.info.run_id
    parent_tracker = MlflowTracker(run_id=parent_id, client=client)
    parent_tracker.log_params({key: value for key, value in run["settings"].items() if key != "model_options"})
    for name in (RUN_FILE, METRICS_FILE, LEADERBOARD_CSV, LEADERBOARD_MD):
        if (folder.path / name).is_file():
            parent_tracker.log_artifact(str(folder.path / name))
    run_ids: dict[str, str] = {}
    model_uri = None
    for name, record in folder.metrics.items():
        timings = {f"timing.{key}": f"{value:.2f}" for key, value in run["timings"].get(name, {}).items()}
        created = client.create_run(experiment_id, run_name=name, tags={
            **shared_tags, **timings, "architecture": name, "family": record["family"], "task": "segment",
            "mlflow.parentRunId": parent_id})
        run_ids[name] = created.info.run_id
        tracker = MlflowTracker(run_id=created.info.run_id, client=client)
        tracker.log_params(_run_params(folder, name))
        for epoch in record["history"]:
            tracker.log_metrics({"train_loss": epoch["train_loss"], "lr": epoch["lr"], **epoch["validation"]},
                                step=epoch["epoch"])
        tracker.log_metrics(_final_metrics(record))
        if name == folder.best:
            tracker.log_metrics({"cpu_test_miou": cpu_miou})
            tracker.log_artifact(str(folder.path / META_FILE))
            model_uri = tracker.log_model(model, example.numpy())
        client.set_terminated(created.info.run_id, "FINISHED")
    client.set_terminated(parent_id, "FINISHED")

    best = {**folder.metrics[folder.best], "dataset": folder.dataset, "device": folder.device,
            "run_id": run_ids[folder.best], "model_uri": model_uri}
    registered = register_version(tracking, folder.dataset, best, METRIC, alias)
    name = registered_model_name(folder.dataset)
    for key, value in {"gpu_name": env["gpu_name"] or "none", "torch_version": env["torch_version"],
                       "cpu_test_miou": f"{cpu_miou:.6f}", GPU_RUN_TAG: run["run_id"]}.items():
        client.set_model_version_tag(name, registered.version, key, value)
    return ImportedRun(experiment, parent_id, run_ids, folder.best, folder.device, recorded, cpu_miou, registered)
