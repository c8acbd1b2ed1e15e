"""The train stage: one architecture and task, trained on the cached train split, tracked as one MLflow run.

:func:`run_train` builds everything from params (model, task, loaders, augmenters, state store, tracking)
and hands it to :class:`~segpipe.training.trainer.Trainer`."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from segpipe import io
from segpipe.config import ConfigError, Params
from segpipe.data.cache import load_split
from segpipe.data.device_augment import DeviceAugmenter
from segpipe.data.loader import Loader, make_loader
from segpipe.data.manifest import DatasetInfo, data_version
from segpipe.data.validation import require_passed
from segpipe.models import build_model, build_reconstruction_model, count_params_m
from segpipe.models.zoo import architecture_family
from segpipe.paths import ProjectPaths
from segpipe.tasks import Task, TaskName
from segpipe.tasks.denoise import Corruption, DenoiseTask
from segpipe.tasks.losses import segmentation_loss
from segpipe.tasks.segment import SegmentTask
from segpipe.tracking.dataset import log_training_data
from segpipe.tracking.system_metrics import system_metrics
from segpipe.training import distributed
from segpipe.training.checkpoint import CheckpointMeta, save_checkpoint
from segpipe.training.curves import write_curves
from segpipe.training.device import (
    ComputeMode,
    configure_backends,
    describe_device,
    resolve_device,
    seed_everything,
)
from segpipe.training.distributed import DistributedContext
from segpipe.training.initialise import initialise_model
from segpipe.training.state import SavedState, StateStore
from segpipe.training.tracker import NullTracker, Tracker
from segpipe.training.trainer import EpochRecord, Trainer, TrainerSettings, TrainResult

IMAGE_CHANNELS = 3  # the prepared cache holds RGB images


def check_image_size(
    architecture: str,
    output_stride: int,
    image_size: tuple[int, int] | None,
    crop: tuple[int, int] | None = None,
) -> None:
    """Fail before training when the training size (``train.crop``, else the prepared size) does not suit
    the model's output stride, or when images of different sizes are to be trained on without a crop."""
    if crop is None and image_size is None:
        raise ValueError(
            "the prepared training images have different sizes (prepare.image_size: null): set "
            "train.crop: [height, width] to train on crops of one size"
        )
    size, key = (crop, "train.crop") if crop is not None else (image_size, "prepare.image_size")
    if all(side % output_stride == 0 for side in size):
        return
    suggestion = [max(output_stride, round(side / output_stride) * output_stride) for side in size]
    raise ValueError(
        f"{architecture} needs image sides divisible by {output_stride}, but {key} is "
        f"{list(size)}; set {key} to e.g. {suggestion}"
    )


@contextlib.contextmanager
def _tracking(
    params: Params, dataset: str, run_label: str, tags: dict[str, str], config_digest: str, run_key: str
) -> Iterator[Tracker]:
    """Run ``run_key`` (a new one, or the interrupted run being resumed), nested under this pipeline
    execution's parent run: logged live, or spooled for the compare stage to send (``tracking.live``); a no-op
    tracker when tracking is off."""
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


def resolve_class_weights(params: Params, info: DatasetInfo, paths: ProjectPaths) -> list[float] | None:
    """``train.loss.class_weights`` as one weight per class (None: unweighted), checked against the prepared
    dataset's classes; frequency schemes are computed from the training split's pixel counts."""
    setting = params.train.loss.class_weights
    if setting == "none":
        return None
    if isinstance(setting, str):
        from segpipe.tasks.class_weights import class_weights_for  # pandas only where it is used

        return class_weights_for(setting, paths.prepared, info.num_classes)
    if len(setting) != info.num_classes:
        raise ConfigError(
            f"params.yaml: train.loss.class_weights lists {len(setting)} weight(s) but the prepared dataset "
            f"has {info.num_classes} classes {list(info.class_names)}; give one weight per class, in order"
        )
    return list(setting)


def make_task(
    params: Params,
    task: TaskName,
    info: DatasetInfo,
    device: torch.device,
    rank: int = 0,
    class_weights: list[float] | None = None,
) -> Task:
    """The task object the trainer trains with, from params and the prepared dataset."""
    if task == "segment":
        loss = params.train.loss
        criterion = segmentation_loss(loss.terms, loss.term_weights, info.ignore_index, class_weights)
        return SegmentTask(info.num_classes, info.ignore_index, criterion=criterion.to(device))
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
    """Train ``architecture`` for ``task``; write ``checkpoint``, ``history.json`` and ``run.json`` to its
    model dir and the per-epoch curves to ``paths.curves``.

    Under ``torchrun`` every rank runs this (data-parallel, ``train.batch_size`` per rank); the main rank
    alone writes files and tracks the run. With ``tracking.enabled: false`` nothing of MLflow is imported."""
    listed = _listed_architectures(params, task)
    if architecture not in listed:
        section = "train" if task == "segment" else task
        raise ValueError(f"{architecture!r} is not in {section}.architectures {listed}")
    require_passed(paths.validation_summary)
    with distributed.session(resolve_device(params.train.device)) as context:
        job = _prepare_job(params, architecture, paths, task, context)
        return _train(job, progress)


@dataclass(frozen=True)
class TrainJob:
    """One architecture and task to train on this rank, and what its parts are built from."""

    params: Params
    architecture: str
    task: TaskName
    paths: ProjectPaths
    info: DatasetInfo
    device: torch.device
    context: DistributedContext
    class_weights: list[float] | None
    """Per-class loss weights of a segmenter (None: unweighted, and for every denoiser)."""

    @property
    def options(self) -> dict[str, Any]:
        return self.params.train.model_options(self.architecture)

    @property
    def epochs(self) -> int:
        return self.params.train.epochs if self.task == "segment" else self.params.denoise.epochs

    @property
    def label(self) -> str:
        return run_name(self.architecture, self.task)

    @property
    def mode(self) -> ComputeMode:
        """Precision and memory format: ``train.precision`` / ``train.memory_format`` on this device."""
        return ComputeMode.resolve(self.device, self.params.train.precision, self.params.train.memory_format)


def _prepare_job(
    params: Params, architecture: str, paths: ProjectPaths, task: TaskName, context: DistributedContext
) -> TrainJob:
    """Seed every generator and set the backends for this rank's device."""
    info = DatasetInfo.load(paths.prepared)
    class_weights = resolve_class_weights(params, info, paths) if task == "segment" else None
    seed_everything(params.train.seed)
    device = context.local_device(resolve_device(params.train.device))
    configure_backends(device, params.train.deterministic)
    return TrainJob(params, architecture, task, paths, info, device, context, class_weights)


def _train(job: TrainJob, progress: bool) -> TrainResult:
    """Build the parts in a fixed order (the model's initial weights draw from the seeded generator), train,
    and record the outcome on the main rank."""
    model = _build_model(job)
    replica = distributed.wrap_model(
        model, job.context, job.params.train.sync_batchnorm, job.mode.channels_last
    )
    objective = make_task(job.params, job.task, job.info, job.device, job.context.rank, job.class_weights)
    train_loader, val_loader = _loaders(job)
    data_hash = data_version(job.paths.prepared, job.paths.root / "dvc.lock")
    config_digest = hashlib.sha256(f"{data_hash}:{job.params.model_dump_json()}".encode()).hexdigest()
    states, resume = _resume_point(job, config_digest)
    run_key = (resume.run_key if resume else None) or uuid.uuid4().hex
    with (
        _job_tracking(job, data_hash, config_digest, run_key) as tracker,
        system_metrics(tracker, job.params.tracking),
    ):
        tracker.log_params(_run_params(job, model))
        log_training_data(tracker, job.paths.prepared, job.paths.root / "dvc.lock")
        if job.class_weights is not None and job.context.is_main and progress:
            print(f"{job.label}: class weights ({_class_weighting(job)}) {_weights_text(job.class_weights)}")
        trainer = Trainer(
            objective,
            _trainer_settings(job, progress),
            tracker,
            on_best=BestCheckpoint(job, model_channels(job), objective.monitor),
            on_epoch_end=functools.partial(write_curves, job.paths.curves(job.architecture, job.task)),
            states=states,
            context=job.context,
        )
        result = trainer.fit(replica, train_loader, val_loader, resume)
        if not job.context.is_main:
            return result
        _log_outcome(job, tracker, result, val_loader)
    _write_records(job, tracker, result)
    states.clear()  # finished: nothing left to resume
    return result


def model_channels(job: TrainJob) -> int:
    """The model's output channels: one logit per class, or the image's channels for a reconstruction."""
    return job.info.num_classes if job.task == "segment" else IMAGE_CHANNELS


def _build_model(job: TrainJob) -> nn.Module:
    if job.task == "segment":
        model = build_model(job.architecture, job.info.num_classes, options=job.options)
        initialise_model(model, job.architecture, job.options, job.paths, _dataset_normalisation(job.info))
    else:
        model = build_reconstruction_model(job.architecture, IMAGE_CHANNELS, job.options)
    model = model.to(job.device)
    check_image_size(job.architecture, model.output_stride, job.info.image_size, job.params.train.crop)
    return model


def _dataset_normalisation(info: DatasetInfo) -> tuple[Sequence[float], Sequence[float]] | None:
    """The training split's channel mean and std, which models trained from scratch normalise by."""
    return None if info.mean is None or info.std is None else (info.mean, info.std)


def _loaders(job: TrainJob) -> tuple[Loader, Loader]:
    """The train loader (shuffled, cropped, flipped, augmented, this rank's shard of each batch) and the val
    loader (whole images), each in memory or streamed as ``data`` says."""
    settings, info, device, context = job.params.train, job.info, job.device, job.context
    augmenter = None
    if settings.augment.needs_library:
        from segpipe.data.augment import SampleAugmenter  # albumentations only where it is used

        augmenter = SampleAugmenter(settings.augment, info.ignore_index, settings.seed)
    device_augmenter = None
    if settings.augment.on_device and settings.augment.needs_transforms:
        device_augmenter = DeviceAugmenter(settings.augment, info.ignore_index, settings.seed, device)
    train = make_loader(
        load_split(job.paths.prepared, "train"),
        job.params.data,
        settings.batch_size,
        device,
        shuffle=True,
        hflip=settings.augment.hflip,
        vflip=settings.augment.vflip,
        seed=settings.seed,
        drop_last=True,
        augmenter=augmenter,
        device_augmenter=device_augmenter,
        rank=context.rank,
        world_size=context.world_size,
        crop=settings.crop,
        ignore_index=info.ignore_index,
    )
    val = make_loader(load_split(job.paths.prepared, "val"), job.params.data, settings.batch_size, device)
    return train, val


def _resume_point(job: TrainJob, config_digest: str) -> tuple[StateStore, SavedState | None]:
    """This configuration's state store and the state to resume from (None: start afresh), the main rank's on
    every rank: other nodes need not share its disk."""
    folder = job.paths.training_states(job.architecture, job.task)
    # the resolved precision too: a state saved in bf16 must not resume as fp32 on a machine of the other kind
    states = StateStore(folder, f"{config_digest}:{job.architecture}:{job.task}:{job.mode.precision}")
    if job.params.train.resume == "never" and job.context.is_main:
        states.clear()
    resume = distributed.broadcast_from_main(states.latest() if job.context.is_main else None, job.context)
    return states, resume


def _job_tracking(
    job: TrainJob, data_hash: str, config_digest: str, run_key: str
) -> contextlib.AbstractContextManager[Tracker]:
    """The main rank's tracking run; a no-op tracker on every other rank."""
    if not job.context.is_main:
        return contextlib.nullcontext(NullTracker())
    tags = {
        "architecture": job.architecture,
        "family": architecture_family(job.architecture),
        "task": job.task,
        "dataset": job.info.name,
        "data_hash": data_hash,
        "device": describe_device(job.device),
        "torch_version": torch.__version__,
        **job.mode.record(),
    }
    return _tracking(job.params, job.info.name, job.label, tags, config_digest, run_key)


def _weights_text(weights: list[float]) -> str:
    return "[" + ", ".join(f"{weight:.4g}" for weight in weights) + "]"


def _class_weighting(job: TrainJob) -> str:
    setting = job.params.train.loss.class_weights
    return setting if isinstance(setting, str) else "listed"


def loss_record(job: TrainJob) -> dict[str, object]:
    """The loss a job trains with: name, term weights and the class weights used (None: unweighted)."""
    if job.task == "denoise":
        return {"name": job.params.denoise.loss}
    loss = job.params.train.loss
    return {
        "name": loss.name,
        "weights": loss.term_weights,
        "class_weighting": _class_weighting(job),
        "class_weights": job.class_weights,
    }


def _loss_params(job: TrainJob) -> dict[str, object]:
    """The loss as flat run params."""
    if job.task == "denoise":
        return {"loss": job.params.denoise.loss}
    loss = job.params.train.loss
    weights = "none" if job.class_weights is None else _weights_text(job.class_weights)
    return {
        "loss": loss.name,
        "loss_weights": _weights_text(loss.term_weights),
        "class_weighting": _class_weighting(job),
        "class_weights": weights,
    }


def _run_params(job: TrainJob, model: nn.Module) -> dict[str, object]:
    settings, options = job.params.train, job.options
    task_params: dict[str, object] = _loss_params(job)
    if job.task == "denoise":
        denoise = job.params.denoise
        task_params |= {"corruption": denoise.corruption, "corruption_level": denoise.level}
    return {
        "arch": job.architecture,
        "family": architecture_family(job.architecture),
        "task": job.task,
        "dataset": job.info.name,
        "epochs": job.epochs,
        "upsample": options.get("upsample", "n/a"),
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "weight_decay": settings.weight_decay,
        "schedule": settings.schedule,
        "warmup_epochs": settings.warmup_epochs,
        "seed": settings.seed,
        "image_size": "x".join(map(str, job.info.training_size(job.params.train.crop))),
        "params_m": round(count_params_m(model), 4),
        "precision": job.mode.precision,
        "memory_format": job.mode.memory_format,
        "init": options.get("init", "scratch"),
        **task_params,
        **{f"model.{key}": value for key, value in options.items()},
    }


def _trainer_settings(job: TrainJob, progress: bool) -> TrainerSettings:
    settings = job.params.train
    return TrainerSettings(
        job.epochs,
        settings.lr,
        settings.weight_decay,
        progress=progress,
        label=job.label,
        precision=job.mode.precision,
        channels_last=job.mode.channels_last,
        compile=settings.compile,
        checkpoint_every_steps=settings.checkpoint_every_steps,
        schedule=settings.schedule,
        warmup_epochs=settings.warmup_epochs,
    )


@dataclass(frozen=True)
class BestCheckpoint:
    """The trainer's ``on_best``: writes the model of a new best epoch to the job's checkpoint."""

    job: TrainJob
    out_channels: int
    monitor: str

    def __call__(self, model: nn.Module, record: EpochRecord) -> None:
        job = self.job
        score = record.validation[self.monitor]
        meta = CheckpointMeta(
            job.architecture,
            job.options,
            self.out_channels,
            job.info.class_names,
            job.info.training_size(job.params.train.crop),
            record.epoch,
            self.monitor,
            score,
            job.task,
            normalisation=model.normalisation.record(),
        )
        save_checkpoint(job.paths.checkpoint(job.architecture, job.task), model, meta)


def _log_outcome(job: TrainJob, tracker: Tracker, result: TrainResult, val_loader: Loader) -> None:
    """The best score to the run, and the best checkpoint's model with an input example."""
    tracker.log_metrics(
        {
            f"best_{result.monitor}": result.best_score,
            "best_epoch": result.best_epoch,
            "train_seconds": result.seconds,
        }
    )
    example = next(iter(val_loader))[0][:1]  # the val split's first image
    tracker.log_model(job.paths.checkpoint(job.architecture, job.task), example.cpu().numpy())


def _write_records(job: TrainJob, tracker: Tracker, result: TrainResult) -> None:
    """``history.json`` (every epoch) and ``run.json`` (which tracking run holds it)."""
    architecture, task = job.architecture, job.task
    io.write_json(
        job.paths.history(architecture, task),
        {
            "architecture": architecture,
            "task": task,
            "monitor": result.monitor,
            "best_epoch": result.best_epoch,
            f"best_{result.monitor}": result.best_score,
            "train_seconds": result.seconds,
            "loss": loss_record(job),
            "device": describe_device(job.device),
            **job.mode.record(),
            "epochs": [dataclasses.asdict(r) for r in result.history],
        },
    )
    tracking = "off" if tracker.run_key is None else "live" if job.params.tracking.live else "deferred"
    record = {"architecture": architecture, "task": task, "run_key": tracker.run_key, "tracking": tracking}
    io.write_json(job.paths.run_record(architecture, task), record)
