"""Robust reading of dataset files: RGB images and class-id masks, with every bad file a DatasetError.

Files are opened by content, with Pillow's PNG, JPEG, TIFF and BMP readers only (whatever the file name
says), and turned upright by their EXIF orientation, as a photo viewer shows them.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from segpipe.data.errors import DatasetError

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "TIFF", "BMP")
"""The Pillow readers segpipe opens files with; no other decoder (GIF, EPS via Ghostscript, ...) ever runs."""

MAX_SIDE = 8192
"""Largest image side (px) segpipe decodes by default (predict; ``prepare.max_image_side``)."""
MAX_PIXELS = 64_000_000
"""Largest image area segpipe decodes by default, 64 megapixels (predict; ``prepare.max_image_pixels``)."""

MaskFormat = Literal["auto", "ids", "binary", "rgb"]

_REPLACE = "re-copy or re-export the file, or remove it from the dataset"
_MAX_LISTED = 5

_UPRIGHT: dict[int, tuple[Image.Transpose, str]] = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT, "shown mirrored left-right"),
    3: (Image.Transpose.ROTATE_180, "shown rotated 180 degrees"),
    4: (Image.Transpose.FLIP_TOP_BOTTOM, "shown mirrored top-bottom"),
    5: (Image.Transpose.TRANSPOSE, "shown transposed"),
    6: (Image.Transpose.ROTATE_270, "shown rotated 90 degrees clockwise"),
    7: (Image.Transpose.TRANSVERSE, "shown transversed"),
    8: (Image.Transpose.ROTATE_90, "shown rotated 90 degrees counter-clockwise"),
}
"""EXIF orientation -> the transpose that shows the stored pixels upright, and how a viewer shows them."""

_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"BM", "BMP"),
    (0, b"GIF8", "GIF"),
    (0, b"%!PS", "PostScript (EPS)"),
    (0, b"\xc5\xd0\xd3\xc6", "PostScript (EPS)"),
    (0, b"%PDF", "PDF"),
    (8, b"WEBP", "WebP"),
    (0, b"8BPS", "Photoshop (PSD)"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xffO\xffQ", "JPEG 2000"),
    (4, b"ftyp", "HEIF/AVIF"),
    (0, b"<svg", "SVG"),
    (0, b"<?xml", "XML (SVG?)"),
)
"""Leading bytes of common image formats, to name what a refused file really holds (no decoder runs)."""


@dataclass(frozen=True)
class ImageLimit:
    """The largest image a stage decodes: ``side`` px a side and ``pixels`` in all (read from the header)."""

    side: int = MAX_SIDE
    pixels: int = MAX_PIXELS
    stage: str = "predict"
    fix: str = "downscale the image or cut it into tiles"

    def check(self, path: Path, kind: str, height: int, width: int) -> None:
        """DatasetError naming ``path`` when a ``kind`` file of ``width`` x ``height`` px is too large."""
        if max(height, width) > self.side or height * width > self.pixels:
            raise DatasetError(
                f"the {kind} is {width}x{height} px, more than {self.stage} handles "
                f"({self.side} px a side, {self.pixels / 1_000_000:g} megapixels)",
                self.fix,
                path,
            )


def _sniffed_format(path: Path) -> str | None:
    """The format ``path``'s first bytes announce (a name from ``_SIGNATURES``), None when unknown."""
    with path.open("rb") as file:
        head = file.read(16)
    return next(
        (name for offset, magic, name in _SIGNATURES if head[offset : offset + len(magic)] == magic), None
    )


def _unidentified(path: Path, kind: str, formats: tuple[str, ...]) -> DatasetError:
    """The error for a file none of ``formats`` reads, naming the format it really holds."""
    real = _sniffed_format(path)
    accepted = f"{', '.join(formats[:-1])} or {formats[-1]}"
    if real in formats:
        return DatasetError(f"the {kind} file is a {real} file whose header is corrupt", _REPLACE, path)
    if real is not None:
        return DatasetError(
            f"the {kind} file holds a {real} image, not {accepted} (files are read by their content, "
            "whatever their name)",
            "convert it to PNG (or JPEG, TIFF, BMP), or remove it from the dataset",
            path,
        )
    return DatasetError(
        f"the {kind} file is not an image in a known format",
        f"replace it with a {accepted} file, or remove it from the dataset",
        path,
    )


@contextmanager
def _decoding(path: Path, kind: str, formats: tuple[str, ...] = IMAGE_FORMATS) -> Iterator[None]:
    """Turn every failure to open or decode ``path`` (a ``kind`` file) in the block into a DatasetError."""
    if path.is_file() and path.stat().st_size == 0:
        raise DatasetError(f"the {kind} file is empty (0 bytes)", _REPLACE, path)
    try:
        with warnings.catch_warnings():
            # ImageLimit refuses huge files and corrupt EXIF counts as no orientation, naming the file;
            # Pillow's warnings about either name none and would repeat for every file
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", "Corrupt EXIF data", UserWarning)
            yield
    except DatasetError:  # a check inside the block (ImageLimit) has already named the file and the fix
        raise
    except FileNotFoundError as error:
        raise DatasetError(
            f"the {kind} file does not exist", "check the dataset path and its file list", path
        ) from error
    except PermissionError as error:
        raise DatasetError(
            f"the {kind} file is not readable (permission denied)",
            "give the user read permission (chmod a+r)",
            path,
        ) from error
    except IsADirectoryError as error:
        raise DatasetError(
            f"the {kind} path is a directory, not a file", "move the directory out of the dataset", path
        ) from error
    except UnidentifiedImageError as error:
        raise _unidentified(path, kind, formats) from error
    except Image.DecompressionBombError as error:
        raise DatasetError(
            f"the {kind} is too large to decode safely ({error})", "downscale the image", path
        ) from error
    # PIL's decoders raise OSError, SyntaxError, ValueError, EOFError, ... on corrupt data
    except Exception as error:
        raise DatasetError(
            f"the {kind} file is truncated or corrupt ({type(error).__name__}: {error})", _REPLACE, path
        ) from error


def _load(
    path: Path, kind: str, limit: ImageLimit | None = None, formats: tuple[str, ...] = IMAGE_FORMATS
) -> tuple[Image.Image, int]:
    """Open ``path`` (a ``kind`` file) with the Pillow readers of ``formats`` only and decode it fully,
    upright, with its EXIF orientation (1: stored upright); with a ``limit``, a larger file is refused from
    its header. Every failure to read it is a DatasetError."""
    # From an open file, not a path: given a path, Pillow maps an uncompressed TIFF into memory at its
    # upright size, which scrambles a sideways (EXIF orientation 5-8) single-channel one.
    with _decoding(path, kind, formats), path.open("rb") as file, Image.open(file, formats=formats) as image:
        if limit is not None:
            limit.check(path, kind, image.height, image.width)
        orientation = _orientation(image)  # before load(), which turns a TIFF upright and drops its tag
        image.load()
        pending = _orientation(image)
        upright = image.transpose(_UPRIGHT[pending][0]) if pending in _UPRIGHT else image.copy()
        return upright, orientation if orientation in _UPRIGHT else 1


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag of ``image`` (1 when absent; Pillow skips corrupt EXIF entries)."""
    return image.getexif().get(ExifTags.Base.Orientation, 1)


def image_shape(path: Path) -> tuple[int, int]:
    """(height, width) of an image file from its header, without decoding the pixels (an EXIF orientation
    may swap the two in the upright image); a bad file is a DatasetError."""
    path = Path(path)
    with _decoding(path, "image"), Image.open(path, formats=IMAGE_FORMATS) as image:
        return image.height, image.width


def check_image_size(path: Path, limit: ImageLimit = ImageLimit()) -> tuple[int, int]:
    """(height, width) of an image file from its header (as :func:`image_shape`); DatasetError when it is
    over ``limit``."""
    height, width = image_shape(path)
    limit.check(Path(path), "image", height, width)
    return height, width


def _listed(values: np.ndarray) -> str:
    """Up to five values as ``[a, b, ...]`` plus how many more there are."""
    shown = "[" + ", ".join(str(int(value)) for value in values[:_MAX_LISTED]) + "]"
    return shown + (f" (and {len(values) - _MAX_LISTED} more)" if len(values) > _MAX_LISTED else "")


def _lossy_hint(path: Path) -> str:
    """A note for masks saved as JPEG, whose compression invents new values."""
    return (
        "; JPEG compression alters mask values, so save masks losslessly as PNG"
        if path.suffix.lower() in {".jpg", ".jpeg"}
        else ""
    )


def read_image(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB, upright by its EXIF orientation. Grayscale (L, I;16, I, F), LA, RGBA (alpha dropped),
    P (palette -> RGB), CMYK are converted; 16-bit grayscale is scaled to 8-bit (>> 8) and float (F) grayscale
    clipped to 0..255."""
    path = Path(path)
    return _rgb(_load(path, "image")[0], path)


def _rgb(image: Image.Image, path: Path) -> np.ndarray:
    """The decoded ``image`` (from ``path``) as HxWx3 uint8 RGB, as :func:`read_image` describes."""
    if image.mode.startswith("I"):
        gray = (np.clip(np.asarray(image), 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":
        image = image.convert("L")
    try:
        return np.array(image.convert("RGB"))
    except ValueError as error:
        raise DatasetError(
            f"the image has colour mode {image.mode}, which cannot be converted to RGB",
            "save the image as RGB or grayscale",
            path,
        ) from error


def _mask_values(image: Image.Image, path: Path, colour: bool) -> np.ndarray:
    """The mask's raw values as uint8: HxW for single-channel modes, HxWx3 for colour ones (and for palette
    images when ``colour``)."""
    mode = image.mode
    if mode in {"RGB", "RGBA", "RGBX"} or (colour and mode in {"P", "PA"}):
        return np.array(image.convert("RGB"))
    if mode in {"1", "L", "P"} or mode.startswith("I"):
        values = np.asarray(image)
    elif mode in {"LA", "PA"}:
        values = np.asarray(image)[..., 0]
    else:
        raise DatasetError(
            f"the mask has mode {mode}; masks must hold single-channel class ids (mode 1, L, P or 16-bit) "
            "or RGB colours",
            "save the mask as an 8-bit single-channel PNG",
            path,
        )
    if values.dtype != np.uint8:
        outside = np.unique(values[(values < 0) | (values > 255)])
        if outside.size:
            raise DatasetError(
                f"mask values {_listed(outside)} are outside 0..255; masks must hold class ids 0..255",
                "store class ids 0..255 in the mask (e.g. as an 8-bit PNG)",
                path,
            )
    return values.astype(np.uint8)


def _single_channel_ids(
    values: np.ndarray, mask_format: MaskFormat, mode: str, path: Path, auto_binary: bool
) -> np.ndarray:
    """Class ids from a mask without a palette: stored ids, or 0/1 for binary masks."""
    if values.ndim == 3:
        if not (values == values[..., :1]).all():
            raise DatasetError(
                f"the mask is an RGB image with differing channels but prepare.mask_format is {mask_format}",
                "set prepare.mask_format: rgb and list the class colours in prepare.palette",
                path,
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
            f"binary mask has values {_listed(offending)}; binary masks must hold only 0 and 255 "
            "(or only 0 and 1)",
            "fix the mask, or set prepare.mask_format: ids if it holds class ids" + _lossy_hint(path),
            path,
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
    if (
        not 0 < len(colours) <= 256
        or colours.min() < 0
        or colours.max() > 255
        or len(np.unique(palette_codes)) < len(colours)
    ):
        raise ValueError(
            f"palette must list 1..256 distinct [r, g, b] colours with channels 0..255, got {list(palette)}"
        )
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
            for code, count in zip(unknown[top].tolist(), counts[top].tolist(), strict=True)
        )
        more = f" (and {len(unknown) - len(top)} more)" if len(unknown) > len(top) else ""
        raise DatasetError(
            f"mask has {len(unknown)} colour(s) not in the palette: {listed}{more}",
            "add the colour to prepare.palette or fix the mask" + _lossy_hint(path),
            path,
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
    """HxW uint8 class ids, upright by the mask's EXIF orientation, read by ``mask_format`` ("auto" infers it
    per file). Under "auto" with a ``palette``, RGB masks are always matched against it, since a colour-coded
    dataset may hold gray-looking masks.

    Under "auto", an 8-bit mask holding exactly 0 and 255 is read as binary (0/1) when ``auto_binary`` is set
    and ``num_classes`` (if given) is at most 2; with more classes its 255 pixels are the ignore value, so a
    mask with only background and ignore pixels keeps them."""
    path = Path(path)
    reading = MaskReading(mask_format, None if palette is None else tuple(palette), ignore_index, auto_binary)
    reading.require_palette(path)
    return _mask_ids(_load(path, "mask")[0], path, reading, num_classes)


@dataclass(frozen=True)
class MaskReading:
    """How masks are read: the options of :func:`read_mask` but the class count."""

    mask_format: MaskFormat = "auto"
    palette: tuple[tuple[int, int, int], ...] | None = None
    ignore_index: int = 255
    auto_binary: bool = True

    def require_palette(self, path: Path) -> None:
        """DatasetError naming ``path`` when RGB masks are asked for without their colours."""
        if self.mask_format == "rgb" and self.palette is None:
            raise DatasetError(
                "prepare.mask_format is rgb but no palette is given",
                "set prepare.palette to the class colours, [[r, g, b], ...] in class order",
                path,
            )


def _mask_ids(image: Image.Image, path: Path, reading: MaskReading, num_classes: int | None) -> np.ndarray:
    """Class ids of the decoded mask ``image`` (from ``path``), as :func:`read_mask` describes."""
    mask_format, palette = reading.mask_format, reading.palette
    use_palette = palette is not None and mask_format in {"rgb", "auto"}
    values = _mask_values(image, path, colour=use_palette)
    if values.ndim == 3 and use_palette:
        ids = _colours_to_ids(values, palette, path)
    elif mask_format == "rgb":
        raise DatasetError(
            f"the mask is single-channel (mode {image.mode}) but prepare.mask_format is rgb",
            "set prepare.mask_format: ids (or auto) for class-id masks, or save colour masks as RGB",
            path,
        )
    else:
        binary_ok = reading.auto_binary and (num_classes is None or num_classes <= 2)
        ids = _single_channel_ids(values, mask_format, image.mode, path, binary_ok)
    if num_classes is not None:
        present = np.unique(ids)
        bad = present[(present >= num_classes) & (present != reading.ignore_index)]
        if bad.size:
            raise DatasetError(
                f"mask values {_listed(bad)} are not class ids 0..{num_classes - 1} or the ignore index "
                f"{reading.ignore_index}",
                "relabel the mask, or check the dataset's class list and prepare.ignore_index"
                + _lossy_hint(path),
                path,
            )
    return ids


def read_sample(
    image_path: Path,
    mask_path: Path,
    reading: MaskReading,
    limit: ImageLimit,
    image_formats: tuple[str, ...] = IMAGE_FORMATS,
) -> tuple[np.ndarray, np.ndarray, int]:
    """One labelled sample, upright: HxWx3 uint8 RGB, HxW uint8 raw mask values and the image's EXIF
    orientation (1: stored upright).

    A mask is drawn on the image as displayed, so a mask without an orientation of its own is used as stored;
    one whose orientation differs from its image's is a DatasetError naming both files, as is a size mismatch.
    Files over ``limit`` are refused from their headers, before decoding; the image must be one of
    ``image_formats``, the mask one of ``IMAGE_FORMATS``."""
    image_path, mask_path = Path(image_path), Path(mask_path)
    reading.require_palette(mask_path)
    image, orientation = _load(image_path, "image", limit, image_formats)
    rgb = _rgb(image, image_path)
    mask, mask_orientation = _load(mask_path, "mask", limit)
    if mask_orientation not in (1, orientation):
        raise DatasetError(
            f"the image's EXIF orientation is {_orientation_text(orientation)} but its mask {mask_path} has "
            f"EXIF orientation {_orientation_text(mask_orientation)}, so they cannot both be shown upright",
            "save the mask upright, as drawn on the displayed image, without an EXIF orientation",
            image_path,
        )
    ids = _mask_ids(mask, mask_path, reading, None)
    if rgb.shape[:2] != ids.shape:
        turned = f" after its EXIF orientation {_orientation_text(orientation)}" if orientation != 1 else ""
        raise DatasetError(
            f"image is {rgb.shape[1]}x{rgb.shape[0]} (WxH){turned} but its mask {mask_path} is "
            f"{ids.shape[1]}x{ids.shape[0]}",
            "give image and mask the same size, the mask drawn on the image as displayed "
            "(or remove the pair)",
            image_path,
        )
    return rgb, ids, orientation


def _orientation_text(orientation: int) -> str:
    """``6 (shown rotated 90 degrees clockwise)``; ``1 (shown as stored)``."""
    return f"{orientation} ({_UPRIGHT[orientation][1] if orientation in _UPRIGHT else 'shown as stored'})"


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
            f"the file could not be read ({error.strerror or error})",
            "check that the file exists and is readable",
            path,
        ) from error
    return digest.hexdigest()[:20]
