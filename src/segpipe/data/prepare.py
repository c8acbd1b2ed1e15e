"""The prepare stage: build a dataset's splits as PNG files, a manifest and the uint8 array cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from segpipe import io
from segpipe.config import PrepareParams
from segpipe.data import synthetic
from segpipe.data.cache import SplitArrays, save_split
from segpipe.data.manifest import MANIFEST_FILE, SPLITS, DatasetInfo, manifest_row


def _synthetic_split(params: PrepareParams, split: str) -> SplitArrays:
    """Render one split; each sample has its own seed (dataset seed, split, index), so splits never share scenes."""
    height, width = params.image_size
    count = getattr(params.splits, split)
    images = np.empty((count, height, width, 3), dtype=np.uint8)
    masks = np.empty((count, height, width), dtype=np.uint8)
    for index in range(count):
        rng = np.random.default_rng([params.seed, SPLITS.index(split), index])
        images[index], masks[index] = synthetic.render_scene(rng, height, width)
    return SplitArrays(images=images, masks=masks)


def _write_split(root: Path, split: str, arrays: SplitArrays, num_classes: int) -> list[dict[str, object]]:
    (root / split / "images").mkdir(parents=True)
    (root / split / "masks").mkdir(parents=True)
    rows = []
    for index in range(len(arrays)):
        sample_id = f"{split}_{index:05d}"
        image_path = f"{split}/images/{sample_id}.png"
        mask_path = f"{split}/masks/{sample_id}.png"
        Image.fromarray(arrays.images[index]).save(root / image_path, compress_level=1)
        Image.fromarray(arrays.masks[index]).save(root / mask_path, compress_level=1)
        rows.append(manifest_row(sample_id, split, index, image_path, mask_path, arrays.images[index], arrays.masks[index], num_classes))
    save_split(root, split, arrays)
    return rows


def prepare_dataset(params: PrepareParams, out_dir: Path) -> DatasetInfo:
    """Write ``out_dir`` (replaced atomically): ``{split}/images|masks/*.png``, ``manifest.csv``,
    ``dataset.json`` and ``cache/{split}_{images,masks}.npy``."""
    info = DatasetInfo(
        name=params.dataset,
        class_names=synthetic.CLASS_NAMES,
        ignore_index=params.ignore_index,
        image_size=params.image_size,
        split_sizes={split: getattr(params.splits, split) for split in SPLITS},
    )
    with io.atomic_directory(out_dir) as staging:
        rows: list[dict[str, object]] = []
        for split in SPLITS:
            rows += _write_split(staging, split, _synthetic_split(params, split), info.num_classes)
        pd.DataFrame(rows).to_csv(staging / MANIFEST_FILE, index=False)
        info.save(staging)
    return info
