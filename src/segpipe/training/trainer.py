"""The one trainer every architecture and task uses: AdamW, cosine or poly LR (with warm-up),
best-on-validation checkpointing.

The task (:mod:`segpipe.tasks`) supplies inputs, targets, loss and validation metrics. Losses stay on the
device and are read once per epoch (and at each mid-epoch state save). The same trainer trains one replica
per rank under ``torchrun`` (:mod:`segpipe.training.distributed`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from segpipe.data.loader import Loader
from segpipe.tasks import Task
from segpipe.training import distributed
from segpipe.training.device import ComputeMode, Precision
from segpipe.training.distributed import SINGLE_PROCESS, DistributedContext
from segpipe.training.state import SavedState, StateStore, capture_rng, restore_rng
from segpipe.training.tracker import NullTracker, Tracker

Schedule = Literal["cosine", "poly"]
POLY_POWER = 0.9  # the DeepLab / MMSegmentation default


@dataclass(frozen=True)
class TrainerSettings:
    epochs: int
    lr: float
    weight_decay: float
    progress: bool = True
    label: str = "train"
    precision: Precision = "fp32"
    """``bf16``: forward and loss under ``torch.autocast`` (bfloat16), weights and optimizer in fp32."""
    channels_last: bool = False
    """Model weights and inputs in channels_last memory format (faster convolutions on GPUs, and for bf16 on
    CPUs)."""
    compile: bool = False
    """Train through ``torch.compile(model)``; checkpoints hold the plain model's weights."""
    checkpoint_every_steps: int = 0
    """With a state store: also save the training state every N steps (0: each epoch's end only)."""
    schedule: Schedule = "cosine"
    """How the learning rate decays to 0 (see :func:`lr_factor`)."""
    warmup_epochs: int = 0
    """Epochs of linear warm-up before the decay."""


class TrainingDiverged(ValueError):
    """The training loss became NaN or infinite."""


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    lr: float
    seconds: float
    """The whole epoch: training steps and validation."""
    train_seconds: float
    """The training steps alone (data loading, forward, loss, backward, optimizer and schedule)."""
    validation: dict[str, float]
    """``val_loss`` and the task's validation metrics (``val_miou``, or ``val_psnr`` and ``val_ssim``)."""


@dataclass
class TrainResult:
    monitor: str
    best_epoch: int = 0
    best_score: float = -math.inf
    seconds: float = 0.0
    history: list[EpochRecord] = field(default_factory=list)


OnBest = Callable[[nn.Module, EpochRecord], None]
OnEpochEnd = Callable[[TrainResult], None]


def cosine_factor(step: int, total_steps: int) -> float:
    """The learning-rate multiplier after ``step`` of ``total_steps``: 1 at the start, 0 at the end."""
    return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


def poly_factor(step: int, total_steps: int, power: float = POLY_POWER) -> float:
    """Polynomial decay: ``(1 - step / total_steps) ** power``, 1 at the start, 0 at the end."""
    return (1 - min(step, total_steps) / total_steps) ** power


def lr_factor(step: int, total_steps: int, schedule: Schedule = "cosine", warmup_steps: int = 0) -> float:
    """The learning-rate multiplier after ``step``: a linear rise over ``warmup_steps`` (reaching 1 at the
    last warm-up step), then ``schedule``'s decay over the remaining steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay = cosine_factor if schedule == "cosine" else poly_factor
    return decay(step - warmup_steps, total_steps - warmup_steps)


class Trainer:
    """Trains a model for ``settings.epochs``; calls ``on_best`` whenever the task's monitored metric improves
    and ``on_epoch_end`` after each epoch (both on the main rank only).

    With ``states``, the training state is saved at each epoch's end (and every
    ``settings.checkpoint_every_steps`` steps); :meth:`fit` with ``resume`` (from ``states.latest()``)
    continues exactly where that state left off. A NaN/Inf loss raises :class:`TrainingDiverged` at the next
    save or epoch end, before anything from the diverged steps is saved.

    Data-parallel (``context`` of several ranks): every rank builds the same trainer and passes :meth:`fit`
    a model from :func:`~segpipe.training.distributed.wrap_model` (``channels_last=settings.channels_last``),
    a train loader sharded for its rank and the same ``resume``. The main rank alone saves states, calls the
    hooks and the tracker and shows progress; the train loss is averaged over the ranks and every rank
    validates the whole split on the plain model, so every rank returns the same result (and raises
    :class:`TrainingDiverged` together).
    """

    def __init__(
        self,
        task: Task,
        settings: TrainerSettings,
        tracker: Tracker | None = None,
        on_best: OnBest | None = None,
        on_epoch_end: OnEpochEnd | None = None,
        states: StateStore | None = None,
        context: DistributedContext = SINGLE_PROCESS,
    ) -> None:
        self.task = task
        self.settings = settings
        self.tracker = tracker if tracker is not None else NullTracker()
        self.on_best = on_best
        self.on_epoch_end = on_epoch_end
        self.states = states
        self.context = context

    def fit(
        self,
        model: nn.Module,
        train_loader: Loader,
        val_loader: Loader,
        resume: SavedState | None = None,
    ) -> TrainResult:
        """Train ``model`` (from ``resume`` where given) and return the epochs' record."""
        self._check_replica(model, train_loader)
        self._setup(model, train_loader)
        if resume is not None:
            self.load(resume)
        self.started = time.perf_counter()
        for epoch in range(self.first_epoch, self.settings.epochs + 1):
            self.run_epoch(epoch, train_loader, val_loader)
        self.result.seconds += time.perf_counter() - self.started
        return self.result

    def _check_replica(self, model: nn.Module, train_loader: Loader) -> None:
        context = self.context
        replicas = (isinstance(model, DistributedDataParallel), train_loader.rank, train_loader.world_size)
        if replicas != (context.is_distributed, context.rank, context.world_size):
            raise ValueError(
                f"{self.settings.label}: for rank {context.rank} of {context.world_size}, wrap the model "
                f"with distributed.wrap_model and shard the train loader with the same rank and world size"
            )

    def _setup(self, model: nn.Module, train_loader: Loader) -> None:
        """Model views, optimizer, schedule and the counters of a fresh run."""
        settings = self.settings
        self.model, self.plain = model, distributed.unwrap(model)
        self.device = train_loader.device
        self.mode = ComputeMode(self.device, settings.precision, settings.channels_last)
        self.mode.prepare(model)
        self.forward = torch.compile(model) if settings.compile else model
        self.optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=settings.lr,
            weight_decay=settings.weight_decay,
            fused=self.device.type == "cuda",
        )
        self.steps_per_epoch = len(train_loader)
        self.total_steps = settings.epochs * self.steps_per_epoch
        self.warmup_steps = settings.warmup_epochs * self.steps_per_epoch
        schedule = functools.partial(
            lr_factor,
            total_steps=self.total_steps,
            schedule=settings.schedule,
            warmup_steps=self.warmup_steps,
        )
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.result = TrainResult(self.task.monitor)
        self.first_epoch, self.first_batch = 1, 0
        self.loss_sum = torch.zeros((), device=self.device)
        self.steps_done = torch.zeros((), dtype=torch.int64, device=self.device)
        self.no_bad_step = self.steps_per_epoch + 1  # first_bad_step while every loss is finite
        self.first_bad_step = torch.full((), self.no_bad_step, dtype=torch.int64, device=self.device)

    def load(self, saved: SavedState) -> None:
        """Continue from a saved training state: weights, optimizer, schedule, task, RNGs and position."""
        state = saved.payload
        self.plain.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        self.task.load_state_dict(state["task"])
        restore_rng(state["rng"])
        self.first_epoch, self.first_batch = state["epoch"], state["batch"]
        self.loss_sum = state["loss_sum"].to(self.device)
        result = self.result
        result.best_epoch, result.best_score = state["best_epoch"], state["best_score"]
        result.seconds = state["seconds"]
        result.history = [EpochRecord(**record) for record in state["history"]]
        if self.context.is_main:
            tqdm.write(
                f"{self.settings.label}: resuming from {saved.path} "
                f"(epoch {self.first_epoch}, batch {self.first_batch}/{self.steps_per_epoch})"
            )

    def state_dict(self, epoch: int, batch: int, loss_total: float) -> dict[str, Any]:
        """Everything a resume needs, at ``batch`` steps into ``epoch`` with ``loss_total`` summed so far."""
        result = self.result
        return {
            "epoch": epoch,
            "batch": batch,
            "loss_sum": torch.tensor(loss_total),
            "best_epoch": result.best_epoch,
            "best_score": result.best_score,
            "seconds": result.seconds + time.perf_counter() - self.started,
            "history": [dataclasses.asdict(record) for record in result.history],
            "model": {k: v.detach().cpu() for k, v in self.plain.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "task": self.task.state_dict(),
            "rng": capture_rng(),
            "run_key": self.tracker.run_key,
        }

    def save(self, epoch: int, batch: int, loss_total: float) -> None:
        """Save the training state (main rank, with a state store)."""
        if self.states is not None and self.context.is_main:
            self.states.save(self.global_step(epoch, batch), self.state_dict(epoch, batch, loss_total))

    def global_step(self, epoch: int, batch: int) -> int:
        return (epoch - 1) * self.steps_per_epoch + batch

    def run_epoch(self, epoch: int, train_loader: Loader, val_loader: Loader) -> None:
        """Train, validate, report, keep the best model, save the state."""
        epoch_start = time.perf_counter()
        # the epoch's starting rate, also when resumed mid-epoch
        factor = lr_factor(
            self.global_step(epoch, 0), self.total_steps, self.settings.schedule, self.warmup_steps
        )
        lr = self.settings.lr * factor
        train_loss = self.train_loop(epoch, train_loader)
        train_seconds = time.perf_counter() - epoch_start
        validation = self.val_loop(val_loader)
        seconds = time.perf_counter() - epoch_start
        record = EpochRecord(epoch, train_loss, lr, seconds, train_seconds, validation)
        self.result.history.append(record)
        self.report(record)
        self.keep_if_best(record)
        self.save(epoch + 1, 0, 0.0)  # after the best checkpoint, so a resume never skips one
        if self.on_epoch_end is not None and self.context.is_main:
            self.on_epoch_end(self.result)

    def train_loop(self, epoch: int, loader: Loader) -> float:
        """One epoch of training steps (from the resumed batch in the resumed epoch); the mean train loss."""
        self.epoch_first_batch = self.first_batch if epoch == self.first_epoch else 0
        if epoch != self.first_epoch:
            self.loss_sum = torch.zeros((), device=self.device)
        self.steps_done.zero_()
        self.model.train()
        loader.set_epoch(epoch)
        batches = self._progress(loader, epoch)
        for batch, (images, masks) in enumerate(batches, start=self.epoch_first_batch + 1):
            self.training_step(images, masks)
            if self._mid_epoch_save_due(epoch, batch):
                self.save(epoch, batch, self.check_finite(epoch))
        return self.check_finite(epoch) / self.steps_per_epoch  # the epoch's one host sync

    def _mid_epoch_save_due(self, epoch: int, batch: int) -> bool:
        """Every rank answers alike: the save's finite-loss check is a collective."""
        every = self.settings.checkpoint_every_steps
        return (
            self.states is not None
            and every > 0
            and self.global_step(epoch, batch) % every == 0
            and batch < self.steps_per_epoch
        )

    def _progress(self, loader: Loader, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return tqdm(
            loader.batches(self.epoch_first_batch),
            desc=f"{self.settings.label} epoch {epoch}/{self.settings.epochs}",
            # None: only on a terminal, not in CI logs
            disable=None if self.settings.progress and self.context.is_main else True,
            leave=False,
            unit="batch",
            initial=self.epoch_first_batch,
            total=self.steps_per_epoch,
        )

    def training_step(self, images: torch.Tensor, masks: torch.Tensor) -> None:
        """Forward, loss, backward, optimizer and schedule step; the loss is summed and checked on the
        device."""
        inputs, targets = self.task.inputs_and_targets(images, masks)
        inputs = self.mode.inputs(inputs)
        self.optimizer.zero_grad(set_to_none=True)
        with self.mode.autocast():
            loss = self.task.loss(self.forward(inputs), targets)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        loss = loss.detach()
        self.loss_sum += loss
        self.steps_done += 1
        first_bad = ~torch.isfinite(loss) & (self.first_bad_step == self.no_bad_step)
        self.first_bad_step.copy_(torch.where(first_bad, self.steps_done, self.first_bad_step))

    def check_finite(self, epoch: int) -> float:
        """One host sync: the epoch's loss total so far (the ranks' mean), or :class:`TrainingDiverged` naming
        the first bad step of any rank."""
        total, bad = torch.stack(
            [
                distributed.mean_across_ranks(self.loss_sum, self.context),
                distributed.min_across_ranks(self.first_bad_step, self.context).to(self.loss_sum.dtype),
            ]
        ).tolist()
        if bad < self.no_bad_step:
            raise self._diverged(self.global_step(epoch, self.epoch_first_batch) + int(bad))
        return total

    def _diverged(self, bad_step: int) -> TrainingDiverged:
        bad_epoch, bad_batch = divmod(bad_step - 1, self.steps_per_epoch)
        kept = f"; the last good training state is in {self.states.folder}" if self.states is not None else ""
        return TrainingDiverged(
            f"{self.settings.label}: the training loss became NaN/Inf at epoch {bad_epoch + 1}, "
            f"step {bad_step} (batch {bad_batch + 1} of {self.steps_per_epoch}){kept}. Lower train.lr, "
            f"check the data for broken samples, or use train.precision: fp32"
        )

    def val_loop(self, loader: Loader) -> dict[str, float]:
        """The task's validation metrics of the plain model (every rank holds the main rank's buffers)."""
        distributed.broadcast_buffers(self.model, self.context)
        with self.mode.autocast():
            return self.task.validate(self.plain, loader)

    def report(self, record: EpochRecord) -> None:
        """The epoch's metrics to the tracker and, with progress on, to the console (main rank)."""
        if not self.context.is_main:
            return
        self.tracker.log_metrics(
            {"train_loss": record.train_loss, **record.validation, "lr": record.lr}, step=record.epoch
        )
        if self.settings.progress:
            scores = " ".join(f"{key} {value:.4f}" for key, value in record.validation.items())
            tqdm.write(
                f"{self.settings.label} epoch {record.epoch}/{self.settings.epochs}: "
                f"train_loss {record.train_loss:.4f} {scores} ({record.seconds:.1f}s)"
            )

    def keep_if_best(self, record: EpochRecord) -> None:
        score = record.validation[self.task.monitor]
        if score > self.result.best_score:
            self.result.best_epoch, self.result.best_score = record.epoch, score
            if self.on_best is not None and self.context.is_main:
                self.on_best(self.plain, record)
