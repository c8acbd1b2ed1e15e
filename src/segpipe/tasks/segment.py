"""``task: segment``: per-pixel classification, cross-entropy that skips ``ignore_index``, mIoU."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from segpipe.data.loader import Loader
from segpipe.inference import WHOLE, InferenceSettings, predict_logits
from segpipe.metrics import ConfusionMatrix, metrics_from_confusion


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    loader: Loader,
    num_classes: int,
    ignore_index: int,
    inference: InferenceSettings = WHOLE,
) -> tuple[float, np.ndarray]:
    """Mean per-pixel cross-entropy and the confusion matrix over a whole split (one host sync at the end),
    of the logits ``inference`` gives."""
    model.eval()
    device = loader.device
    confusion = ConfusionMatrix(num_classes, ignore_index, device)
    loss_sum = torch.zeros((), device=device)
    pixels = torch.zeros((), device=device, dtype=torch.int64)
    criterion = nn.CrossEntropyLoss(ignore_index=ignore_index, reduction="sum")
    for images, masks in loader:
        logits = predict_logits(model, images, inference)
        loss_sum += criterion(logits, masks)
        pixels += (masks != ignore_index).sum()
        confusion.update(logits, masks)
    return float(loss_sum / pixels.clamp(min=1)), confusion.matrix()


@dataclass
class SegmentTask:
    """Logits ``N×C×H×W`` against masks ``N×H×W``; the best epoch has the highest validation mIoU.

    The training loss is ``criterion`` (:func:`segpipe.tasks.losses.segmentation_loss`; cross-entropy
    skipping ``ignore_index`` when None); validation reports the unweighted cross-entropy whatever the loss.
    """

    num_classes: int
    ignore_index: int
    criterion: nn.Module | None = field(default=None, kw_only=True)
    name: str = field(default="segment", init=False)
    monitor: str = field(default="val_miou", init=False)

    def __post_init__(self) -> None:
        default = nn.CrossEntropyLoss(ignore_index=self.ignore_index)
        self._criterion = self.criterion if self.criterion is not None else default

    def inputs_and_targets(
        self, images: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return images, masks

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # In fp32 under bf16 autocast too: smp's Lovasz and Dice reductions mix dtypes or lose precision.
        return self._criterion(outputs.float(), targets)

    def validate(self, model: nn.Module, loader: Loader) -> dict[str, float]:
        loss, matrix = evaluate_split(model, loader, self.num_classes, self.ignore_index)
        return {"val_loss": loss, "val_miou": metrics_from_confusion(matrix).miou}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}  # no random state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        return None
