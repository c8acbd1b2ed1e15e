"""The train stage: one architecture, trained on the cached train split, tracked as one MLflow run."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
from torch import nn

from segpipe import io
from segpipe.config import Params
from segpipe.data.cache import load_split
from segpipe.data.loader import BatchLoader
from segpipe.data.manifest import DatasetInfo
from segpipe.models import build_model, count_params_m
from segpipe.models.registry import architecture_family
from segpipe.paths import ProjectPaths
from segpipe.training.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from segpipe.training.device import describe_device, resolve_device, seed_everything
from segpipe.training.loop import EpochRecord, LoopSettings, TrainResult, fit
from segpipe.training.tracker import NullTracker, Tracker
from segpipe.validation import require_passed


def check_image_size(architecture: str, output_stride: int, image_size: tuple[int, int]) -> None:
    """Fail before training when the prepared size does not suit the model's output stride."""
    if all(side % output_stride == 0 for side in image_size):
        return
    suggestion = [max(output_stride, round(side / output_stride) * output_stride) for side in image_size]
    raise ValueError(
        f"{architecture} needs image sides divisible by {output_stride}, but prepare.image_size is "
        f"{list(image_size)}; set prepare.image_size to e.g. {suggestion}"
    )


@contextlib.contextmanager
def _tracking(params: Params, dataset: str, architecture: str, tags: dict[str, str]) -> Iterator[Tracker]:
    if not params.tracking.enabled:
        yield NullTracker()
        return
    from segpipe.tracking.mlflow_tracking import start_run  # MLflow only where tracking is on

    with start_run(params.tracking, dataset, architecture, tags) as tracker:
        yield tracker


def run_train(params: Params, architecture: str, paths: ProjectPaths, progress: bool = True) -> TrainResult:
    """Train ``architecture``; write ``models/<architecture>/{model.pt,history.json,run.json}``."""
    if architecture not in params.train.architectures:
        raise ValueError(f"{architecture!r} is not in train.architectures {params.train.architectures}")
    require_passed(paths.validation_summary)
    info = DatasetInfo.load(paths.prepared)
    settings = params.train
    seed_everything(settings.seed)
    device = resolve_device(settings.device)
    options = settings.model_options(architecture)
    model = build_model(architecture, info.num_classes, options=options).to(device)
    check_image_size(architecture, model.output_stride, info.image_size)

    train_loader = BatchLoader(
        load_split(paths.prepared, "train"), settings.batch_size, device, shuffle=True,
        hflip=settings.augment.hflip, vflip=settings.augment.vflip, seed=settings.seed, drop_last=True,
    )
    val_loader = BatchLoader(load_split(paths.prepared, "val"), settings.batch_size, device)
    checkpoint_path = paths.checkpoint(architecture)
    family = architecture_family(architecture)
    tags = {"architecture": architecture, "family": family, "dataset": info.name,
            "device": describe_device(device), "torch_version": torch.__version__}

    def on_best(best_model: nn.Module, record: EpochRecord) -> None:
        meta = CheckpointMeta(architecture, options, info.num_classes, info.class_names, info.image_size,
                              record.epoch, record.val_miou)
        save_checkpoint(checkpoint_path, best_model, meta)

    with _tracking(params, info.name, architecture, tags) as tracker:
        tracker.log_params({
            "arch": architecture, "family": family, "dataset": info.name, "epochs": settings.epochs,
            "batch_size": settings.batch_size, "lr": settings.lr, "weight_decay": settings.weight_decay,
            "seed": settings.seed, "image_size": "x".join(map(str, info.image_size)),
            "params_m": round(count_params_m(model), 4),
            **{f"model.{key}": value for key, value in options.items()},
        })
        loop = LoopSettings(settings.epochs, settings.lr, settings.weight_decay, info.num_classes,
                            info.ignore_index, progress=progress, label=architecture)
        result = fit(model, train_loader, val_loader, loop, tracker, on_best)
        tracker.log_metrics({"best_val_miou": result.best_val_miou, "best_epoch": result.best_epoch,
                             "train_seconds": result.seconds})
        best_model, _ = load_checkpoint(checkpoint_path, device)
        example = val_loader.images[:1].float().div(255).cpu().numpy()
        record = {"architecture": architecture, "run_id": tracker.run_id,
                  "model_uri": tracker.log_model(best_model, example)}

    io.write_json(paths.history(architecture), {
        "architecture": architecture, "best_epoch": result.best_epoch, "best_val_miou": result.best_val_miou,
        "train_seconds": result.seconds, "device": describe_device(device),
        "epochs": [dataclasses.asdict(r) for r in result.history],
    })
    io.write_json(paths.run_record(architecture), record)
    return result
