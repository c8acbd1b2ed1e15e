"""Robust reading of dataset files: RGB images and class-id masks, with every bad file a DatasetError."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from segpipe.data.errors import DatasetError

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})

MaskFormat = Literal["auto", "ids", "binary", "rgb"]

_REPLACE = "re-copy or re-export the file, or remove it from the dataset"
_MAX_LISTED = 5


@contextmanager
def _decoding(path: Path, kind: str) -> Iterator[None]:
    """Turn every failure to open or decode ``path`` (a ``kind`` file) inside the block into a DatasetError."""
    if path.is_file() and path.stat().st_size == 0:
        raise DatasetError(f"the {kind} file is empty (0 bytes)", _REPLACE, path)
    try:
        yield
    except FileNotFoundError as error:
        raise DatasetError(f"the {kind} file does not exist", "check the dataset path and its file list", path) from error
    except PermissionError as error:
        raise DatasetError(
            f"the {kind} file is not readable (permission denied)", "give the user read permission (chmod a+r)", path
        ) from error
    except IsADirectoryError as error:
        raise DatasetError(f"the {kind} path is a directory, not a file", "move the directory out of the dataset", path) from error
    except UnidentifiedImageError as error:
        raise DatasetError(
            f"the {kind} file is not an image in a known format",
            "replace it with a PNG, JPEG, TIFF or BMP file, or remove it from the dataset", path,
        ) from error
    except Image.DecompressionBombError as error:
        raise DatasetError(f"the {kind} is too large to decode safely ({error})", "downscale the image", path) from error
    except Exception as error:  # noqa: BLE001 - PIL's decoders raise OSError, SyntaxError, ValueError, EOFError, ... on corrupt data
        raise DatasetError(f"the {kind} file is truncated or corrupt ({type(error).__name__}: {error})", _REPLACE, path) from error


def _load(path: Path, kind: str) -> Image.Image:
    """Open and fully decode ``path`` (a ``kind`` file); every failure to read it becomes a DatasetError."""
    with _decoding(path, kind), Image.open(path) as image:
        image.load()
        return image.copy()


def image_shape(path: Path) -> tuple[int, int]:
    """(height, width) of an image file from its header, without decoding the pixels; a bad file is a DatasetError."""
    path = Path(path)
    with _decoding(path, "image"), Image.open(path) as image:
        return image.height, image.width


def _listed(values: np.ndarray) -> str:
    """Up to five values as ``[a, b, ...]`` plus how many more there are."""
    shown = "[" + ", ".join(str(int(value)) for value in values[:_MAX_LISTED]) + "]"
    return shown + (f" (and {len(values) - _MAX_LISTED} more)" if len(values) > _MAX_LISTED else "")


def _lossy_hint(path: Path) -> str:
    """A note for masks saved as JPEG, whose compression invents new values."""
    return "; JPEG compression alters mask values, so save masks losslessly as PNG" if path.suffix.lower() in {".jpg", ".jpeg"} else ""


def read_image(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB. Grayscale (L, I;16, I, F), LA, RGBA (alpha dropped), P (palette -> RGB), CMYK are converted;
    16-bit grayscale is scaled to 8-bit (>> 8) and float (F) grayscale clipped to 0..255."""
    path = Path(path)
    image = _load(path, "image")
    if image.mode.startswith("I"):
        gray = (np.clip(np.asarray(image), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":
        image = image.convert("L")
    try:
        return np.array(image.convert("RGB"))
    except ValueError as error:
        raise DatasetError(
            f"the image has colour mode {image.mode}, which cannot be converted to RGB", "save the image as RGB or grayscale", path
        ) from error


def _mask_values(image: Image.Image, path: Path, colour: bool) -> np.ndarray:
    """The mask's raw values as uint8: HxW for single-channel modes, HxWx3 for colour ones (and for palette images when ``colour``)."""
    mode = image.mode
    if mode in {"RGB", "RGBA", "RGBX"} or (colour and mode in {"P", "PA"}):
        return np.array(image.convert("RGB"))
    if mode in {"1", "L", "P"} or mode.startswith("I"):
        values = np.asarray(image)
    elif mode in {"LA", "PA"}:
        values = np.asarray(image)[..., 0]
    else:
        raise DatasetError(
            f"the mask has mode {mode}; masks must hold single-channel class ids (mode 1, L, P or 16-bit) or RGB colours",
            "save the mask as an 8-bit single-channel PNG", path,
        )
    if values.dtype != np.uint8:
        outside = np.unique(values[(values < 0) | (values > 255)])
        if outside.size:
            raise DatasetError(
                f"mask values {_listed(outside)} are outside 0..255; masks must hold class ids 0..255",
                "store class ids 0..255 in the mask (e.g. as an 8-bit PNG)", path,
            )
    return values.astype(np.uint8)


def _single_channel_ids(values: np.ndarray, mask_format: MaskFormat, mode: str, path: Path, auto_binary: bool) -> np.ndarray:
    """Class ids from a mask without a palette: stored ids, or 0/1 for binary masks."""
    if values.ndim == 3:
        if not (values == values[..., :1]).all():
            raise DatasetError(
                f"the mask is an RGB image with differing channels but prepare.mask_format is {mask_format}",
                "set prepare.mask_format: rgb and list the class colours in prepare.palette", path,
            )
        values = np.ascontiguousarray(values[..., 0])
    if mask_format == "binary" or (
        mask_format == "auto" and auto_binary and mode == "L" and set(np.unique(values).tolist()) == {0, 255}
    ):
        return _binary(values, path)
    return values


def _binary(values: np.ndarray, path: Path) -> np.ndarray:
    """0/255 or 0/1 values as 0/1."""
    present = np.unique(values)
    offending = np.setdiff1d(present, [0, 255] if 255 in present else [0, 1])
    if offending.size:
        raise DatasetError(
            f"binary mask has values {_listed(offending)}; binary masks must hold only 0 and 255 (or only 0 and 1)",
            "fix the mask, or set prepare.mask_format: ids if it holds class ids" + _lossy_hint(path), path,
        )
    return (values > 0).astype(np.uint8)


def _rgb_codes(rgb: np.ndarray) -> np.ndarray:
    """Pack RGB triples (last axis) into uint32 codes 0xRRGGBB."""
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _colours_to_ids(rgb: np.ndarray, palette: Sequence[tuple[int, int, int]], path: Path) -> np.ndarray:
    """Map each pixel's colour to the index of that colour in ``palette``."""
    colours = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    palette_codes = _rgb_codes(colours)
    if not 0 < len(colours) <= 256 or colours.min() < 0 or colours.max() > 255 or len(np.unique(palette_codes)) < len(colours):
        raise ValueError(f"palette must list 1..256 distinct [r, g, b] colours with channels 0..255, got {list(palette)}")
    order = np.argsort(palette_codes)
    sorted_codes = palette_codes[order]
    codes = _rgb_codes(rgb)
    slots = np.minimum(np.searchsorted(sorted_codes, codes), len(sorted_codes) - 1)
    known = sorted_codes[slots] == codes
    if not known.all():
        unknown, counts = np.unique(codes[~known], return_counts=True)
        top = np.argsort(-counts, kind="stable")[:_MAX_LISTED]
        listed = ", ".join(
            f"({code >> 16}, {(code >> 8) & 255}, {code & 255}) in {count} px"
            for code, count in zip(unknown[top].tolist(), counts[top].tolist())
        )
        more = f" (and {len(unknown) - len(top)} more)" if len(unknown) > len(top) else ""
        raise DatasetError(
            f"mask has {len(unknown)} colour(s) not in the palette: {listed}{more}",
            "add the colour to prepare.palette or fix the mask" + _lossy_hint(path), path,
        )
    return order[slots].astype(np.uint8)


def read_mask(
    path: Path,
    mask_format: MaskFormat = "auto",
    palette: Sequence[tuple[int, int, int]] | None = None,
    num_classes: int | None = None,
    ignore_index: int = 255,
    auto_binary: bool = True,
) -> np.ndarray:
    """HxW uint8 class ids, read by ``mask_format`` ("auto" infers it per file). Under "auto" with a ``palette``,
    RGB masks are always matched against it, since a colour-coded dataset may hold gray-looking masks.

    Under "auto", an 8-bit mask holding exactly 0 and 255 is read as binary (0/1) when ``auto_binary`` is set
    and ``num_classes`` (if given) is at most 2; with more classes its 255 pixels are the ignore value, so a
    mask with only background and ignore pixels keeps them."""
    path = Path(path)
    if mask_format == "rgb" and palette is None:
        raise DatasetError(
            "prepare.mask_format is rgb but no palette is given",
            "set prepare.palette to the class colours, [[r, g, b], ...] in class order", path,
        )
    image = _load(path, "mask")
    use_palette = palette is not None and mask_format in {"rgb", "auto"}
    values = _mask_values(image, path, colour=use_palette)
    if values.ndim == 3 and use_palette:
        ids = _colours_to_ids(values, palette, path)
    elif mask_format == "rgb":
        raise DatasetError(
            f"the mask is single-channel (mode {image.mode}) but prepare.mask_format is rgb",
            "set prepare.mask_format: ids (or auto) for class-id masks, or save colour masks as RGB", path,
        )
    else:
        binary_ok = auto_binary and (num_classes is None or num_classes <= 2)
        ids = _single_channel_ids(values, mask_format, image.mode, path, binary_ok)
    if num_classes is not None:
        present = np.unique(ids)
        bad = present[(present >= num_classes) & (present != ignore_index)]
        if bad.size:
            raise DatasetError(
                f"mask values {_listed(bad)} are not class ids 0..{num_classes - 1} or the ignore index {ignore_index}",
                "relabel the mask, or check the dataset's class list and prepare.ignore_index" + _lossy_hint(path), path,
            )
    return ids


def file_digest(path: Path) -> str:
    """The first 20 hex digits of the sha256 of the file's bytes."""
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as file:
            for chunk in iter(lambda: file.read(1 << 20), b""):
                digest.update(chunk)
    except PermissionError as error:
        raise DatasetError(
            "the file is not readable (permission denied)", "give the user read permission (chmod a+r)", path
        ) from error
    except OSError as error:
        raise DatasetError(
            f"the file could not be read ({error.strerror or error})", "check that the file exists and is readable", path
        ) from error
    return digest.hexdigest()[:20]
