"""The pretrain stage: denoising pretraining writes an encoder that ``init: pretrain`` starts from."""

import json

import numpy as np
import pytest
import safetensors.torch
import torch
import yaml
from PIL import Image

from segpipe.config import ConfigError, PrepareParams, load_params
from segpipe.data.cache import load_split
from segpipe.data.errors import DatasetError
from segpipe.data.unlabelled import fitted_size, load_unlabelled
from segpipe.models import build_model
from segpipe.paths import ProjectPaths
from segpipe.stages.pretrain import PretrainPaths, pretraining_params, run_pretrain
from segpipe.stages.train import run_train
from segpipe.training.initialise import initialise_model, pretrained_encoder_path

MODELS = {
    "unet": {"depth": 2, "base_channels": 4},
    "smp_unet": {"decoder_channels": [16, 8, 8, 8, 8]},
}


def _project(tmp_path, tiny_project, pretrain: dict):
    """A tiny prepared project (32x32 images, 16 in the train split) whose ``pretrain`` section has
    ``pretrain`` on top; ``unlabelled_root`` defaults to an empty folder."""
    project = tiny_project(tmp_path / "project", train={"architectures": list(MODELS), "models": MODELS})
    empty = tmp_path / "no_images"
    empty.mkdir()
    params_file = project / "params.yaml"
    raw = yaml.safe_load(params_file.read_text())
    raw["pretrain"].update({"unlabelled_root": str(empty), **pretrain})
    params_file.write_text(yaml.safe_dump(raw))
    return project, load_params(params_file)


@pytest.mark.parametrize("architecture", list(MODELS))
def test_pretraining_writes_an_encoder_that_init_pretrain_loads(tmp_path, tiny_project, architecture):
    project, params = _project(tmp_path, tiny_project, {"architectures": [architecture], "epochs": 1})
    paths = ProjectPaths(project)
    meta_file = run_pretrain(params, architecture, paths, progress=False)

    encoder_file = pretrained_encoder_path(paths, architecture)
    meta = json.loads(meta_file.read_text())
    assert meta_file == encoder_file.with_suffix(".json") and meta["pretrained"] is True
    assert meta["epoch"] == 1 and meta["val_psnr"] > 0
    assert not (project / "reports" / "curves").exists()  # no file of the leaderboard's runs is touched
    saved = safetensors.torch.load_file(encoder_file)

    options = {**MODELS[architecture], "init": "pretrain"}
    torch.manual_seed(5)
    model = build_model(architecture, 5, options=options)
    assert not all(torch.equal(model.encoder_module().state_dict()[k], v) for k, v in saved.items())
    record = initialise_model(model, architecture, options, paths)
    state = model.encoder_module().state_dict()
    assert set(state) == set(saved)
    for key, value in saved.items():
        assert torch.equal(state[key], value), key
    assert record == {"init": "pretrain", "normalisation": meta["normalisation"]}


def test_an_architecture_not_listed_is_recorded_as_not_pretrained(tmp_path, tiny_project):
    project, params = _project(tmp_path, tiny_project, {"architectures": []})
    paths = ProjectPaths(project)
    meta_file = run_pretrain(params, "unet", paths, progress=False)
    assert json.loads(meta_file.read_text()) == {"architecture": "unet", "pretrained": False}
    assert not pretrained_encoder_path(paths, "unet").exists()
    options = {**MODELS["unet"], "init": "pretrain"}
    with pytest.raises(FileNotFoundError, match=r"list unet in pretrain\.architectures"):
        initialise_model(build_model("unet", 5, options=options), "unet", options, paths)


def test_warmup_longer_than_pretraining_is_a_params_error(tmp_path, tiny_project):
    project, params = _project(tmp_path, tiny_project, {"architectures": ["unet"], "epochs": 1})
    params = params.model_copy(update={"train": params.train.model_copy(update={"warmup_epochs": 1})})
    with pytest.raises(ConfigError, match=r"train\.warmup_epochs \(1\) must be below pretrain\.epochs \(1\)"):
        run_pretrain(params, "unet", ProjectPaths(project), progress=False)


def _save(path, width: int, height: int, orientation: int = 1) -> None:
    """A PNG of ``width`` x ``height`` px: red top-left quarter on grey, with an EXIF orientation if not 1."""
    pixels = np.full((height, width, 3), 128, dtype=np.uint8)
    pixels[: height // 2, : width // 2] = (255, 0, 0)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, exif=exif)


def test_an_unlabelled_image_is_read_upright_and_fitted_as_prepare_fits_images(tmp_path):
    path = tmp_path / "sideways.png"
    _save(path, 40, 24, orientation=6)  # shown rotated 90 degrees clockwise: 24 wide, 40 high
    native = PrepareParams(dataset="folder", image_size=None)
    image, mask = load_unlabelled(path, native)
    assert image.shape == (40, 24, 3) and fitted_size(path, native) == (40, 24)
    assert tuple(image[0, -1]) == (255, 0, 0) and tuple(image[-1, 0]) == (128, 128, 128)  # red top-right
    assert mask.shape == (40, 24) and (mask == 255).all()
    bounded = PrepareParams(dataset="folder", image_size=None, max_side=20)
    assert load_unlabelled(path, bounded)[0].shape == (20, 12, 3) == (*fitted_size(path, bounded), 3)
    fitted = PrepareParams(image_size=(32, 32), ignore_index=7)
    image, mask = load_unlabelled(path, fitted)
    assert image.shape == (32, 32, 3) and (mask == 7).all()


def test_pretraining_also_trains_on_the_unlabelled_images(tmp_path, tiny_project):
    folder = tmp_path / "unlabelled"
    for name in ("b.png", "a.png", "nested/c.png"):
        _save(folder / name, 48, 20)
    _save(folder / "nested" / "turned.png", 40, 24, orientation=8)
    (folder / "notes.txt").write_text("not an image, not read")
    pretrain = {"architectures": ["unet"], "epochs": 1, "unlabelled_root": str(folder)}
    project, params = _project(tmp_path, tiny_project, pretrain)
    paths = ProjectPaths(project)

    meta = json.loads(run_pretrain(params, "unet", paths, progress=False).read_text())
    assert meta["pretrained"] is True and meta["unlabelled_images"] == 4
    data = project / ".segpipe" / "pretrain" / "prepared"
    train, prepared_train = load_split(data, "train"), load_split(paths.prepared, "train")
    assert len(train) == len(prepared_train) + 4 == 20 and train.uniform_size == (32, 32)
    assert np.array_equal(train.images[:16], prepared_train.images)
    expected = load_unlabelled(folder / "a.png", params.prepare)[0]  # sorted by path: a, b, nested/...
    assert np.array_equal(train.image(16), expected) and (train.masks[16:] == 255).all()
    assert len(load_split(data, "val")) == len(load_split(paths.prepared, "val"))

    _save(folder / "d.png", 16, 16)  # new inputs: the data is rebuilt
    meta = json.loads(run_pretrain(params, "unet", paths, progress=False).read_text())
    assert meta["unlabelled_images"] == 5 and len(load_split(data, "train")) == 21


def test_a_folder_without_images_pretrains_on_the_training_split_alone(tmp_path, tiny_project):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    (folder / "README.md").write_text("no images yet")
    pretrain = {"architectures": ["unet"], "epochs": 1, "unlabelled_root": str(folder)}
    project, params = _project(tmp_path, tiny_project, pretrain)
    meta = json.loads(run_pretrain(params, "unet", ProjectPaths(project), progress=False).read_text())
    assert meta["unlabelled_images"] == 0 and not (project / ".segpipe" / "pretrain").exists()
    checkpoint = PretrainPaths(project).checkpoint("unet")
    pretrained = checkpoint.read_bytes()

    # the pretraining as it runs without unlabelled images: the denoiser trained on data/prepared
    checkpoint.unlink()
    run_train(pretraining_params(params, "unet"), "unet", PretrainPaths(project), False, task="denoise")
    assert checkpoint.read_bytes() == pretrained


def test_a_missing_unlabelled_folder_is_a_params_error_before_training(tmp_path, tiny_project):
    pretrain = {"architectures": ["unet"], "epochs": 1, "unlabelled_root": str(tmp_path / "nowhere")}
    project, params = _project(tmp_path, tiny_project, pretrain)
    paths = ProjectPaths(project)
    with pytest.raises(ConfigError, match=r"pretrain\.unlabelled_root '.*nowhere' is not a folder") as error:
        run_pretrain(params, "unet", paths, progress=False)
    assert "\n" not in str(error.value) and not (project / "models" / "pretrain" / "unet").exists()
    # an architecture not pretrained reads no images
    assert (
        json.loads(run_pretrain(params, "smp_unet", paths, progress=False).read_text())["pretrained"] is False
    )


def test_an_undecodable_unlabelled_file_is_named_before_training(tmp_path, tiny_project):
    folder = tmp_path / "unlabelled"
    _save(folder / "good.png", 32, 32)
    (folder / "broken.jpg").write_bytes(b"not an image at all")
    pretrain = {"architectures": ["unet"], "epochs": 1, "unlabelled_root": str(folder)}
    project, params = _project(tmp_path, tiny_project, pretrain)
    with pytest.raises(DatasetError, match=r"broken\.jpg: .*pretrain\.unlabelled_root.*Fix: ") as error:
        run_pretrain(params, "unet", ProjectPaths(project), progress=False)
    assert "\n" not in str(error.value)
    assert not (project / "models" / "pretrain" / "unet").exists()
    assert not (project / ".segpipe" / "pretrain" / "prepared").exists()
