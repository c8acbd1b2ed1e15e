"""U-Net: levels, widths, upsampling modes and the pooling indices ``max_unpool`` uses."""

import pytest
import torch
from torch import nn

from segpipe.models.unet.config import UNetConfig
from segpipe.models.unet.model import UNet
from segpipe.models.upsampling import UPSAMPLE_MODES

from .base import NUM_CLASSES, ModelTester, conv_widths


class TestUNet(ModelTester):
    name = "unet"
    tiny = {"depth": 3, "base_channels": 4}
    variants = [{"upsample": mode} for mode in UPSAMPLE_MODES]
    invalid_options = [
        ({"depth": "deep"}, "depth: Input should be a valid integer"),
        ({"depth": 7}, "depth: Input should be less than or equal to 6"),
        (
            {"upsample": "bicubic"},
            "upsample: Input should be 'nearest', 'bilinear', 'transpose', 'bed_of_nails' or 'max_unpool'",
        ),
    ]

    def test_depth_sets_output_stride(self):
        shallow, deep = self.build(depth=2), self.build(depth=3)
        assert (shallow.output_stride, deep.output_stride) == (4, 8)
        x = torch.randn(1, 3, 20, 28)
        assert shallow(x).shape == (1, NUM_CLASSES, 20, 28)
        with pytest.raises(ValueError, match="height=20"):
            deep(x)

    def test_channels_double_down_and_halve_up(self):
        model = self.build(depth=3, base_channels=6)
        assert conv_widths(model.encoder) == [6, 6, 12, 12, 24, 24, 48, 48]
        upsamplers = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
        assert [(m.in_channels, m.out_channels) for m in upsamplers] == [(48, 24), (24, 12), (12, 6)]
        assert model.head.weight.shape == (NUM_CLASSES, 6, 1, 1)

    def test_batch_norm_switch(self):
        assert any(isinstance(m, nn.BatchNorm2d) for m in self.build().modules())
        assert not any(isinstance(m, nn.BatchNorm2d) for m in self.build(batch_norm=False).modules())

    def test_max_unpool_uses_each_levels_pooling_indices(self):
        model = self.build(upsample="max_unpool")
        seen = []
        for block in model.decoder.blocks:
            project, unpool = block.upsample
            assert isinstance(project, nn.Conv2d) and isinstance(unpool, nn.MaxUnpool2d)
            unpool.register_forward_hook(lambda module, args, out: seen.append(args[1]))
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            _, indices = model.encoder(x)
            model(x)
        assert len(seen) == 3
        for used, pooled in zip(seen, reversed(indices), strict=True):
            torch.testing.assert_close(used, pooled)

    def test_the_model_takes_its_option_class(self):
        assert UNetConfig().model_dump() == {
            "init": "scratch",
            "depth": 4,
            "base_channels": 16,
            "upsample": "transpose",
            "batch_norm": True,
        }
        assert UNet(NUM_CLASSES).output_stride == 16
        assert UNet(NUM_CLASSES, 1, UNetConfig(depth=2)).encoder.stem[0].in_channels == 1
