"""Behaviour of segpipe.models.segnet: shapes, gradients, max-unpooling with the encoder's indices,
options, overfitting one batch."""

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from model_checks import fit_one_batch, parameters_without_gradient
from segpipe.models.segnet import SegNet, SegNetConfig, build
from segpipe.models.upsampling import UPSAMPLE_MODES

NUM_CLASSES = 3


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def conv_widths(module: nn.Module) -> list[int]:
    return [m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("upsample", UPSAMPLE_MODES)
def test_logits_at_input_size_and_gradients_reach_every_parameter(upsample):
    model = SegNet(NUM_CLASSES, in_channels=4, blocks=4, width=0.125, upsample=upsample)
    assert model.output_stride == 16
    for height, width in [(32, 48), (64, 64)]:
        logits = model(torch.randn(2, 4, height, width))
        assert logits.shape == (2, NUM_CLASSES, height, width)
    assert not parameters_without_gradient(model, logits)


def test_size_not_divisible_by_output_stride_raises_naming_it():
    model = SegNet(NUM_CLASSES, blocks=3, width=0.125)
    assert model.output_stride == 8
    with pytest.raises(ValueError, match=r"width=20 \(nearest valid: 16 or 24\)"):
        model(torch.randn(1, 3, 16, 20))


def test_decoder_max_unpools_with_the_encoders_indices_mirrored():
    model = SegNet(NUM_CLASSES, blocks=3, width=0.125)
    unpools = [m for m in model.decoder.modules() if isinstance(m, nn.MaxUnpool2d)]
    assert len(unpools) == 3
    assert [block.upsample for block in model.decoder.blocks] == unpools
    calls = []
    for unpool in unpools:
        unpool.register_forward_hook(lambda module, args, out: calls.append((*args, out)))
    pools = []
    model.encoder.pool.register_forward_hook(lambda module, args, out: pools.append(out[1]))

    with torch.no_grad():
        model(torch.randn(2, 3, 32, 48))
    assert len(calls) == len(pools) == 3
    for (x, indices, out), pool_indices in zip(calls, reversed(pools)):
        torch.testing.assert_close(indices, pool_indices)
        flat_out = out.flatten(2)
        torch.testing.assert_close(flat_out.gather(2, indices.flatten(2)), x.flatten(2))
        flat_out.scatter_(2, indices.flatten(2), 0.0)  # everything but the argmax positions is zero
        assert not flat_out.any()


@pytest.mark.parametrize("upsample", [m for m in UPSAMPLE_MODES if m != "max_unpool"])
def test_other_upsample_modes_do_not_unpool(upsample):
    model = SegNet(NUM_CLASSES, blocks=2, width=0.125, upsample=upsample)
    assert not any(isinstance(m, nn.MaxUnpool2d) for m in model.modules())


def test_defaults_are_vgg16_bn_at_quarter_width_mirrored():
    assert SegNetConfig().model_dump() == {
        "blocks": 5, "width": 0.25, "upsample": "max_unpool", "batch_norm": True
    }
    model = build(SegNetConfig(), num_classes=6, in_channels=3)
    assert model.output_stride == 32
    assert conv_widths(model.encoder) == [16, 16, 32, 32, 64, 64, 64, *[128] * 6]
    # each decoder conv mirrors an encoder conv: the encoder's input widths, reversed
    assert conv_widths(model.decoder) == [*[128] * 5, 64, 64, 64, 32, 32, 16, 16, 16]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 26
    assert model.head.weight.shape == (6, 16, 1, 1)


def test_options_are_validated_and_batch_norm_can_be_switched_off():
    with pytest.raises(ValidationError, match="blocks"):
        SegNetConfig(blocks=6)
    with pytest.raises(ValidationError, match="extra"):
        SegNetConfig.model_validate({"depth": 3})
    with pytest.raises(ValueError, match="blocks must be 1 to 5"):
        SegNet(NUM_CLASSES, blocks=0)
    plain = build(SegNetConfig(blocks=2, batch_norm=False), NUM_CLASSES, 1)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert plain(torch.randn(1, 1, 8, 12)).shape == (1, NUM_CLASSES, 8, 12)


@pytest.mark.parametrize("upsample", UPSAMPLE_MODES)
def test_overfits_a_single_tiny_batch(upsample):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    coarse = torch.randint(0, NUM_CLASSES, (2, 4, 4), generator=generator)
    masks = coarse.repeat_interleave(8, 1).repeat_interleave(8, 2)  # random 8×8 blocks
    model = SegNet(NUM_CLASSES, blocks=2, width=0.125, upsample=upsample)
    losses = fit_one_batch(model, images, masks, F.cross_entropy)
    assert losses[-1] < 0.1 * losses[0]
