"""Batches straight from the uint8 cache: one tensor copy per epoch, flips on the batch, no per-sample
Python work."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from segpipe.data.cache import SplitArrays

if TYPE_CHECKING:
    from segpipe.data.augment import SampleAugmenter
    from segpipe.data.device_augment import DeviceAugmenter


class BatchLoader:
    """Iterate ``(images float32 [B, 3, H, W] in [0, 1], masks int64 [B, H, W])`` batches on ``device``.

    The split is copied to ``device`` once as uint8; shuffling uses a generator seeded by
    ``seed + epoch`` so every run sees the same order; flips are applied to image and mask together,
    on the device. An ``augmenter`` (albumentations, :class:`segpipe.data.augment.SampleAugmenter`)
    replaces the flips: it runs per sample on the CPU copy, and its batch is then moved to the device.
    A ``device_augmenter`` (:class:`segpipe.data.device_augment.DeviceAugmenter`) zooms and colour-jitters
    each flipped batch on the device instead.
    ``drop_last`` (for training) skips a final partial batch, since BatchNorm cannot train on one sample.

    Sharded for data-parallel training (``world_size`` processes, this one ``rank``), global batch ``k`` holds
    the samples, in the order and with the flips, of batch ``k`` of one process with batch ``batch_size ×
    world_size``, and this rank yields its contiguous ``rank``-th slice of it; every rank has the same number
    of batches. Augmenters draw per (epoch, global batch, rank) instead: reproducible and resumable, distinct
    across ranks, but not the draws of a single process.
    """

    def __init__(
        self,
        arrays: SplitArrays,
        batch_size: int,
        device: torch.device,
        shuffle: bool = False,
        hflip: bool = False,
        vflip: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        augmenter: SampleAugmenter | None = None,
        device_augmenter: DeviceAugmenter | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of the {world_size} ranks")
        self.augmenter = augmenter
        self.device_augmenter = device_augmenter
        self._host_images = np.array(arrays.images)  # copy out of the mmap
        self._host_masks = np.array(arrays.masks)
        # NCHW-contiguous once, so batches have the layout a plain tensor would (the permuted NHWC view is
        # channels_last in memory, which made some models up to 20 % slower per step on the CPU).
        self.images = torch.from_numpy(self._host_images).to(device).permute(0, 3, 1, 2).contiguous()
        self.masks = torch.from_numpy(self._host_masks).to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.hflip = hflip
        self.vflip = vflip
        self.seed = seed
        self.epoch = 0
        self.rank = rank
        self.world_size = world_size
        count = int(self.masks.shape[0])
        global_batch = batch_size * world_size
        full, partial = divmod(count, global_batch)
        if world_size > 1 and not (drop_last and full):
            raise ValueError(
                f"sharding over {world_size} ranks needs drop_last and at least one global batch "
                f"({global_batch} samples; the split has {count})"
            )
        self.num_batches = full if drop_last and full else full + (partial > 0)

    def __len__(self) -> int:
        return self.num_batches

    @property
    def num_samples(self) -> int:
        return int(self.masks.shape[0])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()

    def batches(self, first: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches from batch ``first`` on: exactly the ones a full pass yields from there
        (order, flips and augmentations depend only on the seed, the epoch and the batch index)."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        count = self.num_samples
        order = torch.randperm(count, generator=generator) if self.shuffle else torch.arange(count)
        flips = torch.rand(count, 2, generator=generator)
        for batch in range(first, self.num_batches):
            shard = (
                batch * self.world_size + self.rank
            )  # this rank's slice of the global batch (1 process: the batch)
            index = order[shard * self.batch_size : (shard + 1) * self.batch_size]
            if self.augmenter is not None:
                self.augmenter.set_epoch(self.epoch, shard)
                yield self._augmented(index)
                continue
            images = self.images[index.to(self.images.device)]
            masks = self.masks[index.to(self.masks.device)]
            if self.hflip:
                images, masks = _flip_where(images, masks, flips[index, 0] < 0.5, dim=-1)
            if self.vflip:
                images, masks = _flip_where(images, masks, flips[index, 1] < 0.5, dim=-2)
            images, masks = images.float().div_(255.0), masks.long()
            if self.device_augmenter is not None:
                images, masks = self.device_augmenter(images, masks, self.epoch, shard)
            yield images, masks

    def _augmented(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.augmenter(self._host_images[i], self._host_masks[i]) for i in index.tolist()]
        images = torch.from_numpy(np.stack([image for image, _ in pairs])).permute(0, 3, 1, 2).contiguous()
        masks = torch.from_numpy(np.stack([mask for _, mask in pairs]))
        device = self.images.device
        if device.type == "cuda":  # page-locked, so the copies below overlap with the GPU's work
            images, masks = images.pin_memory(), masks.pin_memory()
        return images.to(device, non_blocking=True).float().div_(255.0), masks.to(
            device, non_blocking=True
        ).long()


def _flip_where(
    images: torch.Tensor, masks: torch.Tensor, chosen: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip the chosen samples of a batch along ``dim`` (image and mask alike)."""
    if not bool(chosen.any()):
        return images, masks
    chosen = chosen.to(images.device)
    images = torch.where(chosen[:, None, None, None], images.flip(dim), images)
    masks = torch.where(chosen[:, None, None], masks.flip(dim), masks)
    return images, masks
