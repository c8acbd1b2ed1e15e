"""Oxford-IIIT Pet: ``images/*.jpg``, ``annotations/trimaps/*.png``, ``annotations/{trainval,test}.txt``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from segpipe.data.decode import IMAGE_FORMATS
from segpipe.data.sources.base import LABEL_MAP_IGNORE, SourceListing
from segpipe.data.sources.files import listed_samples, require_root

LAYOUT = "<root>/images/*.jpg, <root>/annotations/trimaps/*.png and <root>/annotations/{trainval,test}.txt"
# Trimap pixels: 1 = pet, 2 = background, 3 = border.
TRIMAPS: dict[str, tuple[tuple[str, ...], dict[int, int]]] = {
    "three_class": (("background", "pet", "border"), {2: 0, 1: 1, 3: 2}),
    "binary": (("background", "pet"), {2: 0, 1: 1, 3: LABEL_MAP_IGNORE}),
}
IMAGE_FORMATS_PETS = (*IMAGE_FORMATS, "GIF")
"""Readers of the pets' images: the official images.tar.gz holds GIFs named .jpg (Abyssinian_34.jpg,
Egyptian_Mau_139.jpg and others)."""


def list_oxford_pets(root: Path, trimap: Literal["three_class", "binary"]) -> SourceListing:
    """List the pets; trainval.txt samples are left unsplit (carved into train/val), test.txt ones are test.

    ``trimap="binary"`` maps the border to ignore (255) instead of giving it a class.
    """
    if trimap not in TRIMAPS:
        raise ValueError(f"trimap must be one of {sorted(TRIMAPS)}, got {trimap!r}")
    require_root(root, LAYOUT)
    annotations = root / "annotations"
    samples = listed_samples(
        {annotations / "trainval.txt": None, annotations / "test.txt": "test"},
        image_for=lambda stem: root / "images" / f"{stem}.jpg",
        mask_for=lambda stem: annotations / "trimaps" / f"{stem}.png",
        fix="restore the file from images.tar.gz / annotations.tar.gz, or remove the line from the list",
    )
    class_names, label_map = TRIMAPS[trimap]
    return SourceListing(
        samples,
        class_names,
        ignore_index=None,
        mask_format="ids",
        label_map=dict(label_map),
        image_formats=IMAGE_FORMATS_PETS,
    )
