"""Checks shared by the model tests: gradient reach and single-batch overfitting (wiring bugs shape tests miss)."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def block_masks(batch: int, size: int, block: int, classes: int, seed: int = 1) -> torch.Tensor:
    """Masks made of ``block``-sized squares of random classes: learnable only by fitting them."""
    coarse = torch.randint(0, classes, (batch, size // block, size // block), generator=torch.Generator().manual_seed(seed))
    return coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)


def coloured_block_batch(classes: int, size: int = 32, block: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Two images whose blocks are class colours plus noise, and their masks."""
    generator = torch.Generator().manual_seed(0)
    masks = block_masks(2, size, block, classes, seed=0)
    colours = torch.randn(classes, 3, generator=generator)
    noise = torch.randn(2, 3, size, size, generator=generator)
    return colours[masks].permute(0, 3, 1, 2) + 0.3 * noise, masks


def fit_one_batch(
    model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, loss_fn: Callable, steps: int = 150
) -> list[float]:
    """Adam (lr 1e-2) on one batch until the loss is below 10 % of the first, at most ``steps`` steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses: list[float] = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if losses[-1] < 0.1 * losses[0]:
            break
    return losses


def parameters_without_gradient(model: nn.Module, logits: torch.Tensor) -> list[str]:
    """Backpropagate a cross-entropy on ``logits`` (model output) and name the parameters left without gradient."""
    target = torch.randint(0, logits.shape[1], (logits.shape[0], *logits.shape[2:]))
    F.cross_entropy(logits, target).backward()
    return [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
