"""Xception-style U-Net: separable convs, residual shortcuts, Keras' widths."""

import pytest
import torch
from torch import nn

from segpipe.models.xception_unet.config import XceptionUNetConfig
from segpipe.models.xception_unet.encoder import SeparableConv2d
from segpipe.models.xception_unet.model import XceptionUNet

from .base import NUM_CLASSES, ModelTester


class TestXceptionUNet(ModelTester):
    name = "xception_unet"
    tiny = {"entry_channels": 4, "encoder_channels": [8, 8, 16], "decoder_channels": [16, 8, 8, 4]}
    invalid_options = [
        (
            {"decoder_channels": [16, 8, 4]},
            "decoder_channels: Value error, needs len(encoder_channels) + 1 = 4",
        ),
        ({"encoder_channels": [8, 16], "decoder_channels": [16, 8, 4, 4]}, "decoder_channels: Value error"),
        ({"encoder_channels": []}, "encoder_channels: List should have at least 1 item"),
        ({"encoder_channels": [8, 0, 16]}, "encoder_channels.1: Input should be greater than or equal to 1"),
        ({"entry_channels": 0}, "entry_channels: Input should be greater than or equal to 1"),
    ]

    def test_output_stride_follows_the_number_of_down_blocks(self):
        model = self.build(encoder_channels=[8], decoder_channels=[8, 4])
        assert model.output_stride == 4
        assert model(torch.randn(1, 3, 12, 20)).shape == (1, NUM_CLASSES, 12, 20)

    def test_separable_convs_are_depthwise_then_pointwise(self):
        model = self.build()
        separable = [m for m in model.modules() if isinstance(m, SeparableConv2d)]
        assert len(separable) == 2 * len(self.tiny["encoder_channels"])
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

    def test_shortcuts_are_strided_1x1_convs_down_and_upsampled_1x1_convs_up(self):
        model = self.build()
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        strided_1x1 = [m for m in convs if m.kernel_size == (1, 1) and m.stride == (2, 2)]
        assert strided_1x1 == [block.shortcut for block in model.encoder.blocks]
        for block in model.decoder:
            conv, upsample = block.shortcut
            assert conv.kernel_size == (1, 1) and upsample.scale_factor == 2

    @pytest.mark.parametrize(
        ("part", "index", "in_channels", "scale"),
        [("encoder", 0, 4, 0.5), ("encoder", 2, 8, 0.5), ("decoder", 0, 16, 2), ("decoder", 3, 8, 2)],
    )
    def test_zeroing_the_main_path_leaves_the_residual_shortcut(self, part, index, in_channels, scale):
        model = self.build().eval()
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

    def test_keras_widths_give_the_keras_parameter_count(self):
        keras = XceptionUNetConfig(
            entry_channels=32, encoder_channels=[64, 128, 256], decoder_channels=[256, 128, 64, 32]
        )
        full = XceptionUNet(3, 3, keras)
        # Keras' 2,055,203 trainable weights less the biases of the 13 convs followed by BatchNorm
        assert sum(p.numel() for p in full.parameters()) == 2_055_203 - 1_888
