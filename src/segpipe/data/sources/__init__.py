"""Dataset adapters: list the labelled samples of a dataset on disk (no pixel decoding) for prepare."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from segpipe.data.sources.ade20k import list_ade20k
from segpipe.data.sources.base import SourceListing, SourceSample, assign_splits
from segpipe.data.sources.camvid import list_camvid
from segpipe.data.sources.cityscapes import list_cityscapes
from segpipe.data.sources.folder import list_folder
from segpipe.data.sources.oxford_pets import list_oxford_pets
from segpipe.data.sources.voc import list_voc

__all__ = ["SOURCES", "SourceListing", "SourceSample", "assign_splits", "list_source"]

SOURCES = ("folder", "camvid", "oxford_pets", "voc", "cityscapes", "ade20k")
_LISTERS: dict[str, Callable[[Path], SourceListing]] = {
    "folder": list_folder,
    "camvid": list_camvid,
    "voc": list_voc,
    "cityscapes": list_cityscapes,
    "ade20k": list_ade20k,
}


def list_source(
    dataset: str, root: Path, *, trimap: Literal["three_class", "binary"] = "three_class"
) -> SourceListing:
    """List ``dataset`` (one of ``SOURCES``) under ``root``; ``trimap`` only applies to oxford_pets."""
    if dataset == "oxford_pets":
        return list_oxford_pets(root, trimap)
    if dataset in _LISTERS:
        return _LISTERS[dataset](root)
    raise ValueError(f"unknown dataset source {dataset!r}; choose one of: {', '.join(SOURCES)}")
