"""Batches from the uint8 cache: the sampling every loader shares (seeded order, flips, crops, shards) and
the in-memory loader (one tensor copy of the split, flips and crops on the batch, no per-sample Python work).

:func:`make_loader` picks the in-memory loader or the streaming one (:mod:`segpipe.data.streaming`) from
``data.in_memory``; both yield the same batches.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from segpipe.data.cache import SplitArrays

if TYPE_CHECKING:
    from segpipe.config import DataParams
    from segpipe.data.augment import SampleAugmenter
    from segpipe.data.device_augment import DeviceAugmenter

MB = 2**20


class Loader(Protocol):
    """What training and evaluation iterate: ``(images float32 [B, 3, H, W] in [0, 1], masks int64
    [B, H, W])`` batches on ``device``."""

    device: torch.device
    rank: int
    world_size: int

    def __len__(self) -> int: ...

    @property
    def num_samples(self) -> int: ...

    @property
    def batch_size(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...

    def batches(self, first: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass(frozen=True)
class Draws:
    """One epoch's random draws, indexed by sample: the order, flips ``[N, 2]`` (< 0.5: flip horizontally,
    vertically) and crop positions ``[N, 2]`` (fractions of the free rows and columns; None without crops)."""

    order: torch.Tensor
    flips: torch.Tensor
    crops: torch.Tensor | None


@dataclass(frozen=True)
class Sampling:
    """How a split becomes batches; the same for every loader, so they yield the same batches.

    Shuffling and flips use a generator seeded by ``seed + epoch``; a ``crop`` [height, width] cuts each
    sample at a position drawn per (epoch, sample), after padding a smaller image (black; mask
    ``ignore_index``) at the bottom and right. ``drop_last`` (for training) skips a final partial batch,
    since BatchNorm cannot train on one sample.

    Sharded for data-parallel training (``world_size`` processes, this one ``rank``), global batch ``k`` holds
    the samples, in the order and with the flips, of batch ``k`` of one process with batch ``batch_size ×
    world_size``, and this rank yields its contiguous ``rank``-th slice of it; every rank has the same number
    of batches.
    """

    batch_size: int
    shuffle: bool = False
    hflip: bool = False
    vflip: bool = False
    seed: int = 0
    drop_last: bool = False
    crop: tuple[int, int] | None = None
    ignore_index: int = 255
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is not one of the {self.world_size} ranks")

    def draws(self, epoch: int, count: int) -> Draws:
        generator = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(count, generator=generator) if self.shuffle else torch.arange(count)
        flips = torch.rand(count, 2, generator=generator)
        crops = torch.rand(count, 2, generator=generator) if self.crop is not None else None
        return Draws(order, flips, crops)

    def bounds(self, split: SplitArrays) -> list[tuple[int, int]]:
        """``[start, stop)`` of each of this rank's batches in an epoch's order. A split of mixed sizes
        without a crop is read in order, each batch ending where the image size changes."""
        if self.crop is None and split.uniform_size is None and len(split):
            if self.shuffle or self.world_size > 1:
                raise ValueError(
                    "the training images have different sizes: set train.crop: [height, width] to train on "
                    "crops of one size"
                )
            return _equal_size_runs(split.sizes, self.batch_size, self.drop_last)
        count, world = len(split), self.world_size
        full, partial = divmod(count, self.batch_size * world)
        if world > 1 and not (self.drop_last and full):
            raise ValueError(
                f"sharding over {world} ranks needs drop_last and at least one global batch "
                f"({self.batch_size * world} samples; the split has {count})"
            )
        number = full if self.drop_last and full else full + (partial > 0)
        shards = (batch * world + self.rank for batch in range(number))
        return [(shard * self.batch_size, min((shard + 1) * self.batch_size, count)) for shard in shards]

    def shard(self, batch: int) -> int:
        """The global index of this rank's slice of batch ``batch``: augmenters draw per (epoch, shard)."""
        return batch * self.world_size + self.rank


def _equal_size_runs(sizes: np.ndarray, batch_size: int, drop_last: bool) -> list[tuple[int, int]]:
    """Consecutive batches of at most ``batch_size`` samples of one size each, in sample order."""
    changes = np.flatnonzero((sizes[1:] != sizes[:-1]).any(axis=1)) + 1
    edges = [0, *changes.tolist(), len(sizes)]
    bounds = []
    for start, stop in zip(edges[:-1], edges[1:], strict=True):
        for first in range(start, stop, batch_size):
            bounds.append((first, min(first + batch_size, stop)))
    if drop_last:
        bounds = [(a, b) for a, b in bounds if b - a == batch_size] or bounds
    return bounds


def crop_offset(side: int, crop: int, draw: float) -> int:
    """Where a crop of ``crop`` pixels starts along a side of ``side`` (padded up to ``crop``)."""
    free = max(side - crop, 0)
    return min(int(float(draw) * (free + 1)), free)


def crop_sample(
    image: np.ndarray, mask: np.ndarray, size: tuple[int, int], draw: Sequence[float], ignore_index: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``size`` window of an HxWx3 image and its HxW mask at the drawn position; where the image is
    smaller, black pixels and ``ignore_index`` fill the bottom and right."""
    height, width = mask.shape
    top, left = crop_offset(height, size[0], draw[0]), crop_offset(width, size[1], draw[1])
    rows, cols = min(size[0], height - top), min(size[1], width - left)
    out_image = np.zeros((*size, 3), dtype=np.uint8)
    out_mask = np.full(size, ignore_index, dtype=np.uint8)
    out_image[:rows, :cols] = image[top : top + rows, left : left + cols]
    out_mask[:rows, :cols] = mask[top : top + rows, left : left + cols]
    return out_image, out_mask


def crop_batch(
    images: torch.Tensor, masks: torch.Tensor, size: tuple[int, int], draws: torch.Tensor, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`crop_sample` of every sample of a batch of one size (uint8 ``B×3×H×W`` / ``B×H×W``)."""
    height, width = masks.shape[-2:]
    pad_h, pad_w = max(size[0] - height, 0), max(size[1] - width, 0)
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h), value=0)
        masks = F.pad(masks, (0, pad_w, 0, pad_h), value=ignore_index)
    windows = [
        (crop_offset(height, size[0], top), crop_offset(width, size[1], left)) for top, left in draws.tolist()
    ]
    image_crops = [
        image[:, t : t + size[0], s : s + size[1]] for image, (t, s) in zip(images, windows, strict=True)
    ]
    mask_crops = [mask[t : t + size[0], s : s + size[1]] for mask, (t, s) in zip(masks, windows, strict=True)]
    return torch.stack(image_crops), torch.stack(mask_crops)


def flip_where(
    images: torch.Tensor, masks: torch.Tensor, chosen: torch.Tensor, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip the chosen samples of a batch along ``dim`` (image and mask alike)."""
    if not bool(chosen.any()):
        return images, masks
    chosen = chosen.to(images.device)
    images = torch.where(chosen[:, None, None, None], images.flip(dim), images)
    masks = torch.where(chosen[:, None, None], masks.flip(dim), masks)
    return images, masks


def flip_batch(
    images: torch.Tensor, masks: torch.Tensor, flips: torch.Tensor, sampling: Sampling
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's drawn flips (``flips`` ``[B, 2]``, the samples' rows of :attr:`Draws.flips`)."""
    if sampling.hflip:
        images, masks = flip_where(images, masks, flips[:, 0] < 0.5, dim=-1)
    if sampling.vflip:
        images, masks = flip_where(images, masks, flips[:, 1] < 0.5, dim=-2)
    return images, masks


def release_pages(*arrays: np.ndarray) -> None:
    """Drop this process's resident pages of the memory maps under ``arrays`` (the OS page cache keeps the
    data): a pass over a memory-mapped split would otherwise count the whole split in this process's
    resident memory. Arrays not backed by a memory map are left alone."""
    for array in arrays:
        base = array
        while base is not None and not isinstance(base, mmap.mmap):
            base = getattr(base, "base", None)
        if base is not None and hasattr(mmap, "MADV_DONTNEED"):
            base.madvise(mmap.MADV_DONTNEED)


def stack_samples(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``B×3×H×W`` (NCHW-contiguous) and ``B×H×W`` tensors of HxWx3 / HxW samples."""
    images = torch.from_numpy(np.stack([image for image, _ in pairs])).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(np.stack([mask for _, mask in pairs]))


def to_device(
    images: torch.Tensor, masks: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 host batches as float images in [0, 1] and int64 masks on ``device``."""
    if device.type == "cuda" and not images.is_pinned():  # page-locked: the copies overlap the GPU's work
        images, masks = images.pin_memory(), masks.pin_memory()
    images = images.to(device, non_blocking=True).float().div_(255.0)
    return images, masks.to(device, non_blocking=True).long()


class BatchLoader:
    """Batches of a split held in memory: the split is copied to ``device`` once as uint8, and each batch is
    gathered, cropped and flipped there (see :class:`Sampling` for the order, flips, crops and shards).

    An ``augmenter`` (albumentations, :class:`segpipe.data.augment.SampleAugmenter`) replaces the flips: it
    runs per (cropped) sample on the CPU copy, and its batch is then moved to the device. A
    ``device_augmenter`` (:class:`segpipe.data.device_augment.DeviceAugmenter`) zooms and colour-jitters each
    flipped batch on the device instead. Augmenters draw per (epoch, global batch, rank): reproducible and
    resumable, distinct across ranks, but not the draws of a single process.
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
        crop: tuple[int, int] | None = None,
        ignore_index: int = 255,
    ) -> None:
        self.sampling = Sampling(
            batch_size, shuffle, hflip, vflip, seed, drop_last, crop, ignore_index, rank, world_size
        )
        self.augmenter = augmenter
        self.device_augmenter = device_augmenter
        self._host_images = np.array(arrays.images)  # copy out of the mmap
        self._host_masks = np.array(arrays.masks)
        release_pages(arrays.images, arrays.masks)
        # NCHW-contiguous once, so batches have the layout a plain tensor would (the permuted NHWC view is
        # channels_last in memory, which made some models up to 20 % slower per step on the CPU).
        self.images = torch.from_numpy(self._host_images).to(device).permute(0, 3, 1, 2).contiguous()
        self.masks = torch.from_numpy(self._host_masks).to(device)
        self.device = self.images.device
        self.epoch = 0
        self.rank, self.world_size = rank, world_size
        self.bounds = self.sampling.bounds(arrays)

    @classmethod
    def from_sampling(
        cls,
        arrays: SplitArrays,
        sampling: Sampling,
        device: torch.device,
        augmenter: SampleAugmenter | None = None,
        device_augmenter: DeviceAugmenter | None = None,
    ) -> BatchLoader:
        """The loader of ``arrays`` batched as ``sampling`` says (its fields are this class's keywords)."""
        return cls(
            arrays, device=device, augmenter=augmenter, device_augmenter=device_augmenter, **asdict(sampling)
        )

    def __len__(self) -> int:
        return len(self.bounds)

    @property
    def num_samples(self) -> int:
        return int(self.masks.shape[0])

    @property
    def batch_size(self) -> int:
        """Samples per batch on this rank."""
        return self.sampling.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches()

    def batches(self, first: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches from batch ``first`` on: exactly the ones a full pass yields from there
        (order, flips, crops and augmentations depend only on the seed, the epoch and the batch index)."""
        sampling = self.sampling
        draws = sampling.draws(self.epoch, self.num_samples)
        for batch in range(first, len(self.bounds)):
            start, stop = self.bounds[batch]
            index = draws.order[start:stop]
            if self.augmenter is not None:
                self.augmenter.set_epoch(self.epoch, sampling.shard(batch))
                yield self._augmented(index, draws)
                continue
            images = self.images[index.to(self.device)]
            masks = self.masks[index.to(self.device)]
            if sampling.crop is not None:
                images, masks = crop_batch(
                    images, masks, sampling.crop, draws.crops[index], sampling.ignore_index
                )
            images, masks = flip_batch(images, masks, draws.flips[index], sampling)
            images, masks = images.float().div_(255.0), masks.long()
            if self.device_augmenter is not None:
                images, masks = self.device_augmenter(images, masks, self.epoch, sampling.shard(batch))
            yield images, masks

    def _augmented(self, index: torch.Tensor, draws: Draws) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [
            self.augmenter(*sample_pair(self._host_images[i], self._host_masks[i], i, draws, self.sampling))
            for i in index.tolist()
        ]
        return to_device(*stack_samples(pairs), self.device)


def sample_pair(
    image: np.ndarray, mask: np.ndarray, i: int, draws: Draws, sampling: Sampling
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``i`` as the batch takes it: its drawn crop, or itself."""
    if sampling.crop is None:
        return image, mask
    return crop_sample(image, mask, sampling.crop, draws.crops[i].tolist(), sampling.ignore_index)


def fits_in_memory(split: SplitArrays, settings: DataParams) -> bool:
    """``data.in_memory``: whether ``split`` is held in memory (else streamed from the cache)."""
    if settings.in_memory == "false":
        return False
    uniform = split.uniform_size is not None
    if settings.in_memory == "true":
        if not uniform:
            raise ValueError(
                "data.in_memory: true needs images of one size, but this split's sizes differ; "
                "set data.in_memory: auto"
            )
        return True
    return uniform and split.nbytes <= settings.memory_budget_mb * MB


def make_loader(
    split: SplitArrays,
    settings: DataParams,
    batch_size: int,
    device: torch.device,
    augmenter: SampleAugmenter | None = None,
    device_augmenter: DeviceAugmenter | None = None,
    **sampling: object,
) -> Loader:
    """The in-memory :class:`BatchLoader` or the streaming loader for ``split`` (see
    :func:`fits_in_memory`), batched by ``Sampling(batch_size, **sampling)``."""
    in_memory = fits_in_memory(split, settings)
    batching = Sampling(batch_size, **sampling)
    if in_memory:
        return BatchLoader.from_sampling(split, batching, device, augmenter, device_augmenter)
    from segpipe.data.streaming import StreamingLoader  # it builds on this module

    return StreamingLoader(split, batching, device, settings.workers, augmenter, device_augmenter)
