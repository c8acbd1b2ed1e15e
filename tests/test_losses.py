"""Segmentation losses and class weights (``train.loss``): ignored pixels get no gradient; weights follow the
training split's pixel counts; a weight list of the wrong length is a params error naming the key."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from segpipe.config import LOSS_TERMS, ConfigError, parse_params
from segpipe.data.manifest import MANIFEST_FILE, DatasetInfo, class_pixel_columns
from segpipe.paths import ProjectPaths
from segpipe.stages.train import resolve_class_weights
from segpipe.tasks.class_weights import (
    class_weights_for,
    inverse_sqrt_frequency_weights,
    median_frequency_weights,
)
from segpipe.tasks.losses import FocalLoss, WeightedSum, loss_term, segmentation_loss
from segpipe.tasks.segment import SegmentTask

IGNORE = 255
CLASSES = 3


def logits_and_masks(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and masks with every class present and about a quarter of the pixels ignored."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn((2, CLASSES, 8, 8), generator=generator)
    masks = torch.randint(0, CLASSES, (2, 8, 8), generator=generator)
    ignored = torch.rand((2, 8, 8), generator=generator) < 0.25
    return logits, masks.masked_fill(ignored, IGNORE)


@pytest.mark.parametrize("weights", [None, [0.5, 2.0, 1.0]], ids=["unweighted", "class-weighted"])
@pytest.mark.parametrize("name", [*LOSS_TERMS, "ce+dice", "focal+lovasz+tversky"])
def test_ignored_pixels_get_exactly_zero_gradient(name, weights):
    logits, masks = logits_and_masks()
    logits.requires_grad_(True)
    loss = segmentation_loss(name.split("+"), [1.0] * len(name.split("+")), IGNORE, weights)
    value = loss(logits, masks)
    value.backward()
    ignored = (masks == IGNORE).unsqueeze(1).expand_as(logits)
    assert torch.isfinite(value) and value.item() > 0
    assert torch.equal(logits.grad[ignored], torch.zeros(int(ignored.sum())))
    assert logits.grad[~ignored].abs().sum() > 0  # the labelled pixels do learn


@pytest.mark.parametrize("name", LOSS_TERMS)
def test_the_logits_of_ignored_pixels_do_not_change_the_loss(name):
    logits, masks = logits_and_masks(1)
    changed = torch.where((masks == IGNORE).unsqueeze(1), logits * 7 - 3, logits)
    term = loss_term(name, IGNORE)
    assert torch.allclose(term(changed, masks), term(logits, masks), rtol=1e-6, atol=1e-7)


def test_a_lone_unit_weight_term_is_plain_cross_entropy_and_a_sum_adds_weighted_terms():
    logits, masks = logits_and_masks(2)
    plain = segmentation_loss(["ce"], [1.0], IGNORE)
    assert type(plain) is torch.nn.CrossEntropyLoss
    assert torch.equal(plain(logits, masks), F.cross_entropy(logits, masks, ignore_index=IGNORE))
    mixed = segmentation_loss(["ce", "dice"], [1.0, 0.5], IGNORE)
    assert isinstance(mixed, WeightedSum)
    expected = plain(logits, masks) + 0.5 * loss_term("dice", IGNORE)(logits, masks)
    assert torch.allclose(mixed(logits, masks), expected)


def test_focal_loss_without_focusing_is_weighted_cross_entropy_and_focusing_favours_hard_pixels():
    logits, masks = logits_and_masks(3)
    weights = torch.tensor([0.5, 2.0, 1.0])
    weighted_ce = F.cross_entropy(logits, masks, weight=weights, ignore_index=IGNORE)
    assert torch.allclose(FocalLoss(IGNORE, weights, gamma=0.0)(logits, masks), weighted_ce)
    assert FocalLoss(IGNORE, weights)(logits, masks) < weighted_ce


def test_class_weights_reach_every_weighted_term():
    logits, masks = logits_and_masks(4)
    for name in ("ce", "focal", "dice", "tversky", "jaccard"):
        unweighted = loss_term(name, IGNORE)(logits, masks)
        assert not torch.allclose(loss_term(name, IGNORE, [0.1, 5.0, 1.0])(logits, masks), unweighted), name


def test_median_frequency_weights_match_a_hand_computed_example():
    # three images, three classes (class 2 only in image 0); counts of labelled pixels per image and class
    counts = np.array([[60, 20, 20], [90, 10, 0], [100, 0, 0]])
    # freq(c) = class pixels / labelled pixels of the images holding c
    freq = np.array([250 / 300, 30 / 200, 20 / 100])  # 0.8333, 0.15, 0.2
    median = 0.2
    np.testing.assert_allclose(median_frequency_weights(counts), median / freq)
    np.testing.assert_allclose(median_frequency_weights(counts), [0.24, 4 / 3, 1.0])


def test_a_class_absent_from_training_gets_weight_zero():
    counts = np.array([[30, 10, 0], [50, 10, 0]])
    median = median_frequency_weights(counts)
    assert median[2] == 0 and median[0] > 0 and median[1] > median[0]
    inverse = inverse_sqrt_frequency_weights(counts)
    np.testing.assert_allclose(inverse[:2].mean(), 1.0)
    assert inverse[2] == 0 and inverse[1] / inverse[0] == pytest.approx(np.sqrt(80 / 20))


def write_manifest(prepared, counts_by_split: dict[str, list[list[int]]]) -> None:
    columns = class_pixel_columns(CLASSES)
    rows = [
        {"id": f"{split}-{index}", "split": split, **dict(zip(columns, row, strict=True))}
        for split, rows in counts_by_split.items()
        for index, row in enumerate(rows)
    ]
    prepared.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(prepared / MANIFEST_FILE, index=False)


def test_weights_come_from_the_training_split_of_the_manifest(tmp_path):
    write_manifest(tmp_path, {"train": [[60, 20, 20], [90, 10, 0], [100, 0, 0]], "val": [[0, 0, 500]]})
    weights = class_weights_for("median_frequency", tmp_path, CLASSES)
    assert weights == pytest.approx([0.24, 4 / 3, 1.0])


def params_with(class_weights) -> object:
    return parse_params({"train": {"loss": {"name": "ce+dice", "class_weights": class_weights}}})


INFO = DatasetInfo("tiny", ("background", "ring", "line"), IGNORE, (32, 32), {"train": 3})


def test_a_weight_list_of_the_wrong_length_is_a_one_line_params_error(tmp_path):
    with pytest.raises(ConfigError) as error:
        resolve_class_weights(params_with([1.0, 2.0]), INFO, ProjectPaths(tmp_path))
    message = str(error.value)
    assert "\n" not in message and "train.loss.class_weights" in message
    assert "2 weight(s)" in message and "3 classes" in message


def test_the_stage_resolves_listed_and_computed_weights(tmp_path):
    paths = ProjectPaths(tmp_path)
    assert resolve_class_weights(params_with("none"), INFO, paths) is None
    assert resolve_class_weights(params_with([1.0, 2.0, 3.0]), INFO, paths) == [1.0, 2.0, 3.0]
    write_manifest(paths.prepared, {"train": [[60, 20, 20], [90, 10, 0], [100, 0, 0]]})
    computed = resolve_class_weights(params_with("median_frequency"), INFO, paths)
    assert computed == pytest.approx([0.24, 4 / 3, 1.0])


@pytest.mark.parametrize("name", [*LOSS_TERMS, "ce+lovasz"])
def test_every_loss_trains_on_bf16_logits_under_autocast(name):
    logits, masks = logits_and_masks(4)
    logits = logits.to(torch.bfloat16).requires_grad_(True)
    terms = name.split("+")
    task = SegmentTask(CLASSES, IGNORE, criterion=segmentation_loss(terms, [1.0] * len(terms), IGNORE))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = task.loss(logits, masks)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert logits.grad.dtype == torch.bfloat16 and logits.grad.abs().sum() > 0
