"""The one training loop every architecture and task uses: AdamW, cosine LR, best-on-validation
checkpointing. The task (:mod:`segpipe.tasks`) supplies inputs, targets, loss and validation metrics.
Losses stay on the device and are read once per epoch. The same loop trains one replica per rank under
``torchrun`` (:mod:`segpipe.training.distributed`)."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from segpipe.data.loader import BatchLoader
from segpipe.tasks import Task
from segpipe.training import distributed
from segpipe.training.device import Precision
from segpipe.training.distributed import SINGLE_PROCESS, DistributedContext
from segpipe.training.state import SavedState, StateStore, capture_rng, restore_rng
from segpipe.training.tracker import Tracker


@dataclass(frozen=True)
class LoopSettings:
    epochs: int
    lr: float
    weight_decay: float
    progress: bool = True
    label: str = "train"
    precision: Precision = "fp32"
    """``bf16``: forward and loss under ``torch.autocast`` (bfloat16), weights and optimizer in fp32."""
    channels_last: bool = False
    """Model weights and inputs in channels_last memory format (faster convolutions on GPUs)."""
    compile: bool = False
    """Train through ``torch.compile(model)``; checkpoints hold the plain model's weights."""
    checkpoint_every_steps: int = 0
    """With a state store: also save the training state every N steps (0: each epoch's end only)."""


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


def fit(
    model: nn.Module,
    train_loader: BatchLoader,
    val_loader: BatchLoader,
    task: Task,
    settings: LoopSettings,
    tracker: Tracker,
    on_best: Callable[[nn.Module, EpochRecord], None],
    states: StateStore | None = None,
    resume: SavedState | None = None,
    context: DistributedContext = SINGLE_PROCESS,
) -> TrainResult:
    """Train for ``settings.epochs``; call ``on_best`` whenever the task's monitored metric improves.

    With ``states``, the training state is saved at each epoch's end (and every
    ``settings.checkpoint_every_steps`` steps); with ``resume`` (from ``states.latest()``), training
    continues exactly where that state left off. A NaN/Inf loss raises :class:`TrainingDiverged` at the next save or epoch end,
    before anything from the diverged steps is saved.

    Data-parallel (``context`` of several ranks): every rank passes the same arguments, with ``model`` from
    :func:`~segpipe.training.distributed.wrap_model` (``channels_last=settings.channels_last``),
    ``train_loader`` sharded for its rank and ``resume`` the same state. The main rank alone saves states, calls ``on_best`` and the tracker and shows progress;
    the train loss is averaged over the ranks and every rank validates the whole split on the plain model,
    so every rank returns the same result (and raises :class:`TrainingDiverged` together).
    """
    replicas = (isinstance(model, DistributedDataParallel), train_loader.rank, train_loader.world_size)
    if replicas != (context.is_distributed, context.rank, context.world_size):
        raise ValueError(f"{settings.label}: for rank {context.rank} of {context.world_size}, wrap the model with "
                         f"distributed.wrap_model and shard the train loader with the same rank and world size")
    plain = distributed.unwrap(model)
    device = train_loader.images.device
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if settings.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
                                  fused=device.type == "cuda")
    steps_per_epoch = len(train_loader)
    total_steps = settings.epochs * steps_per_epoch

    def cosine(step: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
    autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16, enabled=settings.precision == "bf16")
    result = TrainResult(task.monitor)
    first_epoch, first_batch = 1, 0
    loss_sum = torch.zeros((), device=device)
    if resume is not None:
        state = resume.payload
        plain.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["scheduler"])
        task.load_state_dict(state["task"])
        restore_rng(state["rng"])
        first_epoch, first_batch = state["epoch"], state["batch"]
        loss_sum = state["loss_sum"].to(device)
        result.best_epoch, result.best_score, result.seconds = state["best_epoch"], state["best_score"], state["seconds"]
        result.history = [EpochRecord(**record) for record in state["history"]]
        if context.is_main:
            tqdm.write(f"{settings.label}: resuming from {resume.path} "
                       f"(epoch {first_epoch}, batch {first_batch}/{steps_per_epoch})")
    steps_done = torch.zeros((), dtype=torch.int64, device=device)
    no_bad_step = steps_per_epoch + 1  # first_bad_step while every loss is finite (the minimum over ranks works)
    first_bad_step = torch.full((), no_bad_step, dtype=torch.int64, device=device)
    started = time.perf_counter()

    def global_step(epoch: int, batch: int) -> int:
        return (epoch - 1) * steps_per_epoch + batch

    def check_finite(epoch: int, loss_total: torch.Tensor) -> float:
        """One host sync: the loss total so far (the ranks' mean), or :class:`TrainingDiverged` naming the first
        bad step of any rank."""
        total, bad = torch.stack([
            distributed.mean_across_ranks(loss_total, context),
            distributed.min_across_ranks(first_bad_step, context).to(loss_total.dtype),
        ]).tolist()
        if bad < no_bad_step:
            bad_step = global_step(epoch, first_batch_of_epoch) + int(bad)
            bad_epoch, bad_batch = divmod(bad_step - 1, steps_per_epoch)
            kept = f"; the last good training state is in {states.folder}" if states is not None else ""
            raise TrainingDiverged(
                f"{settings.label}: the training loss became NaN/Inf at epoch {bad_epoch + 1}, step {bad_step} "
                f"(batch {bad_batch + 1} of {steps_per_epoch}){kept}. Lower train.lr, check the data for "
                f"broken samples, or use train.precision: fp32"
            )
        return total

    def save_state(epoch: int, batch: int, loss_total: float) -> None:
        if states is None or not context.is_main:
            return
        states.save(global_step(epoch, batch), {
            "epoch": epoch, "batch": batch, "loss_sum": torch.tensor(loss_total),
            "best_epoch": result.best_epoch, "best_score": result.best_score,
            "seconds": result.seconds + time.perf_counter() - started,
            "history": [dataclasses.asdict(record) for record in result.history],
            "model": {k: v.detach().cpu() for k, v in plain.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(),
            "task": task.state_dict(), "rng": capture_rng(), "run_key": tracker.run_key,
        })

    for epoch in range(first_epoch, settings.epochs + 1):
        epoch_start = time.perf_counter()
        first_batch_of_epoch = first_batch if epoch == first_epoch else 0
        if epoch != first_epoch:
            loss_sum = torch.zeros((), device=device)
        steps_done.zero_()
        model.train()
        train_loader.set_epoch(epoch)
        lr = settings.lr * cosine(global_step(epoch, 0))  # the epoch's starting rate, also when resumed mid-epoch
        bar = tqdm(
            train_loader.batches(first_batch_of_epoch),
            desc=f"{settings.label} epoch {epoch}/{settings.epochs}",
            # None: only on a terminal, not in CI logs
            disable=None if settings.progress and context.is_main else True,
            leave=False,
            unit="batch",
            initial=first_batch_of_epoch,
            total=steps_per_epoch,
        )
        for batch, (images, masks) in enumerate(bar, start=first_batch_of_epoch + 1):
            inputs, targets = task.inputs_and_targets(images, masks)
            if settings.channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = task.loss(forward(inputs), targets)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss = loss.detach()
            loss_sum += loss
            steps_done += 1
            first_bad = ~torch.isfinite(loss) & (first_bad_step == no_bad_step)
            first_bad_step.copy_(torch.where(first_bad, steps_done, first_bad_step))
            every = settings.checkpoint_every_steps
            if states is not None and every and global_step(epoch, batch) % every == 0 and batch < steps_per_epoch:
                save_state(epoch, batch, check_finite(epoch, loss_sum))
        train_loss = check_finite(epoch, loss_sum) / steps_per_epoch  # the epoch's one host sync
        train_seconds = time.perf_counter() - epoch_start
        distributed.broadcast_buffers(model, context)  # every rank validates the model the main rank saves
        with autocast():
            validation = task.validate(plain, val_loader)
        record = EpochRecord(epoch, train_loss, lr, time.perf_counter() - epoch_start, train_seconds, validation)
        result.history.append(record)
        if context.is_main:
            tracker.log_metrics({"train_loss": train_loss, **validation, "lr": lr}, step=epoch)
        if settings.progress and context.is_main:
            scores = " ".join(f"{key} {value:.4f}" for key, value in validation.items())
            tqdm.write(f"{settings.label} epoch {epoch}/{settings.epochs}: train_loss {train_loss:.4f} {scores} "
                       f"({record.seconds:.1f}s)")
        score = validation[task.monitor]
        if score > result.best_score:
            result.best_epoch, result.best_score = epoch, score
            if context.is_main:
                on_best(plain, record)
        save_state(epoch + 1, 0, 0.0)  # after the best checkpoint, so a resume never skips one
    result.seconds += time.perf_counter() - started
    return result
