"""Dilated context network: shapes, gradients, resolution-keeping context, overfitting, config."""


import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn

from model_checks import coloured_block_batch, fit_one_batch, parameters_without_gradient
from segpipe.models.dilated import DilatedNet, DilatedNetConfig, build

NUM_CLASSES = 3
TINY = {"base_channels": 4, "context_channels": 8}


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def tiny(in_channels: int = 3, **options) -> DilatedNet:
    return build(DilatedNetConfig(**TINY, **options), NUM_CLASSES, in_channels)




@pytest.mark.parametrize("upsample", ["bilinear", "transpose"])
def test_logits_at_input_size_for_several_shapes(upsample):
    model = tiny(in_channels=4, upsample=upsample)
    assert model.output_stride == 4
    for height, width in [(32, 64), (64, 64), (96, 128), (12, 20)]:
        assert model(torch.randn(2, 4, height, width)).shape == (2, NUM_CLASSES, height, width)


@pytest.mark.parametrize("front_downsamples", [1, 3])
def test_front_downsamples_set_output_stride(front_downsamples):
    model = tiny(front_downsamples=front_downsamples, upsample="transpose")
    stride = 2**front_downsamples
    assert model.output_stride == stride
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == front_downsamples
    assert model.encoder.out_channels == TINY["base_channels"] * 2 ** (front_downsamples - 1)
    height, width = 3 * stride, 5 * stride
    assert model(torch.randn(1, 3, height, width)).shape == (1, NUM_CLASSES, height, width)


@pytest.mark.parametrize(
    "options", [{"upsample": "bilinear"}, {"upsample": "transpose"}, {"batch_norm": False}]
)
def test_gradients_reach_every_parameter(options):
    model = tiny(**options)
    logits = model(torch.randn(2, 3, 32, 48))
    assert not parameters_without_gradient(model, logits)


def test_bad_size_raises_value_error_naming_it():
    with pytest.raises(ValueError, match=r"width=18 \(nearest valid: 16 or 20\)") as error:
        tiny()(torch.randn(1, 3, 32, 18))
    assert "height" not in str(error.value)


@pytest.mark.parametrize(
    "front_downsamples, dilations", [(2, [1, 2, 4, 8, 16]), (3, [1, 1, 2, 3, 5, 1])]
)
def test_context_module_keeps_resolution_with_the_configured_dilations(
    front_downsamples, dilations
):
    model = tiny(front_downsamples=front_downsamples, dilations=dilations)
    context_convs = [m for m in model.decoder.context.modules() if isinstance(m, nn.Conv2d)]
    assert [conv.dilation for conv in context_convs] == [(d, d) for d in dilations]
    assert [conv.padding for conv in context_convs] == [(d, d) for d in dilations]
    assert all(conv.kernel_size == (3, 3) for conv in context_convs)

    sizes: list[tuple[int, ...]] = []

    def record_size(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        sizes.append(tuple(output.shape[-2:]))

    hooks = [conv.register_forward_hook(record_size) for conv in context_convs]
    stride = 2**front_downsamples
    with torch.no_grad():
        features = model.decoder.context(model.encoder(torch.randn(1, 3, 6 * stride, 10 * stride)))
    for hook in hooks:
        hook.remove()
    assert sizes == [(6, 10)] * len(dilations)
    assert features.shape == (1, TINY["context_channels"], 6, 10)


def test_context_dilations_widen_the_receptive_field():
    """One impulse at the centre of the context input reaches exactly the rows that the summed
    dilations span: 1 + 2·(1 + 2 + 4) with rates [1, 2, 4]."""
    model = tiny(dilations=[1, 2, 4], batch_norm=False).eval()
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
    "upsample, layer", [("bilinear", nn.Upsample), ("transpose", nn.ConvTranspose2d)]
)
def test_upsample_option_picks_the_layer(upsample, layer):
    model = tiny(upsample=upsample)
    assert any(isinstance(m, layer) for m in model.decoder.upsample.modules())
    assert model.head.kernel_size == (1, 1) and model.head.in_channels == TINY["base_channels"]


def test_batch_norm_switch():
    assert any(isinstance(m, nn.BatchNorm2d) for m in tiny().modules())
    plain = tiny(batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    convs = [m for m in plain.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(conv.bias is not None for conv in convs)


@pytest.mark.parametrize("upsample", ["bilinear", "transpose"])
def test_overfits_a_single_tiny_batch(upsample):
    images, masks = coloured_block_batch(NUM_CLASSES)
    losses = fit_one_batch(tiny(upsample=upsample), images, masks, F.cross_entropy)
    assert losses[-1] < 0.1 * losses[0], losses[::10]


def test_defaults():
    assert DilatedNetConfig().model_dump() == {
        "base_channels": 16,
        "front_downsamples": 2,
        "dilations": [1, 2, 4, 8, 16],
        "context_channels": 64,
        "upsample": "bilinear",
        "batch_norm": True,
    }


@pytest.mark.parametrize(
    "options, field",
    [
        ({"dilations": []}, "dilations"),
        ({"dilations": [1, 0, 2]}, "dilations"),
        ({"front_downsamples": 0}, "front_downsamples"),
        ({"front_downsamples": 6}, "front_downsamples"),
        ({"upsample": "nearest"}, "upsample"),
        ({"context_channels": 0}, "context_channels"),
        ({"width": 16}, "width"),
    ],
)
def test_invalid_options_raise_validation_error_naming_the_field(options, field):
    with pytest.raises(ValidationError) as error:
        DilatedNetConfig(**options)
    assert {problem["loc"][0] for problem in error.value.errors()} == {field}
