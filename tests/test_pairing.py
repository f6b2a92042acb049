"""Class-conditional pairing for the fusion head."""

import numpy as np

from training.pairing import class_conditional_pairs


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
