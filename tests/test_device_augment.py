"""On-device zoom and colour jitter: mask and image move together, outside pixels are ignored, seeded per
batch."""

import numpy as np
import torch

from segpipe.config import AugmentParams, ColorJitterParams
from segpipe.data.cache import SplitArrays
from segpipe.data.device_augment import DeviceAugmenter
from segpipe.data.loader import BatchLoader

IGNORE = 255
CPU = torch.device("cpu")


def striped_batch(count: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Class = column band (4 bands); the image's red channel encodes the same band."""
    masks = (torch.arange(size) // (size // 4)).expand(count, size, size).clone()
    images = torch.zeros(count, 3, size, size)
    images[:, 0] = masks.float() / 3
    return images, masks


def test_zoom_out_pads_masks_with_ignore_and_keeps_image_and_mask_aligned():
    augmenter = DeviceAugmenter(AugmentParams(scale=(0.5, 0.5)), IGNORE, seed=0, device=CPU)
    images, masks = striped_batch()
    out_images, out_masks = augmenter(images, masks, epoch=1, batch=0)
    assert out_images.shape == images.shape and out_masks.dtype == torch.int64
    assert (out_masks[:, 0, :] == IGNORE).all() and (out_masks[:, 16, 16] != IGNORE).all()  # border outside
    inside = out_masks != IGNORE
    assert set(out_masks[inside].unique().tolist()) == {0, 1, 2, 3}  # every class is still there, shrunk
    red = out_images[:, 0]
    core = inside & (torch.nn.functional.avg_pool2d(inside.float().unsqueeze(1), 3, 1, 1).squeeze(1) == 1)
    # away from band edges the image shows the class its mask says (bilinear vs nearest differ only at edges)
    assert ((red[core] * 3).round() - out_masks[core]).abs().max() <= 1
    assert (out_images[:, :, 0, :] == 0).all()  # padded image pixels are black


def test_zoom_in_crops_without_ignored_pixels():
    augmenter = DeviceAugmenter(AugmentParams(scale=(2.0, 2.0)), IGNORE, seed=0, device=CPU)
    _, masks = augmenter(*striped_batch(), epoch=1, batch=0)
    assert not (masks == IGNORE).any() and set(masks.unique().tolist()) == {1, 2}  # the centre two bands


def test_colour_jitter_changes_images_within_range_and_leaves_masks():
    jitter = ColorJitterParams(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    augmenter = DeviceAugmenter(AugmentParams(color_jitter=jitter), IGNORE, seed=0, device=CPU)
    images = torch.rand(4, 3, 16, 16)
    masks = torch.randint(0, 3, (4, 16, 16))
    out_images, out_masks = augmenter(images, masks, epoch=1, batch=0)
    assert torch.equal(out_masks, masks)
    assert out_images.min() >= 0 and out_images.max() <= 1 and not torch.allclose(out_images, images)


def test_hue_rotation_keeps_grey_pixels_grey():
    jitter = ColorJitterParams(brightness=0, contrast=0, saturation=0, hue=0.5)
    augmenter = DeviceAugmenter(AugmentParams(color_jitter=jitter), IGNORE, seed=0, device=CPU)
    grey = torch.full((2, 3, 8, 8), 0.4)
    out, _ = augmenter(grey, torch.zeros(2, 8, 8, dtype=torch.long), epoch=1, batch=0)
    assert torch.allclose(out, grey, atol=1e-5)


def test_loader_applies_the_device_augmenter_reproducibly_per_epoch_and_batch():
    rng = np.random.default_rng(0)
    arrays = SplitArrays(
        rng.integers(0, 255, (8, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, (8, 16, 16), dtype=np.uint8)
    )
    params = AugmentParams(hflip=True, scale=(0.6, 1.4), color_jitter=ColorJitterParams())

    def batches(epoch: int, first: int = 0):
        loader = BatchLoader(
            arrays,
            4,
            CPU,
            shuffle=True,
            hflip=True,
            seed=1,
            device_augmenter=DeviceAugmenter(params, IGNORE, seed=1, device=CPU),
        )
        loader.set_epoch(epoch)
        return list(loader.batches(first))

    first, again, other = batches(1), batches(1), batches(2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0][0], other[0][0])
    resumed = batches(1, first=1)  # a resumed epoch sees the same augmentations for the batches it still runs
    assert torch.equal(resumed[0][0], first[1][0]) and torch.equal(resumed[0][1], first[1][1])
    assert any((batch_masks == IGNORE).any() for _, batch_masks in first)  # some zoom-outs happened
