"""The train stage: one architecture and task, trained on the cached train split, tracked as one MLflow run."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import uuid
from collections.abc import Iterator

import torch
from torch import nn

from segpipe import io
from segpipe.config import Params
from segpipe.data.cache import load_split
from segpipe.data.device_augment import DeviceAugmenter
from segpipe.data.loader import BatchLoader
from segpipe.data.manifest import DatasetInfo, data_version
from segpipe.models import build_model, build_reconstruction_model, count_params_m
from segpipe.models.zoo import architecture_family
from segpipe.paths import ProjectPaths
from segpipe.tasks import Task, TaskName
from segpipe.tasks.denoise import Corruption, DenoiseTask
from segpipe.tasks.segment import SegmentTask
from segpipe.training import distributed
from segpipe.training.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from segpipe.training.distributed import DistributedContext
from segpipe.training.device import (
    configure_backends,
    describe_device,
    resolve_channels_last,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from segpipe.training.loop import EpochRecord, LoopSettings, TrainResult, fit
from segpipe.training.state import StateStore
from segpipe.training.tracker import NullTracker, Tracker
from segpipe.data.validation import require_passed

IMAGE_CHANNELS = 3  # the prepared cache holds RGB images


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
def _tracking(
    params: Params, dataset: str, run_label: str, tags: dict[str, str], config_digest: str, run_key: str
) -> Iterator[Tracker]:
    """Run ``run_key`` (a new one, or the interrupted run being resumed), nested under this pipeline execution's
    parent run: logged live, or spooled for the compare stage to send (``tracking.live``); a no-op tracker when
    tracking is off."""
    if not params.tracking.enabled:
        yield NullTracker()
        return
    from segpipe.tracking.context import pipeline_key

    pipeline = pipeline_key(config_digest)
    if not params.tracking.live:
        from segpipe.tracking.deferred import spool_run  # no MLflow import: it starts once, in compare

        with spool_run(dataset, run_label, tags, pipeline, run_key) as tracker:
            yield tracker
        return
    from segpipe.tracking.mlflow_tracking import start_run  # MLflow only where it is used

    with start_run(params.tracking, dataset, run_label, tags, pipeline=pipeline, run_key=run_key) as tracker:
        yield tracker


def make_task(params: Params, task: TaskName, info: DatasetInfo, device: torch.device, rank: int = 0) -> Task:
    """The task object the loop trains with, from params and the prepared dataset."""
    if task == "segment":
        return SegmentTask(info.num_classes, info.ignore_index)
    settings = params.denoise
    generator = torch.Generator(device=device).manual_seed(params.train.seed + rank)  # own noise per rank
    return DenoiseTask(Corruption.from_params(settings), settings.loss, generator)


def _listed_architectures(params: Params, task: TaskName) -> list[str]:
    return params.train.architectures if task == "segment" else params.denoise.architectures


def run_name(architecture: str, task: TaskName) -> str:
    """MLflow run name: the architecture, prefixed with the task where it is not segmentation."""
    return architecture if task == "segment" else f"{task}-{architecture}"


def run_train(
    params: Params, architecture: str, paths: ProjectPaths, progress: bool = True, task: TaskName = "segment"
) -> TrainResult:
    """Train ``architecture`` for ``task``; write ``checkpoint``, ``history.json`` and ``run.json`` to its model dir.

    Under ``torchrun`` every rank runs this (data-parallel, ``train.batch_size`` per rank); the main rank alone
    writes files and tracks the run."""
    listed = _listed_architectures(params, task)
    if architecture not in listed:
        section = "train" if task == "segment" else task
        raise ValueError(f"{architecture!r} is not in {section}.architectures {listed}")
    require_passed(paths.validation_summary)
    with distributed.session(resolve_device(params.train.device)) as context:
        return _train(params, architecture, paths, progress, task, context)


def _train(params: Params, architecture: str, paths: ProjectPaths, progress: bool, task: TaskName,
           context: DistributedContext) -> TrainResult:
    info = DatasetInfo.load(paths.prepared)
    settings = params.train
    seed_everything(settings.seed)
    device = context.local_device(resolve_device(settings.device))
    configure_backends(device, settings.deterministic)
    options = settings.model_options(architecture)
    if task == "segment":
        model: nn.Module = build_model(architecture, info.num_classes, options=options)
        out_channels = info.num_classes
    else:
        model = build_reconstruction_model(architecture, IMAGE_CHANNELS, options)
        out_channels = IMAGE_CHANNELS
    model = model.to(device)
    check_image_size(architecture, model.output_stride, info.image_size)
    channels_last = resolve_channels_last(settings.memory_format, device)
    replica = distributed.wrap_model(model, context, settings.sync_batchnorm, channels_last)
    objective = make_task(params, task, info, device, context.rank)
    epochs = settings.epochs if task == "segment" else params.denoise.epochs

    augmenter = None
    if settings.augment.needs_library:
        from segpipe.data.augment import SampleAugmenter  # albumentations only where it is used

        augmenter = SampleAugmenter(settings.augment, info.ignore_index, settings.seed)
    device_augmenter = None
    if settings.augment.on_device and settings.augment.needs_transforms:
        device_augmenter = DeviceAugmenter(settings.augment, info.ignore_index, settings.seed, device)
    train_loader = BatchLoader(
        load_split(paths.prepared, "train"), settings.batch_size, device, shuffle=True,
        hflip=settings.augment.hflip, vflip=settings.augment.vflip, seed=settings.seed, drop_last=True,
        augmenter=augmenter, device_augmenter=device_augmenter, rank=context.rank, world_size=context.world_size,
    )
    val_loader = BatchLoader(load_split(paths.prepared, "val"), settings.batch_size, device)
    checkpoint_path = paths.checkpoint(architecture, task)
    family = architecture_family(architecture)
    data_hash = data_version(paths.prepared, paths.root / "dvc.lock")
    tags = {"architecture": architecture, "family": family, "task": task, "dataset": info.name,
            "data_hash": data_hash, "device": describe_device(device), "torch_version": torch.__version__}

    def on_best(best_model: nn.Module, record: EpochRecord) -> None:
        meta = CheckpointMeta(architecture, options, out_channels, info.class_names, info.image_size,
                              record.epoch, objective.monitor, record.validation[objective.monitor], task)
        save_checkpoint(checkpoint_path, best_model, meta)

    task_params: dict[str, object] = {}
    if task == "denoise":
        task_params = {"corruption": params.denoise.corruption, "corruption_level": params.denoise.level,
                       "loss": params.denoise.loss}
    label = run_name(architecture, task)
    config_digest = hashlib.sha256(f"{data_hash}:{params.model_dump_json()}".encode()).hexdigest()
    states = StateStore(paths.training_states(architecture, task), f"{config_digest}:{architecture}:{task}")
    if settings.resume == "never" and context.is_main:
        states.clear()
    # the main rank's state on every rank: other nodes need not share its disk
    resume = distributed.broadcast_from_main(states.latest() if context.is_main else None, context)
    run_key = (resume.run_key if resume else None) or uuid.uuid4().hex
    tracking = (_tracking(params, info.name, label, tags, config_digest, run_key) if context.is_main
                else contextlib.nullcontext(NullTracker()))
    with tracking as tracker:
        tracker.log_params({
            "arch": architecture, "family": family, "task": task, "dataset": info.name, "epochs": epochs,
            "upsample": options.get("upsample", "n/a"),
            "batch_size": settings.batch_size, "lr": settings.lr, "weight_decay": settings.weight_decay,
            "seed": settings.seed, "image_size": "x".join(map(str, info.image_size)),
            "params_m": round(count_params_m(model), 4), **task_params,
            **{f"model.{key}": value for key, value in options.items()},
        })
        loop = LoopSettings(
            epochs, settings.lr, settings.weight_decay, progress=progress, label=label,
            precision=resolve_precision(settings.precision, device),
            channels_last=channels_last,
            compile=settings.compile, checkpoint_every_steps=settings.checkpoint_every_steps,
        )
        result = fit(replica, train_loader, val_loader, objective, loop, tracker, on_best, states, resume, context)
        if not context.is_main:
            return result
        tracker.log_metrics({f"best_{result.monitor}": result.best_score, "best_epoch": result.best_epoch,
                             "train_seconds": result.seconds})
        best_model, _ = load_checkpoint(checkpoint_path, device)
        tracker.log_model(best_model, val_loader.images[:1].float().div(255).cpu().numpy())
    record = {"architecture": architecture, "task": task, "run_key": tracker.run_key,
              "tracking": "off" if tracker.run_key is None else "live" if params.tracking.live else "deferred"}

    io.write_json(paths.history(architecture, task), {
        "architecture": architecture, "task": task, "monitor": result.monitor, "best_epoch": result.best_epoch,
        f"best_{result.monitor}": result.best_score, "train_seconds": result.seconds,
        "device": describe_device(device),
        "epochs": [dataclasses.asdict(r) for r in result.history],
    })
    io.write_json(paths.run_record(architecture, task), record)
    states.clear()  # finished: nothing left to resume
    return result
