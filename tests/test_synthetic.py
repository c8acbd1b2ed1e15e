"""Behavioural tests for the procedural scene generator (segpipe.data.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest

from segpipe.data.synthetic import CLASS_NAMES, _render_scene, render_scene

NUM_CLASSES = len(CLASS_NAMES)
BACKGROUND = CLASS_NAMES.index("background")
THIN = [CLASS_NAMES.index("ring"), CLASS_NAMES.index("line")]
FILLED = [CLASS_NAMES.index(n) for n in ("disc", "square", "triangle")]


@pytest.fixture(scope="module")
def scenes() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [render_scene(rng, 96, 96) for _ in range(60)]


def _erode(mask: np.ndarray, k: int) -> np.ndarray:
    """Binary erosion with a k x k square (min filter); the border is edge-replicated."""
    r = k // 2
    padded = np.pad(mask, r, mode="edge")
    h, w = mask.shape
    out = np.ones_like(mask)
    for dy in range(k):
        for dx in range(k):
            out &= padded[dy : dy + h, dx : dx + w]
    return out


def test_class_names() -> None:
    assert CLASS_NAMES[0] == "background"
    assert len(CLASS_NAMES) >= 6 and len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert {"ring", "line", "disc"} <= set(CLASS_NAMES)


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (96, 128), (128, 96), (256, 200)])
def test_shapes_dtypes_and_value_range(size: tuple[int, int]) -> None:
    h, w = size
    rng = np.random.default_rng(1)
    for _ in range(5):
        image, mask = render_scene(rng, h, w)
        assert image.shape == (h, w, 3) and image.dtype == np.uint8
        assert mask.shape == (h, w) and mask.dtype == np.uint8
        assert mask.max() < NUM_CLASSES
        assert (mask == BACKGROUND).any() and (mask != BACKGROUND).any()


def test_rejects_too_small() -> None:
    with pytest.raises(ValueError):
        render_scene(np.random.default_rng(0), 8, 64)


def test_deterministic_for_equal_seeds() -> None:
    a = [render_scene(np.random.default_rng(123), 80, 112) for _ in range(2)]
    np.testing.assert_array_equal(a[0][0], a[1][0])
    np.testing.assert_array_equal(a[0][1], a[1][1])


def test_differs_for_different_seeds_and_successive_draws() -> None:
    img1, mask1 = render_scene(np.random.default_rng(1), 64, 64)
    img2, mask2 = render_scene(np.random.default_rng(2), 64, 64)
    assert not np.array_equal(img1, img2) and not np.array_equal(mask1, mask2)
    rng = np.random.default_rng(3)
    first, second = render_scene(rng, 64, 64), render_scene(rng, 64, 64)
    assert not np.array_equal(first[1], second[1])


def test_every_class_appears_often_and_scenes_are_mixed(scenes) -> None:
    present = np.zeros(NUM_CLASSES, dtype=int)
    for _, mask in scenes:
        classes = np.unique(mask)
        present[classes] += 1
        assert np.count_nonzero(classes != BACKGROUND) >= 2
    # Every object class is visible in a clear majority of scenes.
    assert (present[1:] > 0.6 * len(scenes)).all(), present


def test_class_balance(scenes) -> None:
    counts = sum(np.bincount(m.ravel(), minlength=NUM_CLASSES) for _, m in scenes)
    freq = counts / counts.sum()
    assert freq.argmax() == BACKGROUND
    assert 0.45 <= freq[BACKGROUND] <= 0.75, freq
    assert (freq[1:] > 0.005).all(), freq
    # A majority-class predictor has poor mIoU (IoU = bg freq on background, 0 elsewhere).
    assert freq[BACKGROUND] / NUM_CLASSES < 0.15


def test_thin_structures_vanish_under_erosion_but_filled_shapes_survive(scenes) -> None:
    area = np.zeros(NUM_CLASSES)
    survived = np.zeros(NUM_CLASSES)
    for _, mask in scenes:
        for c in range(1, NUM_CLASSES):
            m = mask == c
            area[c] += m.sum()
            survived[c] += _erode(m, 5).sum()
    frac = survived / np.maximum(area, 1)
    # Almost every ring/line pixel is within 2 px of a non-class pixel.
    assert (frac[THIN] < 0.05).all(), frac
    assert (frac[FILLED] > 0.4).all(), frac


def test_thin_structures_are_two_to_three_pixels_wide(scenes) -> None:
    # A 3x3 erosion keeps at most the centre line of a 3 px band and nothing of a 2 px one.
    for c in THIN:
        total = sum((m == c).sum() for _, m in scenes)
        kept = sum(_erode(m == c, 3).sum() for _, m in scenes)
        assert 0 < kept / total < 0.25


def test_colour_does_not_determine_class(scenes) -> None:
    # Per-scene mean colour of each object class varies widely across scenes.
    for c in range(1, NUM_CLASSES):
        means = np.array([img[m == c].mean(axis=0) for img, m in scenes if (m == c).sum() >= 20])
        assert len(means) >= 20
        assert (means.std(axis=0) > 40).all(), (CLASS_NAMES[c], means.std(axis=0))

    # A per-pixel colour-histogram classifier, fitted on half the scenes, fails on the rest.
    bins = 8

    def quantise(img: np.ndarray) -> np.ndarray:
        q = img.astype(np.int64) // (256 // bins)
        return (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]

    train, test = scenes[:30], scenes[30:]
    hist = np.zeros((bins**3, NUM_CLASSES))
    for img, mask in train:
        np.add.at(hist, (quantise(img).ravel(), mask.ravel()), 1)
    predict_all = hist.argmax(axis=1)
    predict_obj = hist[:, 1:].argmax(axis=1) + 1  # among object classes only
    inter = np.zeros(NUM_CLASSES)
    union = np.zeros(NUM_CLASSES)
    obj_correct = obj_total = 0
    for img, mask in test:
        q = quantise(img)
        pred = predict_all[q]
        for c in range(NUM_CLASSES):
            inter[c] += np.sum((pred == c) & (mask == c))
            union[c] += np.sum((pred == c) | (mask == c))
        obj = mask != BACKGROUND
        obj_correct += np.sum(predict_obj[q][obj] == mask[obj])
        obj_total += obj.sum()
    assert (inter / union).mean() < 0.25
    assert obj_correct / obj_total < 0.35  # largest object class is ~37 % of object pixels


def test_background_is_textured_and_contains_object_like_colours(scenes) -> None:
    similar = 0
    for img, mask in scenes:
        f = img.astype(np.float32)
        bg = mask == BACKGROUND
        # Not flat: large-scale variation and per-pixel noise.
        assert f[bg].std(axis=0).max() > 10
        both = bg[:, 1:] & bg[:, :-1]
        assert np.abs(f[:, 1:] - f[:, :-1])[both].mean() > 1.0
        dists = [
            np.sqrt(((f[bg] - f[mask == c].mean(axis=0)) ** 2).sum(axis=1)).min()
            for c in range(1, NUM_CLASSES)
            if (mask == c).sum() >= 30
        ]
        similar += min(dists) < 30
    assert similar > 0.5 * len(scenes)


def test_mask_is_last_painter_wins_and_matches_image() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        scene = _render_scene(rng, 72, 88)
        stack = np.stack(scene.shapes)  # [K, H, W] footprints in paint order
        k = len(stack)
        last = k - 1 - np.argmax(stack[::-1], axis=0)
        covered = stack.any(axis=0)
        expected = np.where(covered, np.asarray(scene.classes)[last], BACKGROUND)
        np.testing.assert_array_equal(scene.mask, expected)
        # The image shows the same winner: each visible instance is one coherent colour
        # (shading + noise only), which fails if an occluded colour leaked through.
        img = scene.image.astype(np.float32)
        for i in range(k):
            visible = covered & (last == i)
            if visible.sum() >= 30:
                assert img[visible].std(axis=0).max() < 20
