"""The evaluate stage: test-split metrics and inference speed of one trained model (segmenter or denoiser)."""

from __future__ import annotations

import csv
import io as io_text
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segpipe import io
from segpipe.config import Params
from segpipe.data.cache import load_split
from segpipe.data.loader import Loader, make_loader
from segpipe.data.manifest import DatasetInfo
from segpipe.figures import prediction_grid_png
from segpipe.inference import InferenceSettings
from segpipe.metrics import SegmentationMetrics, metrics_from_confusion
from segpipe.models import count_params_m
from segpipe.models.profile import gflops_per_image
from segpipe.models.zoo import architecture_family
from segpipe.paths import ProjectPaths
from segpipe.tasks import TaskName
from segpipe.tasks.denoise import Corruption, evaluation_generator, reconstruction_scores
from segpipe.tasks.segment import evaluate_split
from segpipe.training.checkpoint import CheckpointMeta, load_checkpoint
from segpipe.training.device import ComputeMode, describe_device, resolve_device
from segpipe.training.throughput import inference_images_per_second

PER_CLASS_IOU = "test_iou_"
"""Prefix of the per-class test IoU keys of a segmenter's metrics record: ``test_iou_<class name>``."""


@dataclass
class TrainedModel:
    """A trained model with everything evaluate needs about it."""

    model: nn.Module
    meta: CheckpointMeta
    run: dict[str, object]
    info: DatasetInfo
    device: torch.device
    mode: ComputeMode
    """Precision and memory format evaluation runs in (``train.precision`` / ``train.memory_format``)."""


def load_trained(params: Params, paths: ProjectPaths, architecture: str, task: TaskName) -> TrainedModel:
    """Checkpoint and run record, checked against the prepared data before any work."""
    device = resolve_device(params.train.device)
    model, meta = load_checkpoint(paths.checkpoint(architecture, task), device)
    mode = ComputeMode.resolve(device, params.train.precision, params.train.memory_format)
    mode.prepare(model)
    run = io.read_json(paths.run_record(architecture, task))
    info = DatasetInfo.load(paths.prepared)
    expected = info.training_size(params.train.crop)
    if meta.class_names != info.class_names or meta.image_size != expected:
        shown = "mixed sizes" if expected is None else list(expected)
        raise ValueError(
            f"{paths.checkpoint(architecture, task)} was trained on classes {list(meta.class_names)} at "
            f"{list(meta.image_size)} but the prepared data and train.crop give {list(info.class_names)} at "
            f"{shown}: re-run the train stage for {architecture}"
        )
    return TrainedModel(model, meta, run, info, device, mode)


def evaluation_loader(params: Params, paths: ProjectPaths, device: torch.device) -> Loader:
    """The test split in ``evaluate.batch_size`` batches (of one image size each), in memory or streamed."""
    return make_loader(load_split(paths.prepared, "test"), params.data, params.evaluate.batch_size, device)


def _model_figures(
    params: Params,
    trained: TrainedModel,
    speed_batch: torch.Tensor,
    paths: ProjectPaths,
    architecture: str,
    task: TaskName,
) -> dict[str, object]:
    """Size, cost, speed and provenance fields shared by every task's metrics record."""
    history = io.read_json(paths.history(architecture, task))
    mode = trained.mode
    return {
        "params_m": round(count_params_m(trained.model), 4),
        "gflops": round(gflops_per_image(trained.model, *trained.meta.image_size), 4),
        "infer_img_per_s": round(
            inference_images_per_second(
                trained.model, speed_batch, params.evaluate.speed_runs, mode.precision, mode.channels_last
            ),
            2,
        ),
        "best_epoch": trained.meta.epoch,
        f"best_{trained.meta.monitor}": trained.meta.score,
        "train_seconds": round(float(history["train_seconds"]), 1),
        "device": describe_device(trained.device),
        "precision": mode.precision,
        "memory_format": mode.memory_format,
        "train_precision": history.get("precision", "fp32"),
        "run_key": trained.run.get("run_key"),  # the track stage finds the MLflow run by it
    }


def scalar_scores(scores: SegmentationMetrics, class_names: tuple[str, ...]) -> dict[str, float | None]:
    """Test scores as scalars (a DVC metrics file holds no lists): the means, and ``test_iou_<class>`` per
    class (None for a class absent from both truth and prediction)."""
    flat = scores.as_dict("test_", class_names)
    per_class = flat.pop("test_per_class_iou")
    return {**flat, **{f"{PER_CLASS_IOU}{name}": value for name, value in per_class.items()}}


def confusion_csv(matrix: np.ndarray, class_names: tuple[str, ...]) -> str:
    """The confusion matrix as CSV: one row per true class, one column per predicted class, both named."""
    text = io_text.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["truth", *class_names])
    writer.writerows([name, *row] for name, row in zip(class_names, matrix.tolist(), strict=True))
    return text.getvalue()


def run_evaluate(params: Params, architecture: str, paths: ProjectPaths) -> dict[str, object]:
    """Write ``reports/metrics/<architecture>.json`` (scalars), ``reports/confusion/<architecture>.csv`` and
    ``reports/plots/predictions/<architecture>.png`` (the track stage adds them to the training's MLflow
    run)."""
    trained = load_trained(params, paths, architecture, "segment")
    info = trained.info
    loader = evaluation_loader(params, paths, trained.device)
    inference = InferenceSettings.from_params(params.evaluate)
    with trained.mode.autocast():
        test_loss, matrix = evaluate_split(
            trained.model, loader, info.num_classes, info.ignore_index, inference
        )
    scores = metrics_from_confusion(matrix)
    first_images, first_masks = next(iter(loader))
    record: dict[str, object] = {
        "architecture": architecture,
        "task": "segment",
        "family": architecture_family(architecture),
        "dataset": info.name,
        **scalar_scores(scores, info.class_names),
        "test_loss": test_loss,
        "inference": inference.describe(),
        **_model_figures(params, trained, first_images, paths, architecture, "segment"),
    }
    io.write_json(paths.metrics(architecture), record)
    io.write_text(paths.confusion_matrix(architecture), confusion_csv(matrix, info.class_names))
    prediction_grid_png(
        trained.model,
        first_images[:6],
        first_masks[:6],
        info.num_classes,
        info.ignore_index,
        paths.prediction_grid(architecture),
    )
    return record


def _to_uint8_rows(*columns: torch.Tensor) -> np.ndarray:
    """Stack image batches side by side per sample: rows of [column 1 | column 2 | ...] as HWC uint8."""
    rows = [torch.cat([column[i] for column in columns], dim=-1) for i in range(len(columns[0]))]
    grid = torch.cat(rows, dim=-2).clamp(0, 1).mul(255).round().byte()
    return grid.permute(1, 2, 0).cpu().numpy()


@torch.no_grad()
def save_denoise_examples(
    model: nn.Module, images: torch.Tensor, corruption: Corruption, target: Path
) -> None:
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
    loader = evaluation_loader(params, paths, trained.device)
    corruption = Corruption.from_params(params.denoise)
    with trained.mode.autocast():
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
