"""albumentations augmentations: same geometry for image and mask, seeded, size kept, ignore padding."""

import os

import numpy as np
import pytest
import torch

from segpipe.config import AugmentParams, ConfigError, parse_params
from segpipe.data.augment import SampleAugmenter
from segpipe.data.cache import SplitArrays
from segpipe.data.loader import BatchLoader

IGNORE = 255


def position_coded(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """An image whose red channel and mask both encode the column, green the row."""
    rows, cols = np.mgrid[0:size, 0:size]
    image = np.stack([cols * 8, rows * 8, np.full_like(rows, 128)], axis=-1).astype(np.uint8)
    mask = (cols // 8).astype(np.uint8)  # 4 vertical stripes: classes 0..3
    return image, mask


def test_flips_move_image_and_mask_together():
    image, mask = position_coded()
    augmenter = SampleAugmenter(AugmentParams(hflip=True, vflip=True, scale=(1.0, 1.0)), IGNORE, seed=0)
    seen_flipped = False
    for epoch in range(8):
        augmenter.set_epoch(epoch)
        out_image, out_mask = augmenter(image, mask)
        assert np.array_equal(out_mask, (out_image[..., 0] // 64).astype(np.uint8))
        seen_flipped |= not np.array_equal(out_mask, mask)
    assert seen_flipped


def test_zoom_out_pads_image_black_and_mask_ignore():
    image, mask = position_coded()
    out_image, out_mask = SampleAugmenter(AugmentParams(hflip=False, scale=(0.5, 0.5)), IGNORE, seed=0)(
        image, mask
    )
    assert out_image.shape == image.shape and out_mask.shape == mask.shape
    assert (out_mask[0] == IGNORE).all() and (out_mask[:, 0] == IGNORE).all()
    assert (out_image[0] == 0).all()
    assert set(np.unique(out_mask)) <= {0, 1, 2, 3, IGNORE} and (out_mask != IGNORE).mean() == pytest.approx(
        0.25, abs=0.05
    )


def test_zoom_in_crops_without_inventing_labels():
    image, mask = position_coded()
    out_image, out_mask = SampleAugmenter(AugmentParams(hflip=False, scale=(2.0, 2.0)), IGNORE, seed=0)(
        image, mask
    )
    assert out_mask.shape == mask.shape and set(np.unique(out_mask)) == {
        1,
        2,
    }  # the centre half: stripes 1 and 2


def test_colour_jitter_changes_the_image_only():
    image, mask = position_coded()
    params = parse_params(
        {"train": {"augment": {"hflip": False, "color_jitter": {"brightness": 0.5}}}}
    ).train.augment
    out_image, out_mask = SampleAugmenter(params, IGNORE, seed=3)(image, mask)
    assert np.array_equal(out_mask, mask) and not np.array_equal(out_image, image)


def test_augmentation_is_seeded_per_epoch():
    image, mask = position_coded()
    params = AugmentParams(hflip=True, vflip=True, scale=(0.7, 1.3))
    first, second = SampleAugmenter(params, IGNORE, seed=5), SampleAugmenter(params, IGNORE, seed=5)
    first.set_epoch(2)
    second.set_epoch(2)
    assert all(np.array_equal(a, b) for a, b in zip(first(image, mask), second(image, mask), strict=True))
    second.set_epoch(3)
    first.set_epoch(2)
    assert not np.array_equal(first(image, mask)[0], second(image, mask)[0])
    assert os.environ["NO_ALBUMENTATIONS_UPDATE"] == "1"  # no update check against PyPI


def test_loader_with_augmenter_yields_device_batches_reproducibly():
    image, mask = position_coded()
    arrays = SplitArrays(np.stack([image] * 6), np.stack([mask] * 6))
    params = AugmentParams(hflip=True, scale=(0.8, 1.2))

    def epoch_batches(epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = BatchLoader(
            arrays,
            4,
            torch.device("cpu"),
            shuffle=True,
            seed=1,
            drop_last=True,
            augmenter=SampleAugmenter(params, IGNORE, seed=1),
        )
        loader.set_epoch(epoch)
        return list(loader)

    batches = epoch_batches(1)
    assert len(batches) == 1
    images, masks = batches[0]
    assert (
        images.shape == (4, 3, 32, 32)
        and images.dtype == torch.float32
        and images.min() >= 0
        and images.max() <= 1
    )
    assert masks.shape == (4, 32, 32) and masks.dtype == torch.int64
    again = epoch_batches(1)[0]
    assert torch.equal(images, again[0]) and torch.equal(masks, again[1])


def test_scale_range_is_validated():
    with pytest.raises(ConfigError, match=r"train.augment.scale"):
        parse_params({"train": {"augment": {"scale": [1.2, 0.8]}}})
    assert not AugmentParams().needs_library and AugmentParams(scale=(0.9, 1.1)).needs_library
