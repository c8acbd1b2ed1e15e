"""The pretrain stage: denoising pretraining writes an encoder that ``init: pretrain`` starts from."""

import json

import pytest
import safetensors.torch
import torch
import yaml

from segpipe.config import ConfigError, load_params
from segpipe.models import build_model
from segpipe.paths import ProjectPaths
from segpipe.stages.pretrain import run_pretrain
from segpipe.training.initialise import initialise_model, pretrained_encoder_path

MODELS = {
    "unet": {"depth": 2, "base_channels": 4},
    "smp_unet": {"decoder_channels": [16, 8, 8, 8, 8]},
}


def _project(tmp_path, tiny_project, pretrain: dict):
    project = tiny_project(tmp_path / "project", train={"architectures": list(MODELS), "models": MODELS})
    params_file = project / "params.yaml"
    raw = yaml.safe_load(params_file.read_text())
    raw["pretrain"].update(pretrain)
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
