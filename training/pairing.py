"""Which products the fusion head may learn from, and class-conditional pairs for more of them.

Only 606 products here have both a text and an image (486 in the train split). The fusion head
must see embeddings that look like the ones it will be served, and an encoder's outputs on the
rows it was fitted on are far more confident than on new products. So the train products with
both a text and an image are `reserved_for_fusion`: neither encoder fits them (the text model
keeps them in its early-stopping set, the image head leaves them out). Class-conditional pairs
(the text of one reserved product and the image of another of the same class) give a fitted
head more combinations; `make eval-fusion` measures such a head as a baseline. Val rows are
never used.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


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


def reserved_for_fusion(products: pd.DataFrame) -> np.ndarray:
    """Boolean mask of the rows of `products` (training rows) that the encoders must not fit:
    those with both a text and an image."""
    return (products["has_text"].astype(bool) & products["has_image"].astype(bool)).to_numpy()
