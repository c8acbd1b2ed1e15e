"""The array cache (one size or mixed sizes) and the bounded-memory prepare that writes it."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_PREPARE
from PIL import Image

from segpipe.config import PrepareParams
from segpipe.data import synthetic
from segpipe.data.cache import SplitArrays, SplitWriter, cache_paths, load_split, packed_paths, save_split
from segpipe.data.errors import DatasetError
from segpipe.data.manifest import INFO_FILE, SPLITS, DatasetInfo, read_manifest
from segpipe.data.prepare import prepare_dataset

CLASSES = ("background", "road", "car")
MIXED = {
    "train": [(20, 30), (31, 17), (20, 30), (16, 16), (24, 40)],
    "val": [(18, 22)],
    "test": [(25, 19), (19, 25)],
}


def random_sample(seed: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Noise image and class ids 0..2 with an ignore (255) corner."""
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 3, size, dtype=np.uint8)
    mask[0, 0] = 255
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8), mask


def make_folder(root: Path, sizes: dict[str, list[tuple[int, int]]]) -> Path:
    """A ``folder`` dataset: ``<split>/images|masks/<split>_<i>.png`` of the given sizes, and classes.txt."""
    for number, (split, split_sizes) in enumerate(sizes.items()):
        for index, size in enumerate(split_sizes):
            image, mask = random_sample(100 * number + index, size)
            for kind, pixels in (("images", image), ("masks", mask)):
                (root / split / kind).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / split / kind / f"{split}_{index}.png")
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def native_params(root: Path, **overrides: object) -> PrepareParams:
    settings = {"dataset": "folder", "root": str(root), "image_size": None, "workers": 2, **overrides}
    return PrepareParams(**settings)


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


# --- SplitArrays -------------------------------------------------------------------------------------------


def mixed_arrays(tmp_path: Path) -> tuple[SplitArrays, list[tuple[np.ndarray, np.ndarray]]]:
    samples = [random_sample(seed, size) for seed, size in enumerate([(5, 7), (3, 4), (6, 2)])]
    images = [image for image, _ in samples]
    blob = np.concatenate([np.concatenate([image.ravel(), mask.ravel()]) for image, mask in samples])
    offsets = np.cumsum([0] + [image.size * 4 // 3 for image in images])[:-1]
    index = np.array([[offset, *image.shape[:2]] for offset, image in zip(offsets, images, strict=True)])
    save_split(tmp_path, "train", SplitArrays.packed(blob, index))
    return load_split(tmp_path, "train"), samples


def test_mixed_split_reads_each_sample_as_a_view(tmp_path: Path) -> None:
    arrays, samples = mixed_arrays(tmp_path)
    assert all(path.is_file() for path in packed_paths(tmp_path, "train"))
    assert not cache_paths(tmp_path, "train")[0].exists()
    assert len(arrays) == 3 and arrays.uniform_size is None
    assert [arrays.shape(i) for i in range(3)] == [(5, 7), (3, 4), (6, 2)]
    assert arrays.sizes.tolist() == [[5, 7], [3, 4], [6, 2]]
    assert arrays.nbytes == sum(image.nbytes + mask.nbytes for image, mask in samples)
    for i, (image, mask) in enumerate(samples):
        assert arrays.image(i).dtype == np.uint8 and arrays.mask(i).dtype == np.uint8
        np.testing.assert_array_equal(arrays.image(i), image)
        np.testing.assert_array_equal(arrays.mask(i), mask)
        assert not arrays.image(i).flags.owndata and not arrays.mask(i).flags.owndata  # views of the map
    with pytest.raises(ValueError, match=r"different sizes \(3x4, 5x7, 6x2\).*image\(i\)"):
        _ = arrays.images
    with pytest.raises(ValueError, match="different sizes"):
        _ = arrays.masks


def test_uniform_split_keeps_the_npy_pair_byte_for_byte(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 8, 9, 3), dtype=np.uint8)
    masks = rng.integers(0, 6, (4, 8, 9), dtype=np.uint8)
    save_split(tmp_path, "val", SplitArrays(images, masks))
    for path, array in zip(cache_paths(tmp_path, "val"), (images, masks), strict=True):
        reference = io.BytesIO()
        np.save(reference, array)
        assert path.read_bytes() == reference.getvalue()
    assert not packed_paths(tmp_path, "val")[0].exists()
    arrays = load_split(tmp_path, "val")
    assert isinstance(arrays.images, np.memmap) and arrays.uniform_size == (8, 9)
    assert len(arrays) == 4 and arrays.nbytes == images.nbytes + masks.nbytes and arrays.shape(3) == (8, 9)
    assert np.shares_memory(arrays.image(2), arrays.images) and np.shares_memory(arrays.mask(2), arrays.masks)
    np.testing.assert_array_equal(arrays.image(2), images[2])


def test_a_packed_split_of_one_size_still_stacks(tmp_path: Path) -> None:
    samples = [random_sample(seed, (4, 5)) for seed in range(3)]
    blob = np.concatenate([np.concatenate([image.ravel(), mask.ravel()]) for image, mask in samples])
    arrays = SplitArrays.packed(blob, np.array([[80 * i, 4, 5] for i in range(3)]))
    assert arrays.uniform_size == (4, 5)
    np.testing.assert_array_equal(arrays.images, np.stack([image for image, _ in samples]))
    np.testing.assert_array_equal(arrays.masks, np.stack([mask for _, mask in samples]))


def test_loading_never_unpickles(tmp_path: Path) -> None:
    mixed_arrays(tmp_path)
    _, index_path = packed_paths(tmp_path, "train")
    np.save(index_path, np.array([[0, 5, 7]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        load_split(tmp_path, "train")


def test_an_index_past_the_blob_is_a_clear_error(tmp_path: Path) -> None:
    mixed_arrays(tmp_path)
    _, index_path = packed_paths(tmp_path, "train")
    np.save(index_path, np.array([[0, 5, 7], [1000, 3, 4]], dtype=np.int64))
    with pytest.raises(ValueError, match=r"train_samples.npy.*outside.*re-run prepare"):
        load_split(tmp_path, "train")


def test_a_missing_cache_says_to_run_prepare(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"train_images.npy is missing: run the prepare stage"):
        load_split(tmp_path, "train")


# --- prepare ----------------------------------------------------------------------------------------------


def test_native_sizes_round_trip_every_sample_exactly(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", MIXED)
    info = prepare_dataset(native_params(raw), tmp_path / "prepared")
    prepared = tmp_path / "prepared"
    assert info.image_size is None and DatasetInfo.load(prepared).image_size is None
    manifest = read_manifest(prepared)
    arrays = {split: load_split(prepared, split) for split in SPLITS}
    assert {split: len(arrays[split]) for split in SPLITS} == {k: len(v) for k, v in MIXED.items()}
    for row in manifest.itertuples():
        image = np.asarray(Image.open(row.source_image))
        mask = np.asarray(Image.open(row.source_mask))
        np.testing.assert_array_equal(arrays[row.split].image(row.index), image)
        np.testing.assert_array_equal(arrays[row.split].mask(row.index), mask)
        np.testing.assert_array_equal(np.asarray(Image.open(prepared / row.image_path)), image)
        np.testing.assert_array_equal(np.asarray(Image.open(prepared / row.mask_path)), mask)
        assert (row.height, row.width) == image.shape[:2]
    assert packed_paths(prepared, "train")[0].is_file() and cache_paths(prepared, "val")[0].is_file()
    assert arrays["val"].uniform_size == (18, 22) and arrays["train"].uniform_size is None


def test_native_sizes_of_one_size_keep_the_npy_pair(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", {split: [(20, 28)] * 3 for split in SPLITS})
    info = prepare_dataset(native_params(raw), tmp_path / "prepared")
    assert info.image_size == (20, 28)
    assert load_split(tmp_path / "prepared", "train").images.shape == (3, 20, 28, 3)
    assert not packed_paths(tmp_path / "prepared", "train")[0].exists()


def test_max_side_downscales_only_larger_images(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", {"train": [(40, 64), (20, 24)], "val": [(64, 16)], "test": [(8, 8)]})
    prepared = tmp_path / "prepared"
    prepare_dataset(native_params(raw, max_side=32), prepared)
    expected_sizes = {"train": [(20, 32), (20, 24)], "val": [(32, 8)], "test": [(8, 8)]}
    for row in read_manifest(prepared).itertuples():
        arrays = load_split(prepared, row.split)
        height, width = expected_sizes[row.split][row.index]
        assert arrays.shape(row.index) == (height, width)
        source_image, source_mask = Image.open(row.source_image), Image.open(row.source_mask)
        image = np.asarray(source_image.resize((width, height), Image.Resampling.BILINEAR))
        mask = np.asarray(source_mask.resize((width, height), Image.Resampling.NEAREST))
        np.testing.assert_array_equal(arrays.image(row.index), image)
        np.testing.assert_array_equal(arrays.mask(row.index), mask)
        assert set(np.unique(arrays.mask(row.index))) <= {0, 1, 2, 255}


def test_the_default_synthetic_cache_is_unchanged(prepared: Path) -> None:
    """The cache equals the arrays rendered and stacked whole, saved with np.save."""
    for number, split in enumerate(SPLITS):
        count = getattr(TINY_PREPARE.splits, split)
        scenes = [
            synthetic.render_scene(np.random.default_rng([TINY_PREPARE.seed, number, index]), 32, 48)
            for index in range(count)
        ]
        for path, arrays in zip(cache_paths(prepared, split), zip(*scenes, strict=True), strict=True):
            reference = io.BytesIO()
            np.save(reference, np.stack(arrays))
            assert path.read_bytes() == reference.getvalue()


def test_mean_and_std_are_those_of_the_training_split(tmp_path: Path, prepared: Path) -> None:
    info = DatasetInfo.load(prepared)
    train = np.asarray(load_split(prepared, "train").images) / 255
    np.testing.assert_allclose(info.mean, train.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(info.std, train.std(axis=(0, 1, 2)), rtol=1e-12)
    raw = make_folder(tmp_path / "raw", MIXED)
    mixed = prepare_dataset(native_params(raw), tmp_path / "mixed")
    arrays = load_split(tmp_path / "mixed", "train")
    pixels = np.concatenate([arrays.image(i).reshape(-1, 3) for i in range(len(arrays))]) / 255
    np.testing.assert_allclose(mixed.mean, pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(mixed.std, pixels.std(axis=0), rtol=1e-12)


def test_dataset_json_without_statistics_still_loads(prepared: Path) -> None:
    path = prepared / INFO_FILE
    path.write_text(path.read_text().split(',\n  "mean"')[0] + "\n}\n")
    info = DatasetInfo.load(prepared)
    assert info.mean is None and info.std is None and info.image_size == (32, 48)


def test_bad_files_are_all_reported_and_the_previous_data_stays(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", MIXED)
    prepared = tmp_path / "data" / "prepared"
    prepare_dataset(native_params(raw), prepared)
    before = tree_digest(prepared)
    truncated = raw / "train" / "images" / "train_3.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    bad_mask = raw / "test" / "masks" / "test_1.png"
    Image.fromarray(np.full((19, 25), 7, np.uint8)).save(bad_mask)
    with pytest.raises(DatasetError) as error:
        prepare_dataset(native_params(raw), prepared)
    message = str(error.value)
    assert "2 of 8 samples cannot be used" in message
    assert str(truncated) in message and str(bad_mask) in message
    assert tree_digest(prepared) == before
    assert os.listdir(prepared.parent) == ["prepared"]


def _prepare_peak(tmp_path: Path, train: int) -> int:
    """Peak traced memory (bytes) of preparing ``train`` 160x160 synthetic training images in-process."""
    params = PrepareParams(
        seed=1, image_size=(160, 160), splits={"train": train, "val": 1, "test": 1}, workers=1
    )
    tracemalloc.start()
    try:
        prepare_dataset(params, tmp_path / f"prepared_{train}")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_prepare_memory_does_not_grow_with_the_dataset(tmp_path: Path) -> None:
    """Four times the images: the peak grows by far less than the extra decoded pixels (stacking a split,
    as a whole-split prepare does, would add all of them)."""
    small, large = _prepare_peak(tmp_path, 8), _prepare_peak(tmp_path, 32)
    extra_pixels = 24 * 160 * 160 * 4
    assert large - small < extra_pixels / 4, (small, large)


def test_the_writer_refuses_a_sample_of_another_size(tmp_path: Path) -> None:
    with SplitWriter(tmp_path, "train", [(4, 5), (6, 7)]) as writer:
        image, mask = random_sample(0, (5, 4))
        with pytest.raises(ValueError, match=r"sample 1 is \(5, 4, 3\).*\(6, 7\) was announced"):
            writer.write(1, image, mask)


def test_a_loaded_split_pickles_as_its_location(tmp_path: Path) -> None:
    """Worker processes reopen the memory map instead of receiving a copy of every pixel."""
    arrays, samples = mixed_arrays(tmp_path)
    payload = pickle.dumps(arrays)
    assert len(payload) < 1000
    again = pickle.loads(payload)
    assert len(again) == 3 and again.sizes.tolist() == arrays.sizes.tolist()
    np.testing.assert_array_equal(again.image(1), samples[1][0])
    in_memory = pickle.loads(
        pickle.dumps(SplitArrays(np.zeros((2, 3, 4, 3), np.uint8), np.ones((2, 3, 4), np.uint8)))
    )
    np.testing.assert_array_equal(in_memory.masks, np.ones((2, 3, 4), np.uint8))
