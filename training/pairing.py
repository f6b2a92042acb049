"""Training pairs for the fusion head when few products have both a text and an image.

Only 606 products here have both (486 in the train split). The fusion head also learns from
class-conditional pairs: a text-only product and an image-only product of the same class,
drawn at random, stand for one product with both. Real pairs always come first; val rows are
never used.
"""

from __future__ import annotations

import numpy as np


def class_conditional_pairs(text_labels: np.ndarray, image_labels: np.ndarray, per_class: int,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices (into the text rows, into the image rows) and labels of synthetic pairs.

    Each class present on both sides gets `per_class` pairs, texts and images drawn uniformly
    with replacement within the class; a class missing on either side gets none.
    """
    rng = np.random.default_rng(seed)
    text_rows, image_rows, labels = [], [], []
    for label in np.intersect1d(text_labels, image_labels):
        texts = np.flatnonzero(text_labels == label)
        images = np.flatnonzero(image_labels == label)
        text_rows.append(rng.choice(texts, per_class))
        image_rows.append(rng.choice(images, per_class))
        labels.append(np.full(per_class, label))
    if not labels:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    return np.concatenate(text_rows), np.concatenate(image_rows), np.concatenate(labels)
