"""Reading dataset images and masks: formats, modes and every kind of bad file as a DatasetError."""

import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe.data.decode import IMAGE_SUFFIXES, file_digest, read_image, read_mask
from segpipe.data.errors import DatasetError

PALETTE = [(0, 0, 0), (255, 0, 0), (0, 128, 0)]


def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    image.save(path)
    return path


def _names(path: Path, problem: str) -> str:
    """A pattern for a DatasetError message: the path, then the problem."""
    return re.escape(f"{path}: {problem}")


def _noise(height: int = 40, width: int = 50) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _colour_mask(ids: np.ndarray, palette=PALETTE) -> np.ndarray:
    return np.asarray(palette, dtype=np.uint8)[ids]


# ---------------------------------------------------------------- bad files


def test_truncated_png_is_a_dataset_error(tmp_path):
    path = _save(tmp_path / "cut.png", _noise())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=_names(path, "the image file is truncated or corrupt")) as info:
        read_image(path)
    assert "Fix: re-copy or re-export the file" in str(info.value)
    with pytest.raises(DatasetError, match=_names(path, "the mask file is truncated or corrupt")):
        read_mask(path)


def test_text_file_with_png_suffix_is_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n")
    with pytest.raises(DatasetError, match=_names(path, "the image file is not an image in a known format") + ".*Fix: replace it with a PNG"):
        read_image(path)


def test_zero_byte_file_is_empty(tmp_path):
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(DatasetError, match=_names(path, "the mask file is empty (0 bytes)")):
        read_mask(path)


def test_missing_file(tmp_path):
    path = tmp_path / "gone.png"
    with pytest.raises(DatasetError, match=_names(path, "the image file does not exist")):
        read_image(path)


def test_directory_instead_of_file(tmp_path):
    path = tmp_path / "folder.png"
    path.mkdir()
    with pytest.raises(DatasetError, match=_names(path, "the image path is a directory, not a file")):
        read_image(path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions; root can read any file")
def test_unreadable_file(tmp_path):
    path = _save(tmp_path / "locked.png", _noise())
    path.chmod(0)
    try:
        with pytest.raises(DatasetError, match=_names(path, "the image file is not readable (permission denied)")):
            read_image(path)
    finally:
        path.chmod(0o644)


def test_permission_error_from_open_is_a_dataset_error(tmp_path, monkeypatch):
    """The same mapping as test_unreadable_file, also checked where the tests run as root."""
    path = _save(tmp_path / "locked.png", _noise())

    def denied(fp, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(fp))

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(DatasetError, match=_names(path, "the image file is not readable (permission denied)") + ".*chmod a\\+r"):
        read_image(path)


# ---------------------------------------------------------------- images


def test_image_suffixes_are_lowercase():
    assert IMAGE_SUFFIXES == {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK"])
def test_image_modes_become_rgb_uint8(tmp_path, mode):
    rgb = _noise()
    suffix = ".tif" if mode == "CMYK" else ".png"
    path = _save(tmp_path / f"image{suffix}", rgb, mode)
    image = read_image(path)
    assert image.shape == (40, 50, 3) and image.dtype == np.uint8
    with Image.open(path) as stored:
        expected = np.asarray(stored.convert("RGB"))
    np.testing.assert_array_equal(image, expected)
    if mode == "RGBA":
        np.testing.assert_array_equal(image, rgb)  # alpha dropped, colours untouched


def test_sixteen_bit_and_float_grayscale_images(tmp_path):
    gray16 = np.array([[0, 255, 256], [4660, 65280, 65535]], dtype=np.uint16)
    path = _save(tmp_path / "deep.png", gray16)
    with Image.open(path) as stored:
        assert stored.mode == "I;16"
    image = read_image(path)
    assert image.shape == (2, 3, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], [[0, 0, 1], [18, 255, 255]])
    assert (image == image[..., :1]).all()

    floats = np.array([[-3.0, 12.0, 300.0]], dtype=np.float32)
    image = read_image(_save(tmp_path / "float.tif", floats))
    np.testing.assert_array_equal(image[..., 1], [[0, 12, 255]])


@pytest.mark.parametrize("suffix", [".jpg", ".JPEG", ".tif", ".tiff", ".bmp"])
def test_jpeg_tiff_bmp_images(tmp_path, suffix):
    rgb = np.zeros((32, 48, 3), dtype=np.uint8)
    rgb[:, 24:] = (200, 40, 90)
    image = read_image(_save(tmp_path / f"image{suffix}", rgb))
    assert image.shape == (32, 48, 3) and image.dtype == np.uint8
    if suffix.lower() in {".jpg", ".jpeg"}:
        assert np.abs(image.astype(int) - rgb).mean() < 4
    else:
        np.testing.assert_array_equal(image, rgb)


# ---------------------------------------------------------------- masks


def test_id_mask_round_trips(tmp_path):
    ids = np.array([[0, 1, 2], [2, 1, 255]], dtype=np.uint8)
    mask = read_mask(_save(tmp_path / "ids.png", ids), "ids", num_classes=3)
    np.testing.assert_array_equal(mask, ids)
    assert mask.dtype == np.uint8 and mask.flags.writeable


def test_sixteen_bit_mask_values_are_cast_or_rejected(tmp_path):
    small = np.array([[0, 3], [7, 255]], dtype=np.uint16)
    path = _save(tmp_path / "mask16.png", small)
    for mask_format in ("auto", "ids"):
        mask = read_mask(path, mask_format)
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, small)

    too_big = _save(tmp_path / "mask300.png", np.array([[0, 300], [1, 2]], dtype=np.uint16))
    with pytest.raises(DatasetError, match=_names(too_big, "mask values [300] are outside 0..255; masks must hold class ids 0..255")):
        read_mask(too_big)


def test_palette_mask_reads_indices_not_colours(tmp_path):
    indices = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 128, 0] + [9] * (3 * 253))
    path = tmp_path / "voc_style.png"
    image.save(path)
    for mask_format in ("auto", "ids"):
        np.testing.assert_array_equal(read_mask(path, mask_format, num_classes=3), indices)
    # With a palette and mask_format rgb, the palette colours are what counts.
    np.testing.assert_array_equal(read_mask(path, "rgb", palette=[(0, 128, 0), (255, 0, 0), (0, 0, 0)]), 2 - indices)


def test_binary_masks_become_zero_one(tmp_path):
    zero_255 = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    path = _save(tmp_path / "binary.png", zero_255)
    for mask_format in ("auto", "binary"):
        np.testing.assert_array_equal(read_mask(path, mask_format, num_classes=2), zero_255 // 255)
    # Explicit ids keep 255 (the ignore index), 0/1 masks stay 0/1.
    np.testing.assert_array_equal(read_mask(path, "ids"), zero_255)
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "zero_one.png", zero_255 // 255), "binary"), zero_255 // 255)
    # Mode "1" (bilevel) files hold 0/1.
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "bilevel.png", zero_255, "1")), zero_255 // 255)


def test_binary_mask_with_other_values_names_them(tmp_path):
    path = _save(tmp_path / "soft.png", np.array([[0, 255], [128, 3]], dtype=np.uint8))
    with pytest.raises(DatasetError, match=_names(path, "binary mask has values [3, 128]; binary masks must hold only 0 and 255")):
        read_mask(path, "binary")


def test_rgb_mask_with_palette_becomes_ids(tmp_path):
    ids = np.array([[0, 1, 2], [2, 2, 1]], dtype=np.uint8)
    path = _save(tmp_path / "colour.png", _colour_mask(ids))
    for mask_format in ("rgb", "auto"):
        mask = read_mask(path, mask_format, palette=PALETTE, num_classes=3)
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, ids)
    # RGBA colour masks: alpha is ignored.
    rgba = np.dstack([_colour_mask(ids), np.full(ids.shape, 128, dtype=np.uint8)])
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "colour_alpha.png", rgba), "rgb", palette=PALETTE), ids)


def test_rgb_mask_with_unknown_colour_names_it(tmp_path):
    colours = _colour_mask(np.zeros((4, 5), dtype=np.uint8))
    colours[0, :4] = (12, 34, 56)
    colours[1, 0] = (1, 2, 3)
    path = _save(tmp_path / "odd_colour.png", colours)
    pattern = _names(path, "mask has 2 colour(s) not in the palette: (12, 34, 56) in 4 px, (1, 2, 3) in 1 px")
    with pytest.raises(DatasetError, match=pattern + re.escape(". Fix: add the colour to prepare.palette or fix the mask")):
        read_mask(path, "rgb", palette=PALETTE)


def test_rgb_mask_lists_at_most_five_unknown_colours(tmp_path):
    colours = _colour_mask(np.zeros((1, 8), dtype=np.uint8))
    colours[0, :7] = [(10 * k + 1, 0, 0) for k in range(7)]
    path = _save(tmp_path / "many.png", colours)
    listed = r"7 colour\(s\) not in the palette: (\(\d+, 0, 0\) in 1 px, ){4}\(\d+, 0, 0\) in 1 px \(and 2 more\)"
    with pytest.raises(DatasetError, match=listed):
        read_mask(path, "rgb", palette=PALETTE)


def test_rgb_mask_without_palette(tmp_path):
    path = _save(tmp_path / "colour.png", _colour_mask(np.array([[0, 1]], dtype=np.uint8)))
    auto_problem = _names(path, "the mask is an RGB image with differing channels but prepare.mask_format is auto")
    with pytest.raises(DatasetError, match=auto_problem + ".*prepare.mask_format: rgb.*prepare.palette"):
        read_mask(path)
    with pytest.raises(DatasetError, match=_names(path, "the mask is an RGB image with differing channels but prepare.mask_format is ids")):
        read_mask(path, "ids")
    with pytest.raises(DatasetError, match=_names(path, "prepare.mask_format is rgb but no palette is given")):
        read_mask(path, "rgb")


def test_gray_rgb_mask_is_read_as_ids(tmp_path):
    ids = np.array([[0, 1], [2, 7]], dtype=np.uint8)
    path = _save(tmp_path / "gray_rgb.png", np.repeat(ids[..., None], 3, axis=2))
    np.testing.assert_array_equal(read_mask(path), ids)
    np.testing.assert_array_equal(read_mask(path, "ids"), ids)


def test_single_channel_mask_under_rgb_format(tmp_path):
    path = _save(tmp_path / "ids.png", np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(DatasetError, match=_names(path, "the mask is single-channel (mode L) but prepare.mask_format is rgb")):
        read_mask(path, "rgb", palette=PALETTE)


def test_mask_values_outside_num_classes(tmp_path):
    path = _save(tmp_path / "labels.png", np.array([[0, 10, 77], [255, 3, 77]], dtype=np.uint8))
    with pytest.raises(DatasetError, match=_names(path, "mask values [77] are not class ids 0..10 or the ignore index 255")):
        read_mask(path, "ids", num_classes=11)
    assert read_mask(path, "ids", num_classes=78).max() == 255
    with pytest.raises(DatasetError, match=re.escape("mask values [77, 255] are not class ids 0..10 or the ignore index 0")):
        read_mask(path, "ids", num_classes=11, ignore_index=0)


def test_bad_palette_is_rejected(tmp_path):
    path = _save(tmp_path / "colour.png", _colour_mask(np.array([[0, 1]], dtype=np.uint8)))
    with pytest.raises(ValueError, match="distinct"):
        read_mask(path, "rgb", palette=[(0, 0, 0), (0, 0, 0)])


# ---------------------------------------------------------------- digests


def test_file_digest(tmp_path):
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    payload = os.urandom(3 << 20)  # spans several read chunks
    first.write_bytes(payload)
    second.write_bytes(payload[:-1] + bytes([payload[-1] ^ 1]))
    digest = file_digest(first)
    assert digest == file_digest(first) == hashlib.sha256(payload).hexdigest()[:20]
    assert len(digest) == 20 and file_digest(second) != digest
    with pytest.raises(DatasetError, match=_names(tmp_path / "missing.bin", "the file could not be read")):
        file_digest(tmp_path / "missing.bin")
