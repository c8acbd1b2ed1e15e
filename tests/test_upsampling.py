"""Behaviour of segpipe.models.upsampling: shapes, zero patterns, unpooling, learning."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segpipe.models.upsampling import UPSAMPLE_MODES, make_upsample


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pooled_with_indices(x: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    return nn.MaxPool2d(factor, return_indices=True)(x)


def test_modes():
    assert UPSAMPLE_MODES == ("nearest", "bilinear", "transpose", "bed_of_nails", "max_unpool")


@pytest.mark.parametrize("mode", UPSAMPLE_MODES)
@pytest.mark.parametrize(("in_channels", "out_channels"), [(4, 4), (6, 3)])
@pytest.mark.parametrize("factor", [2, 4])
def test_shapes(mode, in_channels, out_channels, factor):
    upsample = make_upsample(mode, in_channels, out_channels, factor)
    # max_unpool's indices come from a pooling over out_channels (the 1×1 conv runs first)
    _, indices = pooled_with_indices(torch.randn(2, out_channels, 3 * factor, 5 * factor), factor)
    out = upsample(torch.randn(2, in_channels, 3, 5), indices)
    assert out.shape == (2, out_channels, 3 * factor, 5 * factor)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_interpolation_matches_f_interpolate_and_projects_first(mode):
    x = torch.randn(2, 4, 5, 6)
    align_corners = False if mode == "bilinear" else None
    expected = F.interpolate(x, scale_factor=2, mode=mode, align_corners=align_corners)
    same = make_upsample(mode, 4, 4)
    assert not list(same.parameters())
    torch.testing.assert_close(same(x), expected)

    projected = make_upsample(mode, 4, 3)
    project, _ = projected
    with torch.no_grad():  # a 1×1 conv commutes with interpolation: same as upsampling first
        torch.testing.assert_close(projected(x), project(expected))


@pytest.mark.parametrize("factor", [2, 3])
@pytest.mark.parametrize(("in_channels", "out_channels"), [(4, 4), (4, 2)])
def test_bed_of_nails_puts_values_at_block_top_left_and_zeros_elsewhere(factor, in_channels, out_channels):
    upsample = make_upsample("bed_of_nails", in_channels, out_channels, factor)
    x = torch.rand(2, in_channels, 4, 5) + 0.5  # no zeros
    with torch.no_grad():
        out = upsample(x)
        values = x if in_channels == out_channels else upsample[0](x)
    nails = torch.zeros_like(out, dtype=torch.bool)
    nails[..., ::factor, ::factor] = True
    torch.testing.assert_close(out[..., ::factor, ::factor], values)
    assert not out[~nails].any()
    assert out[nails].all()


@pytest.mark.parametrize("factor", [2, 4])
def test_max_unpool_puts_each_value_back_at_its_argmax(factor):
    x = torch.randn(2, 3, 4 * factor, 6 * factor)
    pooled, indices = pooled_with_indices(x, factor)
    out = make_upsample("max_unpool", 3, 3, factor)(pooled, indices)
    is_argmax = x == F.interpolate(pooled, scale_factor=factor, mode="nearest")  # float ties: none
    assert is_argmax.sum() == pooled.numel()
    torch.testing.assert_close(out, torch.where(is_argmax, x, torch.zeros_like(x)))


def test_max_unpool_without_indices_is_a_clear_error():
    upsample = make_upsample("max_unpool", 3, 3)
    with pytest.raises(ValueError, match="max_unpool.*indices"):
        upsample(torch.randn(1, 3, 4, 4))


@pytest.mark.parametrize("mode", [m for m in UPSAMPLE_MODES if m != "max_unpool"])
def test_other_modes_ignore_indices(mode):
    upsample = make_upsample(mode, 3, 3)
    x = torch.randn(1, 3, 4, 4)
    _, indices = pooled_with_indices(torch.randn(1, 3, 8, 8), 2)
    with torch.no_grad():
        torch.testing.assert_close(upsample(x, indices), upsample(x))


def test_transpose_is_a_learned_non_overlapping_transposed_conv():
    upsample = make_upsample("transpose", 4, 2, factor=4)
    assert isinstance(upsample, nn.ConvTranspose2d)
    assert upsample.kernel_size == upsample.stride == (4, 4)
    x = torch.randn(2, 4, 3, 3)
    target = torch.randn(2, 2, 12, 12)
    loss = F.mse_loss(upsample(x), target)
    loss.backward()
    assert upsample.weight.grad.any() and upsample.bias.grad.any()
    optimizer = torch.optim.SGD(upsample.parameters(), lr=0.1)
    optimizer.step()
    assert F.mse_loss(upsample(x), target) < loss


def test_projection_before_parameter_free_modes_gets_gradients():
    for mode in ("nearest", "bilinear", "bed_of_nails"):
        upsample = make_upsample(mode, 4, 2)
        upsample(torch.randn(1, 4, 3, 3)).square().mean().backward()
        assert all(p.grad.any() for p in upsample.parameters())


def test_unknown_mode_lists_the_valid_ones():
    with pytest.raises(ValueError) as error:
        make_upsample("bicubic", 3, 3)
    assert all(mode in str(error.value) for mode in UPSAMPLE_MODES)
