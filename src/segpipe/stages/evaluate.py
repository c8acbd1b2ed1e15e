"""The evaluate stage: test-split metrics and inference speed of one trained architecture."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from segpipe import io
from segpipe.config import Params
from segpipe.data.cache import load_split
from segpipe.data.loader import BatchLoader
from segpipe.data.manifest import DatasetInfo
from segpipe.metrics import metrics_from_confusion
from segpipe.models import count_params_m
from segpipe.models.profile import gflops_per_image
from segpipe.models.registry import architecture_family
from segpipe.paths import ProjectPaths
from segpipe.training.checkpoint import load_checkpoint
from segpipe.training.device import describe_device, resolve_device
from segpipe.training.loop import evaluate_split


@torch.inference_mode()
def inference_images_per_second(model: nn.Module, images: torch.Tensor, runs: int) -> float:
    """Median throughput of ``model`` on one batch over ``runs`` timed passes after a warm-up pass."""
    model.eval()
    model(images)
    timings = []
    for _ in range(runs):
        if images.device.type == "cuda":
            torch.cuda.synchronize(images.device)
        start = time.perf_counter()
        model(images)
        if images.device.type == "cuda":
            torch.cuda.synchronize(images.device)
        timings.append(time.perf_counter() - start)
    return len(images) / statistics.median(timings)


def run_evaluate(params: Params, architecture: str, paths: ProjectPaths) -> dict[str, object]:
    """Write ``reports/metrics/<architecture>.json`` and add the test metrics to the training run."""
    device = resolve_device(params.train.device)
    model, meta = load_checkpoint(paths.checkpoint(architecture), device)
    run = io.read_json(paths.run_record(architecture))
    tracker = None
    if run["run_id"] and params.tracking.enabled:
        from segpipe.tracking.mlflow_tracking import resume_run

        tracker = resume_run(params.tracking, run["run_id"], architecture)  # fail before any work
    info = DatasetInfo.load(paths.prepared)
    if meta.class_names != info.class_names:
        raise ValueError(
            f"{paths.checkpoint(architecture)} was trained on classes {list(meta.class_names)} but the prepared "
            f"data has {list(info.class_names)}: re-run train for {architecture}"
        )
    loader = BatchLoader(load_split(paths.prepared, "test"), params.evaluate.batch_size, device)
    test_loss, matrix = evaluate_split(model, loader, info.num_classes, info.ignore_index)
    scores = metrics_from_confusion(matrix)
    speed_batch = next(iter(loader))[0]
    history = io.read_json(paths.history(architecture))
    record: dict[str, object] = {
        "architecture": architecture,
        "family": architecture_family(architecture),
        "dataset": info.name,
        **scores.as_dict("test_", info.class_names),
        "test_loss": test_loss,
        "params_m": round(count_params_m(model), 4),
        "gflops": round(gflops_per_image(model, *info.image_size), 4),
        "infer_img_per_s": round(inference_images_per_second(model, speed_batch, params.evaluate.speed_runs), 2),
        "best_epoch": meta.epoch,
        "best_val_miou": meta.val_miou,
        "train_seconds": round(float(history["train_seconds"]), 1),
        "device": describe_device(device),
        "confusion_matrix": matrix.tolist(),
        "run_id": run["run_id"],
        "model_uri": run["model_uri"],
    }
    io.write_json(paths.metrics(architecture), record)
    if tracker is not None:
        numeric = {k: v for k, v in record.items() if k.startswith("test_") and isinstance(v, float)}
        per_class = {f"test_iou_{name}": v for name, v in record["test_per_class_iou"].items() if v is not None}
        tracker.log_metrics({**numeric, **per_class, "infer_img_per_s": record["infer_img_per_s"]})
        tracker.log_artifact(str(paths.metrics(architecture)))
    return record
