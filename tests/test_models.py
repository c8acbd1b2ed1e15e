"""Behaviour of segpipe.models: shapes, gradients, initialisation, registry validation."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from segpipe.models import available_architectures, build_model, validate_model_options
from segpipe.models.base import SegmentationNetwork
from segpipe.models.zoo import architecture_family

from model_checks import block_masks, fit_one_batch, parameters_without_gradient

NUM_CLASSES = 5
TINY_OPTIONS = {
    "unet": {"depth": 3, "base_channels": 4},
    "fcn32s": {"width": 0.125, "fc_channels": 16},
    "fcn16s": {"width": 0.125, "fc_channels": 16},
    "fcn8s": {"width": 0.125, "fc_channels": 16},
    "autoencoder": {"depth": 2, "base_channels": 8},
    "segnet": {"blocks": 3, "width": 0.125},
    "xception_unet": {"entry_channels": 4, "encoder_channels": [8, 8, 16], "decoder_channels": [16, 8, 8, 4]},
    "dilated": {"base_channels": 4, "context_channels": 8},
    "smp_unet": {"decoder_channels": [16, 8, 8, 8, 8]},
    "smp_fpn": {"decoder_pyramid_channels": 16, "decoder_segmentation_channels": 32},
    "smp_deeplabv3plus": {"decoder_channels": 16},
}
FCN_VARIANTS = ["fcn32s", "fcn16s", "fcn8s"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny(name: str, in_channels: int = 3) -> SegmentationNetwork:
    return build_model(name, NUM_CLASSES, in_channels, TINY_OPTIONS[name])


def test_every_architecture_has_tiny_test_options():
    assert set(available_architectures()) == set(TINY_OPTIONS)
    assert {"unet", "fcn32s", "fcn16s", "fcn8s"} <= set(available_architectures())


@pytest.mark.parametrize("name", available_architectures())
def test_returns_logits_at_input_size_and_gradients_reach_every_parameter(name):
    model = tiny(name, in_channels=4)
    for height, width in [(64, 64), (64, 96)]:
        logits = model(torch.randn(2, 4, height, width))
        assert logits.shape == (2, NUM_CLASSES, height, width)

    assert any(p.requires_grad for p in model.parameters())
    assert not parameters_without_gradient(model, logits)


@pytest.mark.parametrize("name", available_architectures())
def test_state_dict_keys_follow_the_model_layout(name):
    roots = {key.split(".")[0] for key in tiny(name).state_dict()}
    expected = {"network"} if architecture_family(name) == "smp" else {"encoder", "decoder", "head"}
    assert roots == expected


@pytest.mark.parametrize("name", [n for n in available_architectures() if n != "smp_unet"])
def test_sizes_not_divisible_by_output_stride_raise_value_error_naming_them(name):
    model = tiny(name)
    stride = model.output_stride
    assert stride > 1
    bad_width = 2 * stride + stride // 2
    with pytest.raises(ValueError, match=rf"width={bad_width}\b") as error:
        model(torch.randn(1, 3, 2 * stride, bad_width))
    assert f"{2 * stride} or {3 * stride}" in str(error.value)
    assert "height" not in str(error.value)


def test_check_input_shape_names_both_sides_and_nearest_valid_sizes():
    network = SegmentationNetwork(output_stride=32)
    network.check_input_shape(torch.zeros(1, 3, 64, 96))
    with pytest.raises(ValueError) as error:
        network.check_input_shape(torch.zeros(1, 3, 70, 20))
    message = str(error.value)
    assert "height=70 (nearest valid: 64 or 96)" in message
    assert "width=20 (nearest valid: 32)" in message
    with pytest.raises(ValueError, match="N, C, H, W"):
        network.check_input_shape(torch.zeros(3, 64, 64))


def test_smp_output_strides_match_their_encoders():
    assert tiny("smp_unet").output_stride == 1  # smp.Unet 0.6 accepts any size
    assert tiny("smp_unet")(torch.randn(1, 3, 50, 70)).shape == (1, NUM_CLASSES, 50, 70)
    assert tiny("smp_fpn").output_stride == 32
    assert tiny("smp_deeplabv3plus").output_stride == 16
    options = {**TINY_OPTIONS["smp_deeplabv3plus"], "encoder_output_stride": 8}
    assert build_model("smp_deeplabv3plus", NUM_CLASSES, options=options).output_stride == 8


def test_predict_returns_logits_in_eval_mode_without_gradients():
    model = tiny("unet")
    logits = model.predict(torch.randn(1, 3, 32, 32))
    assert not model.training
    assert not logits.requires_grad
    assert logits.shape == (1, NUM_CLASSES, 32, 32)


def test_static_encoder_list_matches_the_installed_smp():
    from segpipe.models.smp_baselines import ENCODER_NAMES

    assert ENCODER_NAMES == set(smp.encoders.get_encoder_names())


def test_params_validation_does_not_import_smp():
    code = ("import sys; from segpipe.config import load_params; load_params('params.yaml'); "
            "assert 'segmentation_models_pytorch' not in sys.modules, 'smp imported'")
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], check=True)


def test_smp_baselines_never_touch_the_network(monkeypatch):
    def offline(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(smp.encoders, "hf_hub_download", offline)
    for name in available_architectures():
        if architecture_family(name) == "smp":
            tiny(name)
    with pytest.raises(AssertionError, match="network access"):  # the guard itself works
        smp.Unet(encoder_name="resnet18", encoder_weights="imagenet")


# --- FCN ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, upsamplers", [("fcn32s", 1), ("fcn16s", 2), ("fcn8s", 3)])
def test_fcn_transposed_convs_start_as_bilinear_interpolation(name, upsamplers):
    transposed = [m for m in tiny(name).modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(transposed) == upsamplers
    for upsample in transposed:
        factor = upsample.stride[0]
        scores = torch.randn(2, NUM_CLASSES, 4, 6)
        with torch.no_grad():
            upsampled = upsample(scores)
        expected = F.interpolate(scores, scale_factor=factor, mode="bilinear", align_corners=False)
        assert upsampled.shape == expected.shape
        border = factor // 2  # interpolate clamps at the border, the transposed conv zero-pads
        interior = (..., slice(border, -border), slice(border, -border))
        torch.testing.assert_close(upsampled[interior], expected[interior])


@pytest.mark.parametrize("name, skips", [("fcn32s", 0), ("fcn16s", 1), ("fcn8s", 2)])
def test_fcn_skip_score_layers_start_at_zero(name, skips):
    model = tiny(name)
    skip_scores = model.decoder.skip_scores
    assert len(skip_scores) == skips
    assert all(not p.any() for p in skip_scores.parameters())
    assert model.decoder.score.weight.any()


def test_fcn16s_starts_with_the_predictions_of_its_32s_path():
    model = tiny("fcn16s").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, _, fc7 = model.encoder(x)
        upsample_2x, = model.decoder.skip_upsamples
        coarse = model.head(upsample_2x(model.decoder.score(fc7)))
        torch.testing.assert_close(model(x), coarse)


def test_fcn_variants_differ_exactly_by_their_skip_branches():
    shapes = {name: {k: v.shape for k, v in tiny(name).state_dict().items()} for name in FCN_VARIANTS}
    shared = {k for k in shapes["fcn32s"] if not k.startswith("head.")}
    for name in ("fcn16s", "fcn8s"):
        assert all(shapes[name][k] == shapes["fcn32s"][k] for k in shared)
    extra_16 = set(shapes["fcn16s"]) - set(shapes["fcn32s"])
    extra_8 = set(shapes["fcn8s"]) - set(shapes["fcn16s"])
    assert extra_16 and all(k.startswith(("decoder.skip_scores.0", "decoder.skip_upsamples.0")) for k in extra_16)
    assert extra_8 and all(k.startswith(("decoder.skip_scores.1", "decoder.skip_upsamples.1")) for k in extra_8)
    assert [shapes[n]["head.weight"][-1] for n in FCN_VARIANTS] == [64, 32, 16]


def test_fcn_full_width_has_vgg16_conv_widths():
    model = build_model("fcn32s", NUM_CLASSES, options={"width": 1.0, "fc_channels": 64})
    widths = [m.out_channels for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [64, 64, 128, 128, 256, 256, 256, *[512] * 6, 64, 64]
    fc6 = model.encoder.fc[0]
    assert fc6.kernel_size == (7, 7) and fc6.in_channels == 512


def test_fcn_batch_norm_switch():
    with_bn = build_model("fcn8s", NUM_CLASSES, options={"width": 0.05})
    plain = build_model("fcn8s", NUM_CLASSES, options={"width": 0.05, "batch_norm": False})
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.encoder.modules()) == 13  # one per VGG-16 conv
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert plain(torch.randn(1, 3, 32, 32)).shape == (1, NUM_CLASSES, 32, 32)


def test_fcn_default_fc_channels_scale_with_width():
    model = build_model("fcn8s", NUM_CLASSES, options={"width": 0.125})
    assert model.encoder.out_channels == (32, 64, 512)  # pool3, pool4, fc7 = 4096 * 0.125


# --- U-Net -------------------------------------------------------------------------------------


@pytest.mark.parametrize("upsample", ["transpose", "bilinear", "nearest"])
def test_unet_upsample_modes(upsample):
    model = build_model("unet", NUM_CLASSES, options={"depth": 2, "base_channels": 4, "upsample": upsample})
    logits = model(torch.randn(2, 3, 16, 24))
    assert logits.shape == (2, NUM_CLASSES, 16, 24)
    logits.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unet_depth_sets_output_stride():
    shallow = build_model("unet", NUM_CLASSES, options={"depth": 2, "base_channels": 4})
    deep = build_model("unet", NUM_CLASSES, options={"depth": 3, "base_channels": 4})
    assert (shallow.output_stride, deep.output_stride) == (4, 8)
    x = torch.randn(1, 3, 20, 28)
    assert shallow(x).shape == (1, NUM_CLASSES, 20, 28)
    with pytest.raises(ValueError, match="height=20"):
        deep(x)


def test_unet_channels_double_down_and_halve_up():
    model = build_model("unet", NUM_CLASSES, options={"depth": 3, "base_channels": 6})
    encoder_widths = [m.out_channels for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert encoder_widths == [6, 6, 12, 12, 24, 24, 48, 48]
    upsamplers = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels) for m in upsamplers] == [(48, 24), (24, 12), (12, 6)]
    assert model.head.weight.shape == (NUM_CLASSES, 6, 1, 1)


def test_unet_batch_norm_switch():
    with_bn = build_model("unet", NUM_CLASSES, options={"depth": 1, "base_channels": 4})
    without = build_model("unet", NUM_CLASSES, options={"depth": 1, "base_channels": 4, "batch_norm": False})
    assert any(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in without.modules())


# --- registry ----------------------------------------------------------------------------------


def test_unknown_architecture_lists_the_valid_names():
    with pytest.raises(ValueError) as error:
        build_model("segformer", NUM_CLASSES)
    for name in available_architectures():
        assert name in str(error.value)


def test_defaults_and_families():
    assert validate_model_options("unet", None).model_dump() == {
        "depth": 4, "base_channels": 16, "upsample": "transpose", "batch_norm": True
    }
    assert validate_model_options("fcn8s", {}).width == 0.25
    assert validate_model_options("smp_fpn", None).encoder == "resnet18"
    assert [architecture_family(n) for n in ("unet", "fcn8s", "smp_fpn")] == ["builtin", "builtin", "smp"]


def test_unknown_option_is_named_with_the_allowed_ones():
    with pytest.raises(ValueError) as error:
        validate_model_options("unet", {"dept": 3})
    assert "train.models.unet.dept" in str(error.value)
    assert "depth, base_channels, upsample, batch_norm" in str(error.value)


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("unet", {"depth": "deep"}, "train.models.unet.depth: Input should be a valid integer"),
        ("unet", {"depth": 7}, "train.models.unet.depth: Input should be less than or equal to 6"),
        ("unet", {"upsample": "bicubic"}, "'nearest', 'bilinear', 'transpose', 'bed_of_nails' or 'max_unpool'"),
        ("fcn16s", {"width": 1.5}, "train.models.fcn16s.width"),
        ("fcn8s", {"fc_channels": "many"}, "train.models.fcn8s.fc_channels"),
        ("smp_unet", {"decoder_channels": [16, 8]}, "train.models.smp_unet.decoder_channels"),
        ("smp_deeplabv3plus", {"encoder_output_stride": 32}, "Input should be 8 or 16"),
        ("smp_fpn", {"decoder_segmentation_channels": 48}, "multiple of 32"),
        ("smp_fpn", {"encoder": "resnt18"}, "train.models.smp_fpn.encoder: Value error, unknown smp"),
        ("smp_fpn", {"encoder": "resnt18"}, "did you mean resnet18"),
    ],
)
def test_bad_option_values_are_named(name, options, expected):
    with pytest.raises(ValueError) as error:
        validate_model_options(name, options)
    assert expected in str(error.value)


def test_options_must_be_a_mapping():
    with pytest.raises(ValueError, match="train.models.unet: expected a mapping"):
        validate_model_options("unet", [("depth", 3)])


def test_build_model_applies_validated_options():
    assert build_model("unet", NUM_CLASSES, options={"depth": 2}).output_stride == 4
    with pytest.raises(ValueError, match="train.models.fcn32s.dropout"):
        build_model("fcn32s", NUM_CLASSES, options={"dropout": 1.0})



@pytest.mark.parametrize("name", available_architectures())
def test_every_model_overfits_one_tiny_batch(name):
    model = tiny(name)
    block = min(32, max(8, model.output_stride))  # FCN-32s cannot draw anything finer than its stride
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    losses = fit_one_batch(model, images, block_masks(2, 64, block, 3), F.cross_entropy)
    assert losses[-1] < 0.1 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"
