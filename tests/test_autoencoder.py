"""Behaviour of segpipe.models.autoencoder: shapes, gradients, the bottleneck, reconstruction,
options, overfitting one batch."""

from typing import get_args

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from model_checks import fit_one_batch, parameters_without_gradient
from segpipe.models.autoencoder import Autoencoder, AutoencoderConfig, build
from segpipe.models.autoencoder.model import AutoencoderUpsample

NUM_CLASSES = 3
MODES = get_args(AutoencoderUpsample)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def blocks(coarse: torch.Tensor, size: int) -> torch.Tensor:
    return coarse.repeat_interleave(size, -2).repeat_interleave(size, -1)


def test_modes_are_the_factorys_but_max_unpool():
    assert MODES == ("nearest", "bilinear", "transpose", "bed_of_nails")
    with pytest.raises(ValueError, match="max_unpool"):
        Autoencoder(NUM_CLASSES, upsample="max_unpool")
    with pytest.raises(ValidationError, match="upsample"):
        AutoencoderConfig(upsample="max_unpool")


@pytest.mark.parametrize("upsample", MODES)
def test_logits_at_input_size_and_gradients_reach_every_parameter(upsample):
    model = Autoencoder(NUM_CLASSES, in_channels=4, depth=3, base_channels=4, upsample=upsample)
    assert model.output_stride == 8
    for height, width in [(32, 48), (64, 64)]:
        logits = model(torch.randn(2, 4, height, width))
        assert logits.shape == (2, NUM_CLASSES, height, width)
    assert not parameters_without_gradient(model, logits)


def test_size_not_divisible_by_output_stride_raises_naming_it():
    model = Autoencoder(NUM_CLASSES, depth=2, base_channels=4)
    with pytest.raises(ValueError, match=r"height=18 \(nearest valid: 16 or 20\)"):
        model(torch.randn(1, 3, 18, 16))


def test_decoder_sees_only_the_bottleneck_code():
    narrow = Autoencoder(NUM_CLASSES, depth=3, base_channels=4, bottleneck_channels=2).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        code = narrow.encoder(x)
        assert code.shape == (2, 2, 4, 6)
        torch.testing.assert_close(narrow.head(narrow.decoder(code)), narrow(x))
    default = Autoencoder(NUM_CLASSES, depth=3, base_channels=4)
    assert default.encoder(x).shape[1] == 4 * 2**3


def test_defaults_and_builder():
    assert AutoencoderConfig().model_dump() == {
        "depth": 3, "base_channels": 16, "bottleneck_channels": None,
        "upsample": "transpose", "batch_norm": True,
    }
    model = build(AutoencoderConfig(), num_classes=6, in_channels=3)
    encoder_widths = [m.out_channels for m in model.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert encoder_widths == [16, 16, 32, 32, 64, 64, 128, 128]
    upsamplers = [m for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels) for m in upsamplers] == [(128, 64), (64, 32), (32, 16)]
    assert model.head.weight.shape == (6, 16, 1, 1)
    with pytest.raises(ValidationError, match="extra"):
        AutoencoderConfig.model_validate({"skips": True})
    plain = build(AutoencoderConfig(depth=1, batch_norm=False), NUM_CLASSES, 1)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())


@pytest.mark.parametrize("upsample", MODES)
def test_overfits_segmentation_of_a_single_tiny_batch(upsample):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    masks = blocks(torch.randint(0, NUM_CLASSES, (2, 4, 4), generator=generator), 8)
    model = Autoencoder(NUM_CLASSES, depth=2, base_channels=8, upsample=upsample)
    losses = fit_one_batch(model, images, masks, F.cross_entropy)
    assert losses[-1] < 0.1 * losses[0]


@pytest.mark.parametrize("upsample", MODES)
def test_reconstruction_output_and_overfitting(upsample):
    images = blocks(torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)), 8)
    model = Autoencoder(out_channels=3, in_channels=3, depth=2, base_channels=8, upsample=upsample)
    assert model(images).shape == images.shape
    losses = fit_one_batch(model, images, images, F.mse_loss)
    assert losses[-1] < 0.1 * losses[0]
