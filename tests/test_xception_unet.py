"""Xception-style U-Net: shapes, gradients, separable convs, shortcuts, overfitting, config."""


import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from model_checks import coloured_block_batch, fit_one_batch, parameters_without_gradient
from segpipe.models.xception_unet import XceptionUNet, XceptionUNetConfig, build
from segpipe.models.xception_unet.encoder import SeparableConv2d

NUM_CLASSES = 3
TINY = XceptionUNetConfig(
    entry_channels=4, encoder_channels=[8, 8, 16], decoder_channels=[16, 8, 8, 4]
)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def tiny(in_channels: int = 3) -> XceptionUNet:
    return build(TINY, NUM_CLASSES, in_channels)




def test_logits_at_input_size_for_several_shapes():
    model = tiny(in_channels=4)
    assert model.output_stride == 16
    for height, width in [(32, 64), (64, 64), (96, 128), (16, 16)]:
        assert model(torch.randn(2, 4, height, width)).shape == (2, NUM_CLASSES, height, width)


def test_gradients_reach_every_parameter():
    model = tiny()
    logits = model(torch.randn(2, 3, 32, 48))
    assert not parameters_without_gradient(model, logits)


def test_bad_size_raises_value_error_naming_it():
    with pytest.raises(ValueError, match=r"height=40 \(nearest valid: 32 or 48\)") as error:
        tiny()(torch.randn(1, 3, 40, 64))
    assert "width" not in str(error.value)


def test_output_stride_follows_the_number_of_down_blocks():
    config = XceptionUNetConfig(entry_channels=4, encoder_channels=[8], decoder_channels=[8, 4])
    model = build(config, NUM_CLASSES, 3)
    assert model.output_stride == 4
    assert model(torch.randn(1, 3, 12, 20)).shape == (1, NUM_CLASSES, 12, 20)


def test_separable_convs_are_depthwise_then_pointwise():
    model = tiny()
    separable = [m for m in model.modules() if isinstance(m, SeparableConv2d)]
    assert len(separable) == 2 * len(TINY.encoder_channels)
    for conv in separable:
        depthwise, pointwise = conv.depthwise, conv.pointwise
        assert depthwise.kernel_size == (3, 3)
        assert depthwise.groups == depthwise.in_channels == depthwise.out_channels
        assert pointwise.kernel_size == (1, 1) and pointwise.groups == 1
        assert pointwise.in_channels == depthwise.out_channels
    widths = [(c.depthwise.in_channels, c.pointwise.out_channels) for c in separable]
    assert widths == [(4, 8), (8, 8), (8, 8), (8, 8), (8, 16), (16, 16)]
    # the only dense 3×3 conv of the encoder is the entry conv
    convs = [m for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    dense = [m for m in convs if m.groups == 1 and m.kernel_size == (3, 3)]
    assert dense == [model.encoder.entry[0]]


def test_shortcuts_are_strided_1x1_convs_down_and_upsampled_1x1_convs_up():
    model = tiny()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    strided_1x1 = [m for m in convs if m.kernel_size == (1, 1) and m.stride == (2, 2)]
    assert strided_1x1 == [block.shortcut for block in model.encoder.blocks]
    for block in model.decoder:
        conv, upsample = block.shortcut
        assert conv.kernel_size == (1, 1) and upsample.scale_factor == 2


@pytest.mark.parametrize(
    "part, index, in_channels, scale",
    [("encoder", 0, 4, 0.5), ("encoder", 2, 8, 0.5), ("decoder", 0, 16, 2), ("decoder", 3, 8, 2)],
)
def test_zeroing_the_main_path_leaves_the_residual_shortcut(part, index, in_channels, scale):
    model = tiny().eval()
    block = (model.encoder.blocks if part == "encoder" else model.decoder)[index]
    x = torch.randn(1, in_channels, 8, 8)
    with torch.no_grad():
        full, shortcut = block(x), block.shortcut(x)
        assert full.shape[-1] == shortcut.shape[-1] == 8 * scale
        last_norm = block.main[-2]  # the BatchNorm before the pooling / upsampling
        nn.init.zeros_(last_norm.weight)
        nn.init.zeros_(last_norm.bias)
        torch.testing.assert_close(block(x), shortcut)
    assert shortcut.any() and not torch.allclose(full, shortcut)


def test_overfits_a_single_tiny_batch():
    images, masks = coloured_block_batch(NUM_CLASSES)
    losses = fit_one_batch(tiny(), images, masks, F.cross_entropy)
    assert losses[-1] < 0.1 * losses[0], losses[::10]


def test_defaults_are_the_keras_widths_halved():
    config = XceptionUNetConfig()
    assert config.model_dump() == {
        "entry_channels": 16,
        "encoder_channels": [32, 64, 128],
        "decoder_channels": [128, 64, 32, 16],
    }
    full = XceptionUNet(3, 3, 32, (64, 128, 256), (256, 128, 64, 32))
    # Keras' 2,055,203 trainable weights less the biases of the 13 convs followed by BatchNorm
    assert sum(p.numel() for p in full.parameters()) == 2_055_203 - 1_888


@pytest.mark.parametrize(
    "options, field",
    [
        ({"decoder_channels": [16, 8, 4]}, "decoder_channels"),
        ({"encoder_channels": [8, 16], "decoder_channels": [16, 8, 4, 4]}, "decoder_channels"),
        ({"encoder_channels": []}, "encoder_channels"),
        ({"encoder_channels": [8, 0, 16]}, "encoder_channels"),
        ({"entry_channels": 0}, "entry_channels"),
        ({"width": 0.5}, "width"),
    ],
)
def test_invalid_options_raise_validation_error_naming_the_field(options, field):
    with pytest.raises(ValidationError) as error:
        XceptionUNetConfig(**options)
    assert {problem["loc"][0] for problem in error.value.errors()} == {field}


def test_mismatched_decoder_length_is_an_error_without_the_config_too():
    with pytest.raises(ValueError, match="decoder_channels needs .* 3 entries, got 4"):
        XceptionUNet(NUM_CLASSES, encoder_channels=(8, 16), decoder_channels=(16, 8, 4, 4))
