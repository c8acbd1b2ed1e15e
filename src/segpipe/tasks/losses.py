"""Segmentation losses (``train.loss``): one term or a weighted sum, every term skipping ``ignore_index``.

``ce`` and ``focal`` are written here (softmax, per-class weights); ``dice``, ``tversky``, ``jaccard`` and
``lovasz`` come from ``segmentation_models_pytorch.losses`` (multiclass mode, ``ignore_index`` masked out
before any arithmetic, so an ignored pixel's gradient is exactly zero). ``lovasz`` takes no class weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

FOCAL_GAMMA = 2.0  # Lin et al. (2017)


class FocalLoss(nn.Module):
    """Softmax focal loss ``(1 - p_t)^gamma * CE``, weighted per class, averaged over the weights of the
    pixels that count (as weighted cross-entropy is)."""

    def __init__(
        self, ignore_index: int, class_weights: torch.Tensor | None = None, gamma: float = FOCAL_GAMMA
    ) -> None:
        super().__init__()
        self.ignore_index, self.gamma = ignore_index, gamma
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, targets, ignore_index=self.ignore_index, reduction="none")
        valid = targets != self.ignore_index
        weights = valid.to(ce.dtype)
        if self.class_weights is not None:
            weights = weights * self.class_weights[torch.where(valid, targets, 0)]
        focal = (1 - torch.exp(-ce)).pow(self.gamma) * ce
        return (focal * weights).sum() / weights.sum().clamp(min=torch.finfo(ce.dtype).eps)


class WeightedSum(nn.Module):
    """``sum(weight * term(logits, targets))`` over the terms, in order."""

    def __init__(self, terms: Sequence[nn.Module], weights: Sequence[float]):
        super().__init__()
        self.terms, self.weights = nn.ModuleList(terms), list(weights)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        total = self.weights[0] * self.terms[0](logits, targets)
        for weight, term in zip(self.weights[1:], self.terms[1:], strict=True):
            total = total + weight * term(logits, targets)
        return total


def loss_term(name: str, ignore_index: int, class_weights: Sequence[float] | None = None) -> nn.Module:
    """One loss term by name (``ce``, ``focal``, ``dice``, ``tversky``, ``jaccard``, ``lovasz``)."""
    weights = None if class_weights is None else torch.tensor(list(class_weights), dtype=torch.float32)
    if name == "ce":
        return nn.CrossEntropyLoss(weight=weights, ignore_index=ignore_index)
    if name == "focal":
        return FocalLoss(ignore_index, weights)
    from segmentation_models_pytorch import losses  # smp only where one of its losses is used

    smp_weights = None if class_weights is None else list(class_weights)
    if name == "dice":
        return losses.DiceLoss("multiclass", ignore_index=ignore_index, class_weights=smp_weights)
    if name == "tversky":
        return losses.TverskyLoss("multiclass", ignore_index=ignore_index, class_weights=smp_weights)
    if name == "jaccard":
        return losses.JaccardLoss("multiclass", ignore_index=ignore_index, class_weights=smp_weights)
    if name == "lovasz":
        return losses.LovaszLoss("multiclass", ignore_index=ignore_index)
    raise ValueError(f"unknown loss term {name!r}; choose ce, dice, focal, lovasz, tversky or jaccard")


def segmentation_loss(
    terms: Sequence[str],
    weights: Sequence[float],
    ignore_index: int,
    class_weights: Sequence[float] | None = None,
) -> nn.Module:
    """The loss ``train.loss`` describes; a lone term of weight 1 is the term itself."""
    modules = [loss_term(name, ignore_index, class_weights) for name in terms]
    if len(modules) == 1 and weights[0] == 1.0:
        return modules[0]
    return WeightedSum(modules, weights)
