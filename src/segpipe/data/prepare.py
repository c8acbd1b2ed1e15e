"""The prepare stage: build a dataset's splits as PNG files, a manifest and the uint8 array cache.

``synthetic`` renders scenes; ``folder``, ``camvid``, ``oxford_pets`` and ``voc`` read a dataset on
disk (:mod:`segpipe.data.sources`), decode and check every file, map mask values to class ids and fit
every sample to ``prepare.image_size``. Images are turned upright by their EXIF orientation (the
manifest's ``exif_orientation`` says which were), and files larger than ``prepare.max_image_side`` /
``prepare.max_image_pixels`` are refused from their headers. All problems are reported together, naming the
files, before anything is written; the previous ``data/prepared`` stays intact until the new one is complete.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from segpipe import io
from segpipe.config import PrepareParams
from segpipe.data import synthetic
from segpipe.data.cache import SplitArrays, save_split
from segpipe.data.decode import ImageLimit, MaskReading, file_digest, read_sample
from segpipe.data.errors import DatasetError
from segpipe.data.manifest import MANIFEST_FILE, SPLITS, DatasetInfo, manifest_row
from segpipe.data.preprocess import fit_to_size
from segpipe.data.sources import SourceListing, SourceSample, assign_splits, list_source

MAX_LISTED_PROBLEMS = 20


@dataclass(frozen=True)
class PreparedSplit:
    arrays: SplitArrays
    ids: list[str]
    sources: list[tuple[str, str]]  # (image, mask) source paths, empty strings for generated data
    orientations: list[int]  # EXIF orientation of each source image (1: stored upright)


def _synthetic_split(params: PrepareParams, split: str) -> PreparedSplit:
    """Render one split; each sample has its own seed (dataset seed, split, index), so splits never share
    scenes."""
    height, width = params.image_size
    count = getattr(params.splits, split)
    images = np.empty((count, height, width, 3), dtype=np.uint8)
    masks = np.empty((count, height, width), dtype=np.uint8)
    for index in range(count):
        rng = np.random.default_rng([params.seed, SPLITS.index(split), index])
        images[index], masks[index] = synthetic.render_scene(rng, height, width)
    ids = [f"{split}_{index:05d}" for index in range(count)]
    return PreparedSplit(SplitArrays(images=images, masks=masks), ids, [("", "")] * count, [1] * count)


@dataclass(frozen=True)
class MaskMapping:
    """Raw mask value -> class id (or the ignore index); ``valid[v]`` is False for values no class has."""

    lookup: np.ndarray  # uint8[256]
    valid: np.ndarray  # bool[256]

    @classmethod
    def build(cls, listing: SourceListing, num_classes: int, ignore_index: int) -> MaskMapping:
        lookup = np.arange(256, dtype=np.uint8)
        if listing.label_map:
            for raw, target in listing.label_map.items():
                lookup[raw] = ignore_index if target == 255 else target
        if listing.ignore_index is not None:
            lookup[listing.ignore_index] = ignore_index
        valid = (lookup < num_classes) | (lookup == ignore_index)
        if listing.label_map:  # only the listed raw values are labels
            listed = np.zeros(256, dtype=bool)
            listed[list(listing.label_map)] = True
            if listing.ignore_index is not None:
                listed[listing.ignore_index] = True
            listed[ignore_index] = True
            valid &= listed
        return cls(lookup, valid)


@dataclass(frozen=True)
class ReadSettings:
    """Everything a worker process needs to turn one source sample into arrays of the target size."""

    reading: MaskReading
    limit: ImageLimit
    image_formats: tuple[str, ...]
    mapping: MaskMapping
    num_classes: int
    ignore_index: int
    size: tuple[int, int]
    resize: str


def load_sample(sample: SourceSample, settings: ReadSettings) -> tuple[np.ndarray, np.ndarray, int]:
    """Decode (upright), check and fit one sample, and give its image's EXIF orientation;
    :class:`DatasetError` naming the file on any problem."""
    assert sample.mask is not None
    image, raw, orientation = read_sample(
        sample.image, sample.mask, settings.reading, settings.limit, settings.image_formats
    )
    present = np.flatnonzero(np.bincount(raw.ravel(), minlength=256))
    bad = present[~settings.mapping.valid[present]]
    if bad.size:
        raise DatasetError(
            f"mask values {bad[:5].tolist()} are not class ids 0..{settings.num_classes - 1} "
            f"or the ignore value {settings.ignore_index}",
            "fix the mask, or list the missing classes in prepare.classes / classes.txt",
            sample.mask,
        )
    mask = settings.mapping.lookup[raw]
    return (*fit_to_size(image, mask, settings.size, settings.resize, settings.ignore_index), orientation)


def _load_or_error(job: tuple[SourceSample, ReadSettings]) -> tuple[np.ndarray, np.ndarray, int] | str:
    try:
        return load_sample(*job)
    except DatasetError as error:
        return str(error)


def _load_all(
    samples: Sequence[SourceSample], settings: ReadSettings, workers: int
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Decode every sample (in a process pool when ``workers`` > 1); one DatasetError lists every bad file."""
    jobs = [(sample, settings) for sample in samples]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
            results = list(pool.map(_load_or_error, jobs, chunksize=max(1, min(16, len(jobs) // workers))))
    else:
        results = [_load_or_error(job) for job in jobs]
    problems = [result for result in results if isinstance(result, str)]
    if problems:
        listed = "\n  - ".join(problems[:MAX_LISTED_PROBLEMS])
        more = (
            f"\n  ... and {len(problems) - MAX_LISTED_PROBLEMS} more"
            if len(problems) > MAX_LISTED_PROBLEMS
            else ""
        )
        raise DatasetError(
            f"{len(problems)} of {len(samples)} samples cannot be used, so nothing was written",
            f"fix or remove these files, then re-run prepare:\n  - {listed}{more}",
        )
    return results  # type: ignore[return-value]


def _subset(samples: list[SourceSample], limit: int | None, seed: int) -> list[SourceSample]:
    """At most ``limit`` samples per split, chosen by a seeded hash of their ids (deterministic)."""
    if limit is None:
        return samples

    def order(sample: SourceSample) -> str:
        return hashlib.sha256(f"{seed}:{sample.id}".encode()).hexdigest()

    chosen = []
    for split in SPLITS:
        chosen += sorted((s for s in samples if s.split == split), key=order)[:limit]
    return chosen


def _class_names(params: PrepareParams, listing: SourceListing, root: Path) -> tuple[str, ...]:
    if params.classes:
        return tuple(params.classes)
    if listing.class_names:
        return tuple(listing.class_names)
    raise DatasetError(
        "the dataset does not name its classes",
        "set prepare.classes (names in class-id order) or add classes.txt",
        root,
    )


def _source_splits(params: PrepareParams) -> tuple[dict[str, PreparedSplit], tuple[str, ...]]:
    root = params.root_path()
    listing = list_source(params.dataset, root, trimap=params.trimap)
    class_names = _class_names(params, listing, root)
    ratios = {"val": params.split_ratios.val, "test": params.split_ratios.test}
    samples = _subset(
        assign_splits(listing.samples, ratios, params.seed, file_digest), params.max_per_split, params.seed
    )
    settings = ReadSettings(
        reading=MaskReading(
            mask_format=params.mask_format if params.mask_format != "auto" else listing.mask_format,
            palette=tuple(params.palette) if params.palette else None,
            ignore_index=params.ignore_index,
            auto_binary=len(class_names) <= 2,
        ),
        limit=ImageLimit(
            params.max_image_side,
            params.max_image_pixels,
            "prepare",
            "downscale the image, or raise prepare.max_image_side / prepare.max_image_pixels",
        ),
        image_formats=listing.image_formats,
        mapping=MaskMapping.build(listing, len(class_names), params.ignore_index),
        num_classes=len(class_names),
        ignore_index=params.ignore_index,
        size=params.image_size,
        resize=params.resize,
    )
    chosen = {split: sorted((s for s in samples if s.split == split), key=lambda s: s.id) for split in SPLITS}
    for split in SPLITS:
        if not chosen[split]:
            raise DatasetError(
                f"split {split!r} has no samples", "add labelled data or adjust prepare.split_ratios", root
            )
    if listing.unlabelled:
        print(
            f"prepare: skipped {listing.unlabelled} image(s) under {root} that have no masks folder "
            "(unlabelled)"
        )
    ordered = [sample for split in SPLITS for sample in chosen[split]]
    loaded = iter(
        _load_all(ordered, settings, params.workers)
    )  # all splits at once: every bad file is reported
    splits = {}
    for split in SPLITS:
        images, masks, orientations = zip(*(next(loaded) for _ in chosen[split]), strict=True)
        splits[split] = PreparedSplit(
            SplitArrays(images=np.stack(images), masks=np.stack(masks)),
            [s.id for s in chosen[split]],
            [(str(s.image), str(s.mask)) for s in chosen[split]],
            list(orientations),
        )
    return splits, class_names


def _file_stem(sample_id: str) -> str:
    return sample_id.replace("/", "__").replace("\\", "__")


def _write_split(
    root: Path, split: str, prepared: PreparedSplit, num_classes: int
) -> list[dict[str, object]]:
    (root / split / "images").mkdir(parents=True)
    (root / split / "masks").mkdir(parents=True)
    rows = []
    arrays = prepared.arrays
    samples = zip(prepared.ids, prepared.sources, prepared.orientations, strict=True)
    for index, (sample_id, (source_image, source_mask), orientation) in enumerate(samples):
        stem = _file_stem(sample_id)
        image_path = f"{split}/images/{stem}.png"
        mask_path = f"{split}/masks/{stem}.png"
        Image.fromarray(arrays.images[index]).save(root / image_path, compress_level=1)
        Image.fromarray(arrays.masks[index]).save(root / mask_path, compress_level=1)
        row = manifest_row(
            sample_id,
            split,
            index,
            image_path,
            mask_path,
            arrays.images[index],
            arrays.masks[index],
            num_classes,
        )
        if source_image:
            row.update(source_image=source_image, source_mask=source_mask, exif_orientation=orientation)
        rows.append(row)
    save_split(root, split, arrays)
    return rows


def prepare_dataset(params: PrepareParams, out_dir: Path) -> DatasetInfo:
    """Write ``out_dir`` (replaced atomically): ``{split}/images|masks/*.png``, ``manifest.csv``,
    ``dataset.json`` and ``cache/{split}_{images,masks}.npy``."""
    if params.dataset == "synthetic":
        splits = {split: _synthetic_split(params, split) for split in SPLITS}
        class_names = synthetic.CLASS_NAMES
    else:
        splits, class_names = _source_splits(
            params
        )  # every file is read and checked before anything is written
    info = DatasetInfo(
        name=params.dataset,
        class_names=tuple(class_names),
        ignore_index=params.ignore_index,
        image_size=params.image_size,
        split_sizes={split: len(splits[split].ids) for split in SPLITS},
    )
    with io.atomic_directory(out_dir) as staging:
        rows: list[dict[str, object]] = []
        for split in SPLITS:
            rows += _write_split(staging, split, splits[split], info.num_classes)
        pd.DataFrame(rows).to_csv(staging / MANIFEST_FILE, index=False)
        info.save(staging)
    return info
