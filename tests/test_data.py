"""prepare writes files, manifest and cache that agree; the loader batches them correctly."""

import numpy as np
import pandas as pd
import torch
from conftest import TINY_PREPARE
from PIL import Image

from segpipe.data.cache import SplitArrays, load_split
from segpipe.data.loader import BatchLoader
from segpipe.data.manifest import DatasetInfo, class_pixel_columns, read_manifest
from segpipe.data.prepare import prepare_dataset
from segpipe.data.synthetic import CLASS_NAMES


def test_prepare_writes_manifest_files_and_cache(prepared):
    info = DatasetInfo.load(prepared)
    assert info.class_names == CLASS_NAMES and info.num_classes >= 6
    assert info.image_size == (32, 48)
    manifest = read_manifest(prepared)
    assert manifest.groupby("split").size().to_dict() == {"train": 6, "val": 3, "test": 3}
    assert manifest["id"].is_unique
    for split in ("train", "val", "test"):
        arrays = load_split(prepared, split)
        rows = manifest[manifest["split"] == split]
        assert arrays.images.shape == (len(rows), 32, 48, 3) and arrays.images.dtype == np.uint8
        assert arrays.masks.shape == (len(rows), 32, 48)
        for row in rows.itertuples():
            assert np.array_equal(np.asarray(Image.open(prepared / row.image_path)), arrays.images[row.index])
            mask = np.asarray(Image.open(prepared / row.mask_path))
            assert np.array_equal(mask, arrays.masks[row.index])
            counts = np.bincount(mask.ravel(), minlength=info.num_classes)[: info.num_classes]
            assert counts.tolist() == [getattr(row, c) for c in class_pixel_columns(info.num_classes)]


def test_prepare_is_deterministic_and_splits_do_not_share_images(tmp_path, prepared):
    again = tmp_path / "again"
    prepare_dataset(TINY_PREPARE, again)
    first, second = read_manifest(prepared), read_manifest(again)
    pd.testing.assert_frame_equal(first, second)
    assert first["content_hash"].is_unique


def test_prepare_replaces_output_whole(prepared):
    (prepared / "stale.txt").write_text("from an older run")
    prepare_dataset(TINY_PREPARE, prepared)
    assert not (prepared / "stale.txt").exists()
    assert (prepared / "manifest.csv").is_file()


def _aligned_arrays(count=10, size=8):
    """Masks that are a pixel-wise function of the image, so any misaligned flip shows."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    return SplitArrays(images=images, masks=(images[..., 0] % 5).astype(np.uint8))


def test_loader_batches_shapes_and_ranges():
    loader = BatchLoader(_aligned_arrays(), batch_size=4, device=torch.device("cpu"))
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    images, masks = batches[0]
    assert images.shape == (4, 3, 8, 8) and images.dtype == torch.float32
    assert masks.shape == (4, 8, 8) and masks.dtype == torch.int64
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert sum(len(m) for _, m in batches) == 10


def test_loader_flips_keep_image_and_mask_aligned():
    loader = BatchLoader(
        _aligned_arrays(), 5, torch.device("cpu"), shuffle=True, hflip=True, vflip=True, seed=3
    )
    flipped_any = False
    originals = torch.from_numpy(_aligned_arrays().images).permute(0, 3, 1, 2).float() / 255
    for epoch in range(3):
        loader.set_epoch(epoch)
        for images, masks in loader:
            red = torch.round(images[:, 0] * 255).long()
            assert torch.equal(masks, red % 5)
            flipped_any |= not any(torch.equal(img, orig) for img in images for orig in originals[:1])
    assert flipped_any


def test_loader_shuffle_is_seeded_per_epoch():
    def order(seed, epoch):
        loader = BatchLoader(_aligned_arrays(), 10, torch.device("cpu"), shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        images, _ = next(iter(loader))
        return images[:, 0, 0, 0]

    assert torch.equal(order(1, 1), order(1, 1))
    assert not torch.equal(order(1, 1), order(1, 2))


def test_loader_drop_last_skips_partial_batch_but_never_everything():
    arrays = _aligned_arrays(count=10)
    assert [len(m) for _, m in BatchLoader(arrays, 4, torch.device("cpu"), drop_last=True)] == [4, 4]
    assert [len(m) for _, m in BatchLoader(arrays, 16, torch.device("cpu"), drop_last=True)] == [10]


def test_loader_batches_are_contiguous_nchw(prepared):
    """A permuted NHWC view would reach the model in channels_last memory (a different, slower path on
    CPU)."""
    import torch

    from segpipe.data.cache import load_split
    from segpipe.data.loader import BatchLoader

    loader = BatchLoader(
        load_split(prepared, "train"), 2, torch.device("cpu"), shuffle=True, hflip=True, vflip=True
    )
    images, masks = next(iter(loader))
    assert images.is_contiguous() and masks.is_contiguous()
