"""Dilated context network: an early-stopping front end, resolution-keeping dilated context convs."""

import pytest
import torch
from torch import nn

from .base import NUM_CLASSES, ModelTester


class TestDilatedNet(ModelTester):
    name = "dilated"
    tiny = {"base_channels": 4, "context_channels": 8}
    fits = [{"upsample": "bilinear"}, {"upsample": "transpose"}]
    variants = [*fits, {"batch_norm": False}]
    invalid_options = [
        ({"dilations": []}, "dilations: List should have at least 1 item"),
        ({"dilations": [1, 0, 2]}, "dilations.1: Input should be greater than or equal to 1"),
        ({"front_downsamples": 0}, "front_downsamples: Input should be greater than or equal to 1"),
        ({"front_downsamples": 6}, "front_downsamples: Input should be less than or equal to 5"),
        ({"upsample": "nearest"}, "upsample: Input should be 'bilinear' or 'transpose'"),
        ({"context_channels": 0}, "context_channels: Input should be greater than or equal to 1"),
    ]

    @pytest.mark.parametrize("front_downsamples", [1, 3])
    def test_front_downsamples_set_output_stride(self, front_downsamples):
        model = self.build(front_downsamples=front_downsamples, upsample="transpose")
        stride = 2**front_downsamples
        assert model.output_stride == stride
        assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == front_downsamples
        assert model.encoder.out_channels == self.tiny["base_channels"] * 2 ** (front_downsamples - 1)
        height, width = 3 * stride, 5 * stride
        assert model(torch.randn(1, 3, height, width)).shape == (1, NUM_CLASSES, height, width)

    @pytest.mark.parametrize(
        ("front_downsamples", "dilations"), [(2, [1, 2, 4, 8, 16]), (3, [1, 1, 2, 3, 5, 1])]
    )
    def test_context_module_keeps_resolution_with_the_configured_dilations(
        self, front_downsamples, dilations
    ):
        model = self.build(front_downsamples=front_downsamples, dilations=dilations)
        context_convs = [m for m in model.decoder.context.modules() if isinstance(m, nn.Conv2d)]
        assert [conv.dilation for conv in context_convs] == [(d, d) for d in dilations]
        assert [conv.padding for conv in context_convs] == [(d, d) for d in dilations]
        assert all(conv.kernel_size == (3, 3) for conv in context_convs)
        sizes: list[tuple[int, ...]] = []
        hooks = [
            conv.register_forward_hook(lambda module, args, out: sizes.append(tuple(out.shape[-2:])))
            for conv in context_convs
        ]
        stride = 2**front_downsamples
        with torch.no_grad():
            features = model.decoder.context(model.encoder(torch.randn(1, 3, 6 * stride, 10 * stride)))
        for hook in hooks:
            hook.remove()
        assert sizes == [(6, 10)] * len(dilations)
        assert features.shape == (1, self.tiny["context_channels"], 6, 10)

    def test_context_dilations_widen_the_receptive_field(self):
        """One impulse at the centre of the context input reaches exactly the rows that the summed
        dilations span: 1 + 2·(1 + 2 + 4) with rates [1, 2, 4]."""
        model = self.build(dilations=[1, 2, 4], batch_norm=False).eval()
        context = model.decoder.context
        with torch.no_grad():
            for conv in (m for m in context.modules() if isinstance(m, nn.Conv2d)):
                nn.init.constant_(conv.weight, 1.0)
                nn.init.zeros_(conv.bias)
            impulse = torch.zeros(1, model.encoder.out_channels, 31, 31)
            impulse[..., 15, 15] = 1
            reached = context(impulse)[0, 0] > 0
        rows = reached.any(dim=1).nonzero().flatten()
        assert (rows.min().item(), rows.max().item()) == (15 - 7, 15 + 7)

    @pytest.mark.parametrize(
        ("upsample", "layer"), [("bilinear", nn.Upsample), ("transpose", nn.ConvTranspose2d)]
    )
    def test_upsample_option_picks_the_layer(self, upsample, layer):
        model = self.build(upsample=upsample)
        assert any(isinstance(m, layer) for m in model.decoder.upsample.modules())
        assert model.head.kernel_size == (1, 1) and model.head.in_channels == self.tiny["base_channels"]

    def test_without_batch_norm_every_conv_has_a_bias(self):
        assert any(isinstance(m, nn.BatchNorm2d) for m in self.build().modules())
        plain = self.build(batch_norm=False)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
        convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
        assert all(conv.bias is not None for conv in convs)
