"""ADE20K SceneParsing (ADEChallengeData2016): ``images/{training,validation}/ADE_*.jpg`` with
``annotations/{training,validation}/ADE_*.png``, 150 classes."""

from __future__ import annotations

from pathlib import Path

from segpipe.data.errors import DatasetError
from segpipe.data.sources.base import LABEL_MAP_IGNORE, SourceListing, SourceSample
from segpipe.data.sources.files import pair_folder, require_root, require_samples

# The first name of each class of objectInfo150, in its order (annotation value 1 is "wall").
CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table", "pillow",
    "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table", "toilet", "flower",
    "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair",
    "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship",
    "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel",
    "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket",
    "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen",
    "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
# Annotation value 0 is "other" (not one of the 150 classes): ignore.
LABEL_MAP = {0: LABEL_MAP_IGNORE, **{value: value - 1 for value in range(1, len(CLASS_NAMES) + 1)}}
FOLDER = "ADEChallengeData2016"
# ADE20K's test images have no public masks, so its validation split is segpipe's test split.
SPLIT_OF: dict[str, str | None] = {"training": None, "validation": "test"}
LAYOUT = (
    "<root>/images/{training,validation}/*.jpg and <root>/annotations/{training,validation}/*.png"
    f" (root = the {FOLDER} folder or the folder holding it)"
)


def list_ade20k(root: Path) -> SourceListing:
    """List ADE20K: training images are left unsplit (val is carved from them), validation images become
    test. Annotation values 1..150 become class ids 0..149 and 0 ("other") becomes ignore."""
    require_root(root, LAYOUT)
    ade = _ade_folder(root)
    samples: list[SourceSample] = []
    unlabelled = 0
    for folder, split in SPLIT_OF.items():
        found, skipped = pair_folder(ade / "images" / folder, ade / "annotations" / folder, split, "")
        samples += found
        unlabelled += skipped
    require_samples(samples, unlabelled, ade, LAYOUT)
    return SourceListing(
        samples,
        CLASS_NAMES,
        ignore_index=None,
        mask_format="ids",
        unlabelled=unlabelled,
        label_map=dict(LABEL_MAP),
    )


def _ade_folder(root: Path) -> Path:
    for candidate in (root, root / FOLDER):
        if (candidate / "images").is_dir():
            return candidate
    raise DatasetError(
        f"no images folder in {root} or {root / FOLDER}",
        f"set prepare.root to a folder with {LAYOUT}, as unpacked from {FOLDER}.zip",
        root,
    )
