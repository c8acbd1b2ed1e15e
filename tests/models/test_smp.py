"""segmentation_models_pytorch baselines: random initialisation only, encoder strides, encoder names."""

import socket

import pytest
import segmentation_models_pytorch as smp
import torch

from segpipe.models import validate_model_options
from segpipe.models.smp.config import ENCODER_NAMES

from .base import ModelTester

UNKNOWN_ENCODER = (
    {"encoder": "resnt18"},
    "encoder: Value error, unknown smp encoder 'resnt18'; did you mean resnet18",
)


class SmpTester(ModelTester):
    roots = {"normalisation", "network"}


class TestSmpUnet(SmpTester):
    name = "smp_unet"
    tiny = {"decoder_channels": [16, 8, 8, 8, 8]}
    any_size = True  # smp.Unet 0.6 accepts any size
    invalid_options = [
        ({"decoder_channels": [16, 8]}, "decoder_channels: List should have at least 5 items"),
        ({"decoder_attention_type": "cbam"}, "decoder_attention_type: Input should be 'scse'"),
        UNKNOWN_ENCODER,
    ]


class TestSmpFPN(SmpTester):
    name = "smp_fpn"
    tiny = {"decoder_pyramid_channels": 16, "decoder_segmentation_channels": 32}
    invalid_options = [
        (
            {"decoder_segmentation_channels": 48},
            "decoder_segmentation_channels: Input should be a multiple of 32",
        ),
        UNKNOWN_ENCODER,
    ]

    def test_output_stride_is_the_encoders(self):
        assert self.build().output_stride == 32


class TestSmpDeepLabV3Plus(SmpTester):
    name = "smp_deeplabv3plus"
    tiny = {"decoder_channels": 16}
    invalid_options = [
        ({"encoder_output_stride": 32}, "encoder_output_stride: Input should be 8 or 16"),
        UNKNOWN_ENCODER,
    ]

    def test_output_stride_is_the_encoders(self):
        assert self.build().output_stride == 16
        assert self.build(encoder_output_stride=8).output_stride == 8


def test_timm_encoders_pass_validation_unlisted():
    assert validate_model_options("smp_fpn", {"encoder": "tu-resnet10t"}).encoder == "tu-resnet10t"


def test_static_encoder_list_matches_the_installed_smp():
    assert set(smp.encoders.get_encoder_names()) == ENCODER_NAMES


def test_smp_baselines_never_touch_the_network(monkeypatch):
    def offline(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(smp.encoders, "hf_hub_download", offline)
    for tester in (TestSmpUnet(), TestSmpFPN(), TestSmpDeepLabV3Plus()):
        tester.build()
    with pytest.raises(AssertionError, match="network access"):  # the guard itself works
        smp.Unet(encoder_name="resnet18", encoder_weights="imagenet")
