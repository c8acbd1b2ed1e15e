"""A folder's ``manifest.json``: the size and sha256 of every file, optionally split into parts of a set size.

Used for bundles and for the output folders that come back from a remote run. Needs the standard library
only (and ``segpipe.io``), so a bundle's bootstrap can join split files before anything else is imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from segpipe import io

MANIFEST = "manifest.json"
FORMAT = "segpipe-manifest/1"
_PART = ".part-"
_SKIPPED = {"__pycache__", ".site"}
"""Made on the host (bytecode, unpacked wheels), so never listed."""
_CHUNK = 1 << 20


class ManifestError(ValueError):
    """A folder that does not match its manifest: missing, altered, extra or misnamed files."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def listed_files(folder: Path) -> list[str]:
    """Relative POSIX paths of the files under ``folder`` (manifest, bytecode, unpacked wheels excluded)."""
    found = []
    for directory, subdirectories, files in os.walk(folder):
        subdirectories[:] = sorted(name for name in subdirectories if name not in _SKIPPED)
        for name in sorted(files):
            relative = (Path(directory) / name).relative_to(folder).as_posix()
            if relative != MANIFEST:
                found.append(relative)
    return found


def _split(path: Path, part_bytes: int) -> list[dict[str, Any]]:
    """Replace ``path`` by ``<name>.part-NNNN`` files of at most ``part_bytes``; their entries."""
    parts = []
    with path.open("rb") as source:
        for index, block in enumerate(iter(lambda: source.read(part_bytes), b"")):
            part = path.with_name(f"{path.name}{_PART}{index:04d}")
            io.write_bytes(part, block)
            parts.append(
                {"file": part.name, "bytes": len(block), "sha256": hashlib.sha256(block).hexdigest()}
            )
    path.unlink()
    return parts


def write_manifest(
    folder: Path, extra: dict[str, Any], part_bytes: int | None = None, whole: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Record every file of ``folder`` (and ``extra`` fields) in its manifest; with ``part_bytes``, files
    larger than that are split into parts first, except those whose path starts with one of ``whole``."""
    folder = Path(folder)
    entries = []
    for relative in listed_files(folder):
        path = folder / relative
        entry: dict[str, Any] = {"path": relative, "bytes": path.stat().st_size, "sha256": _sha256(path)}
        if part_bytes is not None and entry["bytes"] > part_bytes and not relative.startswith(whole):
            entry["parts"] = _split(path, part_bytes)
        entries.append(entry)
    manifest = {"format": FORMAT, **extra, "files": entries}
    io.write_json(folder / MANIFEST, manifest)
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{path} is missing: copy the whole folder, as it was written")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{path} is not JSON ({error}): copy the folder again") from None
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or not isinstance(manifest.get("files"), list)
    ):
        raise ManifestError(f"{path} is not a {FORMAT} file: copy the folder again")
    for entry in manifest["files"]:
        relative = entry.get("path") if isinstance(entry, dict) else None
        if (
            not isinstance(relative, str)
            or relative.startswith("/")
            or "\\" in relative
            or any(part in ("", ".", "..") for part in relative.split("/"))
        ):
            raise ManifestError(f"{path}: {relative!r} is not a relative path inside the folder")
        parts = entry.get("parts", [])
        if not isinstance(parts, list) or not all(isinstance(part, dict) for part in parts):
            raise ManifestError(f"{path}: the parts of {relative} are not a list of files")
    return manifest


def _joined(folder: Path, entry: dict[str, Any]) -> bytes:
    """The checked parts of ``entry``, concatenated."""
    target = folder / entry["path"]
    blocks = []
    for part in entry["parts"]:
        name = part.get("file", "")
        if not re.fullmatch(re.escape(target.name) + re.escape(_PART) + r"\d{4}", name):
            raise ManifestError(f"{folder / MANIFEST}: part name {name!r} does not belong to {entry['path']}")
        path = target.parent / name
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        if len(data) != part.get("bytes") or hashlib.sha256(data).hexdigest() != part.get("sha256"):
            raise ManifestError(
                f"{path} is missing or does not match its sha256 in {MANIFEST}: copy it again"
            )
        blocks.append(data)
    return b"".join(blocks)


def join_parts(folder: Path) -> dict[str, Any]:
    """Rebuild every split file of ``folder`` from its checked parts; the manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    for entry in manifest["files"]:
        if entry.get("parts") and not (folder / entry["path"]).is_file():
            io.write_bytes(folder / entry["path"], _joined(folder, entry))
    return manifest


def verify_folder(folder: Path) -> dict[str, Any]:
    """Join split files, then check that ``folder`` holds exactly the listed files, sizes and sha256."""
    folder = Path(folder)
    manifest = join_parts(folder)
    listed = {entry["path"]: entry for entry in manifest["files"]}
    parts = {
        f"{path}{_PART}{index:04d}"
        for path, entry in listed.items()
        for index in range(len(entry.get("parts") or ()))
    }
    unlisted = [path for path in listed_files(folder) if path not in listed and path not in parts]
    if unlisted:
        raise ManifestError(
            f"{folder} holds files its {MANIFEST} does not list ({', '.join(unlisted[:5])}): "
            f"they were added after it was written; remove them or copy the folder again"
        )
    for relative, entry in listed.items():
        path = folder / relative
        if path.is_symlink() or not path.is_file():
            raise ManifestError(f"{path} is missing (or not a plain file): copy the whole folder again")
        if path.stat().st_size != entry.get("bytes") or _sha256(path) != entry.get("sha256"):
            raise ManifestError(
                f"{path} does not match its sha256 in {folder / MANIFEST}: the file is corrupt "
                f"or was changed; copy it again"
            )
    return manifest
