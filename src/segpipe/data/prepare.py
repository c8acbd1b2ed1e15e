"""The prepare stage: build a dataset's splits as PNG files, a manifest and the uint8 array cache.

``synthetic`` renders scenes; the other datasets are read from disk (:mod:`segpipe.data.sources`): every
file is decoded and checked, mask values are mapped to class ids, and each sample is fitted to
``prepare.image_size`` or, with ``image_size: null``, kept at its native size (downscaled to
``prepare.max_side`` when larger). Images are turned upright by their EXIF orientation (the manifest's
``exif_orientation`` says which were); files larger than ``prepare.max_image_side`` /
``prepare.max_image_pixels`` are refused from their headers.

Samples are decoded in worker processes a few at a time, in order, and written one by one into the cache
(memory-mapped) and PNG files, so memory use does not grow with the dataset. Every sample is still read
before the stage ends: all problems are reported together, naming the files, and the previous
``data/prepared`` stays intact until the new one is complete.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import ExifTags, Image

from segpipe import io
from segpipe.config import PrepareParams
from segpipe.data import synthetic
from segpipe.data.cache import SplitWriter
from segpipe.data.decode import ImageLimit, MaskReading, file_digest, read_sample
from segpipe.data.errors import DatasetError
from segpipe.data.manifest import MANIFEST_FILE, SPLITS, DatasetInfo, manifest_row
from segpipe.data.preprocess import bounded_size, fit_to_size, limit_side
from segpipe.data.sources import SourceListing, SourceSample, assign_splits, list_source

MAX_LISTED_PROBLEMS = 20
CHUNK = 4
"""Samples per task sent to a worker process; each worker has at most two tasks queued ahead."""

Loaded = tuple[np.ndarray, np.ndarray, int]
"""A sample ready for the cache: HxWx3 image, HxW class ids, the source image's EXIF orientation."""


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
    """Everything a worker process needs to turn one source sample into cache-ready arrays."""

    reading: MaskReading
    limit: ImageLimit
    image_formats: tuple[str, ...]
    mapping: MaskMapping
    num_classes: int
    ignore_index: int
    size: tuple[int, int] | None  # None: native size, bounded by max_side
    resize: str
    max_side: int | None = None


def load_sample(sample: SourceSample, settings: ReadSettings) -> Loaded:
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
    if settings.size is None:
        return (*limit_side(image, mask, settings.max_side), orientation)
    return (*fit_to_size(image, mask, settings.size, settings.resize, settings.ignore_index), orientation)


@dataclass(frozen=True)
class SyntheticJob:
    """One rendered scene; its own seed (dataset seed, split, index) keeps splits from sharing scenes."""

    seed: int
    split: int
    index: int
    size: tuple[int, int]

    def load(self) -> Loaded:
        rng = np.random.default_rng([self.seed, self.split, self.index])
        return (*synthetic.render_scene(rng, *self.size), 1)


@dataclass(frozen=True)
class SourceJob:
    """One sample read from disk; ``size`` is what its header announced (checked after decoding)."""

    sample: SourceSample
    settings: ReadSettings
    size: tuple[int, int]

    def load(self) -> Loaded:
        image, mask, orientation = load_sample(self.sample, self.settings)
        if image.shape[:2] != self.size:
            raise DatasetError(
                f"the image decodes to {image.shape[1]}x{image.shape[0]} (WxH) but its header says "
                f"{self.size[1]}x{self.size[0]}",
                "re-save the image with a standard encoder",
                self.sample.image,
            )
        return image, mask, orientation


@dataclass(frozen=True)
class PlannedSplit:
    """What prepare will write for one split, known before any pixel is decoded."""

    name: str
    jobs: Sequence[SyntheticJob | SourceJob]  # in sample order
    ids: list[str]
    sources: list[tuple[str, str]] = field(default_factory=list)  # (image, mask) paths; empty: generated

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return [job.size for job in self.jobs]


@dataclass(frozen=True)
class Encoded:
    """A loaded sample and its PNG files' bytes (compressed in the worker process)."""

    image: np.ndarray
    mask: np.ndarray
    orientation: int
    image_png: bytes
    mask_png: bytes


def _png(pixels: np.ndarray) -> bytes:
    buffer = BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _run_job(job: SyntheticJob | SourceJob) -> Encoded | str:
    """The job's sample with its PNG bytes, or the message naming its problem."""
    try:
        image, mask, orientation = job.load()
    except DatasetError as error:
        return str(error)
    return Encoded(image, mask, orientation, _png(image), _png(mask))


def _run_chunk(function: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
    return [function(item) for item in items]


def ordered_map(function: Callable[[Any], Any], items: Sequence[Any], workers: int) -> Iterator[Any]:
    """``map(function, items)`` in a process pool of ``workers``, in order, with at most ``2 * workers``
    chunks of :data:`CHUNK` items queued or waiting to be consumed, so results never pile up in memory."""
    if workers <= 1 or len(items) <= CHUNK:
        yield from map(function, items)
        return
    chunks = [items[start : start + CHUNK] for start in range(0, len(items), CHUNK)]
    pool = ProcessPoolExecutor(max_workers=min(workers, len(chunks)))
    try:
        pending: deque[Future[list[Any]]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(_run_chunk, function, chunk))
            if len(pending) > 2 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)


def upright_size(path: Path, formats: tuple[str, ...], max_side: int | None) -> tuple[int, int]:
    """(height, width) an image will have in the cache with native sizes: its header's size, turned by its
    EXIF orientation and bounded by ``max_side``; (1, 1) for a file whose header cannot be read (decoding
    it then reports why)."""
    try:
        with path.open("rb") as file, Image.open(file, formats=formats) as image:
            height, width = image.height, image.width
            if image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):  # turned a quarter
                height, width = width, height
    except Exception:  # the decoding pass names this file's problem
        return 1, 1
    return bounded_size(height, width, max_side)


def _header_size(job: tuple[Path, tuple[str, ...], int | None]) -> tuple[int, int]:
    return upright_size(*job)


def _synthetic_plan(params: PrepareParams) -> list[PlannedSplit]:
    plan = []
    for number, split in enumerate(SPLITS):
        count = getattr(params.splits, split)
        jobs = [SyntheticJob(params.seed, number, index, params.image_size) for index in range(count)]
        plan.append(PlannedSplit(split, jobs, [f"{split}_{index:05d}" for index in range(count)]))
    return plan


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


def _read_settings(params: PrepareParams, listing: SourceListing, num_classes: int) -> ReadSettings:
    return ReadSettings(
        reading=MaskReading(
            mask_format=params.mask_format if params.mask_format != "auto" else listing.mask_format,
            palette=tuple(params.palette) if params.palette else None,
            ignore_index=params.ignore_index,
            auto_binary=num_classes <= 2,
        ),
        limit=ImageLimit(
            params.max_image_side,
            params.max_image_pixels,
            "prepare",
            "downscale the image, or raise prepare.max_image_side / prepare.max_image_pixels",
        ),
        image_formats=listing.image_formats,
        mapping=MaskMapping.build(listing, num_classes, params.ignore_index),
        num_classes=num_classes,
        ignore_index=params.ignore_index,
        size=params.image_size,
        resize=params.resize,
        max_side=params.max_side,
    )


def _source_plan(params: PrepareParams) -> tuple[list[PlannedSplit], tuple[str, ...]]:
    """List the dataset, carve its splits and learn every sample's cache size (from headers if native)."""
    root = params.root_path()
    listing = list_source(params.dataset, root, trimap=params.trimap)
    class_names = _class_names(params, listing, root)
    ratios = {"val": params.split_ratios.val, "test": params.split_ratios.test}
    samples = _subset(
        assign_splits(listing.samples, ratios, params.seed, file_digest), params.max_per_split, params.seed
    )
    settings = _read_settings(params, listing, len(class_names))
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
    if params.image_size is None:
        headers = [(s.image, listing.image_formats, params.max_side) for s in ordered]
        sizes = iter(ordered_map(_header_size, headers, params.workers))
    else:
        sizes = iter([params.image_size] * len(ordered))
    plan = [
        PlannedSplit(
            split,
            [SourceJob(s, settings, next(sizes)) for s in chosen[split]],
            [s.id for s in chosen[split]],
            [(str(s.image), str(s.mask)) for s in chosen[split]],
        )
        for split in SPLITS
    ]
    return plan, class_names


class PixelStats:
    """Per-channel mean and std of pixel values / 255 over the images added, from exact 256-bin counts."""

    def __init__(self) -> None:
        self.counts = np.zeros((3, 256), dtype=np.int64)

    def add(self, image: np.ndarray) -> None:
        for channel in range(3):
            self.counts[channel] += np.bincount(image[..., channel].ravel(), minlength=256)

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        means, stds = [], []
        for counts in self.counts.tolist():  # Python ints: sums are exact whatever the dataset's size
            total = sum(counts)
            first = sum(value * count for value, count in enumerate(counts))
            second = sum(value * value * count for value, count in enumerate(counts))
            means.append(first / (255 * total))
            stds.append(math.sqrt((total * second - first * first) / (total * total)) / 255)
        return tuple(means), tuple(stds)


@dataclass
class Written:
    """What writing the splits produced, besides the files."""

    rows: list[dict[str, object]] = field(default_factory=list)
    sizes: set[tuple[int, int]] = field(default_factory=set)
    stats: PixelStats = field(default_factory=PixelStats)
    problems: list[str] = field(default_factory=list)


def _file_stem(sample_id: str) -> str:
    return sample_id.replace("/", "__").replace("\\", "__")


def _write_sample(
    root: Path, split: PlannedSplit, index: int, sample: Encoded, writer: SplitWriter, num_classes: int
) -> dict[str, object]:
    """Write one sample's PNG files and cache entry; return its manifest row."""
    stem = _file_stem(split.ids[index])
    image_path = f"{split.name}/images/{stem}.png"
    mask_path = f"{split.name}/masks/{stem}.png"
    (root / image_path).write_bytes(sample.image_png)
    (root / mask_path).write_bytes(sample.mask_png)
    writer.write(index, sample.image, sample.mask)
    row = manifest_row(
        split.ids[index], split.name, index, image_path, mask_path, sample.image, sample.mask, num_classes
    )
    if split.sources:
        source_image, source_mask = split.sources[index]
        row.update(source_image=source_image, source_mask=source_mask, exif_orientation=sample.orientation)
    return row


def _write_splits(root: Path, plan: list[PlannedSplit], num_classes: int, workers: int) -> Written:
    """Decode every sample and write it; after the first problem the rest are only checked."""
    results = ordered_map(_run_job, [job for split in plan for job in split.jobs], workers)
    written = Written()
    for split in plan:
        (root / split.name / "images").mkdir(parents=True)
        (root / split.name / "masks").mkdir(parents=True)
        with SplitWriter(root, split.name, split.sizes) as writer:
            for index in range(len(split.jobs)):
                sample = next(results)
                if isinstance(sample, str):
                    written.problems.append(sample)
                elif not written.problems:
                    written.rows.append(_write_sample(root, split, index, sample, writer, num_classes))
                    written.sizes.add(sample.image.shape[:2])
                    if split.name == "train":
                        written.stats.add(sample.image)
    return written


def _problems_error(problems: list[str], total: int) -> DatasetError:
    listed = "\n  - ".join(problems[:MAX_LISTED_PROBLEMS])
    hidden = len(problems) - MAX_LISTED_PROBLEMS
    more = f"\n  ... and {hidden} more" if hidden > 0 else ""
    return DatasetError(
        f"{len(problems)} of {total} samples cannot be used, so nothing was written",
        f"fix or remove these files, then re-run prepare:\n  - {listed}{more}",
    )


def prepare_dataset(params: PrepareParams, out_dir: Path) -> DatasetInfo:
    """Write ``out_dir`` (replaced atomically): ``{split}/images|masks/*.png``, ``manifest.csv``,
    ``dataset.json`` and the array cache (:mod:`segpipe.data.cache`)."""
    if params.dataset == "synthetic":
        plan, class_names = _synthetic_plan(params), synthetic.CLASS_NAMES
    else:
        plan, class_names = _source_plan(params)
    with io.atomic_directory(out_dir) as staging:
        written = _write_splits(staging, plan, len(class_names), params.workers)
        if written.problems:
            raise _problems_error(written.problems, sum(len(split.jobs) for split in plan))
        mean, std = written.stats.mean_std()
        info = DatasetInfo(
            name=params.dataset,
            class_names=tuple(class_names),
            ignore_index=params.ignore_index,
            image_size=next(iter(written.sizes)) if len(written.sizes) == 1 else None,
            split_sizes={split.name: len(split.ids) for split in plan},
            mean=mean,
            std=std,
        )
        pd.DataFrame(written.rows).to_csv(staging / MANIFEST_FILE, index=False)
        info.save(staging)
    return info
