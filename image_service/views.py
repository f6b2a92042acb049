"""Test-time views of a prepared image and how a bundle combines them: one module for training and serving.

A view is a deterministic function of the prepared uint8 image (`preprocessing.prepare_image`
output), so the features training caches for a view are the ones the service computes:

* `plain`: the prepared image;
* `flip`: its horizontal mirror;
* `zoom`: its central `ZOOM_KEEP` (87.5%) resized back to the same size, with the filter
  `prepare_image` uses (a second, tighter crop of the product).

A bundle's metadata `test_time_augmentation` names its views and `combine: mean_features`: the
backbone runs on every view and the head gets the mean of the pooled features. Anything else is
refused by `check_tta`, so a service never serves a bundle differently from how it was evaluated.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from image_service.preprocessing import REDUCING_GAP, RESAMPLE, border_box

ZOOM_KEEP = 0.875
MEAN_FEATURES = "mean_features"


def flip(images: np.ndarray) -> np.ndarray:
    """Horizontal mirror of uint8 (N, H, W, 3) images."""
    return np.ascontiguousarray(np.asarray(images)[:, :, ::-1, :])


def zoom(images: np.ndarray, keep: float = ZOOM_KEEP) -> np.ndarray:
    """The central `keep` of each uint8 (N, H, W, 3) image, resized back to (H, W) like `prepare_image`."""
    images = np.asarray(images)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        picture = Image.fromarray(image)
        out[i] = np.asarray(picture.crop(border_box(*picture.size, keep)).resize(
            picture.size, RESAMPLE, reducing_gap=REDUCING_GAP))
    return out


VIEWS = {"plain": lambda images: np.asarray(images), "flip": flip, "zoom": zoom}

TTA_MODES = {
    "none": {"views": ["plain"], "combine": MEAN_FEATURES,
             "description": "none: one backbone pass on the prepared image"},
    "flip": {"views": ["plain", "flip"], "combine": MEAN_FEATURES,
             "description": "horizontal flip: backbone on the prepared image and on its mirror, "
                            "the head gets the mean of the two 1280-d features (2 backbone passes)"},
    "zoom": {"views": ["plain", "zoom"], "combine": MEAN_FEATURES,
             "description": f"second crop: backbone on the prepared image and on its central "
                            f"{ZOOM_KEEP:.1%} resized back, the head gets the mean of the two "
                            "1280-d features (2 backbone passes)"},
    "flip-zoom": {"views": ["plain", "flip", "zoom"], "combine": MEAN_FEATURES,
                  "description": "flip and second crop: backbone on the prepared image, its mirror "
                                 f"and its central {ZOOM_KEEP:.1%}, the head gets the mean of the "
                                 "three 1280-d features (3 backbone passes)"},
}
TTA_NONE = TTA_MODES["none"]


def check_tta(tta: dict) -> list[str]:
    """The view names of a bundle's `test_time_augmentation`; ValueError if any part is unknown."""
    combine = tta.get("combine", MEAN_FEATURES)
    if combine != MEAN_FEATURES:
        raise ValueError(f"unknown test-time augmentation combination {combine!r}; known: {MEAN_FEATURES!r}")
    views = list(tta.get("views", ["plain"]))
    unknown = [view for view in views if view not in VIEWS]
    if unknown or not views:
        raise ValueError(f"unknown test-time view(s) {unknown or views!r}; known: {sorted(VIEWS)}")
    return views


def apply_views(images: np.ndarray, views: list[str]) -> np.ndarray:
    """Every view of a batch, view-major: (len(views) * N, H, W, 3); rows v*N..(v+1)*N are view v."""
    return np.concatenate([VIEWS[view](images) for view in views])
