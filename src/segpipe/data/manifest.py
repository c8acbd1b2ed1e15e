"""The prepared dataset's description: ``dataset.json`` (classes, splits) and ``manifest.csv`` (one row per
sample)."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segpipe import io

if TYPE_CHECKING:
    import pandas as pd

SPLITS: tuple[str, ...] = ("train", "val", "test")
MANIFEST_FILE = "manifest.csv"
INFO_FILE = "dataset.json"


@dataclass(frozen=True)
class DatasetInfo:
    """What every later stage needs to know about the prepared data.

    ``image_size`` is the (height, width) every sample has, None when sizes differ; ``mean`` / ``std`` are
    the training split's per-channel statistics of pixel values / 255 (None in data prepared before they
    were recorded)."""

    name: str
    class_names: tuple[str, ...]
    ignore_index: int
    image_size: tuple[int, int] | None
    split_sizes: dict[str, int]
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def training_size(self, crop: tuple[int, int] | None) -> tuple[int, int] | None:
        """The size a model trains at (its checkpoint's ``image_size``): the crop (``train.crop``), else the
        prepared size (None for images of different sizes)."""
        return crop if crop is not None else self.image_size

    def save(self, prepared_dir: Path) -> None:
        io.write_json(prepared_dir / INFO_FILE, asdict(self))

    @classmethod
    def load(cls, prepared_dir: Path) -> DatasetInfo:
        path = Path(prepared_dir) / INFO_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run the prepare stage first (dvc repro prepare)")
        raw = io.read_json(path)
        size, mean, std = raw["image_size"], raw.get("mean"), raw.get("std")
        return cls(
            name=raw["name"],
            class_names=tuple(raw["class_names"]),
            ignore_index=int(raw["ignore_index"]),
            image_size=None if size is None else (int(size[0]), int(size[1])),
            split_sizes={k: int(v) for k, v in raw["split_sizes"].items()},
            mean=None if mean is None else tuple(float(v) for v in mean),
            std=None if std is None else tuple(float(v) for v in std),
        )


def content_hash(image: np.ndarray) -> str:
    """Stable hash of decoded pixels (shape included), used to detect leaks between splits."""
    digest = hashlib.sha256(str(image.shape).encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()[:20]


def class_pixel_columns(num_classes: int) -> list[str]:
    return [f"pixels_class_{k}" for k in range(num_classes)]


def manifest_row(
    sample_id: str,
    split: str,
    index: int,
    image_path: str,
    mask_path: str,
    image: np.ndarray,
    mask: np.ndarray,
    num_classes: int,
) -> dict[str, object]:
    """One manifest row: identity, paths (relative to the prepared dir), sizes, class pixel counts, hash."""
    counts = np.bincount(mask.ravel(), minlength=256)
    row: dict[str, object] = {
        "id": sample_id,
        "split": split,
        "index": index,
        "image_path": image_path,
        "mask_path": mask_path,
        "height": int(image.shape[0]),
        "width": int(image.shape[1]),
        "content_hash": content_hash(image),
    }
    row.update({column: int(counts[k]) for k, column in enumerate(class_pixel_columns(num_classes))})
    return row


def data_version(prepared_dir: Path, lock_file: Path) -> str:
    """DVC's hash of the prepared data (from ``dvc.lock``), else a digest of its manifest."""
    try:
        import yaml

        lock = yaml.safe_load(Path(lock_file).read_text())
        for out in lock["stages"]["prepare"]["outs"]:
            if Path(out["path"]) == Path("data/prepared"):
                return f"dvc:{out['md5']}"
    except (OSError, KeyError, TypeError, ValueError):
        pass
    digest = hashlib.sha256((Path(prepared_dir) / MANIFEST_FILE).read_bytes()).hexdigest()[:20]
    return f"manifest:{digest}"


def read_manifest(prepared_dir: Path) -> pd.DataFrame:
    path = Path(prepared_dir) / MANIFEST_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the prepare stage first (dvc repro prepare)")
    import pandas as pd  # only where the manifest is read: training hosts need not have pandas

    return pd.read_csv(path)
