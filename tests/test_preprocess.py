"""Size policies for image/mask pairs: stretch, pad and centre-crop; bounding the longest side."""

import re

import numpy as np
import pytest

from segpipe.data.preprocess import bounded_size, fit_to_size, limit_side

IGNORE = 255
POLICIES = ["stretch", "pad", "crop"]


def _pair(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(1, 256, (height, width, 3), dtype=np.uint8)
    mask = rng.choice(np.array([0, 3, 7, 200], dtype=np.uint8), (height, width))
    return image, mask


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("size", [(64, 96), (96, 96), (400, 500)])
def test_output_has_target_size_and_no_new_mask_values(policy, size):
    image, mask = _pair(360, 480)
    out_image, out_mask = fit_to_size(image, mask, size, policy, IGNORE)
    assert out_image.shape == (*size, 3) and out_image.dtype == np.uint8
    assert out_mask.shape == size and out_mask.dtype == np.uint8
    assert set(np.unique(out_mask)) <= set(np.unique(mask)) | {IGNORE}


def test_stretch_interpolates_images_but_not_masks():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    image[:, 4:] = 200
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, 4:] = 5
    out_image, out_mask = fit_to_size(image, mask, (8, 20), "stretch", IGNORE)
    assert len(np.unique(out_image)) > 2  # bilinear blends the edge
    assert set(np.unique(out_mask)) == {0, 5}
    np.testing.assert_array_equal(out_mask[0], [0] * 10 + [5] * 10)


def test_pad_letterboxes_a_wide_image():
    image = np.full((360, 480, 3), 9, dtype=np.uint8)
    mask = np.ones((360, 480), dtype=np.uint8)
    out_image, out_mask = fit_to_size(
        image, mask, (97, 96), "pad", IGNORE
    )  # scaled to 72x96, 25 rows of padding
    assert (out_image[:12] == 0).all() and (out_image[84:] == 0).all()
    assert (out_image[12:84] == 9).all()
    assert (out_mask[:12] == IGNORE).all() and (out_mask[84:] == IGNORE).all()  # odd pixel goes to the bottom
    assert (out_mask[12:84] == 1).all()


def test_pad_pillarboxes_a_tall_image():
    image = np.full((480, 360, 3), 9, dtype=np.uint8)
    mask = np.ones((480, 360), dtype=np.uint8)
    out_image, out_mask = fit_to_size(image, mask, (96, 97), "pad", 250)  # scaled to 96x72
    assert (
        (out_image[:, :12] == 0).all() and (out_image[:, 84:] == 0).all() and (out_image[:, 12:84] == 9).all()
    )
    np.testing.assert_array_equal(out_mask[40], [250] * 12 + [1] * 72 + [250] * 13)


def test_pad_without_scaling_only_pads():
    image, mask = _pair(64, 48)
    out_image, out_mask = fit_to_size(image, mask, (64, 96), "pad", IGNORE)
    np.testing.assert_array_equal(out_image[:, 24:72], image)
    np.testing.assert_array_equal(out_mask[:, 24:72], mask)
    assert (out_mask[:, :24] == IGNORE).all() and (out_mask[:, 72:] == IGNORE).all()


def test_crop_keeps_the_centre():
    mask = np.full((360, 480), 2, dtype=np.uint8)
    mask[:, :120], mask[:, 360:] = 1, 3
    image = np.repeat(mask[..., None] * 50, 3, axis=2)
    out_image, out_mask = fit_to_size(
        image, mask, (96, 96), "crop", IGNORE
    )  # scaled to 96x128, 16 columns cut each side
    expected_row = [1] * 16 + [2] * 64 + [3] * 16
    assert (out_mask == expected_row).all()
    assert (out_image[:, 30:66] == 100).all()


def test_crop_of_a_tall_image_cuts_top_and_bottom():
    mask = np.full((300, 100), 2, dtype=np.uint8)
    mask[:100], mask[200:] = 1, 3
    image = np.repeat(mask[..., None], 3, axis=2)
    out_image, out_mask = fit_to_size(
        image, mask, (100, 100), "crop", IGNORE
    )  # no scaling, rows 100..199 kept
    assert (out_mask == 2).all() and (out_image == 2).all()
    out_mask[0, 0] = 9
    assert mask[100, 0] == 2  # the result does not alias the input


@pytest.mark.parametrize("policy", POLICIES)
def test_matching_size_is_returned_unchanged(policy):
    image, mask = _pair(64, 96)
    out_image, out_mask = fit_to_size(image, mask, (64, 96), policy, IGNORE)
    assert out_image is image and out_mask is mask


def test_mismatched_shapes_and_unknown_policy():
    image, _ = _pair(10, 12)
    with pytest.raises(
        ValueError, match=re.escape("image shape (10, 12, 3) and mask shape (10, 11) do not match")
    ):
        fit_to_size(image, np.zeros((10, 11), dtype=np.uint8), (8, 8), "pad", IGNORE)
    with pytest.raises(ValueError, match="unknown resize policy 'squash'"):
        fit_to_size(image, np.zeros((10, 12), dtype=np.uint8), (8, 8), "squash", IGNORE)


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [((40, 64), 32, (20, 32)), ((64, 16), 32, (32, 8)), ((1000, 3), 100, (100, 1)), ((20, 24), 32, (20, 24))],
)
def test_bounded_size_keeps_the_aspect_ratio(size, max_side, expected):
    assert bounded_size(*size, max_side) == expected
    assert bounded_size(*size, None) == size


def test_limit_side_downscales_larger_pairs_only():
    image, mask = _pair(360, 480)
    small_image, small_mask = limit_side(image, mask, 240)
    assert small_image.shape == (180, 240, 3) and small_mask.shape == (180, 240)
    assert set(np.unique(small_mask)) <= set(np.unique(mask))  # nearest: no blended labels
    same_image, same_mask = limit_side(image, mask, 480)
    assert same_image is image and same_mask is mask
