"""A compact, checksummed CamVid pack for machines that do not have the dataset (the lent GPU machine).

One ``.npz`` file, stored uncompressed (JPEG and PNG are compressed already), holds per split the images as
JPEG bytes, the masks as PNG bytes (lossless class ids, CamVid's void value 11 mapped to ``ignore_index``) and
the sample ids, plus a JSON ``meta`` entry (dataset, class names, ignore index, image size, JPEG quality, split
sizes) and a ``sha256`` entry over every other entry. A pack whose bytes do not match is refused. Reading needs
only numpy and Pillow (never pickle); building reuses prepare's CamVid listing and sample reader.
"""

from __future__ import annotations

import hashlib
import io as bytes_io
import json
import os
import zipfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from segpipe import io
from segpipe.data.cache import SplitArrays
from segpipe.data.preprocess import fit_to_size

if TYPE_CHECKING:
    from segpipe.data.prepare import ReadSettings
    from segpipe.data.sources import SourceSample

FORMAT = "segpipe-pack/1"
SPLITS = ("train", "val", "test")
CAMVID_SIZE = (360, 480)
IGNORE_INDEX = 255
"""The project's ignore value (prepare's default ``ignore_index``); CamVid's void class 11 becomes it."""
DEFAULT_QUALITY = 90
MAX_PACK_MIB = 45.0
"""What fits the GPU machine's 64 MiB transfer beside the code and the wheels."""
REBUILD = "re-create it with: python pipelines/pack.py --root <CamVid folder> --out <pack file>"


class PackError(ValueError):
    """A pack file that is missing, unreadable, altered or inconsistent."""


@dataclass(frozen=True)
class PackInfo:
    path: Path
    dataset: str
    class_names: tuple[str, ...]
    ignore_index: int
    image_size: tuple[int, int]
    split_sizes: dict[str, int]
    jpeg_quality: int
    sha256: str
    bytes: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Padding:
    """Pixels added around each sample (image with 0, mask with the ignore index), as prepare's ``resize: pad``."""

    top: int
    bottom: int
    left: int
    right: int

    def as_dict(self) -> dict[str, int]:
        return {"top": self.top, "bottom": self.bottom, "left": self.left, "right": self.right}


def _encode_sample(job: tuple[SourceSample, ReadSettings, int]) -> tuple[bytes, bytes] | str:
    """JPEG image and PNG mask bytes of one sample, or the DatasetError text naming its file."""
    from segpipe.data.errors import DatasetError
    from segpipe.data.prepare import load_sample

    sample, settings, quality = job
    try:
        image, mask = load_sample(sample, settings)
    except DatasetError as error:
        return str(error)
    jpeg, png = bytes_io.BytesIO(), bytes_io.BytesIO()
    Image.fromarray(image).save(jpeg, format="JPEG", quality=quality)
    Image.fromarray(mask).save(png, format="PNG", compress_level=9)
    return jpeg.getvalue(), png.getvalue()


def _concatenated(blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(blob) for blob in blobs])
    return np.frombuffer(b"".join(blobs), dtype=np.uint8), offsets


def _digest(entries: dict[str, np.ndarray]) -> str:
    """sha256 over every entry but ``sha256``: name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(entries):
        if name == "sha256":
            continue
        array = np.ascontiguousarray(entries[name])
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def build_pack(
    root: Path,
    out: Path,
    quality: int = DEFAULT_QUALITY,
    image_size: tuple[int, int] = CAMVID_SIZE,
    max_per_split: int | None = None,
    max_mib: float | None = MAX_PACK_MIB,
    workers: int = 1,
) -> PackInfo:
    """Pack the CamVid folder ``root`` into the file ``out`` (written atomically); ``max_per_split`` keeps the
    first samples of each split by id (for tests); a pack over ``max_mib`` is refused before it is written."""
    from segpipe.data.errors import DatasetError
    from segpipe.data.prepare import MaskMapping, ReadSettings
    from segpipe.data.sources import list_source

    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 1..100, got {quality}")
    listing = list_source("camvid", Path(root))
    class_names = tuple(listing.class_names or ())
    settings = ReadSettings(
        mask_format=listing.mask_format, palette=None,
        mapping=MaskMapping.build(listing, len(class_names), IGNORE_INDEX), num_classes=len(class_names),
        ignore_index=IGNORE_INDEX, size=tuple(image_size), resize="stretch",
    )
    chosen = {split: sorted((s for s in listing.samples if s.split == split), key=lambda s: s.id)[:max_per_split]
              for split in SPLITS}
    for split, samples in chosen.items():
        if not samples:
            raise DatasetError(f"split {split!r} has no samples", "a CamVid folder has train, val and test", root)
    jobs = [(sample, settings, quality) for split in SPLITS for sample in chosen[split]]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            encoded = list(pool.map(_encode_sample, jobs, chunksize=16))
    else:
        encoded = [_encode_sample(job) for job in jobs]
    problems = [result for result in encoded if isinstance(result, str)]
    if problems:
        raise DatasetError(f"{len(problems)} samples cannot be packed:\n  - " + "\n  - ".join(problems[:20]),
                           "fix or remove these files, then pack again")
    results = iter(encoded)
    entries: dict[str, np.ndarray] = {}
    for split in SPLITS:
        pairs = [next(results) for _ in chosen[split]]
        entries[f"{split}_ids"] = np.array([s.id for s in chosen[split]])
        entries[f"{split}_jpeg"], entries[f"{split}_jpeg_offsets"] = _concatenated([jpeg for jpeg, _ in pairs])
        entries[f"{split}_png"], entries[f"{split}_png_offsets"] = _concatenated([png for _, png in pairs])
    meta = {"format": FORMAT, "dataset": "camvid", "class_names": list(class_names), "ignore_index": IGNORE_INDEX,
            "image_size": list(image_size), "jpeg_quality": quality,
            "split_sizes": {split: len(chosen[split]) for split in SPLITS}}
    entries["meta"] = np.array(json.dumps(meta))
    entries["sha256"] = np.array(_digest(entries))
    payload = sum(array.nbytes for array in entries.values())
    if max_mib is not None and payload > max_mib * 2**20:
        raise ValueError(f"the pack would hold {payload / 2**20:.1f} MiB, over the {max_mib:g} MiB limit "
                         f"(what travels to the GPU machine beside code and wheels): lower --quality (now {quality})")

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:  # a file object stops numpy from appending ".npz"
            np.savez(handle, **entries)

    io.write_with(Path(out), write)
    return open_pack(out).info


def _meta_field(meta: dict[str, Any], key: str, kind: type, path: Path) -> Any:
    value = meta.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise PackError(f"{path}: meta field {key!r} is {value!r}, expected a {kind.__name__}; {REBUILD}")
    return value


def _read_info(path: Path, entries: dict[str, np.ndarray]) -> PackInfo:
    try:
        meta = json.loads(str(entries["meta"]))
    except (KeyError, json.JSONDecodeError) as error:
        raise PackError(f"{path} has no readable meta entry ({error}); {REBUILD}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PackError(f"{path} is not a {FORMAT} pack; {REBUILD}")
    names = _meta_field(meta, "class_names", list, path)
    size = _meta_field(meta, "image_size", list, path)
    sizes = _meta_field(meta, "split_sizes", dict, path)
    if not names or not all(isinstance(name, str) and name for name in names) or len(set(names)) != len(names):
        raise PackError(f"{path}: class_names must be distinct non-empty names, got {names!r}; {REBUILD}")
    if len(size) != 2 or not all(isinstance(side, int) and side > 0 for side in size):
        raise PackError(f"{path}: image_size must be [height, width], got {size!r}; {REBUILD}")
    for split in SPLITS:
        count = sizes.get(split)
        for kind in ("jpeg", "png"):
            offsets = entries.get(f"{split}_{kind}_offsets")
            blob = entries.get(f"{split}_{kind}")
            if (not isinstance(count, int) or offsets is None or blob is None or offsets.shape != (count + 1,)
                    or offsets[0] != 0 or offsets[-1] != blob.size or np.any(np.diff(offsets) <= 0)):
                raise PackError(f"{path}: the {split} {kind} entries do not match its {count!r} samples; {REBUILD}")
    return PackInfo(
        path=path, dataset=_meta_field(meta, "dataset", str, path), class_names=tuple(names),
        ignore_index=_meta_field(meta, "ignore_index", int, path), image_size=(size[0], size[1]),
        split_sizes={split: sizes[split] for split in SPLITS},
        jpeg_quality=_meta_field(meta, "jpeg_quality", int, path), sha256=str(entries["sha256"]),
        bytes=path.stat().st_size,
    )


class Pack:
    """An opened, verified pack; :meth:`split` decodes one split to uint8 arrays."""

    def __init__(self, info: PackInfo, entries: dict[str, np.ndarray]) -> None:
        self.info = info
        self._entries = entries

    def ids(self, split: str) -> list[str]:
        return [str(sample_id) for sample_id in self._entries[f"{split}_ids"]]

    def _blobs(self, split: str, kind: str, count: int) -> Iterator[bytes]:
        blob, offsets = self._entries[f"{split}_{kind}"], self._entries[f"{split}_{kind}_offsets"]
        for index in range(count):
            yield blob[offsets[index] : offsets[index + 1]].tobytes()

    def _decode(self, sample_id: str, jpeg: bytes, png: bytes) -> tuple[np.ndarray, np.ndarray]:
        info = self.info
        try:
            with Image.open(bytes_io.BytesIO(jpeg)) as image:
                rgb = np.array(image.convert("RGB"))
            with Image.open(bytes_io.BytesIO(png)) as mask_image:
                mode, mask = mask_image.mode, np.array(mask_image)
        except (OSError, ValueError, SyntaxError) as error:
            raise PackError(f"{info.path}: sample {sample_id} does not decode ({error}); {REBUILD}") from None
        if mode != "L" or rgb.shape != (*info.image_size, 3) or mask.shape != info.image_size:
            raise PackError(f"{info.path}: sample {sample_id} is {rgb.shape} with a {mode} mask {mask.shape}, "
                            f"expected {info.image_size}; {REBUILD}")
        values = np.unique(mask)
        bad = values[(values >= info.num_classes) & (values != info.ignore_index)]
        if bad.size:
            raise PackError(f"{info.path}: mask of {sample_id} holds values {bad[:5].tolist()} that are neither "
                            f"class ids nor the ignore index {info.ignore_index}; {REBUILD}")
        return rgb, mask

    def split(self, name: str, limit: int | None = None, size: tuple[int, int] | None = None) -> SplitArrays:
        """The first ``limit`` samples of split ``name`` (all by default), stretched to ``size`` if given
        (bilinear images, nearest masks, as prepare's ``resize: stretch``)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; a pack has {', '.join(SPLITS)}")
        count = min(self.info.split_sizes[name], limit or self.info.split_sizes[name])
        jobs = zip(self.ids(name)[:count], self._blobs(name, "jpeg", count), self._blobs(name, "png", count))
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # Pillow decodes without the GIL
            pairs = list(pool.map(lambda job: self._decode(*job), jobs))
        if size is not None and tuple(size) != self.info.image_size:
            pairs = [fit_to_size(image, mask, tuple(size), "stretch", self.info.ignore_index) for image, mask in pairs]
        return SplitArrays(np.stack([image for image, _ in pairs]), np.stack([mask for _, mask in pairs]))


def open_pack(path: Path) -> Pack:
    """Read and verify a pack: a missing, truncated, altered or foreign file is a :class:`PackError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {REBUILD}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            entries = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise PackError(f"{path} is not a readable pack ({error}); {REBUILD}") from None
    recorded = str(entries.get("sha256", ""))
    if recorded != _digest(entries):
        raise PackError(f"{path} does not match its sha256 ({recorded[:12] or 'none'}...): the file is corrupt or "
                        f"was changed; {REBUILD}")
    return Pack(_read_info(path, entries), entries)


def pad_to_multiple(arrays: SplitArrays, multiple: int, ignore_index: int) -> tuple[SplitArrays, Padding]:
    """Pad every sample to the next sides divisible by ``multiple``, split evenly (an odd pixel goes bottom/right)."""
    height, width = arrays.images.shape[1:3]
    extra_h, extra_w = -height % multiple, -width % multiple
    padding = Padding(extra_h // 2, extra_h - extra_h // 2, extra_w // 2, extra_w - extra_w // 2)
    return apply_padding(arrays, padding, ignore_index), padding


def apply_padding(arrays: SplitArrays, padding: Padding, ignore_index: int) -> SplitArrays:
    """Images padded with 0 and masks with ``ignore_index``: the padded pixels count in no loss and no metric."""
    rows, columns = (padding.top, padding.bottom), (padding.left, padding.right)
    images = np.pad(arrays.images, ((0, 0), rows, columns, (0, 0)))
    masks = np.pad(arrays.masks, ((0, 0), rows, columns), constant_values=ignore_index)
    return SplitArrays(images, masks)
