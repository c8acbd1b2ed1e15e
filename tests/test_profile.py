"""Model cost figures come from torch's flop counter and match hand-derived values on simple layers."""

import pytest
from torch import nn

from segpipe.config import Params
from segpipe.models import available_architectures, count_params_m
from segpipe.models.profile import gflops_per_image
from segpipe.stages.models_table import models_table


def test_conv_flops_match_the_formula():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    # 2 FLOPs per multiply-add, per output element: 2 * C_in * k * k per output pixel and channel
    assert gflops_per_image(conv, 16, 16) == pytest.approx(2 * 3 * 9 * 8 * 16 * 16 / 1e9)
    assert count_params_m(conv) == pytest.approx(3 * 8 * 9 / 1e6)


def test_models_table_lists_every_architecture():
    params = Params(models_table={"image_size": (64, 64)})
    table = models_table(params, num_classes=6)
    assert list(table["architecture"]) == available_architectures()
    assert (table["gflops_64x64"] > 0).all() and (table["params_m"] > 0).all()
    assert set(table.loc[table["in_default_run"], "architecture"]) == set(params.train.architectures)
