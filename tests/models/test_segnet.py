"""SegNet: VGG-16(-BN) encoder mirrored by a decoder that max-unpools with the encoder's indices."""

import torch
from torch import nn

from segpipe.models.segnet.config import SegNetConfig
from segpipe.models.segnet.model import SegNet
from segpipe.models.upsampling import UPSAMPLE_MODES

from .base import NUM_CLASSES, ModelTester, conv_widths


class TestSegNet(ModelTester):
    name = "segnet"
    tiny = {"blocks": 3, "width": 0.125}
    variants = fits = [{"upsample": mode} for mode in UPSAMPLE_MODES]
    invalid_options = [
        ({"blocks": 6}, "blocks: Input should be less than or equal to 5"),
        ({"blocks": 0}, "blocks: Input should be greater than or equal to 1"),
        ({"width": 0}, "width: Input should be greater than 0"),
    ]

    def test_decoder_max_unpools_with_the_encoders_indices_mirrored(self):
        model = self.build()
        unpools = [m for m in model.decoder.modules() if isinstance(m, nn.MaxUnpool2d)]
        assert len(unpools) == 3
        assert [block.upsample for block in model.decoder.blocks] == unpools
        calls, pools = [], []
        for unpool in unpools:
            unpool.register_forward_hook(lambda module, args, out: calls.append((*args, out)))
        model.encoder.pool.register_forward_hook(lambda module, args, out: pools.append(out[1]))
        with torch.no_grad():
            model(torch.randn(2, 3, 32, 48))
        assert len(calls) == len(pools) == 3
        for (x, indices, out), pool_indices in zip(calls, reversed(pools), strict=True):
            torch.testing.assert_close(indices, pool_indices)
            flat_out = out.flatten(2)
            torch.testing.assert_close(flat_out.gather(2, indices.flatten(2)), x.flatten(2))
            flat_out.scatter_(2, indices.flatten(2), 0.0)  # everything but the argmax positions is zero
            assert not flat_out.any()

    def test_other_upsample_modes_do_not_unpool(self):
        for mode in (m for m in UPSAMPLE_MODES if m != "max_unpool"):
            assert not any(isinstance(m, nn.MaxUnpool2d) for m in self.build(upsample=mode).modules())

    def test_defaults_are_vgg16_bn_at_quarter_width_mirrored(self):
        model = SegNet(6)
        assert model.output_stride == 32
        assert conv_widths(model.encoder) == [16, 16, 32, 32, 64, 64, 64, *[128] * 6]
        # each decoder conv mirrors an encoder conv: the encoder's input widths, reversed
        assert conv_widths(model.decoder) == [*[128] * 5, 64, 64, 64, 32, 32, 16, 16, 16]
        assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 26
        assert model.head.weight.shape == (6, 16, 1, 1)

    def test_batch_norm_can_be_switched_off(self):
        plain = SegNet(NUM_CLASSES, 1, SegNetConfig(blocks=2, batch_norm=False))
        assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
        assert plain(torch.randn(1, 1, 8, 12)).shape == (1, NUM_CLASSES, 8, 12)
