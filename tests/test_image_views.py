"""Test-time views (image_service.views): what each view does to a prepared image, the view-major
stacking the service's network expects, and the refusal of modes the service does not run."""

from __future__ import annotations

import numpy as np
import pytest

from image_service import views


def test_flip_mirrors_left_and_right():
    images = np.arange(2 * 4 * 6 * 3, dtype=np.uint8).reshape(2, 4, 6, 3)
    flipped = views.flip(images)
    assert flipped.flags.c_contiguous and flipped.dtype == np.uint8
    np.testing.assert_array_equal(flipped[:, :, 0], images[:, :, -1])
    np.testing.assert_array_equal(views.flip(flipped), images)


def test_zoom_keeps_the_size_and_shows_the_centre_larger():
    """A centred square of half the side fills 1/0.875 more of the view: more of its pixels."""
    image = np.full((1, 240, 240, 3), 255, np.uint8)
    image[0, 60:180, 60:180] = 0
    zoomed = views.zoom(image)
    assert zoomed.shape == image.shape and zoomed.dtype == np.uint8
    dark = (zoomed[0, ..., 0] < 128).sum()
    assert dark == pytest.approx(120 * 120 / views.ZOOM_KEEP ** 2, rel=0.03)
    np.testing.assert_array_equal(views.zoom(np.full((1, 16, 16, 3), 7, np.uint8)), 7)


def test_views_are_stacked_view_major():
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    stacked = views.apply_views(images, ["plain", "flip"])
    assert stacked.shape == (6, 8, 8, 3)
    np.testing.assert_array_equal(stacked[:3], images)
    np.testing.assert_array_equal(stacked[3:], views.flip(images))


@pytest.mark.parametrize("mode", sorted(views.TTA_MODES))
def test_every_mode_is_one_the_service_runs(mode):
    assert views.check_tta(views.TTA_MODES[mode]) == views.TTA_MODES[mode]["views"]


@pytest.mark.parametrize("tta, message", [
    ({"views": ["plain", "rotate90"]}, r"unknown test-time view\(s\) \['rotate90'\]; known: \['flip', 'plain', 'zoom'\]"),
    ({"views": []}, r"unknown test-time view"),
    ({"views": ["plain"], "combine": "vote"}, r"unknown test-time augmentation combination 'vote'"),
])
def test_unknown_views_or_combinations_are_refused(tta, message):
    with pytest.raises(ValueError, match=message):
        views.check_tta(tta)
