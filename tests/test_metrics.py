"""Confusion-matrix metrics against hand-computed values."""

import numpy as np
import pytest
import torch

from segpipe.metrics import ConfusionMatrix, constant_prediction_confusion, metrics_from_confusion


def one_hot_logits(prediction: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(prediction, num_classes).permute(0, 3, 1, 2).float()


def test_confusion_matrix_counts_and_ignores():
    target = torch.tensor([[[0, 0, 1, 255]]])
    prediction = torch.tensor([[[0, 1, 1, 0]]])
    confusion = ConfusionMatrix(num_classes=2, ignore_index=255)
    confusion.update(one_hot_logits(prediction, 2), target)
    assert confusion.matrix().tolist() == [[1, 1], [0, 1]]


def test_metrics_values():
    # truth 0: 3 px (2 right, 1 as class 1); truth 1: 1 px (right); class 2 never seen
    matrix = np.array([[2, 1, 0], [0, 1, 0], [0, 0, 0]])
    scores = metrics_from_confusion(matrix)
    assert scores.per_class_iou[0] == pytest.approx(2 / 3)
    assert scores.per_class_iou[1] == pytest.approx(1 / 2)
    assert np.isnan(scores.per_class_iou[2])
    assert scores.miou == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert scores.pixel_acc == pytest.approx(3 / 4)
    assert scores.mean_class_acc == pytest.approx((2 / 3 + 1) / 2)
    assert scores.dice == pytest.approx((2 * 2 / (3 + 2) + 2 * 1 / (1 + 2)) / 2)


def test_perfect_prediction_scores_one():
    target = torch.randint(0, 4, (2, 8, 8))
    confusion = ConfusionMatrix(4, 255)
    confusion.update(one_hot_logits(target, 4), target)
    scores = metrics_from_confusion(confusion.matrix())
    assert scores.miou == pytest.approx(1.0)
    assert scores.pixel_acc == pytest.approx(1.0)


def test_constant_predictor():
    matrix = constant_prediction_confusion(np.array([60, 30, 10]), predicted_class=0)
    scores = metrics_from_confusion(matrix)
    assert scores.pixel_acc == pytest.approx(0.6)
    assert scores.miou == pytest.approx(0.6 / 3)
