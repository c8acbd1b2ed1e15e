"""``task: denoise``: reconstruct the clean image from a corrupted one; L1, L2, 1 - SSIM or L1 + (1 - SSIM)
loss; PSNR and SSIM."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from segpipe.config import DenoiseParams
from segpipe.data.loader import Loader
from segpipe.inference import padded_logits
from segpipe.tasks.corruption import CorruptionKind, corrupt
from segpipe.tasks.quality import psnr, ssim

ReconstructionLoss = Literal["l1", "l2", "ssim", "l1+ssim"]

#: Validation and test images get the same corruption in every epoch and every run: this seed's.
EVALUATION_SEED = 12345


@dataclass(frozen=True)
class Corruption:
    """How clean images are corrupted (see :func:`segpipe.tasks.corruption.corrupt`)."""

    kind: CorruptionKind
    level: float
    patch_size: int = 8

    @classmethod
    def from_params(cls, settings: DenoiseParams) -> Corruption:
        return cls(settings.corruption, settings.level, settings.patch_size)

    def apply(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return corrupt(images, self.kind, self.level, generator, self.patch_size)

    def describe(self) -> str:
        extra = f", patch {self.patch_size}" if self.kind == "masked_patches" else ""
        return f"{self.kind} {self.level:g}{extra}"


def evaluation_generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(EVALUATION_SEED)


def reconstruction_loss(
    restored: torch.Tensor, images: torch.Tensor, kind: ReconstructionLoss
) -> torch.Tensor:
    """Each image's loss (``N``): mean absolute or squared error, 1 - SSIM, or L1 + 1 - SSIM."""
    if kind == "l2":
        return (restored - images).pow(2).flatten(1).mean(1)
    if kind == "ssim":
        return 1 - ssim(restored, images)
    l1 = (restored - images).abs().flatten(1).mean(1)
    return l1 if kind == "l1" else l1 + (1 - ssim(restored, images))


@torch.no_grad()
def reconstruction_scores(
    model: nn.Module | None, loader: Loader, corruption: Corruption, loss: ReconstructionLoss = "l1"
) -> dict[str, float]:
    """Mean loss, PSNR and SSIM over a split corrupted with :data:`EVALUATION_SEED`.

    ``model=None`` scores the corrupted input itself: the reference a denoiser must beat. Images whose sides
    are not multiples of the model's output stride (native sizes) are padded for it and cropped back.
    """
    if model is not None:
        model.eval()
    device = loader.device
    generator = evaluation_generator(device)
    totals = torch.zeros(3, device=device)
    for images, _ in loader:
        noisy = corruption.apply(images, generator)
        restored = noisy if model is None else padded_logits(model, noisy)
        totals += torch.stack(
            [
                reconstruction_loss(restored, images, loss).sum(),
                psnr(restored, images).sum(),
                ssim(restored, images).sum(),
            ]
        )
    loss_value, psnr_value, ssim_value = (totals / loader.num_samples).tolist()
    return {"loss": loss_value, "psnr": psnr_value, "ssim": ssim_value}


@dataclass
class DenoiseTask:
    """Inputs are freshly corrupted training images (seeded), targets the clean images; best epoch: highest
    PSNR."""

    corruption: Corruption
    loss_kind: ReconstructionLoss
    generator: torch.Generator
    name: str = field(default="denoise", init=False)
    monitor: str = field(default="val_psnr", init=False)

    def inputs_and_targets(
        self, images: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.corruption.apply(images, self.generator), images

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.loss_kind == "l1":
            return F.l1_loss(outputs, targets)
        if self.loss_kind == "l2":
            return F.mse_loss(outputs, targets)
        return reconstruction_loss(outputs, targets, self.loss_kind).mean()

    def validate(self, model: nn.Module, loader: Loader) -> dict[str, float]:
        scores = reconstruction_scores(model, loader, self.corruption, self.loss_kind)
        return {f"val_{key}": value for key, value in scores.items()}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
