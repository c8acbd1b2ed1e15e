"""The one training loop every architecture uses: AdamW, cross-entropy with ignore_index, cosine LR,
best-on-validation-mIoU checkpointing. Losses and confusion matrices stay on the device and are read
once per epoch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from segpipe.data.loader import BatchLoader
from segpipe.metrics import ConfusionMatrix, metrics_from_confusion
from segpipe.training.tracker import Tracker


@dataclass(frozen=True)
class LoopSettings:
    epochs: int
    lr: float
    weight_decay: float
    num_classes: int
    ignore_index: int
    progress: bool = True
    label: str = "train"


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    val_miou: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    best_epoch: int = 0
    best_val_miou: float = -1.0
    seconds: float = 0.0
    history: list[EpochRecord] = field(default_factory=list)


@torch.no_grad()
def evaluate_split(
    model: nn.Module, loader: BatchLoader, num_classes: int, ignore_index: int
) -> tuple[float, np.ndarray]:
    """Mean per-pixel cross-entropy and the confusion matrix over a whole split."""
    model.eval()
    device = loader.masks.device
    confusion = ConfusionMatrix(num_classes, ignore_index, device)
    loss_sum = torch.zeros((), device=device)
    pixels = torch.zeros((), device=device, dtype=torch.int64)
    criterion = nn.CrossEntropyLoss(ignore_index=ignore_index, reduction="sum")
    for images, masks in loader:
        logits = model(images)
        loss_sum += criterion(logits, masks)
        pixels += (masks != ignore_index).sum()
        confusion.update(logits, masks)
    return float(loss_sum / pixels.clamp(min=1)), confusion.matrix()


def fit(
    model: nn.Module,
    train_loader: BatchLoader,
    val_loader: BatchLoader,
    settings: LoopSettings,
    tracker: Tracker,
    on_best: Callable[[nn.Module, EpochRecord], None],
) -> TrainResult:
    """Train for ``settings.epochs``; call ``on_best`` whenever validation mIoU improves."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    total_steps = settings.epochs * len(train_loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    criterion = nn.CrossEntropyLoss(ignore_index=settings.ignore_index)
    device = train_loader.masks.device
    result = TrainResult()
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
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(images), masks)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.detach()
        train_loss = float(loss_sum) / len(train_loader)
        val_loss, matrix = evaluate_split(model, val_loader, settings.num_classes, settings.ignore_index)
        record = EpochRecord(
            epoch=epoch,
            train_loss=train_loss,
            val_loss=val_loss,
            val_miou=metrics_from_confusion(matrix).miou,
            lr=lr,
            seconds=time.perf_counter() - epoch_start,
        )
        result.history.append(record)
        tracker.log_metrics(
            {"train_loss": record.train_loss, "val_loss": record.val_loss, "val_miou": record.val_miou, "lr": lr},
            step=epoch,
        )
        if settings.progress:
            tqdm.write(
                f"{settings.label} epoch {epoch}/{settings.epochs}: train_loss {train_loss:.4f} "
                f"val_loss {val_loss:.4f} val_miou {record.val_miou:.4f} ({record.seconds:.1f}s)"
            )
        if record.val_miou > result.best_val_miou:
            result.best_epoch, result.best_val_miou = epoch, record.val_miou
            on_best(model, record)
    result.seconds = time.perf_counter() - started
    return result
