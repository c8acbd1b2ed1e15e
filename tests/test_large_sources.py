"""Cityscapes and ADE20K adapters on miniature copies of their official layouts (nothing is downloaded)."""

from __future__ import annotations

import io
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipelines.prepare import main as prepare_main
from segpipe.config import PrepareParams
from segpipe.data import download
from segpipe.data.cache import load_split
from segpipe.data.download import download_dataset
from segpipe.data.errors import DatasetError
from segpipe.data.manifest import SPLITS, read_manifest
from segpipe.data.prepare import prepare_dataset
from segpipe.data.sources import SourceSample, list_source

SIZE = (16, 32)  # height, width of every generated file (and prepare.image_size: nothing is resized)
IGNORE = 255
# cityscapesscripts labels.py: label id -> train id of the 19 evaluated classes; every other id is ignore.
CITYSCAPES_TRAIN_IDS = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITIES = {"train": {"aachen": 3, "bremen": 3}, "val": {"frankfurt": 2, "lindau": 1}, "test": {"berlin": 2}}
ADE_COUNTS = {"training": 6, "validation": 3}


def save(path: Path, pixels: np.ndarray, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def noise(seed: int) -> np.ndarray:
    """RGB noise: every seed gives different content (splits are carved by content)."""
    return np.random.default_rng(seed).integers(0, 256, (*SIZE, 3), dtype=np.uint8)


def every_value(count: int, shift: int) -> np.ndarray:
    """A mask holding every value 0..count-1, rolled by ``shift``."""
    return np.roll(np.arange(SIZE[0] * SIZE[1]) % count, shift).reshape(SIZE).astype(np.uint8)


def split_counts(samples: list[SourceSample]) -> Counter[str | None]:
    return Counter(sample.split for sample in samples)


def prepared_masks(prepared: Path) -> dict[str, tuple[str, np.ndarray]]:
    """(split, prepared mask from the cache) per sample id."""
    manifest = read_manifest(prepared)
    arrays = {split: load_split(prepared, split) for split in SPLITS}
    return {
        row.id: (row.split, np.asarray(arrays[row.split].masks[row.index])) for row in manifest.itertuples()
    }


def ids_in(masks: dict[str, tuple[str, np.ndarray]], split: str) -> list[str]:
    return sorted(sample_id for sample_id, (sample_split, _) in masks.items() if sample_split == split)


def prepare_params(dataset: str, root: Path, workers: int = 1) -> PrepareParams:
    return PrepareParams(dataset=dataset, root=str(root), image_size=SIZE, workers=workers)


# --- Cityscapes ---------------------------------------------------------------------------------------------


def make_cityscapes(root: Path) -> dict[str, list[str]]:
    """leftImg8bit/ and gtFine/ with the other gtFine files beside the label ids; the stems per split."""
    stems: dict[str, list[str]] = {split: [] for split in CITIES}
    seed = 0
    for split, cities in CITIES.items():
        for city, count in cities.items():
            for frame in range(count):
                stem = f"{city}_{frame:06d}_{19 + frame:06d}"
                stems[split].append(stem)
                save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", noise(seed))
                ids = np.zeros(SIZE, np.uint8) if split == "test" else every_value(34, seed)
                gt = root / "gtFine" / split / city
                save(gt / f"{stem}_gtFine_labelIds.png", ids)
                save(gt / f"{stem}_gtFine_color.png", noise(1000 + seed))
                save(gt / f"{stem}_gtFine_instanceIds.png", ids.astype(np.uint16))
                (gt / f"{stem}_gtFine_polygons.json").write_text("{}")
                seed += 1
    save(root / "leftImg8bit" / "train" / "aachen" / "._aachen_000000_000019_leftImg8bit.png", noise(99))
    return stems


def test_cityscapes_listing(tmp_path: Path) -> None:
    stems = make_cityscapes(tmp_path)
    listing = list_source("cityscapes", tmp_path)
    assert split_counts(listing.samples) == {None: 6, "test": 3}  # train -> carved, val -> test, test unread
    assert [s.id for s in listing.samples if s.split is None] == sorted(stems["train"])
    assert sorted(s.id for s in listing.samples if s.split == "test") == sorted(stems["val"])
    first = listing.samples[0]
    assert first.image == tmp_path / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
    assert first.mask == tmp_path / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"
    assert listing.class_names[:3] == ("road", "sidewalk", "building") and len(listing.class_names) == 19
    assert listing.class_names[-1] == "bicycle" and listing.mask_format == "ids"
    assert listing.label_map == {i: CITYSCAPES_TRAIN_IDS.get(i, IGNORE) for i in range(34)}


def test_cityscapes_prepare_maps_label_ids_to_train_ids(tmp_path: Path) -> None:
    stems = make_cityscapes(tmp_path / "cityscapes")
    info = prepare_dataset(prepare_params("cityscapes", tmp_path / "cityscapes"), tmp_path / "prepared")
    assert info.split_sizes == {"train": 5, "val": 1, "test": 3}  # val carved from train (15 %)
    assert info.class_names[13] == "car" and info.ignore_index == IGNORE
    masks = prepared_masks(tmp_path / "prepared")
    assert ids_in(masks, "test") == sorted(stems["val"])
    lookup = np.full(256, IGNORE, np.uint8)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        lookup[label_id] = train_id
    manifest = read_manifest(tmp_path / "prepared").set_index("id")
    for sample_id, (_, mask) in masks.items():
        raw = np.array(Image.open(manifest.loc[sample_id, "source_mask"]))
        np.testing.assert_array_equal(mask, lookup[raw])
    assert set(np.unique(np.stack([mask for _, mask in masks.values()])).tolist()) == {*range(19), IGNORE}


def test_cityscapes_unknown_label_id_is_refused(tmp_path: Path) -> None:
    make_cityscapes(tmp_path / "cityscapes")
    bad = tmp_path / "cityscapes/gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    save(bad, np.full(SIZE, 34, np.uint8))  # a value no label id has
    with pytest.raises(DatasetError, match=r"(?s)1 of 9 samples.*mask values \[34\]") as error:
        prepare_dataset(prepare_params("cityscapes", tmp_path / "cityscapes"), tmp_path / "prepared")
    assert str(bad) in str(error.value)
    assert not (tmp_path / "prepared").exists()


def test_cityscapes_layout_errors(tmp_path: Path) -> None:
    make_cityscapes(tmp_path)
    city = tmp_path / "gtFine" / "train" / "bremen"
    (city / "bremen_000001_000020_gtFine_labelIds.png").unlink()
    with pytest.raises(DatasetError, match="no mask .*bremen_000001_000020_gtFine_labelIds") as error:
        list_source("cityscapes", tmp_path)
    assert error.value.path == tmp_path / "leftImg8bit/train/bremen/bremen_000001_000020_leftImg8bit.png"
    missing = f"bremen/bremen_000001_000020_gtFine_labelIds.png in {tmp_path / 'gtFine/train'}"
    assert missing in str(error.value)
    (tmp_path / "leftImg8bit/train/bremen/bremen_000001_000020_leftImg8bit.png").unlink()
    lonely = save(tmp_path / "gtFine/val/ulm/ulm_000000_000019_gtFine_labelIds.png", every_value(34, 0))
    with pytest.raises(DatasetError, match="mask has no image .*ulm_000000_000019_leftImg8bit") as error:
        list_source("cityscapes", tmp_path)
    assert error.value.path == lonely
    with pytest.raises(DatasetError, match="no leftImg8bit folder.*folder holding leftImg8bit/"):
        list_source("cityscapes", tmp_path / "leftImg8bit")  # one level too deep
    shutil.rmtree(tmp_path / "gtFine")
    with pytest.raises(DatasetError, match="no gtFine folder.*unpack .*gtFine_trainvaltest.zip"):
        list_source("cityscapes", tmp_path)


def test_cityscapes_download_is_refused_with_where_to_get_it(tmp_path: Path) -> None:
    def opener(url: str, timeout: float | None = None):
        raise AssertionError(f"nothing may be fetched, got {url}")

    root = tmp_path / "cityscapes"
    with pytest.raises(DatasetError) as error:
        download_dataset("cityscapes", root, progress=False, opener=opener)
    message = str(error.value)
    assert "\n" not in message and "login at https://www.cityscapes-dataset.com/" in message
    assert "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip" in message
    assert f"unpack both into {root}" in message and f"{root / 'gtFine'}/" in message
    assert "prepare.download: false" in error.value.fix
    assert not root.exists()


def test_prepare_stage_refuses_to_download_cityscapes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    params = tmp_path / "params.yaml"
    section = {"dataset": "cityscapes", "root": str(tmp_path / "cityscapes"), "download": True}
    params.write_text(yaml.safe_dump({"prepare": section, "tracking": {"enabled": False}}))
    assert prepare_main(["--params", str(params), "--root", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and err.count("\n") == 0
    assert "https://www.cityscapes-dataset.com/" in err and "gtFine_trainvaltest.zip" in err
    assert not (tmp_path / "cityscapes").exists() and not (tmp_path / "data" / "prepared").exists()


# --- ADE20K -------------------------------------------------------------------------------------------------


def make_ade(ade: Path) -> dict[str, list[str]]:
    """images/{training,validation}/ADE_*.jpg, annotations/.../ADE_*.png (values 0..150), info files."""
    names: dict[str, list[str]] = {}
    for offset, (folder, count) in enumerate(ADE_COUNTS.items()):
        kind = "train" if folder == "training" else "val"
        names[folder] = [f"ADE_{kind}_{index + 1:08d}" for index in range(count)]
        for index, name in enumerate(names[folder]):
            save(ade / "images" / folder / f"{name}.jpg", noise(100 * offset + index), quality=95)
            save(ade / "annotations" / folder / f"{name}.png", every_value(151, 7 * index))
    (ade / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n")
    (ade / "sceneCategories.txt").write_text("ADE_train_00000001 airport_terminal\n")
    return names


@pytest.mark.parametrize("parent", [False, True], ids=["ADEChallengeData2016", "parent-folder"])
def test_ade20k_listing(tmp_path: Path, parent: bool) -> None:
    ade = tmp_path / "ADEChallengeData2016"
    names = make_ade(ade)
    listing = list_source("ade20k", tmp_path if parent else ade)
    assert split_counts(listing.samples) == {None: 6, "test": 3}  # training -> carved, validation -> test
    assert [s.id for s in listing.samples] == names["training"] + names["validation"]
    assert listing.samples[0].image == ade / "images" / "training" / "ADE_train_00000001.jpg"
    assert listing.samples[-1].mask == ade / "annotations" / "validation" / "ADE_val_00000003.png"
    assert len(listing.class_names) == len(set(listing.class_names)) == 150
    names = listing.class_names
    assert (names[0], names[12], names[-1]) == ("wall", "person", "flag")
    assert listing.label_map == {0: IGNORE, **{value: value - 1 for value in range(1, 151)}}


def test_ade20k_prepare_shifts_classes_and_ignores_other(tmp_path: Path) -> None:
    names = make_ade(tmp_path / "ADEChallengeData2016")
    info = prepare_dataset(prepare_params("ade20k", tmp_path, workers=2), tmp_path / "prepared")
    assert info.split_sizes == {"train": 5, "val": 1, "test": 3} and info.num_classes == 150
    masks = prepared_masks(tmp_path / "prepared")
    assert ids_in(masks, "test") == names["validation"]
    manifest = read_manifest(tmp_path / "prepared").set_index("id")
    for sample_id, (_, mask) in masks.items():
        raw = np.array(Image.open(manifest.loc[sample_id, "source_mask"]))
        np.testing.assert_array_equal(mask, np.where(raw == 0, IGNORE, raw.astype(np.int16) - 1))
    assert set(np.unique(np.stack([mask for _, mask in masks.values()])).tolist()) == {*range(150), IGNORE}


def test_ade20k_layout_errors(tmp_path: Path) -> None:
    ade = tmp_path / "ADEChallengeData2016"
    make_ade(ade)
    missing = ade / "annotations" / "validation" / "ADE_val_00000002.png"
    missing.unlink()
    with pytest.raises(DatasetError, match="image has no mask ADE_val_00000002") as error:
        list_source("ade20k", tmp_path)
    assert error.value.path == ade / "images" / "validation" / "ADE_val_00000002.jpg"
    with pytest.raises(DatasetError, match="no images folder.*ADEChallengeData2016.zip"):
        list_source("ade20k", ade / "annotations")


def test_ade20k_download_extracts_the_challenge_folder(tmp_path: Path) -> None:
    (url,) = (archive.url for archive in download.DATASET_ARCHIVES["ade20k"])
    assert url == "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
    source = tmp_path / "source"
    make_ade(source / "ADEChallengeData2016")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(source).as_posix())
    calls = []

    def opener(requested: str, timeout: float | None = None) -> io.BytesIO:
        calls.append(requested)
        return io.BytesIO(buffer.getvalue())

    root = tmp_path / "ade20k"
    download_dataset("ade20k", root, progress=False, opener=opener)
    assert calls == [url] and (root / "ADEChallengeData2016" / "objectInfo150.txt").is_file()
    assert split_counts(list_source("ade20k", root).samples) == {None: 6, "test": 3}


def test_unknown_source_lists_every_adapter(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="folder, camvid, oxford_pets, voc, cityscapes, ade20k$"):
        list_source("kitti", tmp_path)
