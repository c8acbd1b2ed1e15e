"""Cityscapes fine annotations: ``leftImg8bit/{train,val}/<city>/*_leftImg8bit.png`` with
``gtFine/{train,val}/<city>/*_gtFine_labelIds.png``, the 34 label ids mapped to the 19 evaluated classes."""

from __future__ import annotations

from pathlib import Path

from segpipe.data.errors import DatasetError
from segpipe.data.sources.base import LABEL_MAP_IGNORE, SourceListing, SourceSample
from segpipe.data.sources.files import require_pairs, require_root, require_samples

CLASS_NAMES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
# Label id -> train id, as in cityscapesscripts' labels.py; the other label ids (0..33) are not evaluated.
TRAIN_IDS = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
LABEL_IDS = 34
LABEL_MAP = {label_id: TRAIN_IDS.get(label_id, LABEL_MAP_IGNORE) for label_id in range(LABEL_IDS)}
IMAGE_SUFFIX = "_leftImg8bit.png"
MASK_SUFFIX = "_gtFine_labelIds.png"
# Cityscapes' own test masks are all ignore, so its val split is segpipe's test split.
SPLIT_OF: dict[str, str | None] = {"train": None, "val": "test"}
ARCHIVES = "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip"
LAYOUT = (
    "<root>/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and "
    "<root>/gtFine/{train,val}/<city>/*_gtFine_labelIds.png"
)


def list_cityscapes(root: Path) -> SourceListing:
    """List Cityscapes: train images are left unsplit (val is carved from them), val images become test.

    ``leftImg8bit/test`` is not read (its masks are not public). Masks hold label ids 0..33: the 19 evaluated
    classes become class ids 0..18 and every other label id becomes ignore.
    """
    require_root(root, LAYOUT)
    for folder in ("leftImg8bit", "gtFine"):
        if not (root / folder).is_dir():
            raise DatasetError(
                f"no {folder} folder in the dataset folder (expected {LAYOUT})",
                f"unpack {ARCHIVES} into it, or set prepare.root to the folder holding leftImg8bit/",
                root,
            )
    samples = [sample for split, target in SPLIT_OF.items() for sample in _split_samples(root, split, target)]
    require_samples(samples, 0, root, LAYOUT)
    return SourceListing(
        samples, CLASS_NAMES, ignore_index=None, mask_format="ids", label_map=dict(LABEL_MAP)
    )


def _split_samples(root: Path, split: str, target: str | None) -> list[SourceSample]:
    """One split's images paired with their label-id masks (same city folder and ``<city>_<seq>_<frame>``)."""
    images = _files(root / "leftImg8bit" / split, IMAGE_SUFFIX)
    masks = _files(root / "gtFine" / split, MASK_SUFFIX)
    require_pairs(
        images,
        masks,
        (
            f"{MASK_SUFFIX} in {root / 'gtFine' / split}",
            "restore the mask from gtFine_trainvaltest.zip, or remove the image",
        ),
        (
            f"{IMAGE_SUFFIX} in {root / 'leftImg8bit' / split}",
            "restore the image from leftImg8bit_trainvaltest.zip, or remove the mask",
        ),
    )
    return [SourceSample(Path(key).name, images[key], masks[key], target) for key in sorted(images)]


def _files(folder: Path, suffix: str) -> dict[str, Path]:
    """``<city>/*<suffix>`` files under ``folder`` (hidden files skipped), keyed by ``<city>/<stem>``."""
    if not folder.is_dir():
        return {}
    return {
        f"{path.parent.name}/{path.name[: -len(suffix)]}": path
        for path in sorted(folder.glob(f"*/*{suffix}"))
        if not path.name.startswith(".") and path.is_file()
    }
