"""What a dataset adapter returns (labelled samples on disk) and the deterministic split carving."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from segpipe.data.decode import IMAGE_FORMATS
from segpipe.data.errors import DatasetError

SPLITS = ("train", "val", "test")
DEFAULT_RATIOS = {"val": 0.15, "test": 0.15}
LABEL_MAP_IGNORE = 255
"""Target of ``SourceListing.label_map`` for raw values that become ignore pixels (the project's ignore
index)."""


@dataclass(frozen=True)
class SourceSample:
    """One image and its mask; ``split`` is None when the dataset does not say (then ``assign_splits``
    carves it)."""

    id: str
    image: Path
    mask: Path | None
    split: str | None


@dataclass(frozen=True)
class SourceListing:
    """Everything an adapter knows about a dataset without decoding pixels.

    ``label_map`` (raw mask value -> class id, or ``LABEL_MAP_IGNORE`` = 255 for ignore) is applied by the
    reader after decoding; ``ignore_index`` is a raw mask value to treat as ignore when there is no label map.
    ``unlabelled`` counts images skipped because their split has no masks folder at all; ``image_formats``
    are the Pillow readers the dataset's images are opened with.
    """

    samples: list[SourceSample]
    class_names: tuple[str, ...] | None
    ignore_index: int | None
    mask_format: str
    unlabelled: int = 0
    label_map: dict[int, int] | None = None
    image_formats: tuple[str, ...] = IMAGE_FORMATS


def assign_splits(
    samples: list[SourceSample],
    ratios: dict[str, float] | None,
    seed: int,
    digest: Callable[[Path], str],
) -> list[SourceSample]:
    """Give every sample a split, keeping the splits the dataset already has.

    Samples with split None are carved; a split in ``ratios`` that the dataset lacks altogether is carved from
    the unsplit samples plus train. Carving orders by ``sha256(f"{seed}:{digest(image)}")`` (content, not file
    name), then takes ``round(ratio * n)`` for val, the next ones for test and the rest for train.
    Raises DatasetError when a split would be empty or one image content ends up in two splits.
    """
    ratios = DEFAULT_RATIOS if ratios is None else ratios
    _check_ratios(ratios)
    digests = {sample.image: digest(sample.image) for sample in samples}
    given = {sample.split for sample in samples} - {None}
    targets = [split for split in SPLITS if split in ratios and split not in given]
    carve_from = {None, "train"} if targets else {None}
    pool = [sample for sample in samples if sample.split in carve_from]
    pool.sort(
        key=lambda sample: (hashlib.sha256(f"{seed}:{digests[sample.image]}".encode()).hexdigest(), sample.id)
    )
    if targets or "train" not in given:
        quotas = _quotas(len(pool), {split: ratios[split] for split in targets})
    else:
        quotas = [("train", len(pool))]
    positions = (split for split, count in quotas for _ in range(count))
    split_of: dict[str, str] = {}
    for sample, split in zip(pool, positions, strict=True):
        split_of.setdefault(digests[sample.image], split)  # equal contents sort together and share a split
    result = [
        replace(sample, split=split_of[digests[sample.image]]) if sample.split in carve_from else sample
        for sample in samples
    ]
    _check_no_shared_content(result, digests)
    return result


def _check_ratios(ratios: dict[str, float]) -> None:
    unknown = set(ratios) - {"val", "test"}
    if unknown or any(not 0.0 < ratio < 1.0 for ratio in ratios.values()) or sum(ratios.values()) >= 1.0:
        raise ValueError(f"split ratios must be val/test fractions in (0, 1) summing below 1, got {ratios}")


def _quotas(n: int, ratios: dict[str, float]) -> list[tuple[str, int]]:
    """(split, count) in carving order: val, test, then train takes the rest; no split may be empty."""
    counts = [(split, round(ratio * n)) for split, ratio in ratios.items()]
    counts.sort(key=lambda item: SPLITS.index(item[0]))
    counts.append(("train", n - sum(count for _, count in counts)))
    for split, count in counts:
        if count <= 0:
            share = f"{ratios[split]:.0%} of them" if split in ratios else "the rest"
            raise DatasetError(
                f"only {n} samples to carve splits from, so {split} ({share}) would be empty",
                f"add more labelled images, change the split ratios, or provide a {split}/ folder",
            )
    return counts


def _check_no_shared_content(samples: list[SourceSample], digests: dict[Path, str]) -> None:
    first: dict[str, SourceSample] = {}
    for sample in samples:
        seen = first.setdefault(digests[sample.image], sample)
        if seen.split != sample.split:
            raise DatasetError(
                f"the same image is in {seen.split} and {sample.split}: {seen.image} and {sample.image}",
                "remove one of the two files (or its entry in the split list)",
                seen.image,
            )
