"""The evaluate stage: test-split metrics and inference speed of one trained model (segmenter or denoiser)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segpipe import io
from segpipe.config import Params
from segpipe.data.cache import load_split
from segpipe.data.loader import BatchLoader
from segpipe.data.manifest import DatasetInfo
from segpipe.figures import prediction_grid_png
from segpipe.metrics import metrics_from_confusion
from segpipe.models import count_params_m
from segpipe.models.profile import gflops_per_image
from segpipe.models.zoo import architecture_family
from segpipe.paths import ProjectPaths
from segpipe.tasks import TaskName
from segpipe.tasks.denoise import Corruption, evaluation_generator, reconstruction_scores
from segpipe.tasks.segment import evaluate_split
from segpipe.training.checkpoint import CheckpointMeta, load_checkpoint
from segpipe.training.device import describe_device, resolve_device


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


@dataclass
class TrainedModel:
    """A trained model with everything evaluate needs about it."""

    model: nn.Module
    meta: CheckpointMeta
    run: dict[str, object]
    info: DatasetInfo
    device: torch.device


def load_trained(params: Params, paths: ProjectPaths, architecture: str, task: TaskName) -> TrainedModel:
    """Checkpoint and run record, checked against the prepared data before any work."""
    device = resolve_device(params.train.device)
    model, meta = load_checkpoint(paths.checkpoint(architecture, task), device)
    run = io.read_json(paths.run_record(architecture, task))
    info = DatasetInfo.load(paths.prepared)
    if meta.class_names != info.class_names or meta.image_size != info.image_size:
        raise ValueError(
            f"{paths.checkpoint(architecture, task)} was trained on classes {list(meta.class_names)} at "
            f"{list(meta.image_size)} but the prepared data has {list(info.class_names)} at {list(info.image_size)}: "
            f"re-run the train stage for {architecture}"
        )
    return TrainedModel(model, meta, run, info, device)


def _model_figures(params: Params, trained: TrainedModel, speed_batch: torch.Tensor, paths: ProjectPaths,
                   architecture: str, task: TaskName) -> dict[str, object]:
    """Size, cost, speed and provenance fields shared by every task's metrics record."""
    history = io.read_json(paths.history(architecture, task))
    return {
        "params_m": round(count_params_m(trained.model), 4),
        "gflops": round(gflops_per_image(trained.model, *trained.info.image_size), 4),
        "infer_img_per_s": round(inference_images_per_second(trained.model, speed_batch, params.evaluate.speed_runs), 2),
        "best_epoch": trained.meta.epoch,
        f"best_{trained.meta.monitor}": trained.meta.score,
        "train_seconds": round(float(history["train_seconds"]), 1),
        "device": describe_device(trained.device),
        "run_key": trained.run.get("run_key"),  # the compare stage finds the MLflow run by it
    }


def run_evaluate(params: Params, architecture: str, paths: ProjectPaths) -> dict[str, object]:
    """Write ``reports/metrics/<architecture>.json`` and ``reports/plots/predictions/<architecture>.png``
    (the compare stage adds both, with more figures, to the training's MLflow run)."""
    trained = load_trained(params, paths, architecture, "segment")
    info = trained.info
    loader = BatchLoader(load_split(paths.prepared, "test"), params.evaluate.batch_size, trained.device)
    test_loss, matrix = evaluate_split(trained.model, loader, info.num_classes, info.ignore_index)
    scores = metrics_from_confusion(matrix)
    first_images, first_masks = next(iter(loader))
    record: dict[str, object] = {
        "architecture": architecture,
        "task": "segment",
        "family": architecture_family(architecture),
        "dataset": info.name,
        **scores.as_dict("test_", info.class_names),
        "test_loss": test_loss,
        **_model_figures(params, trained, first_images, paths, architecture, "segment"),
        "confusion_matrix": matrix.tolist(),
    }
    io.write_json(paths.metrics(architecture), record)
    prediction_grid_png(trained.model, first_images[:6], first_masks[:6], info.num_classes, info.ignore_index,
                        paths.prediction_grid(architecture))
    return record


def _to_uint8_rows(*columns: torch.Tensor) -> np.ndarray:
    """Stack image batches side by side per sample: rows of [column 1 | column 2 | ...] as HWC uint8."""
    rows = [torch.cat([column[i] for column in columns], dim=-1) for i in range(len(columns[0]))]
    grid = torch.cat(rows, dim=-2).clamp(0, 1).mul(255).round().byte()
    return grid.permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def save_denoise_examples(model: nn.Module, images: torch.Tensor, corruption: Corruption, target: Path) -> None:
    """PNG grid, one sample per row: corrupted input | model output | clean image (2× enlarged)."""
    from PIL import Image

    noisy = corruption.apply(images, evaluation_generator(images.device))
    grid = Image.fromarray(_to_uint8_rows(noisy, model(noisy), images))
    grid = grid.resize((grid.width * 2, grid.height * 2), Image.Resampling.NEAREST)
    io.write_with(target, lambda tmp: grid.save(tmp, format="PNG"))


def run_evaluate_denoise(params: Params, architecture: str, paths: ProjectPaths) -> dict[str, object]:
    """Write ``reports/metrics/denoise/<architecture>.json`` (PSNR, SSIM on the corrupted test split, and the
    corrupted input's own scores as the reference) and ``reports/plots/denoise/<architecture>.png``."""
    trained = load_trained(params, paths, architecture, "denoise")
    loader = BatchLoader(load_split(paths.prepared, "test"), params.evaluate.batch_size, trained.device)
    corruption = Corruption.from_params(params.denoise)
    scores = reconstruction_scores(trained.model, loader, corruption, params.denoise.loss)
    reference = reconstruction_scores(None, loader, corruption, params.denoise.loss)
    first_batch = next(iter(loader))[0]
    record: dict[str, object] = {
        "architecture": architecture,
        "task": "denoise",
        "family": architecture_family(architecture),
        "dataset": trained.info.name,
        "corruption": corruption.describe(),
        "loss_kind": params.denoise.loss,
        **{f"test_{key}": value for key, value in scores.items()},
        **{f"input_{key}": value for key, value in reference.items() if key != "loss"},
        **_model_figures(params, trained, first_batch, paths, architecture, "denoise"),
    }
    io.write_json(paths.metrics(architecture, "denoise"), record)
    examples = paths.denoise_examples(architecture)
    save_denoise_examples(trained.model, first_batch[:4], corruption, examples)
    return record
