"""FCN-32s/16s/8s: VGG-16 widths, bilinear-initialised upsampling and zero-initialised skip scores."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segpipe.models import build_model
from segpipe.models.fcn.model import FCN

from .base import NUM_CLASSES, ModelTester, conv_widths

TINY = {"width": 0.125, "fc_channels": 16}
INVALID = [
    ({"width": 1.5}, "width: Input should be less than or equal to 1"),
    ({"fc_channels": "many"}, "fc_channels: Input should be a valid integer"),
    ({"dropout": 1.0}, "dropout: Input should be less than 1"),
]


class TestFCN32s(ModelTester):
    name, tiny, invalid_options = "fcn32s", TINY, INVALID


class TestFCN16s(ModelTester):
    name, tiny, invalid_options = "fcn16s", TINY, INVALID


class TestFCN8s(ModelTester):
    name, tiny, invalid_options = "fcn8s", TINY, INVALID


def tiny(name: str) -> nn.Module:
    return build_model(name, NUM_CLASSES, options=TINY)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize(("name", "upsamplers"), [("fcn32s", 1), ("fcn16s", 2), ("fcn8s", 3)])
def test_transposed_convs_start_as_bilinear_interpolation(name, upsamplers):
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


@pytest.mark.parametrize(("name", "skips"), [("fcn32s", 0), ("fcn16s", 1), ("fcn8s", 2)])
def test_skip_score_layers_start_at_zero(name, skips):
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
        (upsample_2x,) = model.decoder.skip_upsamples
        coarse = model.head(upsample_2x(model.decoder.score(fc7)))
        torch.testing.assert_close(model(x), coarse)


def test_variants_differ_exactly_by_their_skip_branches():
    names = ["fcn32s", "fcn16s", "fcn8s"]
    shapes = {name: {k: v.shape for k, v in tiny(name).state_dict().items()} for name in names}
    shared = {k for k in shapes["fcn32s"] if not k.startswith("head.")}
    for name in ("fcn16s", "fcn8s"):
        assert all(shapes[name][k] == shapes["fcn32s"][k] for k in shared)
    extra_16 = set(shapes["fcn16s"]) - set(shapes["fcn32s"])
    extra_8 = set(shapes["fcn8s"]) - set(shapes["fcn16s"])
    assert extra_16 and all(
        k.startswith(("decoder.skip_scores.0", "decoder.skip_upsamples.0")) for k in extra_16
    )
    assert extra_8 and all(
        k.startswith(("decoder.skip_scores.1", "decoder.skip_upsamples.1")) for k in extra_8
    )
    assert [shapes[n]["head.weight"][-1] for n in names] == [64, 32, 16]


def test_full_width_has_vgg16_conv_widths():
    model = build_model("fcn32s", NUM_CLASSES, options={"width": 1.0, "fc_channels": 64})
    assert conv_widths(model.encoder) == [64, 64, 128, 128, 256, 256, 256, *[512] * 6, 64, 64]
    fc6 = model.encoder.fc[0]
    assert fc6.kernel_size == (7, 7) and fc6.in_channels == 512


def test_batch_norm_switch():
    with_bn = build_model("fcn8s", NUM_CLASSES, options={"width": 0.05})
    plain = build_model("fcn8s", NUM_CLASSES, options={"width": 0.05, "batch_norm": False})
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.encoder.modules()) == 13  # one per VGG-16 conv
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert plain(torch.randn(1, 3, 32, 32)).shape == (1, NUM_CLASSES, 32, 32)


def test_default_fc_channels_scale_with_width():
    model = build_model("fcn8s", NUM_CLASSES, options={"width": 0.125})
    assert model.encoder.out_channels == (32, 64, 512)  # pool3, pool4, fc7 = 4096 * 0.125


def test_a_variant_other_than_32_16_or_8_is_an_error():
    with pytest.raises(ValueError, match="FCN variant must be 32, 16 or 8, got 4"):
        FCN(NUM_CLASSES, variant=4)
