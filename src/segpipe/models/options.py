"""What every architecture's option class shares; importable without torch, so params are checked early."""

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict

UpsampleMode = Literal["nearest", "bilinear", "transpose", "bed_of_nails", "max_unpool"]
"""A :func:`~segpipe.models.upsampling.make_upsample` mode."""
UPSAMPLE_MODES: tuple[UpsampleMode, ...] = get_args(UpsampleMode)


Init = Literal["scratch", "pretrain"]
"""How a segmentation model's encoder starts: random, or from the ``pretrain`` stage's encoder."""


class ModelConfig(BaseModel):
    """Options of one architecture (``train.models.<architecture>`` in params.yaml); each field's
    docstring documents it."""

    # allow_inf_nan: no option may be .inf or .nan (params.yaml, a run's model.json)
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True, allow_inf_nan=False)

    init: Init = "scratch"
    """``scratch``: random initial weights; ``pretrain``: the encoder starts from
    ``models/pretrain/<architecture>/encoder.safetensors`` (list the architecture in
    ``pretrain.architectures``)."""
