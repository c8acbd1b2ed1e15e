"""The interface between the training loop and a task."""

from __future__ import annotations

from typing import Literal, Protocol

import torch
from torch import nn

from segpipe.data.loader import Loader

TaskName = Literal["segment", "denoise"]


class Task(Protocol):
    """Turns loader batches into (input, target) pairs, scores outputs and validates a model."""

    name: TaskName
    monitor: str
    """Validation metric (higher is better) that picks the best epoch, e.g. ``val_miou``."""

    def inputs_and_targets(
        self, images: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Model input and training target for one batch (images in [0, 1], masks of class ids)."""
        ...

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch, a 0-dim tensor on the device."""
        ...

    def validate(self, model: nn.Module, loader: Loader) -> dict[str, float]:
        """``val_loss``, ``monitor`` and any other validation metrics over a whole split."""
        ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The task's random state (e.g. its corruption generator), saved with resumable training states."""
        ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...
