"""How `make train-fusion` builds the head and its comparison table (no data folder needed)."""

from pathlib import Path

import numpy as np
import pytest

from common.model_bundle import BundleInfo
from training.data import Category
from training.fusion_data import Encoded, EncodedProducts, FusionInputs
from training.fusion_model import OutputLayer, output_layer, predict_fusion, product_of_experts_head
from training.train_fusion import HEAD, IMAGE_ONLY, LATE, TEXT_ONLY, compare_on_val_pairs

CLASSES = 3


def encoded(index, labels, seed, accurate=True):
    """Encodings whose embedding's first value is the catalog index (to check alignment)."""
    rng = np.random.default_rng(seed)
    index, labels = np.asarray(index), np.asarray(labels)
    embeddings = rng.normal(size=(len(index), 4)).astype(np.float32)
    embeddings[:, 0] = index
    probabilities = rng.dirichlet(np.ones(CLASSES), len(index)).astype(np.float32)
    if accurate:
        probabilities[np.arange(len(index)), labels] += 1.0
    return Encoded(index, labels, embeddings, probabilities / probabilities.sum(1, keepdims=True))


def inputs():
    # train: products 0..5 have text, 3..8 an image: 3, 4, 5 are the real pairs (text order differs)
    train = EncodedProducts(text=encoded([5, 0, 1, 2, 3, 4], [2, 0, 1, 2, 0, 1], 1),
                            image=encoded([3, 4, 5, 6, 7, 8], [0, 1, 2, 0, 1, 2], 2))
    val = EncodedProducts(text=encoded([10, 11, 12, 13], [0, 1, 2, 0], 3),
                          image=encoded([11, 12, 13, 14], [1, 2, 0, 1], 4, accurate=False))
    # Calibrated bundles (late fusion mixes the calibrated scores the services answer).
    text_bundle = BundleInfo("text", 1, Path("models/text/1"), {"calibration": {"temperature": 2.0}})
    image_bundle = BundleInfo("image", 1, Path("models/image/1"), {"calibration": {"temperature": 0.5}})
    return FusionInputs(train, val, [Category(c, f"class {c}") for c in (10, 20, 30)], text_bundle, image_bundle)


def test_real_pairs_are_aligned_by_product():
    text, image = inputs().train.pairs()
    np.testing.assert_array_equal(text.index, [3, 4, 5])
    np.testing.assert_array_equal(text.embeddings[:, 0], image.embeddings[:, 0])
    np.testing.assert_array_equal(text.labels, image.labels)


def softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def relu_embeddings(rows, dim, seed):
    return np.maximum(np.random.default_rng(seed).normal(size=(rows, dim)), 0).astype(np.float32)


def test_an_output_layer_is_read_back_from_what_it_serves():
    rng = np.random.default_rng(0)
    kernel, bias = rng.normal(size=(6, CLASSES)), rng.normal(size=CLASSES)
    embeddings = relu_embeddings(50, 6, 1)
    layer = output_layer(embeddings, softmax(embeddings @ kernel + bias))
    np.testing.assert_allclose(softmax(layer.logits(embeddings)), softmax(embeddings @ kernel + bias), atol=1e-5)


def test_outputs_that_are_not_a_softmax_layer_are_refused():
    embeddings = relu_embeddings(50, 6, 1)
    with pytest.raises(ValueError, match="not a softmax"):
        output_layer(embeddings, np.random.default_rng(2).dirichlet(np.ones(CLASSES), 50))
    with pytest.raises(ValueError, match="cannot determine"):
        output_layer(embeddings[:6], softmax(embeddings[:6, :CLASSES]))


def test_the_head_computes_the_product_of_the_two_experts():
    rng = np.random.default_rng(3)
    text = OutputLayer(rng.normal(size=(5, CLASSES)).astype(np.float32), rng.normal(size=CLASSES).astype(np.float32))
    image = OutputLayer(rng.normal(size=(4, CLASSES)).astype(np.float32), rng.normal(size=CLASSES).astype(np.float32))
    text_embeddings, image_embeddings = relu_embeddings(40, 5, 4), relu_embeddings(40, 4, 5)
    head = product_of_experts_head(text, image, text_embeddings, image_embeddings, image_weight=0.5)
    expected = softmax(text.logits(text_embeddings) + 0.5 * image.logits(image_embeddings))
    np.testing.assert_allclose(predict_fusion(head, text_embeddings, image_embeddings), expected, atol=1e-4)
    # Text embedding values that can be negative (the text model's wide-path scores) pass through too,
    # on rows the head never saw: relu(x) and relu(-x) with output weights W and -W.
    signed = text_embeddings.copy()
    signed[:, 3:] = rng.normal(size=(40, 2))
    head = product_of_experts_head(text, image, signed, image_embeddings)
    unseen = signed[:10] * np.array([1, 1, 1, -2, 3], np.float32)
    expected = softmax(text.logits(unseen) + image.logits(image_embeddings[:10]))
    np.testing.assert_allclose(predict_fusion(head, unseen, image_embeddings[:10]), expected, atol=1e-4)


def test_comparison_covers_the_val_pairs_with_each_method():
    y_true, predictions = compare_on_val_pairs(inputs(), np.eye(CLASSES)[[0, 0, 0]], text_weight=1.0)
    np.testing.assert_array_equal(y_true, [20, 30, 10])  # products 11, 12, 13
    assert set(predictions) == {TEXT_ONLY, IMAGE_ONLY, LATE, HEAD}
    np.testing.assert_array_equal(predictions[TEXT_ONLY], y_true)  # the text encodings are accurate
    np.testing.assert_array_equal(predictions[LATE], predictions[TEXT_ONLY])  # weight 1: text alone
    np.testing.assert_array_equal(predictions[HEAD], [10, 10, 10])
