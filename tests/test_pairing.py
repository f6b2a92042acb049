"""The fusion head's training products: reserved from the encoders, and class-conditional pairs."""

import numpy as np
import pandas as pd

from training.fitting import early_stopping_split
from training.pairing import class_conditional_pairs, reserved_for_fusion


def test_pairs_only_join_texts_and_images_of_the_same_class():
    text_labels = np.array([0, 0, 1, 1, 1, 2])
    image_labels = np.array([1, 0, 1, 3])
    texts, images, labels = class_conditional_pairs(text_labels, image_labels, per_class=50, seed=1)
    assert len(labels) == 100  # classes 0 and 1 are on both sides; 2 and 3 are not
    assert set(labels) == {0, 1}
    np.testing.assert_array_equal(text_labels[texts], labels)
    np.testing.assert_array_equal(image_labels[images], labels)


def test_pairs_are_seeded_and_varied():
    text_labels, image_labels = np.zeros(20, int), np.zeros(20, int)
    first = class_conditional_pairs(text_labels, image_labels, 100, seed=3)
    again = class_conditional_pairs(text_labels, image_labels, 100, seed=3)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert len(set(zip(first[0], first[1]))) > 50


def test_no_common_class_gives_no_pairs():
    texts, images, labels = class_conditional_pairs(np.array([0]), np.array([1]), 10)
    assert len(texts) == len(images) == len(labels) == 0


def test_products_with_text_and_image_are_reserved_for_fusion():
    products = pd.DataFrame({"has_text": [1, 1, 0, 1], "has_image": [1, 0, 1, 1]})
    np.testing.assert_array_equal(reserved_for_fusion(products), [True, False, False, True])


def test_reserved_rows_are_always_held_out_and_never_fitted():
    labels = np.repeat(np.arange(4), 50)
    reserved = np.zeros(200, bool)
    reserved[[0, 1, 60, 199]] = True
    fit_rows, early_rows = early_stopping_split(labels, 0.1, seed=0, reserved=reserved)
    assert set(np.flatnonzero(reserved)) <= set(early_rows)
    assert not set(fit_rows) & set(early_rows) and len(fit_rows) + len(early_rows) == 200
    assert len(early_rows) == 20  # the reserved rows count towards the held-out share
    assert sorted(np.unique(labels[np.setdiff1d(early_rows, np.flatnonzero(reserved))])) == [0, 1, 2, 3]
    # without reserved rows the split is the plain stratified one
    np.testing.assert_array_equal(early_stopping_split(labels, 0.1, 0, np.zeros(200, bool))[1],
                                  early_stopping_split(labels, 0.1, 0)[1])
