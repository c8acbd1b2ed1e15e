"""The architecture table of segpipe.models: names, families, option validation and building by name.

Each architecture's own checks live in ``tests/models/`` (one :class:`ModelTester` subclass each).
"""

import importlib
from pathlib import Path

import pytest
import torch
from models.base import ModelTester

from segpipe.models import available_architectures, build_model, validate_model_options
from segpipe.models.base import SegmentationNetwork
from segpipe.models.zoo import architecture_family, get_architecture


def _testers(cls: type) -> list[type]:
    return [tester for sub in cls.__subclasses__() for tester in (sub, *_testers(sub))]


def test_every_architecture_has_a_tester():
    for path in (Path(__file__).parent / "models").glob("test_*.py"):
        importlib.import_module(f"models.{path.stem}")
    tested = [tester.name for tester in _testers(ModelTester) if "name" in vars(tester)]
    assert sorted(tested) == sorted(available_architectures())


def test_unknown_architecture_lists_the_valid_names():
    with pytest.raises(ValueError) as error:
        build_model("segformer", 5)
    assert (
        str(error.value)
        == f"Unknown architecture 'segformer'; available: {', '.join(available_architectures())}"
    )


def test_families():
    families = {name: architecture_family(name) for name in available_architectures()}
    assert {name for name, family in families.items() if family == "smp"} == {
        "smp_unet",
        "smp_fpn",
        "smp_deeplabv3plus",
    }
    assert set(families.values()) == {"builtin", "smp"}


def test_options_must_be_a_mapping():
    with pytest.raises(ValueError, match="train.models.unet: expected a mapping of options, got list"):
        validate_model_options("unet", [("depth", 3)])


def test_every_offending_option_is_named_on_its_own_line():
    with pytest.raises(ValueError) as error:
        validate_model_options("unet", {"depth": 9, "dept": 3})
    assert str(error.value).splitlines() == [
        "Invalid model options:",
        "train.models.unet.depth: Input should be less than or equal to 6 (got 9)",
        "train.models.unet.dept: unknown option; allowed options: "
        "init, depth, base_channels, upsample, batch_norm",
    ]


def test_build_model_applies_validated_options():
    model = build_model("unet", 5, in_channels=1, options={"depth": 2})
    assert isinstance(model, get_architecture("unet").model_class())
    assert model.output_stride == 4 and model(torch.zeros(1, 1, 8, 8)).shape == (1, 5, 8, 8)
    with pytest.raises(ValueError, match="train.models.fcn32s.dropout"):
        build_model("fcn32s", 5, options={"dropout": 1.0})


def test_check_input_shape_names_both_sides_and_nearest_valid_sizes():
    network = SegmentationNetwork(output_stride=32, in_channels=3)
    network.check_input_shape(torch.zeros(1, 3, 64, 96))
    with pytest.raises(ValueError) as error:
        network.check_input_shape(torch.zeros(1, 3, 70, 20))
    message = str(error.value)
    assert "height=70 (nearest valid: 64 or 96)" in message
    assert "width=20 (nearest valid: 32)" in message
    with pytest.raises(ValueError, match="N, C, H, W"):
        network.check_input_shape(torch.zeros(3, 64, 64))


def test_the_package_loads_torch_only_for_the_names_that_need_it():
    import segpipe.models

    assert segpipe.models.count_params_m(torch.nn.Linear(2, 3)) == pytest.approx(9e-6)
    with pytest.raises(AttributeError, match="no attribute 'UNet'"):
        segpipe.models.UNet  # noqa: B018
