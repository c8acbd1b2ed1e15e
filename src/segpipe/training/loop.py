"""The one training loop every architecture and task uses: AdamW, cosine LR, best-on-validation
checkpointing. The task (:mod:`segpipe.tasks`) supplies inputs, targets, loss and validation metrics.
Losses stay on the device and are read once per epoch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from segpipe.data.loader import BatchLoader
from segpipe.tasks import Task
from segpipe.training.tracker import Tracker


@dataclass(frozen=True)
class LoopSettings:
    epochs: int
    lr: float
    weight_decay: float
    progress: bool = True
    label: str = "train"


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
) -> TrainResult:
    """Train for ``settings.epochs``; call ``on_best`` whenever the task's monitored metric improves."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    total_steps = settings.epochs * len(train_loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    device = train_loader.images.device
    result = TrainResult(task.monitor)
    started = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        epoch_start = time.perf_counter()
        model.train()
        train_loader.set_epoch(epoch)
        loss_sum = torch.zeros((), device=device)
        lr = optimizer.param_groups[0]["lr"]
        bar = tqdm(
            train_loader,
            desc=f"{settings.label} epoch {epoch}/{settings.epochs}",
            disable=None if settings.progress else True,  # None: only on a terminal, not in CI logs
            leave=False,
            unit="batch",
        )
        for images, masks in bar:
            inputs, targets = task.inputs_and_targets(images, masks)
            optimizer.zero_grad(set_to_none=True)
            loss = task.loss(model(inputs), targets)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.detach()
        train_loss = float(loss_sum) / len(train_loader)  # the epoch's one host sync
        train_seconds = time.perf_counter() - epoch_start
        validation = task.validate(model, val_loader)
        record = EpochRecord(epoch, train_loss, lr, time.perf_counter() - epoch_start, train_seconds, validation)
        result.history.append(record)
        tracker.log_metrics({"train_loss": train_loss, **validation, "lr": lr}, step=epoch)
        if settings.progress:
            scores = " ".join(f"{key} {value:.4f}" for key, value in validation.items())
            tqdm.write(f"{settings.label} epoch {epoch}/{settings.epochs}: train_loss {train_loss:.4f} {scores} "
                       f"({record.seconds:.1f}s)")
        score = validation[task.monitor]
        if score > result.best_score:
            result.best_epoch, result.best_score = epoch, score
            on_best(model, record)
    result.seconds = time.perf_counter() - started
    return result
