"""Batches read from the memory-mapped cache as they are needed, for splits larger than memory.

Worker processes (``data.workers``, a ``torch.utils.data.DataLoader``) read each batch's samples, crop,
augment and flip them and hand the uint8 batch over (page-locked on CUDA); the training process only moves it
to the device. Order, flips, crops, shards and augmentations follow :class:`~segpipe.data.loader.Sampling`,
so the batches are the in-memory loader's, value for value.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from segpipe.data.cache import SplitArrays
from segpipe.data.loader import (
    Draws,
    Sampling,
    flip_batch,
    release_pages,
    sample_pair,
    stack_samples,
    to_device,
)

if TYPE_CHECKING:
    from segpipe.data.augment import SampleAugmenter
    from segpipe.data.device_augment import DeviceAugmenter

BatchKey = tuple[int, int]
"""(epoch, batch): all a worker needs to assemble a batch."""


class BatchReader(Dataset):
    """Assembles batch ``(epoch, batch)`` of a split from the cache as uint8 ``B×3×H×W`` / ``B×H×W``."""

    def __init__(
        self, split: SplitArrays, sampling: Sampling, augmenter: SampleAugmenter | None = None
    ) -> None:
        self.split = split
        self.sampling = sampling
        self.augmenter = augmenter
        self.bounds = sampling.bounds(split)
        self._draws: tuple[int, Draws] | None = None

    def __len__(self) -> int:
        return len(self.bounds)

    def draws(self, epoch: int) -> Draws:
        """The epoch's draws, computed once per epoch in each process."""
        if self._draws is None or self._draws[0] != epoch:
            self._draws = (epoch, self.sampling.draws(epoch, len(self.split)))
        return self._draws[1]

    def __getitem__(self, key: BatchKey) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, batch = key
        draws = self.draws(epoch)
        start, stop = self.bounds[batch]
        index = draws.order[start:stop]
        if self.augmenter is not None:
            self.augmenter.set_epoch(epoch, self.sampling.shard(batch))
        pairs = [self._sample(i, draws) for i in index.tolist()]
        images, masks = stack_samples(pairs)
        release_pages(self.split.image(0), self.split.mask(0))  # the batch holds copies of its samples
        if self.augmenter is None:
            images, masks = flip_batch(images, masks, draws.flips[index], self.sampling)
        return images, masks

    def _sample(self, i: int, draws: Draws) -> tuple[np.ndarray, np.ndarray]:
        pair = sample_pair(self.split.image(i), self.split.mask(i), i, draws, self.sampling)
        return pair if self.augmenter is None else self.augmenter(*pair)


class BatchKeys(Sampler[BatchKey]):
    """The keys of one pass: ``(epoch, batch)`` for batch ``first`` to the last, set before each pass."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.epoch, self.first = 0, 0

    def __len__(self) -> int:
        return self.count - self.first

    def __iter__(self) -> Iterator[BatchKey]:
        return ((self.epoch, batch) for batch in range(self.first, self.count))


class StreamingLoader:
    """The :class:`~segpipe.data.loader.BatchLoader` interface over a split read batch by batch.

    ``sampling`` sets the order, flips, crops and shards; ``workers`` reading processes (0: read in this
    process) assemble the batches, running the ``augmenter`` on each sample; the ``device_augmenter`` then
    runs on the device, as in :class:`~segpipe.data.loader.BatchLoader`. Memory holds a few batches per
    worker, whatever the split's size.
    """

    def __init__(
        self,
        split: SplitArrays,
        sampling: Sampling,
        device: torch.device,
        workers: int = 0,
        augmenter: SampleAugmenter | None = None,
        device_augmenter: DeviceAugmenter | None = None,
    ) -> None:
        self.sampling = sampling
        self.reader = BatchReader(split, self.sampling, augmenter)
        self.keys = BatchKeys(len(self.reader))
        self.device = torch.empty(0, device=device).device
        self.device_augmenter = device_augmenter
        self.rank, self.world_size = sampling.rank, sampling.world_size
        self.epoch = 0
        self._num_samples = len(split)
        self.loader = DataLoader(
            self.reader,
            batch_size=None,  # the reader assembles whole batches
            sampler=self.keys,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=workers > 0,
            generator=torch.Generator(),  # the workers' seeds: never a draw from the global generator
        )

    def __len__(self) -> int:
        return len(self.reader)

    @property
    def num_samples(self) -> int:
        return self._num_samples

    @property
    def batch_size(self) -> int:
        """Samples per batch on this rank."""
        return self.sampling.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()

    def batches(self, first: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches from batch ``first`` on, as :meth:`BatchLoader.batches`."""
        self.keys.epoch, self.keys.first = self.epoch, first
        for batch, (images, masks) in enumerate(self.loader, start=first):
            images, masks = to_device(images, masks, self.device)
            if self.device_augmenter is not None:
                images, masks = self.device_augmenter(images, masks, self.epoch, self.sampling.shard(batch))
            yield images, masks
