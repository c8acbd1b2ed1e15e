"""``segpipe predict``: masks and overlays for good images; every bad input refused by name before anything
is written."""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segpipe.cli import main
from segpipe.data.decode import MAX_PIXELS, MAX_SIDE
from segpipe.data.errors import DatasetError
from segpipe.models import build_model
from segpipe.predict import predict_files, predict_mask
from segpipe.training.checkpoint import CheckpointMeta, save_checkpoint
from segpipe.training.device import ComputeMode

CPU = torch.device("cpu")
STRIDE = 4  # unet with depth 2


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> str:
    """A tiny untrained two-class unet checkpoint (output stride 4)."""
    options = {"depth": 2, "base_channels": 4}
    model = build_model("unet", 2, options=options)
    assert model.output_stride == STRIDE
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_checkpoint(
        path, model, CheckpointMeta("unet", options, 2, ("bg", "fg"), (16, 16), 0, "val_miou", 0.0)
    )
    return str(path)


def _image(path: Path, height: int = 18, width: int = 13, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(array).convert(mode).save(path, format=Image.registered_extensions()[path.suffix.lower()])
    return path


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares ``width`` x ``height`` but holds no pixel data (enough to read its size)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")
    )
    return path


# ---------------------------------------------------------------- what predict accepts


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "I;16"])
def test_any_colour_mode_and_size_gets_a_full_size_mask_and_rgb_overlay(tmp_path, model_file, mode):
    image = _image(tmp_path / "photo.png", 18, 13, mode)
    out = tmp_path / "out"
    written = predict_files([image], model_file, out, CPU)
    assert written == [out / "photo_mask.png", out / "photo_overlay.png"]
    mask, overlay = (np.asarray(Image.open(path)) for path in written)
    assert mask.shape == (18, 13) and mask.max() < 2
    assert overlay.shape == (18, 13, 3) and overlay.dtype == np.uint8


def test_size_that_fits_the_stride_runs_at_that_size(tmp_path, model_file):
    out = tmp_path / "out"
    predict_files([_image(tmp_path / "photo.jpg", 30, 21)], model_file, out, CPU, size=(8, 12))
    assert np.asarray(Image.open(out / "photo_mask.png")).shape == (30, 21)


def test_output_names_stay_inside_the_output_folder(tmp_path, model_file):
    """Outputs are named from the file name alone: '../' in the input path or a stem of '..' cannot escape."""
    _image(tmp_path / "sub" / "a.png")
    dots = _image(tmp_path / "...png")  # pathlib: stem "..", suffix ".png"
    out = tmp_path / "deep" / "out"
    written = predict_files([tmp_path / "sub" / ".." / "sub" / "a.png", dots], model_file, out, CPU)
    assert {path.name for path in written} == {"a_mask.png", "a_overlay.png", ".._mask.png", ".._overlay.png"}
    assert all(path.resolve().parent == out.resolve() for path in written)
    assert sorted(path.name for path in out.iterdir()) == sorted(path.name for path in written)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_either_precision_writes_full_size_masks(tmp_path, model_file, precision):
    out = tmp_path / "out"
    predict_files([_image(tmp_path / "photo.png", 18, 13)], model_file, out, CPU, precision=precision)
    mask = np.asarray(Image.open(out / "photo_mask.png"))
    assert mask.shape == (18, 13) and mask.max() < 2


def test_bf16_mode_runs_the_convolutions_in_bf16_and_fp32_mode_in_fp32():
    model = build_model("unet", 2, options={"depth": 2, "base_channels": 4})
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    conv.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    image = np.random.default_rng(0).integers(0, 256, (18, 13, 3), dtype=np.uint8)
    for mode in (ComputeMode(CPU), ComputeMode(CPU, "bf16", channels_last=True)):
        mode.prepare(model)
        assert predict_mask(model, image, CPU, mode=mode).shape == (18, 13)
    assert seen == [torch.float32, torch.bfloat16]


# ---------------------------------------------------------------- what predict refuses

BadInput = Callable[[Path], Path]


def _random_bytes(folder: Path) -> Path:
    path = folder / "noise.png"
    path.write_bytes(np.random.default_rng(1).bytes(300))
    return path


def _truncated(folder: Path) -> Path:
    path = _image(folder / "cut.png", 40, 40)
    path.write_bytes(path.read_bytes()[:200])
    return path


def _gif(folder: Path) -> Path:
    path = folder / "anim.gif"
    Image.new("RGB", (16, 16)).save(path)
    return path


def _four_page_tiff(folder: Path) -> Path:
    rng = np.random.default_rng(1)
    pages = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(4)]
    pages[0].save(folder / "stack.tif", format="TIFF", save_all=True, append_images=pages[1:])
    return folder / "stack.tif"


def _folder(folder: Path) -> Path:
    (folder / "photos").mkdir()
    return folder / "photos"


BAD_INPUTS: dict[str, tuple[BadInput, str]] = {
    "missing": (lambda folder: folder / "missing.png", "the image file does not exist. Fix: check the path"),
    "directory": (_folder, "the path is a directory, not an image file. Fix: pass the images inside it"),
    "random bytes": (_random_bytes, "the image file is not an image in a known format. Fix: replace it"),
    "truncated": (_truncated, "the image file is truncated or corrupt"),
    "unsupported type": (
        _gif,
        "unsupported file type .gif. Fix: convert it to one of .bmp, .jpeg, .jpg, .png",
    ),
    "no extension": (
        lambda folder: _image(folder / "x.png").rename(folder / "photo"),
        "unsupported file type (no extension)",
    ),
    "smaller than the stride": (
        lambda folder: _image(folder / "tiny.png", 3, 40),
        f"the image is 40x3 px, smaller than the model's output stride ({STRIDE} px). "
        "Fix: use an image at least 4x4 px",
    ),
    "too wide": (
        lambda folder: _png_header(folder / "wide.png", MAX_SIDE + 1, 16),
        f"the image is {MAX_SIDE + 1}x16 px, more than predict handles ({MAX_SIDE} px a side, "
        "64 megapixels). Fix: downscale",
    ),
    "too many pixels": (
        lambda folder: _png_header(folder / "huge.png", 8000, MAX_PIXELS // 8000 + 1),
        f"the image is 8000x{MAX_PIXELS // 8000 + 1} px, more than predict handles",
    ),
    "multi_page_tiff": (_four_page_tiff, "the image has 4 pages; predict reads one page per file"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_named_with_its_fix_before_anything_is_written(tmp_path, model_file, case):
    make_bad, problem = BAD_INPUTS[case]
    good, bad = _image(tmp_path / "good.png"), make_bad(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=re.escape(f"{bad}: {problem}")):
        predict_files([good, bad], model_file, out, CPU)
    assert not out.exists()


def test_output_folder_that_is_a_file_or_lies_under_a_file(tmp_path, model_file):
    image = _image(tmp_path / "photo.png")
    blocker = tmp_path / "results.txt"
    blocker.write_text("keep me")
    with pytest.raises(
        DatasetError,
        match=re.escape(f"{blocker}: the output folder is an existing file. Fix: pass --out a folder"),
    ):
        predict_files([image], model_file, blocker, CPU)
    with pytest.raises(
        DatasetError,
        match=re.escape(f"{blocker / 'out'}: the output folder cannot be created: {blocker} is a file"),
    ):
        predict_files([image], model_file, blocker / "out", CPU)
    assert blocker.read_text() == "keep me"


def test_two_inputs_with_one_name_are_refused_not_overwritten(tmp_path, model_file):
    first, second = _image(tmp_path / "a" / "photo.png"), _image(tmp_path / "b" / "Photo.jpg")
    out = tmp_path / "out"
    with pytest.raises(
        DatasetError,
        match=re.escape(f"{second}: both {first} and {second} would be written as Photo_mask.png"),
    ):
        predict_files([first, second], model_file, out, CPU)
    with pytest.raises(DatasetError, match=re.escape(f"{first}: both {first} and {first} would be written")):
        predict_files([first, first], model_file, out, CPU)
    assert not out.exists()


def test_output_that_would_overwrite_an_input_is_refused(tmp_path, model_file):
    out = tmp_path / "shots"
    inputs = [_image(out / "cat.png"), _image(out / "cat_mask.png")]
    with pytest.raises(
        DatasetError,
        match=re.escape(f"{inputs[0]}: its output cat_mask.png would overwrite the input image {inputs[1]}"),
    ):
        predict_files(inputs, model_file, out, CPU)
    assert sorted(path.name for path in out.iterdir()) == ["cat.png", "cat_mask.png"]


@pytest.mark.parametrize(
    ("size", "fix"),
    [
        ((30, 16), "use --size 32 16"),
        ((0, 8), "use --size 4 8"),
        ((MAX_SIDE + 4, 8), f"use --size {MAX_SIDE} 8"),
    ],
)
def test_size_must_be_a_positive_multiple_of_the_stride_within_the_limit(tmp_path, model_file, size, fix):
    out = tmp_path / "out"
    with pytest.raises(DatasetError, match=re.escape(f"--size {size[0]} {size[1]} is ") + f".*Fix: {fix}"):
        predict_files([_image(tmp_path / "photo.png")], model_file, out, CPU, size=size)
    assert not out.exists()


def test_missing_model_file_is_named(tmp_path):
    model = tmp_path / "models" / "unet" / "model.safetensors"
    with pytest.raises(
        DatasetError, match=re.escape(f"{model}: the model file does not exist. Fix: pass --model models:/")
    ):
        predict_files([_image(tmp_path / "photo.png")], str(model), tmp_path / "out", CPU)


def test_cli_prints_one_line_error_and_exits_1(tmp_path, model_file, capsys):
    bad = _random_bytes(tmp_path)
    code = main(
        ["predict", str(bad), "--model", model_file, "--out", str(tmp_path / "out"), "--device", "cpu"]
    )
    error = capsys.readouterr().err
    assert (
        code == 1
        and error.startswith(f"error: {bad}: the image file is not an image")
        and "Traceback" not in error
    )


def test_a_previous_format_checkpoint_names_the_conversion(tmp_path, capsys):
    old = tmp_path / "models" / "unet" / "model.pt"
    old.parent.mkdir(parents=True)
    torch.save({"meta": {}, "state_dict": {}}, old)
    out = tmp_path / "out"
    code = main(["predict", str(_image(tmp_path / "photo.png")), "--model", str(old), "--out", str(out)])
    error = capsys.readouterr().err
    assert code == 1 and f"segpipe convert-checkpoint {old}" in error and "Traceback" not in error
    assert not out.exists()


def test_exif_rotated_photo_is_predicted_as_displayed(tmp_path, model_file):
    """A phone photo stored sideways with EXIF orientation 6: its mask and overlay come out upright, the size
    a viewer shows."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((30, 21, 3), np.uint8)).save(tmp_path / "photo.jpg", exif=exif.tobytes())
    predict_files([tmp_path / "photo.jpg"], model_file, tmp_path / "out", CPU)
    for name in ("photo_mask.png", "photo_overlay.png"):
        assert Image.open(tmp_path / "out" / name).size == (30, 21)
