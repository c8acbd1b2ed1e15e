"""Generic folder dataset: ``<root>/{train,val,test}/{images,masks}/*`` or flat
``<root>/{images,masks}/*``."""

from __future__ import annotations

from pathlib import Path

from segpipe.data.errors import DatasetError
from segpipe.data.sources.base import SPLITS, SourceListing
from segpipe.data.sources.files import (
    list_splits,
    pair_folder,
    read_class_names,
    require_root,
    require_samples,
)

LAYOUT = "<root>/{train,val,test}/images/* with masks/* beside them, or <root>/images/* + <root>/masks/*"
CLASSES_FILE = "classes.txt"


def list_folder(root: Path) -> SourceListing:
    """List a folder dataset; images and masks pair by file stem, a split without a masks/ folder is
    unlabelled.

    Splits without images count as missing (carved later); the flat layout leaves every split to carving.
    ``classes.txt`` in the root (one name per line, in id order) gives the class names.
    """
    require_root(root, LAYOUT)
    samples, unlabelled = list_splits(
        {split: (root / split / "images", root / split / "masks") for split in SPLITS}
    )
    flat_samples, flat_unlabelled = pair_folder(root / "images", root / "masks", None, "")
    if (samples or unlabelled) and (flat_samples or flat_unlabelled):
        raise DatasetError(
            "the folder mixes split folders ({train,val,test}/images) with a flat images/ folder",
            "use one layout: move the flat images into split folders, "
            "or the split folders into images/ and masks/",
            root,
        )
    samples, unlabelled = samples + flat_samples, unlabelled + flat_unlabelled
    require_samples(samples, unlabelled, root, LAYOUT)
    classes = root / CLASSES_FILE
    names = read_class_names(classes) if classes.is_file() else None
    return SourceListing(samples, names, ignore_index=None, mask_format="auto", unlabelled=unlabelled)
