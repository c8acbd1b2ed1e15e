"""Layout helpers shared by the adapters: list image files by stem, pair images with masks, read name
lists."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from segpipe.data.decode import IMAGE_SUFFIXES
from segpipe.data.errors import DatasetError
from segpipe.data.sources.base import SourceSample


def files_by_stem(folder: Path) -> dict[str, Path]:
    """Image files directly in ``folder`` (hidden files skipped), keyed by stem; {} without the folder."""
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in found:
            raise DatasetError(
                f"two files share the stem {path.stem!r}: {found[path.stem].name} and {path.name}",
                "keep one file per name (images and masks are matched by file name without extension)",
                path,
            )
        found[path.stem] = path
    return found


def pair_folder(
    image_dir: Path, mask_dir: Path, split: str | None, id_prefix: str
) -> tuple[list[SourceSample], int]:
    """Samples from matching stems in ``image_dir`` and ``mask_dir``, and the unlabelled count.

    Without a ``mask_dir`` folder at all, the images are unlabelled (no samples, counted); otherwise every
    image needs a mask and every mask an image.
    """
    images = files_by_stem(image_dir)
    if not mask_dir.is_dir():
        return [], len(images)
    masks = files_by_stem(mask_dir)
    require_pairs(
        images,
        masks,
        (f".* in {mask_dir}", "add the mask (same file name, any image extension) or remove the image"),
        (f".* in {image_dir}", "add the image or remove the mask"),
    )
    samples = [
        SourceSample(f"{id_prefix}{stem}", image, masks[stem], split) for stem, image in images.items()
    ]
    return samples, 0


def require_pairs(
    images: dict[str, Path], masks: dict[str, Path], no_mask: tuple[str, str], no_image: tuple[str, str]
) -> None:
    """DatasetError naming the first image without a mask of the same key, else the first mask without an
    image; ``no_mask`` and ``no_image`` are (the message's text after the key, saying where the missing file
    belongs; the fix)."""
    for files, others, kind, (where, fix) in (
        (images, masks, "image has no mask", no_mask),
        (masks, images, "mask has no image", no_image),
    ):
        for key, path in files.items():
            if key not in others:
                raise DatasetError(f"{kind} {key}{where}", fix, path)


def list_splits(folders: dict[str, tuple[Path, Path]]) -> tuple[list[SourceSample], int]:
    """Pair each split's (image folder, mask folder); a split with neither images nor masks is skipped
    (missing)."""
    samples: list[SourceSample] = []
    unlabelled = 0
    for split, (image_dir, mask_dir) in folders.items():
        if not files_by_stem(image_dir) and not files_by_stem(mask_dir):
            continue
        found, skipped = pair_folder(image_dir, mask_dir, split, f"{split}/")
        samples += found
        unlabelled += skipped
    return samples, unlabelled


def require_samples(samples: list[SourceSample], unlabelled: int, root: Path, layout: str) -> None:
    """DatasetError when a listing found no labelled samples."""
    if unlabelled and not samples:
        raise DatasetError(
            f"no labelled images found in the dataset folder ({unlabelled} images have no masks folder)",
            f"add masks: {layout}",
            root,
        )
    if not samples:
        raise DatasetError("no images found in the dataset folder", f"put the images in {layout}", root)


def read_class_names(path: Path) -> tuple[str, ...]:
    """Class names from a text file, one per line in id order (blank lines skipped)."""
    names = tuple(line for line in _text_lines(path, "class list") if line)
    if not names:
        raise DatasetError("class list is empty", "write one class name per line, in class id order", path)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DatasetError(
            f"class names repeat: {', '.join(duplicates)}", "give every class id its own name", path
        )
    return names


def read_stem_list(path: Path) -> list[str]:
    """First token of each line of a split list (blank lines and ``#`` comments skipped); each must be a
    plain file name."""
    if not path.is_file():
        raise DatasetError("split list is missing", "restore the dataset's split list files", path)
    stems = [line.split()[0] for line in _text_lines(path, "split list") if line and not line.startswith("#")]
    for stem in stems:
        if Path(stem).name != stem or stem in {".", ".."} or "\0" in stem:
            raise DatasetError(
                f"split list names {stem!r}, which is not a plain file name "
                "(it could point outside the dataset)",
                "list sample names without folders or extensions, one per line",
                path,
            )
    return stems


def _text_lines(path: Path, kind: str) -> list[str]:
    """The stripped lines of a UTF-8 text file; a file that cannot be read or decoded is a DatasetError."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(
            f"the {kind} is not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start})",
            "save it as plain UTF-8 text, one entry per line",
            path,
        ) from None
    except OSError as error:
        raise DatasetError(
            f"the {kind} could not be read ({error.strerror or error})",
            "check that it is a readable file",
            path,
        ) from None
    return [line.strip() for line in text.splitlines()]


def require_root(root: Path, layout: str) -> None:
    """DatasetError unless ``root`` is an existing folder."""
    if not root.is_dir():
        raise DatasetError(
            f"dataset folder does not exist (expected {layout})",
            "set prepare.root to the dataset folder",
            root,
        )


def listed_samples(
    lists: dict[Path, str | None], image_for: Callable[[str], Path], mask_for: Callable[[str], Path], fix: str
) -> list[SourceSample]:
    """Samples named by split list files (list path -> split); every listed image and mask must exist."""
    listed_in: dict[str, Path] = {}
    samples = []
    for list_path, split in lists.items():
        stems = read_stem_list(list_path)
        if not stems:
            raise DatasetError(
                "split list names no samples", "restore the dataset's split list files", list_path
            )
        for stem in stems:
            if stem in listed_in:
                raise DatasetError(
                    f"{stem} is listed twice ({listed_in[stem].name} and {list_path.name})",
                    "list every sample once, in one split file",
                    list_path,
                )
            listed_in[stem] = list_path
            image, mask = image_for(stem), mask_for(stem)
            for path in (image, mask):
                if not path.is_file():
                    raise DatasetError(f"{list_path.name} lists {stem} but this file is missing", fix, path)
            samples.append(SourceSample(stem, image, mask, split))
    return samples
