"""Generic checks every architecture passes; each ``test_<architecture>.py`` subclasses :class:`ModelTester`
with the architecture's name, small options and cases, and adds the checks of its own design."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load, save
from torch import nn

from segpipe.models import build_model, validate_model_options
from segpipe.models.base import SegmentationNetwork
from segpipe.models.zoo import get_architecture

NUM_CLASSES = 5


def block_masks(batch: int, size: int, block: int, classes: int, seed: int = 1) -> torch.Tensor:
    """Masks made of ``block``-sized squares of random classes: learnable only by fitting them."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, classes, (batch, size // block, size // block), generator=generator)
    return coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)


def fit_one_batch(
    model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, loss_fn: Any, steps: int = 150
) -> list[float]:
    """Adam (lr 1e-2) on one batch until the loss is below 10 % of the first, at most ``steps`` steps."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses: list[float] = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if losses[-1] < 0.1 * losses[0]:
            break
    return losses


def parameters_without_gradient(model: nn.Module, logits: torch.Tensor) -> list[str]:
    """Backpropagate a cross-entropy on ``logits`` and name the parameters left without gradient."""
    target = torch.randint(0, logits.shape[1], (logits.shape[0], *logits.shape[2:]))
    F.cross_entropy(logits, target).backward()
    return [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]


def conv_widths(module: nn.Module) -> list[int]:
    return [m.out_channels for m in module.modules() if isinstance(m, nn.Conv2d)]


class ModelTester:
    """The checks every architecture passes, on a small configuration (``tiny`` options)."""

    name: ClassVar[str]
    tiny: ClassVar[dict[str, Any]]
    roots: ClassVar[set[str]] = {"normalisation", "encoder", "decoder", "head"}
    """Top-level state-dict keys."""
    any_size: ClassVar[bool] = False
    """True when the model accepts every input size (output stride 1)."""
    variants: ClassVar[list[dict[str, Any]]] = [{}]
    """Option changes to ``tiny`` that must each give logits at the input size and reach every parameter."""
    fits: ClassVar[list[dict[str, Any]]] = [{}]
    """Option changes to ``tiny`` that must each fit one batch."""
    invalid_options: ClassVar[list[tuple[dict[str, Any], str]]] = []
    """(options, expected error after ``train.models.<name>.``) pairs ``validate_model_options`` rejects."""

    @pytest.fixture(autouse=True)
    def _seed(self) -> None:
        torch.manual_seed(0)

    def build(self, in_channels: int = 3, **options: Any) -> SegmentationNetwork:
        return build_model(self.name, NUM_CLASSES, in_channels, {**self.tiny, **options})

    def test_logits_at_input_size_and_gradients_reach_every_parameter(self, variant):
        model = self.build(in_channels=4, **variant)
        for height, width in [(64, 64), (64, 96)]:
            logits = model(torch.randn(2, 4, height, width))
            assert logits.shape == (2, NUM_CLASSES, height, width)
        assert any(p.requires_grad for p in model.parameters())
        assert not parameters_without_gradient(model, logits)

    def test_size_not_divisible_by_output_stride_raises_naming_it(self):
        model = self.build()
        stride = model.output_stride
        if self.any_size:
            assert stride == 1
            assert model(torch.randn(1, 3, 50, 70)).shape == (1, NUM_CLASSES, 50, 70)
            return
        bad_width = 2 * stride + stride // 2
        with pytest.raises(
            ValueError, match=rf"width={bad_width} \(nearest valid: {2 * stride} or {3 * stride}\)"
        ):
            model(torch.randn(1, 3, 2 * stride, bad_width))
        with pytest.raises(ValueError, match=rf"height={3 * stride + 2}\b") as error:
            model(torch.randn(1, 3, 3 * stride + 2, stride))
        assert "width" not in str(error.value)

    def test_state_dict_keys_follow_the_model_layout(self):
        assert {key.split(".")[0] for key in self.build().state_dict()} == self.roots

    def test_state_dict_roundtrip_through_safetensors_gives_the_same_model(self):
        trained = self.build().eval()
        torch.manual_seed(1)
        fresh = self.build().eval()
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            assert not torch.equal(fresh(x), trained(x))
            fresh.load_state_dict(load(save(trained.state_dict())))
            torch.testing.assert_close(fresh(x), trained(x), rtol=0, atol=0)

    def test_predict_returns_logits_in_eval_mode_without_gradients(self):
        model = self.build()
        logits = model.predict(torch.randn(1, 3, 64, 64))
        assert not model.training and not logits.requires_grad
        assert logits.shape == (1, NUM_CLASSES, 64, 64)

    def test_no_options_are_the_option_class_defaults(self):
        config_cls = get_architecture(self.name).config_cls
        assert (
            validate_model_options(self.name, None) == validate_model_options(self.name, {}) == config_cls()
        )

    def test_unknown_option_is_named_with_the_allowed_ones(self):
        allowed = ", ".join(get_architecture(self.name).config_cls.model_fields)
        with pytest.raises(ValueError) as error:
            validate_model_options(self.name, {**self.tiny, "no_such_option": 1})
        assert f"train.models.{self.name}.no_such_option: unknown option; allowed options: {allowed}" in str(
            error.value
        )

    def test_invalid_options_are_named(self, invalid):
        options, expected = invalid
        with pytest.raises(ValueError) as error:
            validate_model_options(self.name, options)
        heading, problem = str(error.value).splitlines()  # one line per offending option
        assert heading == "Invalid model options:"
        assert problem.startswith(f"train.models.{self.name}.{expected}")

    def test_overfits_one_tiny_batch(self, fit):
        model = self.build(**fit)
        block = min(32, max(8, model.output_stride))  # a stride-32 model cannot draw anything finer
        images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
        losses = fit_one_batch(model, images, block_masks(2, 64, block, 3), F.cross_entropy)
        assert losses[-1] < 0.1 * losses[0], f"{self.name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"
