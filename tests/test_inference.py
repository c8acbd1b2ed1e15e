"""Inference settings (``evaluate.inference``, ``window``, ``stride``, ``tta``): sliding windows average
the logits of overlapping tiles; a window covering the image is whole-image inference; flip TTA of a
flip-equivariant model changes nothing."""

import pytest
import torch
from torch import nn

from segpipe.config import EvaluateParams
from segpipe.inference import (
    WHOLE,
    InferenceSettings,
    padded_logits,
    predict_logits,
    slide_logits,
    window_starts,
)
from segpipe.models import build_model


class PositionModel(nn.Module):
    """Logits that depend on where a pixel lies in the input (a fixed ramp): every tile differs from the
    whole image, so averaging is visible; not flip-equivariant."""

    output_stride = 1

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        ramp = torch.linspace(0, 1, width).expand(height, width)
        return self.conv(images) + ramp


def images(n: int = 2, height: int = 20, width: int = 28) -> torch.Tensor:
    return torch.rand((n, 3, height, width), generator=torch.Generator().manual_seed(0))


def test_window_starts_cover_the_side_and_end_at_the_edge():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(10, 4, 2) == [0, 2, 4, 6]
    assert window_starts(10, 5, 5) == [0, 5]
    assert window_starts(10, 10, 3) == [0] and window_starts(8, 10, 3) == [0]


def test_a_window_covering_the_image_is_whole_image_inference():
    torch.manual_seed(0)
    model, batch = PositionModel().eval(), images()
    whole = predict_logits(model, batch)
    assert torch.equal(predict_logits(model, batch, InferenceSettings("slide", (20, 28), (10, 14))), whole)
    assert torch.equal(predict_logits(model, batch, InferenceSettings("slide", (64, 64))), whole)


def test_overlapping_windows_average_the_tiles_logits():
    torch.manual_seed(0)
    model, batch = PositionModel().eval(), images()
    # rows: windows of 12 at 0 and 8; columns: windows of 16 at 0, 10 and 12 (the last ends at the edge)
    total, count = torch.zeros(2, 2, 20, 28), torch.zeros(20, 28)
    for top in (0, 8):
        for left in (0, 10, 12):
            with torch.no_grad():
                total[..., top : top + 12, left : left + 16] += model(
                    batch[..., top : top + 12, left : left + 16]
                )
            count[top : top + 12, left : left + 16] += 1
    reference = total / count
    assert count.min() == 1 and count.max() == 6  # every pixel covered, some by several windows
    slid = predict_logits(model, batch, InferenceSettings("slide", (12, 16), (8, 10)))
    assert torch.allclose(slid, reference, atol=1e-6)
    assert not torch.allclose(slid, predict_logits(model, batch), atol=1e-3)  # the tiles did differ


def test_hflip_tta_of_a_flip_equivariant_model_changes_nothing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()  # per-pixel: equivariant
    batch = images()
    plain = predict_logits(model, batch)
    assert torch.allclose(predict_logits(model, batch, InferenceSettings(tta=("hflip",))), plain, atol=1e-6)
    slide = InferenceSettings("slide", (12, 16), (8, 10), ("hflip",))
    assert torch.allclose(predict_logits(model, batch, slide), plain, atol=1e-6)


def test_hflip_tta_averages_the_mirrored_prediction_of_any_model():
    torch.manual_seed(0)
    model, batch = PositionModel().eval(), images()
    with torch.no_grad():
        expected = (model(batch) + model(batch.flip(-1)).flip(-1)) / 2
    assert torch.allclose(predict_logits(model, batch, InferenceSettings(tta=("hflip",))), expected)


def test_images_off_the_output_stride_are_padded_and_cropped_back():
    torch.manual_seed(0)
    model = build_model("unet", 3, options={"depth": 2, "base_channels": 4}).eval()
    batch = images(1, 30, 22)
    with torch.no_grad():
        logits = padded_logits(model, batch)
        reference = model(nn.functional.pad(batch, (0, 2, 0, 2)))[..., :30, :22]
    assert logits.shape == (1, 3, 30, 22) and torch.equal(logits, reference)
    slid = predict_logits(model, batch, InferenceSettings("slide", (18, 18), (9, 9)))
    assert slid.shape == (1, 3, 30, 22)


def test_whole_image_inference_without_tta_is_the_models_forward():
    torch.manual_seed(0)
    model = build_model("unet", 3, options={"depth": 2, "base_channels": 4}).eval()
    batch = images(2, 32, 32)
    with torch.no_grad():
        assert torch.equal(predict_logits(model, batch, WHOLE), model(batch))


def test_settings_from_params_and_their_checks():
    params = EvaluateParams(inference="slide", window=(64, 96), tta=["hflip"])
    settings = InferenceSettings.from_params(params)
    assert settings.window_stride == (32, 48) and settings.describe() == "slide 64x96 stride 32x48 + hflip"
    assert InferenceSettings.from_params(EvaluateParams()) == WHOLE and WHOLE.describe() == "whole"
    with pytest.raises(ValueError, match="window"):
        InferenceSettings("slide")
    with pytest.raises(ValueError, match="vflip"):
        InferenceSettings(tta=("vflip",))
    assert slide_logits(PositionModel(), images(1, 8, 8), (4, 4), (4, 4)).dtype == torch.float32
