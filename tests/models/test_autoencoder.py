"""Autoencoder: everything passes through the bottleneck; it also reconstructs images (denoising)."""

from typing import get_args

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segpipe.models.autoencoder.config import AutoencoderConfig, AutoencoderUpsample
from segpipe.models.autoencoder.model import Autoencoder
from segpipe.models.upsampling import UPSAMPLE_MODES

from .base import NUM_CLASSES, ModelTester, conv_widths, fit_one_batch

MODES = get_args(AutoencoderUpsample)


class TestAutoencoder(ModelTester):
    name = "autoencoder"
    tiny = {"depth": 2, "base_channels": 8}
    variants = fits = [{"upsample": mode} for mode in MODES]
    invalid_options = [
        (
            {"upsample": "max_unpool"},
            "upsample: Input should be 'nearest', 'bilinear', 'transpose' or 'bed_of_nails'",
        ),
        ({"bottleneck_channels": 0}, "bottleneck_channels: Input should be greater than or equal to 1"),
    ]

    def test_modes_are_the_factorys_but_max_unpool(self):
        assert (*MODES, "max_unpool") == UPSAMPLE_MODES

    def test_decoder_sees_only_the_bottleneck_code(self):
        narrow = self.build(depth=3, base_channels=4, bottleneck_channels=2).eval()
        x = torch.randn(2, 3, 32, 48)
        with torch.no_grad():
            code = narrow.encoder(x)
            assert code.shape == (2, 2, 4, 6)
            torch.testing.assert_close(narrow.head(narrow.decoder(code)), narrow(x))
        assert self.build(depth=3, base_channels=4).encoder(x).shape[1] == 4 * 2**3

    def test_default_widths_double_per_level(self):
        model = Autoencoder(6)
        assert conv_widths(model.encoder) == [16, 16, 32, 32, 64, 64, 128, 128]
        upsamplers = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
        assert [(m.in_channels, m.out_channels) for m in upsamplers] == [(128, 64), (64, 32), (32, 16)]
        assert model.head.weight.shape == (6, 16, 1, 1)
        plain = Autoencoder(NUM_CLASSES, 1, AutoencoderConfig(depth=1, batch_norm=False))
        assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())

    @pytest.mark.parametrize("upsample", MODES)
    def test_reconstructs_a_single_tiny_batch(self, upsample):
        coarse = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
        images = coarse.repeat_interleave(8, -2).repeat_interleave(8, -1)
        model = Autoencoder(3, 3, AutoencoderConfig(depth=2, base_channels=8, upsample=upsample))
        assert model(images).shape == images.shape
        losses = fit_one_batch(model, images, images, F.mse_loss)
        assert losses[-1] < 0.1 * losses[0]
