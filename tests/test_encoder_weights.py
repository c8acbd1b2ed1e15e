"""Input normalisation inside the model, and encoder weights from a local safetensors file."""

import hashlib

import pytest
import safetensors.torch
import torch

from segpipe.models import build_model, validate_model_options
from segpipe.models.base import is_normalisation_key
from segpipe.paths import ProjectPaths
from segpipe.training.initialise import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    initialise_model,
    load_encoder_weights,
)

UNET = {"depth": 2, "base_channels": 4}
SMP_UNET = {"decoder_channels": [16, 8, 8, 8, 8]}
MEAN, STD = (0.2, 0.4, 0.6), (0.5, 0.25, 2.0)


def _unet():
    return build_model("unet", 3, options=UNET).eval()


def test_identity_normalisation_by_default_leaves_the_output_unchanged():
    model = _unet()
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        plain = model.head(model.decoder(model.encoder(x)))
        assert torch.equal(model(x), plain)
    assert model.normalisation.record() == {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


@pytest.mark.parametrize(("name", "options"), [("unet", UNET), ("smp_unet", SMP_UNET)])
def test_set_normalisation_standardises_the_input_in_forward(name, options):
    model = build_model(name, 3, options=options).eval()
    x = torch.rand(2, 3, 32, 32)
    standardised = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model(standardised)
        model.set_normalisation(MEAN, STD)
        torch.testing.assert_close(model(x), expected)
        assert not torch.allclose(model(x), model(standardised))


def test_normalisation_round_trips_through_a_safetensors_checkpoint(tmp_path):
    from segpipe.training.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint

    model = _unet()
    model.set_normalisation(MEAN, STD)
    path = tmp_path / "model.safetensors"
    meta = CheckpointMeta("unet", UNET, 3, ("a", "b", "c"), (16, 16), 1, "val_miou", 0.5)
    save_checkpoint(path, model, meta)
    assert {"normalisation.mean", "normalisation.std"} <= set(safetensors.torch.load_file(path))
    loaded, _ = load_checkpoint(path)
    torch.testing.assert_close(loaded.normalisation.mean, torch.tensor(MEAN))
    torch.testing.assert_close(loaded.normalisation.std, torch.tensor(STD))
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_weights_saved_before_normalisation_existed_load_as_identity():
    model = _unet()
    model.set_normalisation(MEAN, STD)
    old = {key: value for key, value in _unet().state_dict().items() if not is_normalisation_key(key)}
    assert len(old) == len(model.state_dict()) - 2
    model.load_state_dict(old)  # strict
    assert model.normalisation.record() == {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}


@pytest.mark.parametrize(
    ("mean", "std", "message"),
    [((0.5,), (0.5,), "3 means and 3 stds"), (MEAN, (0.5, 0.0, 1.0), "positive and finite")],
)
def test_bad_normalisation_is_refused(mean, std, message):
    with pytest.raises(ValueError, match=message):
        _unet().set_normalisation(mean, std)


def _smp_encoder_file(tmp_path, **save_options):
    """An smp_unet encoder's weights as a safetensors file, with the model they came from."""
    torch.manual_seed(3)
    source = build_model("smp_unet", 3, options=SMP_UNET)
    state = {key: value.contiguous() for key, value in source.encoder_module().state_dict().items()}
    path = tmp_path / "encoder.safetensors"
    safetensors.torch.save_file(state, path)
    return path, source


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_encoder_weights_file_loads_the_encoder_and_imagenet_normalisation(tmp_path):
    path, source = _smp_encoder_file(tmp_path)
    options = {**SMP_UNET, "encoder_weights_file": path.name, "encoder_weights_sha256": _sha256(path)}
    model = build_model("smp_unet", 3, options=options)
    record = initialise_model(model, "smp_unet", options, ProjectPaths(tmp_path))
    for key, value in source.encoder_module().state_dict().items():
        assert torch.equal(model.encoder_module().state_dict()[key], value), key
    assert record["init"] == "encoder.safetensors"
    torch.testing.assert_close(model.normalisation.mean, torch.tensor(IMAGENET_MEAN))
    torch.testing.assert_close(model.normalisation.std, torch.tensor(IMAGENET_STD))


def test_a_wrong_key_is_named_in_a_one_line_error(tmp_path):
    path, source = _smp_encoder_file(tmp_path)
    state = safetensors.torch.load_file(path)
    state["conv_one.weight"] = state.pop("conv1.weight")
    safetensors.torch.save_file(state, path)
    with pytest.raises(ValueError) as error:
        load_encoder_weights(build_model("smp_unet", 3, options=SMP_UNET), path)
    message = str(error.value)
    assert "missing conv1.weight" in message and "unexpected conv_one.weight" in message
    assert "\n" not in message


def test_a_differently_shaped_tensor_is_named(tmp_path):
    path, _ = _smp_encoder_file(tmp_path)
    state = safetensors.torch.load_file(path)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    safetensors.torch.save_file(state, path)
    with pytest.raises(ValueError, match=r"does not fit the encoder: size mismatch for conv1\.weight"):
        load_encoder_weights(build_model("smp_unet", 3, options=SMP_UNET), path)


def test_pickled_weights_are_never_loaded(tmp_path, monkeypatch):
    _, source = _smp_encoder_file(tmp_path)
    pickled = tmp_path / "encoder.pt"
    torch.save(source.encoder_module().state_dict(), pickled)
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(pickled.read_bytes())
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: pytest.fail("torch.load called"))
    model = build_model("smp_unet", 3, options=SMP_UNET)
    with pytest.raises(ValueError, match=r"encoder\.pt: encoder weights must be a \.safetensors file"):
        load_encoder_weights(model, pickled)
    with pytest.raises(ValueError, match=r"disguised\.safetensors is not a safetensors file"):
        load_encoder_weights(model, disguised)


def test_a_changed_file_is_refused_with_its_new_sha256(tmp_path):
    path, _ = _smp_encoder_file(tmp_path)
    with pytest.raises(ValueError, match=f"set encoder_weights_sha256: {_sha256(path)}"):
        load_encoder_weights(build_model("smp_unet", 3, options=SMP_UNET), path, "0" * 64)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"encoder_weights_file": "e.safetensors"},
            "encoder_weights_file and encoder_weights_sha256 go together",
        ),
        ({"encoder_weights": "imagenet", "init": "pretrain"}, "encoder_weights and init: pretrain both"),
        ({"init": "imagenet"}, "init: Input should be 'scratch' or 'pretrain'"),
    ],
)
def test_encoder_options_are_checked_with_params(options, message):
    with pytest.raises(ValueError) as error:
        validate_model_options("smp_unet", options)
    assert error.value.args[0].splitlines()[1].startswith("train.models.smp_unet")
    assert message in str(error.value)
