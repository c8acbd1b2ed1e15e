"""Reading dataset images and masks: formats, modes and every kind of bad file as a DatasetError."""

import hashlib
import os
import re
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from segpipe.data.decode import (
    IMAGE_SUFFIXES,
    ImageLimit,
    MaskReading,
    check_image_size,
    file_digest,
    read_image,
    read_mask,
    read_sample,
)
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
    with pytest.raises(
        DatasetError,
        match=_names(path, "the image file is not an image in a known format")
        + ".*Fix: replace it with a PNG",
    ):
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


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions; root can read any file"
)
def test_unreadable_file(tmp_path):
    path = _save(tmp_path / "locked.png", _noise())
    path.chmod(0)
    try:
        with pytest.raises(
            DatasetError, match=_names(path, "the image file is not readable (permission denied)")
        ):
            read_image(path)
    finally:
        path.chmod(0o644)


def test_permission_error_from_open_is_a_dataset_error(tmp_path, monkeypatch):
    """The same mapping as test_unreadable_file, also checked where the tests run as root."""
    path = _save(tmp_path / "locked.png", _noise())

    def denied(fp, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(fp))

    monkeypatch.setattr(Image, "open", denied)
    with pytest.raises(
        DatasetError,
        match=_names(path, "the image file is not readable (permission denied)") + ".*chmod a\\+r",
    ):
        read_image(path)


# ---------------------------------------------------------------- images


def test_image_suffixes_are_lowercase():
    assert {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"} == IMAGE_SUFFIXES


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
    with pytest.raises(
        DatasetError,
        match=_names(too_big, "mask values [300] are outside 0..255; masks must hold class ids 0..255"),
    ):
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
    np.testing.assert_array_equal(
        read_mask(path, "rgb", palette=[(0, 128, 0), (255, 0, 0), (0, 0, 0)]), 2 - indices
    )


def test_binary_masks_become_zero_one(tmp_path):
    zero_255 = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    path = _save(tmp_path / "binary.png", zero_255)
    for mask_format in ("auto", "binary"):
        np.testing.assert_array_equal(read_mask(path, mask_format, num_classes=2), zero_255 // 255)
    # Explicit ids keep 255 (the ignore index), 0/1 masks stay 0/1.
    np.testing.assert_array_equal(read_mask(path, "ids"), zero_255)
    np.testing.assert_array_equal(
        read_mask(_save(tmp_path / "zero_one.png", zero_255 // 255), "binary"), zero_255 // 255
    )
    # Mode "1" (bilevel) files hold 0/1.
    np.testing.assert_array_equal(read_mask(_save(tmp_path / "bilevel.png", zero_255, "1")), zero_255 // 255)


def test_binary_mask_with_other_values_names_them(tmp_path):
    path = _save(tmp_path / "soft.png", np.array([[0, 255], [128, 3]], dtype=np.uint8))
    with pytest.raises(
        DatasetError,
        match=_names(path, "binary mask has values [3, 128]; binary masks must hold only 0 and 255"),
    ):
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
    np.testing.assert_array_equal(
        read_mask(_save(tmp_path / "colour_alpha.png", rgba), "rgb", palette=PALETTE), ids
    )


def test_rgb_mask_with_unknown_colour_names_it(tmp_path):
    colours = _colour_mask(np.zeros((4, 5), dtype=np.uint8))
    colours[0, :4] = (12, 34, 56)
    colours[1, 0] = (1, 2, 3)
    path = _save(tmp_path / "odd_colour.png", colours)
    pattern = _names(path, "mask has 2 colour(s) not in the palette: (12, 34, 56) in 4 px, (1, 2, 3) in 1 px")
    with pytest.raises(
        DatasetError, match=pattern + re.escape(". Fix: add the colour to prepare.palette or fix the mask")
    ):
        read_mask(path, "rgb", palette=PALETTE)


def test_rgb_mask_lists_at_most_five_unknown_colours(tmp_path):
    colours = _colour_mask(np.zeros((1, 8), dtype=np.uint8))
    colours[0, :7] = [(10 * k + 1, 0, 0) for k in range(7)]
    path = _save(tmp_path / "many.png", colours)
    listed = (
        r"7 colour\(s\) not in the palette: (\(\d+, 0, 0\) in 1 px, ){4}\(\d+, 0, 0\) in 1 px \(and 2 more\)"
    )
    with pytest.raises(DatasetError, match=listed):
        read_mask(path, "rgb", palette=PALETTE)


def test_rgb_mask_without_palette(tmp_path):
    path = _save(tmp_path / "colour.png", _colour_mask(np.array([[0, 1]], dtype=np.uint8)))
    auto_problem = _names(
        path, "the mask is an RGB image with differing channels but prepare.mask_format is auto"
    )
    with pytest.raises(DatasetError, match=auto_problem + ".*prepare.mask_format: rgb.*prepare.palette"):
        read_mask(path)
    with pytest.raises(
        DatasetError,
        match=_names(path, "the mask is an RGB image with differing channels but prepare.mask_format is ids"),
    ):
        read_mask(path, "ids")
    with pytest.raises(
        DatasetError, match=_names(path, "prepare.mask_format is rgb but no palette is given")
    ):
        read_mask(path, "rgb")


def test_gray_rgb_mask_is_read_as_ids(tmp_path):
    ids = np.array([[0, 1], [2, 7]], dtype=np.uint8)
    path = _save(tmp_path / "gray_rgb.png", np.repeat(ids[..., None], 3, axis=2))
    np.testing.assert_array_equal(read_mask(path), ids)
    np.testing.assert_array_equal(read_mask(path, "ids"), ids)


def test_single_channel_mask_under_rgb_format(tmp_path):
    path = _save(tmp_path / "ids.png", np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(
        DatasetError, match=_names(path, "the mask is single-channel (mode L) but prepare.mask_format is rgb")
    ):
        read_mask(path, "rgb", palette=PALETTE)


def test_mask_values_outside_num_classes(tmp_path):
    path = _save(tmp_path / "labels.png", np.array([[0, 10, 77], [255, 3, 77]], dtype=np.uint8))
    with pytest.raises(
        DatasetError, match=_names(path, "mask values [77] are not class ids 0..10 or the ignore index 255")
    ):
        read_mask(path, "ids", num_classes=11)
    assert read_mask(path, "ids", num_classes=78).max() == 255
    with pytest.raises(
        DatasetError, match=re.escape("mask values [77, 255] are not class ids 0..10 or the ignore index 0")
    ):
        read_mask(path, "ids", num_classes=11, ignore_index=0)


def test_bad_palette_is_rejected(tmp_path):
    path = _save(tmp_path / "colour.png", _colour_mask(np.array([[0, 1]], dtype=np.uint8)))
    with pytest.raises(ValueError, match="distinct"):
        read_mask(path, "rgb", palette=[(0, 0, 0), (0, 0, 0)])


# ---------------------------------------------------------------- EXIF orientation

ORIENTATION = 0x0112
STORED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
"""How a camera stores an upright picture for each EXIF orientation (the inverse of what a viewer does)."""


def _scene(height: int, width: int) -> np.ndarray:
    """Class ids as an upright picture shows them: class 1 top left, class 2 along the bottom."""
    ids = np.zeros((height, width), np.uint8)
    ids[: height // 2, : width // 3] = 1
    ids[-height // 4 :] = 2
    return ids


def _photo(path: Path, displayed: np.ndarray, orientation: int, **options) -> Path:
    """Save ``displayed`` as a camera would: pixels stored turned, with the EXIF ``orientation`` that turns
    them back."""
    stored = Image.fromarray(displayed).transpose(STORED[orientation])
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    stored.save(path, exif=exif.tobytes(), **options)
    return path


def _agreement(image: np.ndarray, mask: np.ndarray) -> float:
    """Share of pixels whose nearest PALETTE colour is the mask's class (JPEG noise tolerated)."""
    distances = ((image[..., None, :].astype(int) - np.array(PALETTE)) ** 2).sum(-1)
    return float((distances.argmin(-1) == mask).mean())


@pytest.mark.parametrize("size", [(48, 48), (40, 64)], ids=["square", "non_square"])
def test_exif_rotated_photo_and_mask_drawn_on_it_agree(tmp_path, size):
    """A phone photo stored sideways (EXIF orientation 6) with a mask drawn on the photo as displayed."""
    ids = _scene(*size)
    image_path = _photo(tmp_path / "photo.jpg", _colour_mask(ids), 6, quality=95)
    mask_path = _save(tmp_path / "photo_mask.png", ids)
    with Image.open(image_path) as stored:
        assert stored.size == size  # stored turned: (width, height) of the upright picture swapped
    image = read_image(image_path)
    assert image.shape == (*size, 3)
    assert _agreement(image, ids) > 0.97
    rgb, mask, orientation = read_sample(image_path, mask_path, MaskReading(), ImageLimit())
    np.testing.assert_array_equal(rgb, image)
    np.testing.assert_array_equal(mask, ids)
    assert orientation == 6


@pytest.mark.parametrize("orientation", sorted(STORED))
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_every_orientation_is_read_upright(tmp_path, orientation, suffix):
    """Colour images and single-channel masks, PNG (eXIf chunk) and uncompressed TIFF (orientation tag)."""
    ids = _scene(24, 40)
    image_path = _photo(tmp_path / f"image{suffix}", _colour_mask(ids), orientation)
    mask_path = _photo(tmp_path / f"mask{suffix}", ids, orientation)
    np.testing.assert_array_equal(read_image(image_path), _colour_mask(ids))
    np.testing.assert_array_equal(read_mask(mask_path, "ids"), ids)


def test_mask_with_its_image_orientation_is_turned_too(tmp_path):
    ids = _scene(40, 64)
    image_path = _photo(tmp_path / "photo.tif", _colour_mask(ids), 6)
    mask_path = _photo(tmp_path / "mask.tif", ids, 6)
    rgb, mask, orientation = read_sample(image_path, mask_path, MaskReading(), ImageLimit())
    np.testing.assert_array_equal(rgb, _colour_mask(ids))
    np.testing.assert_array_equal(mask, ids)
    np.testing.assert_array_equal(read_mask(mask_path), ids)
    assert orientation == 6


def test_mask_orientation_differing_from_its_image_names_both_files(tmp_path):
    ids = _scene(48, 48)
    image_path = _photo(tmp_path / "photo.jpg", _colour_mask(ids), 6)
    mask_path = _photo(tmp_path / "mask.tif", ids, 3)
    with pytest.raises(DatasetError) as error:
        read_sample(image_path, mask_path, MaskReading(), ImageLimit())
    assert str(error.value).startswith(
        f"{image_path}: the image's EXIF orientation is 6 (shown rotated 90 degrees clockwise) but its mask "
        f"{mask_path} has EXIF orientation 3 (shown rotated 180 degrees)"
    )


def test_size_mismatch_of_a_rotated_image_mentions_its_orientation(tmp_path):
    """A mask drawn on the stored (sideways) pixels of a non-square photo."""
    ids = _scene(40, 64)
    image_path = _photo(tmp_path / "photo.jpg", _colour_mask(ids), 6)
    mask_path = _save(tmp_path / "mask.png", np.ascontiguousarray(np.rot90(ids)))
    with pytest.raises(
        DatasetError,
        match=_names(
            image_path,
            f"image is 64x40 (WxH) after its EXIF orientation 6 (shown rotated 90 degrees clockwise) "
            f"but its mask {mask_path} is 40x64",
        ),
    ):
        read_sample(image_path, mask_path, MaskReading(), ImageLimit())


# ---------------------------------------------------------------- formats by content


@pytest.mark.parametrize(("real", "name"), [("GIF", "GIF"), ("EPS", "PostScript (EPS)")])
def test_gif_or_eps_named_png_is_refused_naming_its_real_format(tmp_path, monkeypatch, real, name):
    path = tmp_path / "photo.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(path, format=real)
    parsed = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: parsed.append(self))
    for read in (read_image, read_mask):
        with pytest.raises(DatasetError) as error:
            read(path)
        message = str(error.value)
        kind = "image" if read is read_image else "mask"
        assert message.startswith(f"{path}: the {kind} file holds a {name} image")
        assert "\n" not in message and "Fix: convert it to PNG" in message
    assert parsed == []  # the PostScript never reached Pillow's EPS reader, let alone Ghostscript


def test_jpeg_named_png_is_read_by_its_content(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(_noise()).save(path, format="JPEG", quality=95)
    assert read_image(path).shape == (40, 50, 3)


# ---------------------------------------------------------------- size limit


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` but holds no pixel data: decoding it would fail."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)
    return path


def test_images_over_the_limit_are_refused_from_the_header(tmp_path):
    huge = _png_header(tmp_path / "huge.png", 9000, 9000)
    mask = _png_header(tmp_path / "mask.png", 9000, 9000)
    over = "the image is 9000x9000 px, more than predict handles (8192 px a side, 64 megapixels)"
    with pytest.raises(DatasetError, match=_names(huge, over + ". Fix: downscale")):
        check_image_size(huge)
    limit = ImageLimit(side=100, pixels=5000, stage="prepare", fix="raise the limit")
    with pytest.raises(DatasetError) as error:
        read_sample(huge, mask, MaskReading(), limit)
    assert str(error.value) == (
        f"{huge}: the image is 9000x9000 px, more than prepare handles (100 px a side, 0.005 megapixels). "
        "Fix: raise the limit"
    )
    over_pillow_warning = _png_header(tmp_path / "100mp.png", 10000, 10000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one error naming the file, no Pillow DecompressionBombWarning
        with pytest.raises(DatasetError, match=_names(over_pillow_warning, "the image is 10000x10000 px")):
            check_image_size(over_pillow_warning)
    small = _save(tmp_path / "small.png", _noise(40, 50))
    wide_mask = _save(tmp_path / "wide.png", np.zeros((10, 101), np.uint8))
    with pytest.raises(DatasetError, match="^" + _names(wide_mask, "the mask is 101x10 px, more than")):
        read_sample(small, wide_mask, MaskReading(), limit)
    assert check_image_size(small) == (40, 50)


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
