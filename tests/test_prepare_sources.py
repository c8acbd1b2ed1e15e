"""End to end through the real prepare stage: a corpus of broken datasets, tricky-but-valid ones and official
layouts.

Every broken case copies one good ``folder`` dataset (and the data/prepared built from it), breaks it, runs
``pipelines/prepare.py`` and checks that the stage exits with 1 and one ``error:`` message naming the
offending file and the problem, and that the previously prepared data/prepared is byte-for-byte unchanged,
with no temp dirs left.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from segpipe.config import PrepareParams
from segpipe.data.cache import load_split
from segpipe.data.manifest import SPLITS, DatasetInfo, read_manifest
from segpipe.data.prepare import prepare_dataset

REPO = Path(__file__).resolve().parents[1]
SOURCE_SIZE = (24, 32)  # height, width of the generated files
TARGET_SIZE = (16, 24)  # prepare.image_size: every sample is resized
CLASSES = ("background", "road", "car")
PALETTE = [(0, 0, 0), (128, 64, 128), (0, 0, 142)]
COUNTS = {"train": 6, "val": 3, "test": 3}
IGNORE = 255


def _load_stage():
    spec = importlib.util.spec_from_file_location("stage_prepare", REPO / "pipelines" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


STAGE = _load_stage()


# --- building datasets --------------------------------------------------------------------------------------


def save(path: Path, pixels: np.ndarray | Image.Image, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)).save(path, **options)
    return path


def image_pixels(seed: int, size: tuple[int, int] = SOURCE_SIZE) -> np.ndarray:
    """Random RGB noise: every seed gives different content."""
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def mask_pixels(seed: int, size: tuple[int, int] = SOURCE_SIZE) -> np.ndarray:
    """Class ids 0..2 in 4x4 blocks (so nearest resizing keeps every class) and an ignore border on the top
    row."""
    blocks = np.random.default_rng(seed + 1000).integers(0, 3, (size[0] // 4, size[1] // 4), dtype=np.uint8)
    blocks.flat[:3] = [0, 1, 2]
    mask = np.kron(blocks, np.ones((4, 4), np.uint8))
    mask[0] = IGNORE
    return mask


def make_folder(
    root: Path, counts: dict[str, int] = COUNTS, classes: tuple[str, ...] = CLASSES, masks: bool = True
) -> Path:
    """``<root>/<split>/images|masks/<split>_<i>.png`` and ``classes.txt``; ``masks=False`` leaves masks/
    out."""
    for offset, (split, count) in enumerate(counts.items()):
        for index in range(count):
            seed = 100 * offset + index
            save(root / split / "images" / f"{split}_{index}.png", image_pixels(seed))
            if masks:
                save(root / split / "masks" / f"{split}_{index}.png", mask_pixels(seed))
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def run_stage(project: Path, **prepare) -> int:
    """Run pipelines/prepare.py on ``project`` (folder dataset under ``project/raw`` unless overridden)."""
    section = {
        "dataset": "folder",
        "root": str(project / "raw"),
        "image_size": list(TARGET_SIZE),
        "workers": 1,
    }
    section.update(prepare)
    params_file = project / "params.yaml"
    params_file.write_text(yaml.safe_dump({"prepare": section, "tracking": {"enabled": False}}))
    return STAGE.main(["--params", str(params_file), "--root", str(project)])


def cache_masks(prepared: Path) -> dict[str, np.ndarray]:
    """Prepared mask (from the cache) per sample id."""
    manifest = read_manifest(prepared)
    arrays = {split: load_split(prepared, split) for split in SPLITS}
    return {row.id: np.asarray(arrays[row.split].masks[row.index]) for row in manifest.itertuples()}


def nearest(mask: np.ndarray, size: tuple[int, int] = TARGET_SIZE) -> np.ndarray:
    return np.array(Image.fromarray(mask).resize(size[::-1], Image.Resampling.NEAREST))


# --- the good dataset, prepared once ------------------------------------------------------------------------


@dataclass(frozen=True)
class Good:
    raw: Path
    prepared: Path
    digest: dict[str, str]


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Good:
    project = tmp_path_factory.mktemp("good")
    make_folder(project / "raw")
    assert run_stage(project) == 0
    prepared = project / "data" / "prepared"
    return Good(project / "raw", prepared, tree_digest(prepared))


@pytest.fixture
def project(tmp_path: Path, good: Good) -> Path:
    """A copy of the good project: dataset in raw/, its prepared data in data/prepared."""
    shutil.copytree(good.raw, tmp_path / "raw")
    shutil.copytree(good.prepared, tmp_path / "data" / "prepared")
    return tmp_path


def test_good_folder_dataset(good: Good) -> None:
    manifest = read_manifest(good.prepared)
    assert manifest["split"].value_counts().to_dict() == COUNTS
    info = DatasetInfo.load(good.prepared)
    assert info.class_names == CLASSES and info.ignore_index == IGNORE and info.image_size == TARGET_SIZE
    for split, count in COUNTS.items():
        arrays = load_split(good.prepared, split)
        assert arrays.images.shape == (count, *TARGET_SIZE, 3) and arrays.masks.shape == (count, *TARGET_SIZE)
    masks = cache_masks(good.prepared)
    assert set(np.unique(np.stack(list(masks.values()))).tolist()) == {0, 1, 2, IGNORE}
    for row in manifest.itertuples():  # resized nearest: exactly the source mask's values, no blends
        np.testing.assert_array_equal(masks[row.id], nearest(np.array(Image.open(row.source_mask))))
    assert os.listdir(good.prepared.parent) == ["prepared"]


# --- broken datasets: refused, naming the file, nothing written ---------------------------------------------


def assert_refused(
    project: Path, code: int, err: str, offending: tuple[Path, ...], phrase: str, good: Good
) -> None:
    assert code == 1
    assert err.startswith("error: ") and "Traceback" not in err
    assert "DatasetError" not in err  # each problem in its own words, not wrapped in another one's message
    for path in offending:
        assert path.name in err, f"{path.name} not named in: {err}"
    assert phrase in err, f"{phrase!r} not in: {err}"
    assert tree_digest(project / "data" / "prepared") == good.digest
    assert os.listdir(project / "data") == ["prepared"]  # no staging or retired folder left beside it


def rewrite(path: Path, content: bytes | str | np.ndarray) -> Path:
    if isinstance(content, np.ndarray):
        save(path, content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return path


def truncate(path: Path) -> Path:
    return rewrite(path, path.read_bytes()[: path.stat().st_size // 2])


def image_without_mask(raw: Path) -> Path:
    (raw / "val" / "masks" / "val_0.png").unlink()
    return raw / "val" / "images" / "val_0.png"


def mask_without_image(raw: Path) -> Path:
    (raw / "test" / "images" / "test_2.png").unlink()
    return raw / "test" / "masks" / "test_2.png"


def size_mismatch(raw: Path) -> tuple[Path, Path]:
    return raw / "train" / "images" / "train_3.png", rewrite(
        raw / "train" / "masks" / "train_3.png", mask_pixels(3, (20, 32))
    )


def mask_value_out_of_range(raw: Path) -> Path:
    path = raw / "val" / "masks" / "val_2.png"
    mask = np.array(Image.open(path))
    mask[5:9, 5:9] = 7
    return rewrite(path, mask)


def rewrite_masks(raw: Path, convert: Callable[[Path, np.ndarray], None]) -> None:
    for path in sorted(raw.glob("*/masks/*.png")):
        convert(path, np.array(Image.open(path)))


VOID = (255, 255, 255)
RGB_PARAMS = {
    "mask_format": "rgb",
    "palette": [*map(list, PALETTE), list(VOID)],
    "classes": [*CLASSES, "void"],
}


def as_rgb(path: Path, ids: np.ndarray) -> None:
    """Class ids as PALETTE colours; the ignore pixels become VOID, a fourth class "void" in RGB_PARAMS."""
    lookup = np.zeros((256, 3), np.uint8)
    lookup[: len(PALETTE)] = PALETTE
    lookup[IGNORE] = VOID
    save(path, lookup[ids])


def colour_not_in_palette(raw: Path) -> Path:
    rewrite_masks(raw, as_rgb)
    path = raw / "test" / "masks" / "test_1.png"
    colours = np.array(Image.open(path))
    colours[10:14, 10:14] = (255, 0, 255)
    return rewrite(path, colours)


def empty_folder(raw: Path) -> Path:
    shutil.rmtree(raw)
    raw.mkdir()
    return raw


def same_image_in_train_and_test(raw: Path) -> tuple[Path, Path]:
    original = raw / "train" / "images" / "train_0.png"
    return original, rewrite(raw / "test" / "images" / "test_0.png", original.read_bytes())


def saved_as(real_format: str) -> Callable[[Path], Path]:
    """Breaks a dataset by saving one image in ``real_format`` under its .png name."""

    def breaks(raw: Path) -> Path:
        path = raw / "val" / "images" / "val_1.png"
        Image.fromarray(image_pixels(0)).save(path, format=real_format)
        return path

    return breaks


def huge_image(raw: Path) -> Path:
    """9000x9000 px (81 megapixels): over the default limit, cheap to write as a constant 1-bit PNG."""
    return save(raw / "train" / "images" / "train_2.png", Image.new("1", (9000, 9000)))


def bad_files_in_two_splits(raw: Path) -> tuple[Path, Path]:
    return truncate(raw / "train" / "masks" / "train_5.png"), rewrite(
        raw / "test" / "images" / "test_1.png", b""
    )


@dataclass(frozen=True)
class Case:
    breaks: Callable[
        [Path], Path | tuple[Path, ...]
    ]  # breaks the dataset in raw/, returns the files to be named
    phrase: str
    params: dict = field(
        default_factory=dict
    )  # prepare settings; "{project}" in a string is the project folder


CASES = {
    "truncated_png": Case(
        lambda raw: truncate(raw / "train" / "images" / "train_1.png"), "truncated or corrupt", {"workers": 2}
    ),
    "text_file_named_png": Case(
        lambda raw: rewrite(raw / "test" / "images" / "test_0.png", "not an image\n"),
        "not an image in a known format",
    ),
    "zero_byte_image": Case(
        lambda raw: rewrite(raw / "train" / "images" / "train_4.png", b""), "empty (0 bytes)"
    ),
    "image_without_mask": Case(image_without_mask, "image has no mask val_0.*"),
    "mask_without_image": Case(mask_without_image, "mask has no image test_2.*"),
    "size_mismatch": Case(size_mismatch, "image is 32x24 (WxH) but its mask"),
    "mask_value_out_of_range": Case(
        mask_value_out_of_range, "mask values [7] are not class ids 0..2", {"workers": 2}
    ),
    "colour_not_in_palette": Case(
        colour_not_in_palette, "colour(s) not in the palette: (255, 0, 255)", RGB_PARAMS
    ),
    "gif_named_png": Case(saved_as("GIF"), "the image file holds a GIF image, not PNG, JPEG, TIFF or BMP"),
    "eps_named_png": Case(saved_as("EPS"), "the image file holds a PostScript (EPS) image"),
    "huge_image": Case(
        huge_image, "the image is 9000x9000 px, more than prepare handles (8192 px a side, 64 megapixels)"
    ),
    "image_over_a_lowered_limit": Case(
        lambda raw: raw / "train" / "images" / "train_0.png",
        "the image is 32x24 px, more than prepare handles (8192 px a side, 0.0005 megapixels). "
        "Fix: downscale the image, or raise prepare.max_image_side / prepare.max_image_pixels",
        {"max_image_pixels": 500},
    ),
    "empty_dataset_folder": Case(empty_folder, "no images found"),
    "same_image_in_train_and_test": Case(same_image_in_train_and_test, "the same image is in train and test"),
    "bad_files_in_two_splits_all_reported": Case(
        bad_files_in_two_splits, "2 of 12 samples cannot be used", {"workers": 2}
    ),
    "missing_root": Case(
        lambda raw: raw.parent / "no_such_dataset", "set prepare.root", {"root": "{project}/no_such_dataset"}
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_broken_dataset_is_refused(
    name: str, project: Path, good: Good, capsys: pytest.CaptureFixture[str]
) -> None:
    case = CASES[name]
    offending = case.breaks(project / "raw")
    params = {
        key: value.format(project=project) if isinstance(value, str) else value
        for key, value in case.params.items()
    }
    code = run_stage(project, **params)
    offending = offending if isinstance(offending, tuple) else (offending,)
    assert_refused(project, code, capsys.readouterr().err, offending, case.phrase, good)


def test_unreadable_file_is_refused(
    project: Path, good: Good, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    unreadable = project / "raw" / "val" / "masks" / "val_1.png"
    if os.geteuid() != 0:
        unreadable.chmod(0)
    else:  # root reads any file whatever its mode: make the decoder see what a normal user would
        real_open = Path.open

        def denied(path, *args, **kwargs):
            if path == unreadable:
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(Path, "open", denied)
    try:
        code = run_stage(project)
    finally:
        unreadable.chmod(0o644)
    assert_refused(
        project, code, capsys.readouterr().err, (unreadable,), "not readable (permission denied)", good
    )


# --- tricky but valid datasets ------------------------------------------------------------------------------


ORIENTATION = 0x0112


def phone_photo(path: Path, displayed: np.ndarray) -> Path:
    """``displayed`` saved as a phone does: pixels stored sideways with EXIF orientation 6 (rotate 90 degrees
    clockwise to show)."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    stored = Image.fromarray(displayed).transpose(Image.Transpose.ROTATE_90)
    stored.save(path, exif=exif.tobytes(), quality=95)
    return path


def colour_agreement(image: np.ndarray, mask: np.ndarray) -> float:
    """Share of pixels whose nearest PALETTE colour is the mask's class."""
    distances = ((image[..., None, :].astype(int) - np.array(PALETTE)) ** 2).sum(-1)
    return float((distances.argmin(-1) == mask).mean())


@pytest.mark.parametrize("size", [(32, 32), (24, 40)], ids=["square", "non_square"])
def test_exif_rotated_photo_is_prepared_upright_with_its_mask(project: Path, size: tuple[int, int]) -> None:
    """A phone JPEG stored sideways, its mask drawn on the photo as displayed: both agree once prepared, and
    the manifest says which sample was rotated."""
    raw = project / "raw"
    ids = np.zeros(size, np.uint8)
    ids[: size[0] // 2, : size[1] // 3] = 1  # top-left corner
    ids[-size[0] // 4 :] = 2  # bottom band
    (raw / "train" / "images" / "train_0.png").unlink()
    phone_photo(raw / "train" / "images" / "train_0.jpg", np.asarray(PALETTE, np.uint8)[ids])
    save(raw / "train" / "masks" / "train_0.png", ids)
    assert run_stage(project) == 0
    prepared = project / "data" / "prepared"
    manifest = read_manifest(prepared).set_index("id")
    rotated = manifest.index[manifest["exif_orientation"] != 1].tolist()
    assert rotated == ["train/train_0"] and manifest.loc["train/train_0", "exif_orientation"] == 6
    arrays = load_split(prepared, "train")
    index = manifest.loc["train/train_0", "index"]
    assert colour_agreement(arrays.images[index], arrays.masks[index]) > 0.9


def test_exif_rotated_photo_keeps_its_upright_native_size(project: Path) -> None:
    """With native sizes the cache holds the photo as displayed (24x40 upright, stored 40x24 sideways)."""
    raw = project / "raw"
    ids = np.zeros((24, 40), np.uint8)
    ids[:12, :13] = 1
    (raw / "train" / "images" / "train_0.png").unlink()
    phone_photo(raw / "train" / "images" / "train_0.jpg", np.asarray(PALETTE, np.uint8)[ids])
    save(raw / "train" / "masks" / "train_0.png", ids)
    assert run_stage(project, image_size=None) == 0
    prepared = project / "data" / "prepared"
    index = read_manifest(prepared).set_index("id").loc["train/train_0", "index"]
    arrays = load_split(prepared, "train")
    assert arrays.shape(index) == (24, 40) and arrays.uniform_size is None
    np.testing.assert_array_equal(arrays.mask(index), ids)
    assert colour_agreement(arrays.image(index), arrays.mask(index)) > 0.9


def sixteen_bit_or_palette(path: Path, ids: np.ndarray) -> None:
    """Even samples as 16-bit (I;16) masks, odd ones as palette (P) masks whose colours are not the class
    ids."""
    if int(path.stem.rsplit("_", 1)[1]) % 2 == 0:
        save(path, ids.astype(np.uint16))
        assert Image.open(path).mode.startswith("I")
    else:
        palette_mask = Image.fromarray(ids, "P")
        palette_mask.putpalette(np.random.default_rng(0).integers(0, 256, 768, dtype=np.uint8).tobytes())
        save(path, palette_mask)


@pytest.mark.parametrize(
    ("convert", "params"),
    [(sixteen_bit_or_palette, {}), (as_rgb, RGB_PARAMS)],
    ids=["16bit_and_palette_index_masks", "rgb_colour_masks"],
)
def test_other_mask_encodings_give_the_same_class_ids(
    convert, params: dict, project: Path, good: Good
) -> None:
    rewrite_masks(project / "raw", convert)
    assert run_stage(project, **params) == 0
    expected = cache_masks(good.prepared)
    if (
        convert is as_rgb
    ):  # the white colour is class 3 ("void") here, where the class-id masks had the ignore value
        expected = {key: np.where(mask == IGNORE, 3, mask) for key, mask in expected.items()}
    got = cache_masks(project / "data" / "prepared")
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


def test_background_and_ignore_only_mask_keeps_ignore_with_three_classes(project: Path) -> None:
    """A 0/255 mask is binary only in a two-class dataset; with three classes its 255 pixels stay ignore."""
    mask = np.zeros(SOURCE_SIZE, np.uint8)
    mask[:4] = IGNORE
    save(project / "raw" / "train" / "masks" / "train_2.png", mask)
    assert run_stage(project) == 0
    np.testing.assert_array_equal(cache_masks(project / "data" / "prepared")["train/train_2"], nearest(mask))


def test_binary_masks_with_two_classes(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", classes=("background", "object"))
    rewrite_masks(raw, lambda path, ids: save(path, np.where(ids == 1, 255, 0).astype(np.uint8)))
    assert run_stage(tmp_path) == 0
    prepared = tmp_path / "data" / "prepared"
    assert DatasetInfo.load(prepared).class_names == ("background", "object")
    for row in read_manifest(prepared).itertuples():
        expected = nearest(np.array(Image.open(row.source_mask)) // 255)
        np.testing.assert_array_equal(cache_masks(prepared)[row.id], expected)


def test_grayscale_jpeg_images(project: Path) -> None:
    for path in sorted((project / "raw" / "train" / "images").glob("*.png"))[:3]:
        save(path.with_suffix(".jpg"), np.array(Image.open(path).convert("L")), quality=95)
        path.unlink()
    assert run_stage(project) == 0
    prepared = project / "data" / "prepared"
    manifest = read_manifest(prepared)
    train = load_split(prepared, "train")
    gray = manifest[manifest["source_image"].str.endswith(".jpg")]
    assert len(gray) == 3
    for index in gray["index"]:
        image = np.asarray(train.images[index])
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()


def content_splits(prepared: Path) -> dict[str, set[str]]:
    manifest = read_manifest(prepared)
    return {split: set(manifest.loc[manifest["split"] == split, "content_hash"]) for split in SPLITS}


def assert_disjoint(splits: dict[str, set[str]]) -> None:
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"])
    assert not (splits["val"] & splits["test"])


def test_only_train_is_carved_deterministically(tmp_path: Path) -> None:
    raw = make_folder(tmp_path / "raw", counts={"train": 12})
    params = PrepareParams(dataset="folder", root=str(raw), image_size=TARGET_SIZE, workers=1)
    first, second = prepare_dataset(params, tmp_path / "first"), prepare_dataset(params, tmp_path / "second")
    assert first.split_sizes == second.split_sizes == {"train": 8, "val": 2, "test": 2}
    assert (tmp_path / "first" / "manifest.csv").read_bytes() == (
        tmp_path / "second" / "manifest.csv"
    ).read_bytes()
    assert_disjoint(content_splits(tmp_path / "first"))


def test_test_folder_without_masks_is_unlabelled_and_splits_are_carved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unlabelled test images cannot be scored: they are skipped (and said so), val and test are carved from
    train."""
    raw = make_folder(tmp_path / "raw", counts={"train": 12})
    make_folder(raw, counts={"test": 3}, masks=False)
    assert run_stage(tmp_path) == 0
    assert "skipped 3 image(s)" in capsys.readouterr().out
    prepared = tmp_path / "data" / "prepared"
    manifest = read_manifest(prepared)
    assert manifest["split"].value_counts().to_dict() == {"train": 8, "val": 2, "test": 2}
    assert manifest["source_image"].str.contains("/train/images/").all()  # no unlabelled test image was used
    assert_disjoint(content_splits(prepared))


# --- official layouts: Oxford-IIIT Pet and Pascal VOC -------------------------------------------------------


def make_pets(root: Path, trainval: int = 8, test: int = 3) -> list[str]:
    """images/*.jpg, annotations/trimaps/*.png (1 pet, 2 background, 3 border),
    annotations/{trainval,test}.txt."""
    names = [
        f"{breed}_{index + 1}"
        for index, breed in enumerate(["Abyssinian", "beagle"] * ((trainval + test + 1) // 2))
    ]
    names = names[: trainval + test]
    for index, name in enumerate(names):
        save(root / "images" / f"{name}.jpg", image_pixels(index), quality=95)
        trimap = np.full(SOURCE_SIZE, 2, np.uint8)  # background
        trimap[6:18, 8:24] = 3  # border
        trimap[8:16, 10:22] = 1  # pet
        save(root / "annotations" / "trimaps" / f"{name}.png", np.roll(trimap, index, axis=1))
    lines = [f"{name} {index % 37 + 1} {index % 2 + 1} 1" for index, name in enumerate(names)]
    (root / "annotations" / "trainval.txt").write_text("\n".join(lines[:trainval]) + "\n")
    (root / "annotations" / "test.txt").write_text("\n".join(lines[trainval:]) + "\n")
    return names


@pytest.mark.parametrize(
    ("trimap", "classes", "mapping"),
    [
        ("three_class", ("background", "pet", "border"), {2: 0, 1: 1, 3: 2}),
        ("binary", ("background", "pet"), {2: 0, 1: 1, 3: IGNORE}),
    ],
)
def test_oxford_pets(tmp_path: Path, trimap: str, classes: tuple[str, ...], mapping: dict[int, int]) -> None:
    names = make_pets(tmp_path / "pets")
    params = PrepareParams(
        dataset="oxford_pets", root=str(tmp_path / "pets"), image_size=SOURCE_SIZE, trimap=trimap, workers=1
    )
    info = prepare_dataset(params, tmp_path / "prepared")
    assert info.class_names == classes and info.split_sizes == {"train": 7, "val": 1, "test": 3}
    manifest = read_manifest(tmp_path / "prepared")
    assert sorted(manifest.loc[manifest["split"] == "test", "id"]) == sorted(names[8:])
    lookup = np.zeros(256, np.uint8)
    for raw_value, class_id in mapping.items():
        lookup[raw_value] = class_id
    masks = cache_masks(tmp_path / "prepared")
    for row in manifest.itertuples():
        np.testing.assert_array_equal(masks[row.id], lookup[np.array(Image.open(row.source_mask))])


def test_oxford_pets_reads_the_gifs_its_archive_names_jpg(tmp_path: Path) -> None:
    """The official images.tar.gz holds a few GIFs named .jpg: the pets adapter reads them (folder would
    not: see the gif_named_png case)."""
    names = make_pets(tmp_path / "pets")
    gif = tmp_path / "pets" / "images" / f"{names[0]}.jpg"
    Image.fromarray(image_pixels(0)).convert("P").save(gif, format="GIF")
    root, prepared = tmp_path / "pets", tmp_path / "prepared"
    prepare_dataset(PrepareParams(dataset="oxford_pets", root=str(root), image_size=SOURCE_SIZE), prepared)
    split, index = read_manifest(prepared).set_index("id").loc[names[0], ["split", "index"]]
    with Image.open(gif) as expected:
        np.testing.assert_array_equal(load_split(prepared, split).images[index], expected.convert("RGB"))


VOC_PALETTE = [0] * 768
VOC_PALETTE[3 * 12 : 3 * 12 + 3], VOC_PALETTE[3 * 15 : 3 * 15 + 3] = (
    [64, 0, 128],
    [192, 128, 128],
)  # dog, person
VOC_PALETTE[3 * 255 : 3 * 256] = [224, 224, 192]  # the white-ish object borders


def make_voc(voc: Path, train: int = 8, val: int = 3) -> list[str]:
    """JPEGImages/*.jpg, SegmentationClass/*.png (P mode, index = class id, 255 = border),
    ImageSets/Segmentation."""
    names = [f"2007_{index:06d}" for index in range(train + val)]
    for index, name in enumerate(names):
        save(voc / "JPEGImages" / f"{name}.jpg", image_pixels(index), quality=95)
        ids = np.zeros(SOURCE_SIZE, np.uint8)
        ids[4:20, 4 + index : 14 + index] = 255
        ids[5:19, 5 + index : 13 + index] = 12 if index % 2 else 15
        mask = Image.fromarray(ids, "P")
        mask.putpalette(VOC_PALETTE)
        save(voc / "SegmentationClass" / f"{name}.png", mask)
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(names[:train]) + "\n")
    (lists / "val.txt").write_text("\n".join(names[train:]) + "\n")
    return names


def test_voc(tmp_path: Path) -> None:
    names = make_voc(tmp_path / "VOCdevkit" / "VOC2012")
    params = PrepareParams(dataset="voc", root=str(tmp_path), image_size=SOURCE_SIZE, workers=2)
    info = prepare_dataset(params, tmp_path / "prepared")
    assert len(info.class_names) == 21 and info.class_names[12] == "dog" and info.ignore_index == IGNORE
    assert info.split_sizes == {"train": 7, "val": 1, "test": 3}
    manifest = read_manifest(tmp_path / "prepared")
    assert sorted(manifest.loc[manifest["split"] == "test", "id"]) == names[8:]  # val.txt -> test
    assert sorted(manifest.loc[manifest["split"] != "test", "id"]) == names[:8]  # train.txt -> train + val
    masks = cache_masks(tmp_path / "prepared")
    for row in manifest.itertuples():
        np.testing.assert_array_equal(
            masks[row.id], np.array(Image.open(row.source_mask))
        )  # ids and 255 kept
    assert {0, 12, 15, IGNORE} == set(np.unique(np.stack(list(masks.values()))).tolist())
